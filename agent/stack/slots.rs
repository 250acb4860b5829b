//! Id slots as values of the stack: which owners need one (every node, and `@<role>` for a
//! role's shared volumes), the slots a commit adds for those that have none (this host's
//! recorded slot first, `state_dir/idmaps.json`, so a running node keeps its files' owner), and
//! the cross-check of the stack's slots against a host's record, which refuses a conflict
//! naming the node.

use std::collections::{BTreeMap, BTreeSet};

use toml_edit::{DocumentMut, Item, Table};

use crate::config::{Config, MIN_ID_RANGES};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    #[error("{owner}: the stack gives it id slot {stack}, this host's idmaps.json slot {recorded} (its files are owned by that range); set slots.{owner} = {recorded} in the stack, or move the node's files")]
    Differs {
        owner: String,
        stack: u32,
        recorded: u32,
    },
    #[error(
        "{owner}: the stack gives it id slot {slot}, which this host's idmaps.json gives {other}"
    )]
    Taken {
        owner: String,
        slot: u32,
        other: String,
    },
    #[error("no id slot is left for {owner}: all {MIN_ID_RANGES} are given")]
    Full { owner: String },
    #[error("the stack does not parse: {0}")]
    Parse(String),
}

/// Every owner of an id range the configuration's nodes use.
pub fn needed(config: &Config) -> BTreeSet<String> {
    let mut owners = BTreeSet::new();
    for node in config.nodes.values() {
        if !node.definition.privileged {
            owners.insert(node.name.clone());
        }
        if node.definition.volumes.iter().any(|volume| volume.shared) {
            owners.insert(format!("@{}", node.role));
        }
    }
    owners
}

/// The stack's slots agree with a host's record: no owner at two slots, no slot for two owners.
pub fn cross_check(
    stack: &BTreeMap<String, u32>,
    recorded: &BTreeMap<String, u32>,
) -> Result<(), SlotError> {
    let by_slot: BTreeMap<u32, &String> = recorded.iter().map(|(o, s)| (*s, o)).collect();
    for (owner, slot) in stack {
        if let Some(recorded) = recorded.get(owner).filter(|recorded| *recorded != slot) {
            return Err(SlotError::Differs {
                owner: owner.clone(),
                stack: *slot,
                recorded: *recorded,
            });
        }
        if let Some(other) = by_slot.get(slot).filter(|other| **other != owner) {
            return Err(SlotError::Taken {
                owner: owner.clone(),
                slot: *slot,
                other: (*other).clone(),
            });
        }
    }
    Ok(())
}

/// The slots to add to the stack for the `needed` owners it has none for: the one `recorded`
/// here when there is one, else the lowest slot neither the stack nor the record gives.
pub fn plan(
    needed: &BTreeSet<String>,
    stack: &BTreeMap<String, u32>,
    recorded: &BTreeMap<String, u32>,
) -> Result<BTreeMap<String, u32>, SlotError> {
    cross_check(stack, recorded)?;
    let mut taken: BTreeSet<u32> = stack.values().chain(recorded.values()).copied().collect();
    let mut added = BTreeMap::new();
    for owner in needed.iter().filter(|owner| !stack.contains_key(*owner)) {
        let slot = match recorded.get(owner) {
            Some(slot) => *slot,
            None => (0..MIN_ID_RANGES)
                .find(|slot| !taken.contains(slot))
                .ok_or_else(|| SlotError::Full {
                    owner: owner.clone(),
                })?,
        };
        taken.insert(slot);
        added.insert(owner.clone(), slot);
    }
    Ok(added)
}

/// The stack's text with `added` written into its `[slots]` table (made at the end when it
/// has none), the rest of the text as it was.
pub fn with_slots(text: &str, added: &BTreeMap<String, u32>) -> Result<String, SlotError> {
    if added.is_empty() {
        return Ok(text.to_string());
    }
    let mut document: DocumentMut = text
        .parse()
        .map_err(|error: toml_edit::TomlError| SlotError::Parse(error.to_string()))?;
    let slots = document
        .entry("slots")
        .or_insert_with(|| {
            let mut table = Table::new();
            table.decor_mut().set_prefix(
                "\n# Id slots, given once by the agent: a node's files keep their owner on both hosts.\n",
            );
            Item::Table(table)
        })
        .as_table_like_mut()
        .ok_or_else(|| SlotError::Parse("slots: not a table".into()))?;
    for (owner, slot) in added {
        slots.insert(owner, toml_edit::value(i64::from(*slot)));
    }
    Ok(document.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn slots(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(o, s)| (o.to_string(), *s)).collect()
    }

    fn owners(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn recorded_slots_migrate_once_and_new_owners_take_the_lowest_free() {
        let recorded = slots(&[("web1", 0), ("db1", 2), ("@web", 3)]);
        let added = plan(
            &owners(&["web1", "db1", "@web", "web2"]),
            &BTreeMap::new(),
            &recorded,
        );
        assert_eq!(
            added.unwrap(),
            slots(&[("web1", 0), ("db1", 2), ("@web", 3), ("web2", 1)])
        );
        let stack = slots(&[("web1", 0), ("web2", 1)]);
        assert_eq!(
            plan(&owners(&["web1", "web2", "s3"]), &stack, &recorded).unwrap(),
            slots(&[("s3", 4)])
        );
    }

    #[test]
    fn a_conflict_with_this_hosts_record_names_the_node() {
        let recorded = slots(&[("web1", 0), ("db1", 1)]);
        let differs = cross_check(&slots(&[("web1", 5)]), &recorded).unwrap_err();
        assert!(
            differs
                .to_string()
                .starts_with("web1: the stack gives it id slot 5, this host's idmaps.json slot 0"),
            "{differs}"
        );
        let taken = cross_check(&slots(&[("web2", 1)]), &recorded).unwrap_err();
        assert_eq!(
            taken.to_string(),
            "web2: the stack gives it id slot 1, which this host's idmaps.json gives db1"
        );
        assert!(plan(&owners(&["web2"]), &slots(&[("web2", 1)]), &recorded).is_err());
    }

    #[test]
    fn slots_are_written_into_the_stack_and_nothing_else_changes() {
        let text = "# mine\n[nodes.web1]\nrole = \"web\" # the shop\n";
        let written = with_slots(text, &slots(&[("web1", 0), ("@web", 1)])).unwrap();
        assert!(written.starts_with(text), "{written}");
        assert!(
            written.ends_with("[slots]\n\"@web\" = 1\nweb1 = 0\n"),
            "{written}"
        );
        let again = with_slots(&written, &slots(&[("web2", 2)])).unwrap();
        assert!(
            again.ends_with("[slots]\n\"@web\" = 1\nweb1 = 0\nweb2 = 2\n"),
            "{again}"
        );
        assert_eq!(with_slots(text, &BTreeMap::new()).unwrap(), text);
    }

    proptest! {
        /// Whatever the record and the stack hold, a plan that succeeds gives every needed
        /// owner a slot, no slot twice, none a recorded one of another owner, and the record's
        /// own where it has one.
        #[test]
        fn a_plan_never_gives_one_slot_twice(
            recorded in proptest::collection::btree_map("[a-d][0-3]", 0u32..12, 0..8),
            stack in proptest::collection::btree_map("[a-d][0-3]", 0u32..12, 0..8),
            needed in proptest::collection::btree_set("[a-d][0-3]", 0..12),
        ) {
            // A host's record never gives one slot twice (idmaps.json refuses it).
            prop_assume!(recorded.values().collect::<BTreeSet<_>>().len() == recorded.len());
            let Ok(added) = plan(&needed, &stack, &recorded) else {
                prop_assert!(cross_check(&stack, &recorded).is_err());
                return Ok(());
            };
            let mut all = stack.clone();
            all.extend(added.clone());
            for owner in &needed {
                prop_assert!(all.contains_key(owner));
            }
            for (owner, slot) in &added {
                prop_assert!(!stack.values().any(|s| s == slot));
                if let Some(own) = recorded.get(owner) {
                    prop_assert_eq!(own, slot);
                } else {
                    prop_assert!(!recorded.values().any(|s| s == slot));
                }
                prop_assert!(added.iter().all(|(o, s)| o == owner || s != slot));
            }
        }
    }
}
