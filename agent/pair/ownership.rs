//! Who may run a node, as rules without I/O: per node an owner host and an epoch that only grows
//! (a [`Claim`]). Both hosts of a pair and the witness keep claims; the witness is where a
//! claim changes hands, by compare-and-set ([`Witness::compare_and_set`]).
//!
//! A host ([`Ownership`]) may run a node only while
//! - it is standalone (then it owns every node, always), or
//! - it has been confirmed since it started (the partner or the witness told it their claims:
//!   a paired host starts or resumes nothing before), it holds quorum (the partner or the
//!   witness reachable), and the highest claim it knows for the node names it.
//!
//! A takeover is a compare-and-set at the witness from the claim the host knows to (itself,
//! epoch + 1); a host owns a node at a new epoch only through one the witness accepted. A host
//! that learns a higher epoch for a node it may run is told to stop (fence) it.
//!
//! The caller persists [`Ownership::claims`] atomically after each change and before acting on
//! it, and decides when a takeover is due (the partner silent for longer than its lease plus the
//! fence margin, the witness's lease expired, the replica current): these rules only keep two
//! hosts from owning one node at one epoch, whatever order messages, partitions and restarts
//! come in.

use std::collections::BTreeMap;

#[cfg(test)]
mod tests;

/// How often a node has changed hands; only grows.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Epoch(pub u64);

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A node's owner from an epoch on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Claim {
    pub owner: String,
    pub epoch: Epoch,
}

/// A change of owner asked of the witness: from `expected` (none for a node it has no record
/// of) to `proposed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cas {
    pub node: String,
    pub expected: Option<Claim>,
    pub proposed: Claim,
}

/// The witness's answer to a [`Cas`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    Accepted {
        node: String,
        claim: Claim,
    },
    /// What the witness holds instead (none: no record).
    Refused {
        node: String,
        current: Option<Claim>,
    },
}

/// Which peer told a host something, or is reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Partner,
    Witness,
}

/// Why a host may not run a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotRunnable {
    #[error("waiting for the partner or the witness to confirm this host's epochs")]
    Unconfirmed,
    #[error("neither the partner nor the witness is reachable")]
    NoQuorum,
    #[error("owned by {owner} at epoch {epoch}")]
    Owned { owner: String, epoch: Epoch },
    #[error("no owner recorded")]
    Unclaimed,
}

/// Why a host may not ask the witness to hand it a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TakeoverRefused {
    #[error("a standalone host owns every node already")]
    Standalone,
    #[error("waiting for the partner or the witness to confirm this host's epochs")]
    Unconfirmed,
    #[error("the witness is not reachable: no automatic takeover without it")]
    NoWitness,
    #[error("{node} is this host's already (epoch {epoch})")]
    Owned { node: String, epoch: Epoch },
    #[error("{0} has no owner recorded")]
    Unclaimed(String),
}

/// Two claims for one node at one epoch with different owners: a broken witness or a forged
/// message. Neither is believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{node}: epoch {epoch} claimed by both {known} and {offered}")]
pub struct Conflict {
    pub node: String,
    pub epoch: Epoch,
    pub known: String,
    pub offered: String,
}

/// What learning a claim changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Learned {
    /// Nothing: the claim was known, or older.
    Nothing,
    /// A higher epoch, now the one known.
    Newer,
    /// A higher epoch taking away a node this host may run: stop it now.
    Fence,
}

/// One host's view of the ownership of every node.
#[derive(Debug, Clone)]
pub struct Ownership {
    host: String,
    paired: bool,
    claims: BTreeMap<String, Claim>,
    confirmed: bool,
    partner_reachable: bool,
    witness_reachable: bool,
}

impl Ownership {
    /// A host with no partner: it owns every node, always.
    pub fn standalone(host: &str) -> Ownership {
        Ownership {
            host: host.to_string(),
            paired: false,
            claims: BTreeMap::new(),
            confirmed: true,
            partner_reachable: false,
            witness_reachable: false,
        }
    }

    /// A paired host at boot or agent restart, with the claims it persisted: it runs nothing
    /// until a peer confirms them, and reaches nobody yet.
    pub fn paired(host: &str, persisted: BTreeMap<String, Claim>) -> Ownership {
        Ownership {
            host: host.to_string(),
            paired: true,
            claims: persisted,
            confirmed: false,
            partner_reachable: false,
            witness_reachable: false,
        }
    }

    /// The highest claim known for each node: what the caller persists and tells its peers.
    pub fn claims(&self) -> &BTreeMap<String, Claim> {
        &self.claims
    }

    pub fn is_confirmed(&self) -> bool {
        self.confirmed
    }

    /// Whether this host may run `node` now.
    pub fn may_run(&self, node: &str) -> Result<(), NotRunnable> {
        if !self.paired {
            return Ok(());
        }
        if !self.confirmed {
            return Err(NotRunnable::Unconfirmed);
        }
        if !self.partner_reachable && !self.witness_reachable {
            return Err(NotRunnable::NoQuorum);
        }
        match self.claims.get(node) {
            Some(claim) if claim.owner == self.host => Ok(()),
            Some(claim) => Err(NotRunnable::Owned {
                owner: claim.owner.clone(),
                epoch: claim.epoch,
            }),
            None => Err(NotRunnable::Unclaimed),
        }
    }

    /// A peer's leases say it is reachable, or no longer. Losing quorum takes every node away
    /// at once; the caller stops them ([`Ownership::may_run`] says so).
    pub fn set_reachable(&mut self, peer: Peer, reachable: bool) {
        match peer {
            Peer::Partner => self.partner_reachable = reachable,
            Peer::Witness => self.witness_reachable = reachable,
        }
    }

    /// A claim for `node` from a peer (or the witness's answer): kept when its epoch is higher
    /// than the one known.
    pub fn learn(&mut self, node: &str, claim: &Claim) -> Result<Learned, Conflict> {
        let ran = self.may_run(node).is_ok();
        match self.claims.get(node) {
            Some(known) if known.epoch > claim.epoch => return Ok(Learned::Nothing),
            Some(known) if known.epoch == claim.epoch => {
                if known.owner == claim.owner {
                    return Ok(Learned::Nothing);
                }
                return Err(Conflict {
                    node: node.to_string(),
                    epoch: claim.epoch,
                    known: known.owner.clone(),
                    offered: claim.owner.clone(),
                });
            }
            _ => {}
        }
        self.claims.insert(node.to_string(), claim.clone());
        Ok(if ran && self.may_run(node).is_err() {
            Learned::Fence
        } else {
            Learned::Newer
        })
    }

    /// A peer's claims, all of them: learned, and this host confirmed. The nodes to fence, and
    /// the conflicts found (whose nodes keep the claim known before).
    pub fn confirm(
        &mut self,
        from: Peer,
        claims: &BTreeMap<String, Claim>,
    ) -> (Vec<String>, Vec<Conflict>) {
        let mut fence = Vec::new();
        let mut conflicts = Vec::new();
        for (node, claim) in claims {
            match self.learn(node, claim) {
                Ok(Learned::Fence) => fence.push(node.clone()),
                Ok(_) => {}
                Err(conflict) => conflicts.push(conflict),
            }
        }
        self.set_reachable(from, true);
        self.confirmed = true;
        (fence, conflicts)
    }

    /// The compare-and-set that hands this host a node it does not own: from the claim known
    /// to (this host, epoch + 1). Only the witness's acceptance makes it this host's.
    pub fn takeover(&self, node: &str) -> Result<Cas, TakeoverRefused> {
        if !self.paired {
            return Err(TakeoverRefused::Standalone);
        }
        if !self.confirmed {
            return Err(TakeoverRefused::Unconfirmed);
        }
        if !self.witness_reachable {
            return Err(TakeoverRefused::NoWitness);
        }
        let known = self
            .claims
            .get(node)
            .ok_or_else(|| TakeoverRefused::Unclaimed(node.to_string()))?;
        if known.owner == self.host {
            return Err(TakeoverRefused::Owned {
                node: node.to_string(),
                epoch: known.epoch,
            });
        }
        Ok(Cas {
            node: node.to_string(),
            expected: Some(known.clone()),
            proposed: Claim {
                owner: self.host.clone(),
                epoch: Epoch(known.epoch.0 + 1),
            },
        })
    }

    /// The witness's answer to a compare-and-set: what it holds now is learned either way.
    pub fn cas_answered(&mut self, outcome: &CasOutcome) -> Result<Learned, Conflict> {
        match outcome {
            CasOutcome::Accepted { node, claim } => self.learn(node, claim),
            CasOutcome::Refused {
                current: Some(claim),
                node,
            } => self.learn(node, claim),
            CasOutcome::Refused { current: None, .. } => Ok(Learned::Nothing),
        }
    }
}

/// The witness's record of every node's claim, changed only by compare-and-set. The witness
/// persists it before it answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Witness {
    claims: BTreeMap<String, Claim>,
}

impl Witness {
    pub fn new(persisted: BTreeMap<String, Claim>) -> Witness {
        Witness { claims: persisted }
    }

    pub fn claims(&self) -> &BTreeMap<String, Claim> {
        &self.claims
    }

    /// Accepted only when the record is what the host expected and the proposal is the next
    /// epoch (epoch 1 for a node with no record): of two hosts racing from one claim, one wins.
    pub fn compare_and_set(&mut self, cas: &Cas) -> CasOutcome {
        let current = self.claims.get(&cas.node);
        let next = current.map_or(Epoch(1), |claim| Epoch(claim.epoch.0 + 1));
        if current != cas.expected.as_ref() || cas.proposed.epoch != next {
            return CasOutcome::Refused {
                node: cas.node.clone(),
                current: current.cloned(),
            };
        }
        self.claims.insert(cas.node.clone(), cas.proposed.clone());
        CasOutcome::Accepted {
            node: cas.node.clone(),
            claim: cas.proposed.clone(),
        }
    }
}
