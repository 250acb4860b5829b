//! A version of the stack and the order of versions.
//!
//! A version is named by a counter and the id of the commit the host that made it wrote
//! (`VersionId`); each host's history holds it as a commit of its own carrying that name. A new
//! version takes the counter after the one in force. Versions are ordered by counter, then by
//! id: a host applies a version from its partner only when it is greater than its own. Two
//! edits made at once on both hosts get the same counter; the greater id wins on both, so both
//! end on the same version, and the other edit stays in the history of the host that made it
//! (`config log` shows it, `config rollback` brings it back as a new version).

use serde::{Deserialize, Serialize};

/// What names a version on both hosts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VersionId {
    pub counter: u64,
    /// The commit id on the host that made the version (hex).
    pub id: String,
}

impl std::fmt::Display for VersionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.counter, short(&self.id))
    }
}

/// The first 12 characters of a commit id, as `config log` prints it.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// A version with what `config log` tells of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    #[serde(flatten)]
    pub name: VersionId,
    /// The host that made it.
    pub host: String,
    pub time_unix: u64,
    /// One line: what changed.
    pub summary: String,
}

/// What a host does with a version its partner offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Greater than the one in force here: check it and apply it, or refuse it.
    Newer,
    /// The one in force here.
    Same,
    /// Older than the one in force here (the partner will take this host's).
    Older,
}

/// Where `theirs` stands against the version in force here (`None`: none yet).
pub fn offer(ours: Option<&VersionId>, theirs: &VersionId) -> Offer {
    match ours.map(|ours| theirs.cmp(ours)) {
        None | Some(std::cmp::Ordering::Greater) => Offer::Newer,
        Some(std::cmp::Ordering::Equal) => Offer::Same,
        Some(std::cmp::Ordering::Less) => Offer::Older,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn version(counter: u64, id: &str) -> VersionId {
        VersionId {
            counter,
            id: id.into(),
        }
    }

    #[test]
    fn a_higher_counter_wins_whatever_the_ids() {
        assert_eq!(
            offer(Some(&version(3, "ff")), &version(4, "00")),
            Offer::Newer
        );
        assert_eq!(
            offer(Some(&version(4, "00")), &version(3, "ff")),
            Offer::Older
        );
        assert_eq!(offer(None, &version(1, "00")), Offer::Newer);
        assert_eq!(
            offer(Some(&version(2, "ab")), &version(2, "ab")),
            Offer::Same
        );
    }

    #[test]
    fn of_two_edits_at_once_the_greater_id_wins_on_both_hosts() {
        let a = version(5, "1a");
        let b = version(5, "9b");
        assert_eq!(offer(Some(&a), &b), Offer::Newer);
        assert_eq!(offer(Some(&b), &a), Offer::Older);
    }

    /// One host of the model: the version in force.
    #[derive(Clone, Default)]
    struct Host {
        head: Option<VersionId>,
    }

    impl Host {
        fn edit(&mut self, id: String) -> VersionId {
            let counter = self.head.as_ref().map_or(1, |head| head.counter + 1);
            let version = VersionId { counter, id };
            self.head = Some(version.clone());
            version
        }

        fn receive(&mut self, version: VersionId) {
            if offer(self.head.as_ref(), &version) == Offer::Newer {
                self.head = Some(version);
            }
        }
    }

    proptest! {
        /// Edits on either host, each offered to the other in any order and at any delay (each
        /// host also offers its head when the link comes up, modelled by the final exchange):
        /// both end on the same version, the greatest made, and neither ever goes back.
        #[test]
        fn both_hosts_end_on_the_greatest_version(
            steps in proptest::collection::vec((any::<bool>(), any::<bool>(), 0u32..1000), 1..40)
        ) {
            let mut hosts = [Host::default(), Host::default()];
            let mut in_flight: [Vec<VersionId>; 2] = [Vec::new(), Vec::new()];
            let mut made = Vec::new();
            for (n, (on_b, deliver, id)) in steps.into_iter().enumerate() {
                let host = usize::from(on_b);
                if deliver {
                    if let Some(version) = in_flight[host].pop() {
                        let before = hosts[host].head.clone();
                        hosts[host].receive(version);
                        prop_assert!(hosts[host].head >= before);
                    }
                } else {
                    let version = hosts[host].edit(format!("{id:04}-{n}"));
                    made.push(version.clone());
                    in_flight[1 - host].insert(0, version);
                }
            }
            for host in 0..2 {
                for version in std::mem::take(&mut in_flight[host]) {
                    hosts[host].receive(version);
                }
            }
            let heads = [hosts[0].head.clone(), hosts[1].head.clone()];
            for (host, head) in heads.iter().enumerate() {
                if let Some(head) = head.clone() {
                    hosts[1 - host].receive(head);
                }
            }
            prop_assert_eq!(&hosts[0].head, &hosts[1].head);
            prop_assert_eq!(hosts[0].head.as_ref(), made.iter().max());
        }
    }
}
