//! The rules of fencing in the agent, without I/O: whether this host holds quorum, and whether
//! a fenced node may be thawed.
//!
//! A paired host renews its nodes' init leases only while it holds quorum; a standalone host
//! never renews them, so its inits are never armed and never fence.

use crate::pair::ownership::{Epoch, NotRunnable, Ownership};

/// What quorum is decided from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuorumView {
    /// The pair link to the partner is up.
    pub partner_link_up: bool,
}

/// Whether this host holds quorum: today, the partner reachable over the pair link. This is
/// the one place quorum is decided; the witness's reachability joins it here.
pub fn has_quorum(view: &QuorumView) -> bool {
    view.partner_link_up
}

/// Why a fenced node stays frozen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotThawed {
    #[error("no quorum")]
    NoQuorum,
    #[error("{0}")]
    NotOwned(NotRunnable),
    #[error("its epoch moved from {fenced_at:?} to {now:?} while it was fenced")]
    EpochMoved {
        fenced_at: Option<Epoch>,
        now: Option<Epoch>,
    },
}

/// A fenced node is thawed only with quorum, when this host may still run it, at the epoch it
/// had when it was fenced: a node that changed hands meanwhile stays frozen (and is stopped).
pub fn may_thaw(
    quorum: bool,
    ownership: &Ownership,
    node: &str,
    fenced_at: Option<Epoch>,
) -> Result<(), NotThawed> {
    if !quorum {
        return Err(NotThawed::NoQuorum);
    }
    ownership.may_run(node).map_err(NotThawed::NotOwned)?;
    let now = ownership.claims().get(node).map(|claim| claim.epoch);
    if now != fenced_at {
        return Err(NotThawed::EpochMoved { fenced_at, now });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::pair::ownership::{Claim, Peer};

    fn claim(owner: &str, epoch: u64) -> Claim {
        Claim {
            owner: owner.into(),
            epoch: Epoch(epoch),
        }
    }

    #[test]
    fn quorum_is_the_partner_link() {
        assert!(has_quorum(&QuorumView {
            partner_link_up: true
        }));
        assert!(!has_quorum(&QuorumView {
            partner_link_up: false
        }));
    }

    #[test]
    fn a_fenced_node_is_thawed_only_with_quorum() {
        let ownership = Ownership::standalone("dh1");
        assert_eq!(
            may_thaw(false, &ownership, "web1", None),
            Err(NotThawed::NoQuorum)
        );
        assert_eq!(may_thaw(true, &ownership, "web1", None), Ok(()));
    }

    #[test]
    fn a_fenced_node_is_thawed_only_while_this_host_owns_it_at_the_same_epoch() {
        let claims = BTreeMap::from([("web1".to_string(), claim("dh1", 2))]);
        let mut ownership = Ownership::paired("dh1", claims.clone());
        assert!(matches!(
            may_thaw(true, &ownership, "web1", Some(Epoch(2))),
            Err(NotThawed::NotOwned(NotRunnable::Unconfirmed))
        ));
        ownership.confirm(Peer::Partner, &claims);
        assert_eq!(may_thaw(true, &ownership, "web1", Some(Epoch(2))), Ok(()));
        assert!(matches!(
            may_thaw(true, &ownership, "web1", Some(Epoch(1))),
            Err(NotThawed::EpochMoved { .. })
        ));
        ownership.learn("web1", &claim("dh2", 3)).unwrap();
        assert!(matches!(
            may_thaw(true, &ownership, "web1", Some(Epoch(2))),
            Err(NotThawed::NotOwned(NotRunnable::Owned { .. }))
        ));
    }
}
