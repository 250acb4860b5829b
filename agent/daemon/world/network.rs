//! The core's side of the network audit: when to look (at start-up, on a link notification,
//! and every [`AUDIT_INTERVAL`]), one audit at a time on a blocking thread, the nodes shown
//! degraded while theirs is repaired, and the restart of a node whose network cannot be put
//! back from outside.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Event, Phase, World};
use crate::net::{plan_repairs, Repair, RunningNode};

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
    pub(super) fn new() -> NetworkAudit {
        NetworkAudit {
            due: Some(Instant::now()),
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
pub type RepairOutcomes = Vec<(Repair, Result<(), String>)>;

/// What an audit reports to the core.
pub enum NetworkEvent {
    /// A link of ours changed: look now.
    Changed,
    /// The repairs an audit is about to make.
    Repairing(Vec<Repair>),
    /// Each repair and how it went; an error when the audit itself failed.
    Audited(Result<RepairOutcomes, String>),
}

impl World {
    pub(super) fn network_event(&mut self, event: NetworkEvent) {
        match event {
            NetworkEvent::Changed => {
                if self.network.in_flight {
                    self.network.again = true;
                } else {
                    self.network.due = Some(Instant::now());
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
            NetworkEvent::Audited(outcome) => self.network_audited(outcome),
        }
    }

    /// Starts an audit when one is due and none runs.
    pub(super) fn audit_network_when_due(&mut self) {
        if self.network.due().is_none_or(|due| due > Instant::now()) {
            return;
        }
        self.network.in_flight = true;
        self.network.due = None;
        let nodes: Vec<(String, i32, crate::config::NodeNetwork)> = self
            .nodes
            .iter()
            .filter(|(_, entry)| entry.phase == Phase::Running && !entry.restart_pending)
            .filter_map(|(name, entry)| {
                let handle = entry.handle.as_ref()?;
                Some((
                    name.clone(),
                    handle.record.pid,
                    handle.record.spec.network.clone(),
                ))
            })
            .collect();
        let runtime = self.runtime.clone();
        let events = self.events.clone();
        let report = move |event| {
            let _ = events.send(Event::Network(event));
        };
        tokio::task::spawn_blocking(move || {
            let running: Vec<RunningNode<'_>> = nodes
                .iter()
                .map(|(name, init_pid, network)| RunningNode {
                    name,
                    init_pid: *init_pid,
                    network,
                })
                .collect();
            let network = &runtime.network;
            let repairs = match network.observe(&running) {
                Ok(observed) => plan_repairs(&observed, network, &running),
                Err(error) => return report(NetworkEvent::Audited(Err(error.to_string()))),
            };
            if !repairs.is_empty() {
                report(NetworkEvent::Repairing(repairs.clone()));
            }
            let outcomes = repairs
                .into_iter()
                .map(|repair| {
                    let outcome = match repair {
                        Repair::Restart { .. } => Ok(()),
                        _ => network.repair(&repair, &running).map_err(|e| e.to_string()),
                    };
                    (repair, outcome)
                })
                .collect();
            report(NetworkEvent::Audited(Ok(outcomes)));
        });
    }

    fn network_audited(&mut self, outcome: Result<RepairOutcomes, String>) {
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
        self.network.due = Some(Instant::now() + next);
    }

    /// Records one repair's outcome; true when it failed.
    fn repaired(&mut self, repair: &Repair, result: Result<(), String>) -> bool {
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
                if let Some(entry) = node.as_deref().and_then(|n| self.nodes.get_mut(n)) {
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
