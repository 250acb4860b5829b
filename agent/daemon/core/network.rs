//! The core's side of the network audit: when to look (at start-up, on a link notification,
//! and every [`AUDIT_INTERVAL`]), one audit at a time, the nodes shown degraded while theirs is
//! repaired, and the restart of a node whose network cannot be put back from outside.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Action, AuditedNode, Core, Now, Phase};
use crate::net::{NetError, Repair};

/// The periodic audit, for what no notification told of (or one lost).
const AUDIT_INTERVAL: Duration = Duration::from_secs(10);
/// After a failed repair, the next attempt.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// When the next audit is due, and whether one is running.
pub(super) struct NetworkAudit {
    due: Option<Instant>,
    in_flight: bool,
    /// A notification came while an audit ran: look again right after it.
    again: bool,
    /// Running nodes whose network is being repaired, and why.
    pub(super) degraded: BTreeMap<String, String>,
}

impl NetworkAudit {
    /// The first audit runs at once: nodes re-adopted by a new daemon may have lost the bridge
    /// while it was away.
    pub(super) fn new(now: Instant) -> NetworkAudit {
        NetworkAudit {
            due: Some(now),
            in_flight: false,
            again: false,
            degraded: BTreeMap::new(),
        }
    }

    pub(super) fn due(&self) -> Option<Instant> {
        self.due.filter(|_| !self.in_flight)
    }
}

/// Each repair an audit made and how it went.
pub type RepairOutcomes = Vec<(Repair, Result<(), NetError>)>;

/// What the link monitor and an audit report to the core.
#[derive(Debug)]
pub enum NetworkEvent {
    /// A link of ours changed: look now.
    Changed,
    /// The repairs an audit is about to make.
    Repairing(Vec<Repair>),
    /// Each repair and how it went; an error when the audit itself failed.
    Audited(Result<RepairOutcomes, NetError>),
}

impl Core {
    pub(super) fn network_event(&mut self, now: &Now, event: NetworkEvent) {
        match event {
            NetworkEvent::Changed => {
                if self.network.in_flight {
                    self.network.again = true;
                } else {
                    self.network.due = Some(now.instant);
                }
            }
            NetworkEvent::Repairing(repairs) => {
                for repair in &repairs {
                    if let Some(node) = repair.node() {
                        let reason = format!("network: {}; repairing", repair.reason());
                        self.network.degraded.insert(node.to_string(), reason);
                    }
                }
            }
            NetworkEvent::Audited(outcome) => self.network_audited(now, outcome),
        }
    }

    /// Starts an audit when one is due and none runs.
    pub(super) fn audit_network_when_due(&mut self, now: &Now) {
        if self.network.due().is_none_or(|due| due > now.instant) {
            return;
        }
        self.network.in_flight = true;
        self.network.due = None;
        let nodes = self
            .nodes
            .iter()
            .filter(|(_, node)| node.phase == Phase::Running && !node.restart_pending)
            .filter_map(|(name, node)| {
                let init = node.init.as_ref()?;
                Some(AuditedNode {
                    name: name.clone(),
                    init_pid: init.pid,
                    network: init.spec.network.clone(),
                })
            })
            .collect();
        self.actions.push(Action::AuditNetwork(nodes));
    }

    fn network_audited(&mut self, now: &Now, outcome: Result<RepairOutcomes, NetError>) {
        self.network.in_flight = false;
        let mut failed = false;
        match outcome {
            Err(error) => {
                tracing::error!("network audit failed: {error}");
                failed = true;
            }
            Ok(outcomes) => {
                for (repair, result) in outcomes {
                    failed |= self.repaired(&repair, result);
                }
            }
        }
        let next = if self.network.again {
            Duration::ZERO
        } else if failed {
            RETRY_AFTER
        } else {
            AUDIT_INTERVAL
        };
        self.network.again = false;
        self.network.due = Some(now.instant + next);
    }

    /// Records one repair's outcome; true when it failed.
    fn repaired(&mut self, repair: &Repair, result: Result<(), NetError>) -> bool {
        let node = repair.node().map(str::to_string);
        let role = node
            .as_deref()
            .and_then(|node| self.nodes.get(node))
            .and_then(|entry| entry.spec.as_ref())
            .map(|spec| spec.role.clone())
            .unwrap_or_default();
        let node_label = node.clone().unwrap_or_default();
        match (repair, result) {
            (Repair::Restart { reason, .. }, _) => {
                tracing::warn!(node = node_label, role, "network: {reason}");
                // Only a node still running: one that stopped or restarted since the audit
                // looked has a new network already.
                let running = node.as_deref().and_then(|n| self.nodes.get_mut(n));
                if let Some(entry) = running.filter(|entry| entry.init.is_some()) {
                    entry.error = Some(format!("network: {reason}"));
                    entry.restart_pending = true;
                    entry.restarts += 1;
                }
                if let Some(node) = &node {
                    self.network.degraded.remove(node);
                }
                false
            }
            (_, Ok(())) => {
                tracing::warn!(
                    node = node_label,
                    role,
                    "network repaired: {}",
                    repair.reason()
                );
                if let Some(node) = &node {
                    self.network.degraded.remove(node);
                }
                false
            }
            (_, Err(error)) => {
                tracing::error!(node = node_label, role, "network repair failed: {error}");
                if let Some(node) = node {
                    let reason = format!("network: {}; repair failed: {error}", repair.reason());
                    self.network.degraded.insert(node, reason);
                }
                true
            }
        }
    }
}
