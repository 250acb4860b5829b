//! The one owner of the nodes' freezer in the agent: it records why each node is frozen, so
//! one reason's thaw never undoes another's. A snapshot freezes a node only while it cuts its
//! subvolumes (replication) and thaws it after; a fence (the node's init froze it when its lease
//! lapsed) is undone only by the agent, once quorum confirms the node is still this host's. A
//! snapshot that ends while the node is fenced leaves it frozen.
//!
//! The bookkeeping is pure; the caller writes the cgroup (`NodeCgroup::freeze` and `thaw`) when
//! a call says so.

use std::collections::{BTreeMap, BTreeSet};

use crate::pair::ownership::Epoch;

/// Why a node is frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FreezeReason {
    Snapshot,
    Fence,
}

impl FreezeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FreezeReason::Snapshot => "snapshot",
            FreezeReason::Fence => "fence",
        }
    }
}

/// What is known of a node's fence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceRecord {
    /// When the agent found the node fenced, seconds since the epoch.
    pub since_unix: u64,
    /// The node's epoch then; it is thawed only at the same one.
    pub epoch: Option<Epoch>,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Freezer {
    reasons: BTreeMap<String, BTreeSet<FreezeReason>>,
    fences: BTreeMap<String, FenceRecord>,
}

impl Freezer {
    /// Freezes `node` for a snapshot; true when the caller must freeze the cgroup now (nothing
    /// held it frozen before).
    pub fn freeze_for_snapshot(&mut self, node: &str) -> bool {
        let reasons = self.reasons.entry(node.to_string()).or_default();
        let was_thawed = reasons.is_empty();
        reasons.insert(FreezeReason::Snapshot);
        was_thawed
    }

    /// The node's init fenced it (the agent found it frozen with no freeze of its own under
    /// way, or with one: a fence may come during a snapshot); true when this is news.
    pub fn fenced(&mut self, node: &str, record: FenceRecord) -> bool {
        let news = self
            .reasons
            .entry(node.to_string())
            .or_default()
            .insert(FreezeReason::Fence);
        if news {
            self.fences.insert(node.to_string(), record);
        }
        news
    }

    /// The snapshot is cut; true when the caller must thaw the cgroup now (no fence holds it).
    pub fn snapshot_done(&mut self, node: &str) -> bool {
        self.release(node, FreezeReason::Snapshot)
    }

    /// The agent may thaw the fence; true when the caller must thaw the cgroup now (no
    /// snapshot holds it). The record is kept by [`Freezer::fence_lifted`] until the init
    /// confirms its links are back.
    pub fn lift_fence(&mut self, node: &str) -> bool {
        self.release(node, FreezeReason::Fence)
    }

    /// The init brought its links back: the node is no longer fenced.
    pub fn fence_lifted(&mut self, node: &str) {
        self.fences.remove(node);
    }

    /// Whether the agent holds `node` frozen for `reason` (a fence lifted but not yet
    /// confirmed by the init no longer counts).
    pub fn holds(&self, node: &str, reason: FreezeReason) -> bool {
        self.reasons
            .get(node)
            .is_some_and(|reasons| reasons.contains(&reason))
    }

    /// The node's fence, from when it was found until the init confirms its links are back.
    pub fn fence(&self, node: &str) -> Option<&FenceRecord> {
        self.fences.get(node)
    }

    /// The number of nodes fenced now.
    pub fn fenced_count(&self) -> usize {
        self.fences.len()
    }

    /// The node stopped or went away: nothing of it is frozen any more.
    pub fn forget(&mut self, node: &str) {
        self.reasons.remove(node);
        self.fences.remove(node);
    }

    fn release(&mut self, node: &str, reason: FreezeReason) -> bool {
        let Some(reasons) = self.reasons.get_mut(node) else {
            return false;
        };
        if !reasons.remove(&reason) {
            return false;
        }
        let thaw = reasons.is_empty();
        if thaw {
            self.reasons.remove(node);
        }
        thaw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> FenceRecord {
        FenceRecord {
            since_unix: 1,
            epoch: Some(Epoch(3)),
            reason: "lease lapsed".into(),
        }
    }

    #[test]
    fn a_snapshot_freezes_and_thaws_a_node_nothing_else_holds() {
        let mut freezer = Freezer::default();
        assert!(freezer.freeze_for_snapshot("web1"));
        assert!(!freezer.freeze_for_snapshot("web1"), "frozen already");
        assert!(freezer.holds("web1", FreezeReason::Snapshot));
        assert!(freezer.snapshot_done("web1"));
        assert!(!freezer.holds("web1", FreezeReason::Snapshot));
        assert!(!freezer.snapshot_done("web1"), "nothing left to thaw");
    }

    #[test]
    fn a_snapshot_s_thaw_never_undoes_a_fence() {
        let mut freezer = Freezer::default();
        assert!(freezer.freeze_for_snapshot("web1"));
        assert!(freezer.fenced("web1", record()));
        assert!(!freezer.snapshot_done("web1"), "the fence keeps it frozen");
        assert!(freezer.holds("web1", FreezeReason::Fence));
        assert_eq!(freezer.fence("web1"), Some(&record()));

        // A snapshot asked of a fenced node does not freeze (it is) nor thaw it.
        assert!(!freezer.freeze_for_snapshot("web1"));
        assert!(!freezer.snapshot_done("web1"));
        assert!(freezer.holds("web1", FreezeReason::Fence));
    }

    #[test]
    fn lifting_a_fence_waits_for_a_snapshot_under_way() {
        let mut freezer = Freezer::default();
        assert!(freezer.fenced("db1", record()));
        assert!(!freezer.fenced("db1", record()), "known already");
        assert!(!freezer.freeze_for_snapshot("db1"));
        assert!(!freezer.lift_fence("db1"), "the snapshot still holds it");
        assert!(
            freezer.fence("db1").is_some(),
            "fenced until its links are back"
        );
        assert!(
            freezer.snapshot_done("db1"),
            "the snapshot's end thaws it now"
        );
        freezer.fence_lifted("db1");
        assert_eq!(freezer.fence("db1"), None);
        assert_eq!(freezer.fenced_count(), 0);
    }

    #[test]
    fn a_fence_alone_is_thawed_when_lifted_and_forgotten_with_its_node() {
        let mut freezer = Freezer::default();
        freezer.fenced("lb1", record());
        freezer.fenced("web2", record());
        assert_eq!(freezer.fenced_count(), 2);
        assert!(freezer.lift_fence("lb1"));
        assert!(!freezer.lift_fence("lb1"), "lifted once");
        freezer.forget("web2");
        assert!(!freezer.holds("web2", FreezeReason::Fence));
        assert_eq!(freezer.fence("web2"), None);
    }
}
