//! The executor's side of fencing below the agent. On a paired host it renews every running
//! init's lease each heartbeat while quorum holds (`fencing::renewal`), finds the nodes
//! whose init fenced them (a renewal unanswered and the cgroup frozen), records them with the
//! freezer's owner, alerts, and thaws them once quorum confirms they are still this host's at
//! the same epoch (`fencing::may_thaw`): the cgroup thawed, the init renewed, which brings its
//! links back with a gratuitous ARP. A standalone host renews nothing, so its inits are never
//! armed and never fence.
//!
//! Renewals run as tasks on the event loop (so a hung loop renews nothing and its nodes fence)
//! and come back as [`Event::Lease`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::Event;
use crate::api::control::FencingStatus;
use crate::api::init::InitReply;
use crate::config::Config;
use crate::daemon::alert::{self, Alert};
use crate::daemon::fencing::{may_thaw, renewal, QuorumView};
use crate::daemon::init_client;
use crate::pair::ownership::Ownership;
use crate::runtime::cgroup::FreezeState;
use crate::runtime::freezer::{FenceRecord, FreezeReason, Freezer};
use crate::runtime::{unix_now, NodeHandle};

/// How long a thawed cgroup may take to report itself thawed.
const THAW_WAIT: Duration = Duration::from_secs(1);
const THAW_POLL: Duration = Duration::from_millis(5);

/// What one job about a node's lease found.
#[derive(Debug)]
pub enum LeaseOutcome {
    /// The init renewed its lease; `unfenced` when that brought its links back.
    Renewed { unfenced: bool },
    /// The init was fenced and could not bring its links back.
    StillFenced(String),
    /// The init did not answer and the node's cgroup is frozen (or freezing): it fenced.
    Frozen,
    /// Neither an answer nor a frozen cgroup: a slow init, tried again next heartbeat.
    NoAnswer(String),
    /// The cgroup could not be thawed.
    ThawFailed(String),
}

/// What is under way for a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    Renew,
    /// Without quorum: only whether the init has fenced the node.
    Probe,
    Unfence,
}

pub(super) struct Fencing {
    host: String,
    heartbeat: Duration,
    init_lease: Duration,
    alert_command: Option<Vec<String>>,
    freezer: Freezer,
    jobs: BTreeMap<String, Job>,
    /// Quorum at the last round on a paired host; `None` before one (or standalone).
    quorum: Option<bool>,
    /// Fenced nodes already said to stay frozen, so the reason is logged once.
    kept_frozen: BTreeSet<String>,
    fences: u64,
    unfences: u64,
}

impl Fencing {
    pub(super) fn new(config: &Config) -> Fencing {
        Fencing {
            host: config.host.name.clone(),
            heartbeat: config.pair.heartbeat,
            init_lease: config.pair.init_lease(),
            alert_command: config.pair.alert_command.clone(),
            freezer: Freezer::default(),
            jobs: BTreeMap::new(),
            quorum: None,
            kept_frozen: BTreeSet::new(),
            fences: 0,
            unfences: 0,
        }
    }

    /// How often leases are renewed: every heartbeat.
    pub(super) fn interval(&self) -> Duration {
        self.heartbeat
    }

    /// One heartbeat's round. `quorum` is `None` on a standalone host. A fence is given a
    /// heartbeat to act: each renewal's lease ends that long before the longest lease a peer
    /// holds for this host.
    pub(super) fn round(
        &mut self,
        quorum: Option<QuorumView>,
        ownership: &Ownership,
        handles: &BTreeMap<String, Arc<NodeHandle>>,
        events: &mpsc::UnboundedSender<Event>,
    ) {
        let Some(view) = quorum else {
            self.quorum = None;
            return;
        };
        let lease = renewal(&view, self.init_lease, self.heartbeat);
        let quorum = lease.is_some();
        if self.quorum == Some(true) && !quorum && !handles.is_empty() {
            let nodes: Vec<String> = handles.keys().cloned().collect();
            let reason = format!(
                "quorum lost (neither the partner nor the witness holds this host's lease): the leases are no longer renewed and the nodes fence within {:?}",
                self.init_lease
            );
            tracing::warn!(nodes = nodes.join(" "), "fence: {reason}");
            self.alert(nodes, reason);
        }
        self.quorum = Some(quorum);
        for (node, handle) in handles {
            if self.jobs.contains_key(node) {
                continue;
            }
            let job = match (self.freezer.fence(node), lease) {
                (Some(record), lease) => {
                    match (may_thaw(quorum, ownership, node, record.epoch), lease) {
                        (Ok(()), Some(lease)) => {
                            self.kept_frozen.remove(node);
                            let thaw = self.freezer.lift_fence(node);
                            self.spawn_unfence(node, handle, thaw, lease, events);
                            Job::Unfence
                        }
                        (Ok(()), None) => continue,
                        (Err(why), _) => {
                            if self.kept_frozen.insert(node.clone()) {
                                tracing::info!(node, "fenced node stays frozen: {why}");
                            }
                            continue;
                        }
                    }
                }
                (None, Some(lease)) => {
                    self.spawn_renew(node, handle, lease, events);
                    Job::Renew
                }
                (None, None) => {
                    let outcome = match handle.cgroup.freeze_state() {
                        Ok(FreezeState::Frozen | FreezeState::Freezing) => LeaseOutcome::Frozen,
                        Ok(FreezeState::Thawed) => continue,
                        Err(error) => LeaseOutcome::NoAnswer(error.to_string()),
                    };
                    let _ = events.send(Event::Lease(node.clone(), outcome));
                    Job::Probe
                }
            };
            self.jobs.insert(node.clone(), job);
        }
    }

    /// What a job found.
    pub(super) fn outcome(&mut self, node: &str, outcome: LeaseOutcome, ownership: &Ownership) {
        let Some(job) = self.jobs.remove(node) else {
            return;
        };
        match (job, outcome) {
            // After the thaw any renewal means the links are back: a renewal queued while the
            // init was frozen may have brought them back before this one. A plain renewal that
            // unfenced: a snapshot's thaw came first (`lift_fence`).
            (Job::Unfence, LeaseOutcome::Renewed { .. })
            | (_, LeaseOutcome::Renewed { unfenced: true }) => {
                if self.freezer.fence(node).is_some() {
                    self.freezer.fence_lifted(node);
                    self.unfences += 1;
                    tracing::info!(node, "unfenced: thawed, links up, gratuitous ARP sent");
                }
            }
            (Job::Unfence, outcome) => {
                // Thawed or not, the init is still fenced: it stays recorded so, and the next
                // heartbeat tries again.
                if let Some(record) = self.freezer.fence(node).cloned() {
                    self.freezer.fenced(node, record);
                }
                tracing::warn!(node, "unfence: {outcome:?}; trying again");
            }
            (_, LeaseOutcome::Renewed { unfenced: false }) => {}
            (_, LeaseOutcome::Frozen) => self.found_fenced(node, ownership),
            (_, LeaseOutcome::StillFenced(error)) => {
                tracing::warn!(node, "renewal: the init is still fenced: {error}")
            }
            (_, LeaseOutcome::NoAnswer(error) | LeaseOutcome::ThawFailed(error)) => {
                tracing::debug!(node, "renewal: {error}")
            }
        }
    }

    /// The node stopped or went away.
    pub(super) fn forget(&mut self, node: &str) {
        self.freezer.forget(node);
        self.kept_frozen.remove(node);
    }

    /// The node's fence, while it is fenced.
    pub(super) fn fence(&self, node: &str) -> Option<FenceRecord> {
        self.freezer.fence(node).cloned()
    }

    pub(super) fn status(&self, paired: bool) -> FencingStatus {
        FencingStatus {
            init_lease_ms: paired.then_some(self.init_lease.as_millis() as u64),
            quorum: self.quorum.filter(|_| paired),
            fenced: self.freezer.fenced_count() as u64,
            fences: self.fences,
            unfences: self.unfences,
        }
    }

    fn found_fenced(&mut self, node: &str, ownership: &Ownership) {
        if self.freezer.holds(node, FreezeReason::Snapshot) {
            // The agent's own freeze; a fence meanwhile shows after the snapshot's thaw.
            return;
        }
        let reason = "its init's lease lapsed: links down, cgroup frozen".to_string();
        let record = FenceRecord {
            since_unix: unix_now(),
            epoch: ownership.claims().get(node).map(|claim| claim.epoch),
            reason: reason.clone(),
        };
        if self.freezer.fenced(node, record) {
            self.fences += 1;
            tracing::warn!(node, "fenced: {reason}");
            self.alert(vec![node.to_string()], reason);
        }
    }

    fn alert(&self, nodes: Vec<String>, reason: String) {
        if let Some(command) = &self.alert_command {
            alert::raise(
                command,
                Alert {
                    event: "fence",
                    host: self.host.clone(),
                    nodes,
                    reason,
                },
            );
        }
    }

    fn spawn_renew(
        &self,
        node: &str,
        handle: &Arc<NodeHandle>,
        lease: Duration,
        events: &mpsc::UnboundedSender<Event>,
    ) {
        let (node, handle, events) = (node.to_string(), handle.clone(), events.clone());
        let timeout = self.heartbeat;
        tokio::spawn(async move {
            let outcome = renew(&handle, lease, timeout).await;
            let _ = events.send(Event::Lease(node, outcome));
        });
    }

    fn spawn_unfence(
        &self,
        node: &str,
        handle: &Arc<NodeHandle>,
        thaw: bool,
        lease: Duration,
        events: &mpsc::UnboundedSender<Event>,
    ) {
        let (node, handle, events) = (node.to_string(), handle.clone(), events.clone());
        let timeout = self.heartbeat;
        tokio::spawn(async move {
            let outcome = match thaw_cgroup(&handle, thaw).await {
                Ok(()) => renew(&handle, lease, timeout).await,
                Err(error) => LeaseOutcome::ThawFailed(error),
            };
            let _ = events.send(Event::Lease(node, outcome));
        });
    }
}

/// Renews the init's lease; an unanswered renewal looks at the cgroup (a frozen init accepts
/// the connection and never answers).
async fn renew(handle: &NodeHandle, lease: Duration, timeout: Duration) -> LeaseOutcome {
    match init_client::renew(&handle.paths.control_socket(), lease, timeout).await {
        Ok(InitReply::Renewed { unfenced }) => LeaseOutcome::Renewed { unfenced },
        Ok(InitReply::StillFenced { error }) => LeaseOutcome::StillFenced(error),
        Ok(other) => LeaseOutcome::NoAnswer(format!("unexpected reply {other:?}")),
        // One read of a cgroup file: nothing to take off the event loop.
        Err(error) => match handle.cgroup.freeze_state() {
            Ok(FreezeState::Frozen | FreezeState::Freezing) => LeaseOutcome::Frozen,
            Ok(FreezeState::Thawed) => LeaseOutcome::NoAnswer(error),
            Err(cgroup) => LeaseOutcome::NoAnswer(format!("{error}; {cgroup}")),
        },
    }
}

/// Thaws the node's cgroup (when no snapshot holds it) and waits until the kernel says so.
async fn thaw_cgroup(handle: &NodeHandle, thaw: bool) -> Result<(), String> {
    if !thaw {
        return Ok(());
    }
    handle.cgroup.thaw().map_err(|error| error.to_string())?;
    let deadline = Instant::now() + THAW_WAIT;
    loop {
        match handle.cgroup.freeze_state() {
            Ok(FreezeState::Thawed) => return Ok(()),
            Ok(_) if Instant::now() < deadline => tokio::time::sleep(THAW_POLL).await,
            Ok(state) => return Err(format!("still {state:?} {THAW_WAIT:?} after the thaw")),
            Err(error) => return Err(error.to_string()),
        }
    }
}
