//! The rules of fencing in the agent, without I/O: whether this host holds quorum, and whether
//! a fenced node may be thawed.
//!
//! A paired host renews its nodes' init leases only while it holds quorum; a standalone host
//! never renews them, so its inits are never armed and never fence.

use std::time::Duration;

use crate::pair::ownership::{Epoch, NotRunnable, Ownership};

/// What quorum is decided from: how long each peer (the partner, the witness) still holds this
/// host's lease at least, from the send time of the last heartbeat it answered; `None` for a
/// peer that has answered none since the agent started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuorumView {
    pub held_for: Vec<Option<Duration>>,
}

impl QuorumView {
    /// The longest any peer still holds this host's lease.
    fn longest_held(&self) -> Duration {
        self.held_for
            .iter()
            .flatten()
            .copied()
            .max()
            .unwrap_or_default()
    }
}

/// Whether this host holds quorum: some peer (the partner or the witness) still holds its lease
/// for longer than a fence takes (`fence_time`). This is the one place quorum is decided.
pub fn has_quorum(view: &QuorumView, fence_time: Duration) -> bool {
    view.longest_held() > fence_time
}

/// The lease the inits are renewed for now, `None` without quorum: `init_lease`, cut so that it
/// ends `fence_time` before the longest lease a peer holds for this host. An init so renewed
/// has fenced before any peer could declare this host gone.
pub fn renewal(view: &QuorumView, init_lease: Duration, fence_time: Duration) -> Option<Duration> {
    has_quorum(view, fence_time).then(|| init_lease.min(view.longest_held() - fence_time))
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

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn quorum_is_a_peer_holding_this_host_s_lease_longer_than_a_fence_takes() {
        let view = |held: &[Option<u64>]| QuorumView {
            held_for: held.iter().map(|held| held.map(MS)).collect(),
        };
        assert!(!has_quorum(&view(&[]), MS(100)), "no peer");
        assert!(
            !has_quorum(&view(&[None, None]), MS(100)),
            "none answered yet"
        );
        assert!(!has_quorum(&view(&[Some(100), Some(0)]), MS(100)));
        assert!(
            has_quorum(&view(&[Some(0), Some(101)]), MS(100)),
            "the witness"
        );
        assert!(
            has_quorum(&view(&[Some(450), None]), MS(100)),
            "the partner"
        );
    }

    #[test]
    fn a_renewal_ends_a_fence_s_time_before_the_longest_lease_held_for_this_host() {
        let view = |held: u64| QuorumView {
            held_for: vec![Some(MS(held)), None],
        };
        assert_eq!(renewal(&view(480), MS(300), MS(100)), Some(MS(300)));
        assert_eq!(renewal(&view(350), MS(300), MS(100)), Some(MS(250)));
        assert_eq!(renewal(&view(100), MS(300), MS(100)), None);
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
