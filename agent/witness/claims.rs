//! The compare-and-set rule for a node's record at the witness. Who owns a node at which epoch
//! changes by [`crate::pair::ownership::Witness::compare_and_set`], the pair's one rule (from
//! the record the sender expected to its owner at the next epoch); at its own epoch the owner
//! may change only whether the partner's replica is current. Pure: [`super::store`] persists
//! what it decides.

use std::collections::BTreeMap;

use crate::pair::ownership::{self, CasOutcome, Claim, Epoch};
use crate::pair::wire::{CasAnswer, CasRequest, NodeClaim};

/// The record after `request` given the `current` one: the new one, or why not.
pub fn decide(current: Option<&NodeClaim>, request: &CasRequest) -> Result<NodeClaim, String> {
    if current != request.expected.as_ref() {
        return Err(match current {
            Some(current) => format!(
                "the record is {} at epoch {}, not what the request expected",
                current.owner, current.epoch
            ),
            None => "there is no record yet, and the request expected one".into(),
        });
    }
    if let Some(current) = current {
        if claim(current) == claim(&request.new) {
            return Ok(request.new.clone());
        }
    }
    let mut witness = ownership::Witness::new(
        current
            .map(|current| (request.node.clone(), claim(current)))
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
    );
    match witness.compare_and_set(&ownership::Cas {
        node: request.node.clone(),
        expected: current.map(claim),
        proposed: claim(&request.new),
    }) {
        CasOutcome::Accepted { .. } => Ok(request.new.clone()),
        CasOutcome::Refused { .. } => Err(format!(
            "{} at epoch {} is not the next owner: a new owner takes epoch {}",
            request.new.owner,
            request.new.epoch,
            current.map_or(1, |current| current.epoch + 1)
        )),
    }
}

fn claim(record: &NodeClaim) -> Claim {
    Claim {
        owner: record.owner.clone(),
        epoch: Epoch(record.epoch),
    }
}

/// The answer to `request`, given what `decide` said and the record it left.
pub fn answer(
    request: &CasRequest,
    outcome: Result<NodeClaim, (Option<NodeClaim>, String)>,
) -> CasAnswer {
    match outcome {
        Ok(new) => CasAnswer {
            node: request.node.clone(),
            applied: true,
            current: Some(new),
            reason: None,
        },
        Err((current, reason)) => CasAnswer {
            node: request.node.clone(),
            applied: false,
            current,
            reason: Some(reason),
        },
    }
}

/// Whether `node` can name a record file: a node name as the stack allows them.
pub fn valid_node_name(node: &str) -> bool {
    !node.is_empty()
        && node.len() <= 63
        && node
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn claim(owner: &str, epoch: u64) -> NodeClaim {
        NodeClaim {
            owner: owner.into(),
            epoch,
            partner_replica_current: true,
        }
    }

    fn request(expected: Option<NodeClaim>, new: NodeClaim) -> CasRequest {
        CasRequest {
            node: "db1".into(),
            expected,
            new,
        }
    }

    #[test]
    fn a_request_applies_only_over_what_it_expected() {
        assert_eq!(
            decide(None, &request(None, claim("dh1", 1))),
            Ok(claim("dh1", 1))
        );
        let current = claim("dh1", 1);
        assert!(decide(Some(&current), &request(None, claim("dh2", 2))).is_err());
        assert!(decide(None, &request(Some(claim("dh1", 1)), claim("dh2", 2))).is_err());
        assert_eq!(
            decide(
                Some(&current),
                &request(Some(current.clone()), claim("dh2", 2))
            ),
            Ok(claim("dh2", 2))
        );
    }

    #[test]
    fn epochs_only_step_to_the_next_and_one_epoch_has_one_owner() {
        let current = claim("dh1", 5);
        for (owner, epoch) in [("dh1", 4), ("dh2", 5), ("dh2", 7)] {
            let asked = request(Some(current.clone()), claim(owner, epoch));
            let error = decide(Some(&current), &asked).unwrap_err();
            assert!(error.contains("takes epoch 6"), "{owner} {epoch}: {error}");
        }
        let next = request(Some(current.clone()), claim("dh2", 6));
        assert_eq!(decide(Some(&current), &next), Ok(claim("dh2", 6)));
        let first = request(None, claim("dh1", 2));
        assert!(decide(None, &first).is_err(), "a first record is epoch 1");
        // The owner may update its replica flag at its own epoch.
        let mut flag = claim("dh1", 5);
        flag.partner_replica_current = false;
        assert_eq!(
            decide(
                Some(&current),
                &request(Some(current.clone()), flag.clone())
            ),
            Ok(flag)
        );
    }

    #[test]
    fn node_names_are_file_names_of_one_component() {
        assert!(valid_node_name("db1"));
        assert!(!valid_node_name("../etc"));
        assert!(!valid_node_name(""));
        assert!(!valid_node_name("Db1"));
    }

    proptest! {
        /// Two hosts racing compare-and-sets in any order, each with a possibly stale view:
        /// the epoch never decreases, and no epoch ever has two owners.
        #[test]
        fn never_two_owners_at_one_epoch(
            steps in proptest::collection::vec((0usize..2, 0u64..4, any::<bool>()), 1..80),
        ) {
            let hosts = ["dh1", "dh2"];
            let mut record: Option<NodeClaim> = None;
            let mut views: [Option<NodeClaim>; 2] = [None, None];
            let mut owners: std::collections::BTreeMap<u64, String> = Default::default();
            for (host, bump, refresh) in steps {
                if refresh {
                    views[host] = record.clone();
                }
                let base = views[host].as_ref().map_or(0, |c| c.epoch);
                let new = claim(hosts[host], base + bump);
                let request = request(views[host].clone(), new);
                if let Ok(applied) = decide(record.as_ref(), &request) {
                    if let Some(before) = &record {
                        prop_assert!(applied.epoch >= before.epoch);
                    }
                    let owner = owners.entry(applied.epoch).or_insert(applied.owner.clone());
                    prop_assert_eq!(owner, &applied.owner);
                    record = Some(applied.clone());
                    views[host] = Some(applied);
                }
            }
        }
    }
}
