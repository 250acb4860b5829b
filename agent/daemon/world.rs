//! The daemon's core: the only owner of desired and actual state. Everything else (the control
//! socket, node watchers, finished start and stop jobs) sends it events; it decides, persists
//! the operator's wishes, and launches the blocking runtime work off its own task.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot};

use super::desired::DesiredState;
use crate::api::control::{
    ExecTarget, NodeState, PairStatus, RefusedChange, ReloadReport, Response,
};
use crate::api::init::{InitReply, InitRequest};
use crate::config::{Config, NodeSpec};
use crate::runtime::{NodeHandle, Runtime, RuntimeError};
use crate::template::{Rendered, Running};

mod network;
mod pair;

use network::NetworkAudit;
pub use network::NetworkEvent;
use pair::PairCore;

/// First delay before restarting a node whose init died; doubles up to [`RETRY_CAP`].
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(60);

/// How a node's `error` starts when its templates failed to re-render (cleared once they do).
const TEMPLATES_FAILED: &str = "templates not re-rendered: ";

/// How a node's `error` starts while it runs its previous definition because the changed one
/// failed to start (cleared once the configuration changes it again).
const CHANGE_REFUSED: &str = "changed definition refused, running the previous one: ";

/// How often the core asks a running node's init for its health: the role's check interval,
/// within these bounds (an init answers from memory; the check itself runs on its own clock).
const HEALTH_POLL_MIN: Duration = Duration::from_millis(250);
const HEALTH_POLL_MAX: Duration = Duration::from_secs(1);

pub enum Event {
    Command(Command, oneshot::Sender<Response>),
    Snapshot(Vec<String>, oneshot::Sender<Result<Snapshot, String>>),
    Started(String, Result<Box<NodeHandle>, RuntimeError>),
    Stopped(String),
    InitExited(String, i32),
    /// The health a node's init (by its pid) reported, sent when it differs from the last one
    /// that init reported.
    Health(String, i32, String),
    /// The network audit's notifications and findings.
    Network(NetworkEvent),
    /// What the pair link saw.
    Pair(crate::pair::PairEvent),
}

pub enum Command {
    Start(Vec<String>),
    Stop(Vec<String>),
    Restart(Vec<String>),
    Reload(Box<Config>),
    ExecTarget(String),
    PairInvite,
    PairJoin(String),
    PairStatus,
    PairWitness(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Stopped,
    Starting,
    Running,
    Stopping,
    /// The last start failed; stays down until an operator starts it again.
    Failed,
}

struct NodeEntry {
    /// `None` once the node is no longer configured.
    spec: Option<NodeSpec>,
    phase: Phase,
    handle: Option<Arc<NodeHandle>>,
    restarts: u32,
    error: Option<String>,
    /// Stop, then start again (restart, or a changed definition).
    restart_pending: bool,
    /// A node whose init died waits until then before it is started again.
    retry_at: Option<Instant>,
    deaths_in_row: u32,
    /// What is installed of each template (by dest) for the running node; `None` when not
    /// known yet (an adopted node: read from its files on the first render).
    rendered: Option<BTreeMap<String, String>>,
    /// The running node's health as its init last reported it (before the first report:
    /// `starting`, or `none` for a role without a check); `None` while it is not running.
    health: Option<String>,
    /// The definition the node ran before it stopped to run a changed one: started again if
    /// the changed one fails to start.
    previous: Option<NodeSpec>,
    /// A changed definition that failed to start, and why: the node runs its previous one (the
    /// `spec`) until the configuration changes it again.
    refused: Option<(NodeSpec, String)>,
}

/// What `status` shows, taken in the core and completed outside it.
pub struct Snapshot {
    pub host: String,
    pub config: String,
    pub nodes: Vec<NodeSnapshot>,
    pub pair: PairStatus,
}

/// One node's part of a [`Snapshot`].
pub struct NodeSnapshot {
    pub name: String,
    pub role: String,
    pub state: NodeState,
    pub pid: Option<i32>,
    pub ip: String,
    pub started_at: Option<u64>,
    pub restarts: u32,
    pub error: Option<String>,
    /// Why the node's network is not whole, while it is repaired.
    pub degraded: Option<String>,
    pub desired_running: bool,
    pub handle: Option<Arc<NodeHandle>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Running,
    Stopped,
}

struct Waiter {
    targets: Vec<(String, Target)>,
    reply: oneshot::Sender<Response>,
    report: Option<ReloadReport>,
}

pub struct World {
    config: Config,
    runtime: Arc<Runtime>,
    desired: DesiredState,
    nodes: BTreeMap<String, NodeEntry>,
    waiters: Vec<Waiter>,
    events: mpsc::UnboundedSender<Event>,
    /// The running nodes (with their health) the templates were last rendered with; `None`
    /// forces a render (a new configuration may bring new template texts).
    templates_rendered_for: Option<Running>,
    /// The network audit: when it is due, and the nodes whose network it is repairing.
    network: NetworkAudit,
    /// The pairing, the link's state and the refused peers.
    pair: PairCore,
}

impl World {
    pub fn new(
        config: Config,
        runtime: Arc<Runtime>,
        desired: DesiredState,
        adopted: Vec<NodeHandle>,
        dead_restarts: BTreeMap<String, u32>,
        events: mpsc::UnboundedSender<Event>,
    ) -> World {
        let pair = PairCore::start(&config, &events);
        let mut world = World {
            pair,
            config,
            runtime,
            desired,
            nodes: BTreeMap::new(),
            waiters: Vec::new(),
            events,
            templates_rendered_for: None,
            network: NetworkAudit::new(),
        };
        for spec in world.config.nodes.values() {
            world
                .nodes
                .insert(spec.name.clone(), NodeEntry::new(Some(spec.clone())));
        }
        for (node, restarts) in dead_restarts {
            // Its init died while the daemon was away: it is restarted, and that counts.
            let entry = world
                .nodes
                .entry(node.clone())
                .or_insert_with(|| NodeEntry::new(None));
            entry.restarts = restarts + 1;
            entry.error = Some("init exited while the agent was not running".into());
        }
        for handle in adopted {
            let name = handle.record.name.clone();
            let entry = world
                .nodes
                .entry(name.clone())
                .or_insert_with(|| NodeEntry::new(None));
            entry.restarts = handle.record.restarts;
            entry.phase = if handle.processes.iter().any(|p| p.state.is_failure()) {
                Phase::Failed
            } else {
                Phase::Running
            };
            entry.health = Some(first_health(&handle.record.spec));
            let handle = Arc::new(handle);
            entry.handle = Some(handle.clone());
            world.watch(&name, &handle);
        }
        world
    }

    /// The state of every node the core knows, for the service manager's one-line status.
    pub fn node_states(&self) -> Vec<NodeState> {
        self.nodes
            .values()
            .map(|entry| entry.phase.state())
            .collect()
    }

    /// When the core must wake up even without events.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let retries = self.nodes.values().filter_map(|entry| entry.retry_at);
        retries.chain(self.network.due()).min()
    }

    pub fn handle(&mut self, event: Event) {
        match event {
            Event::Command(command, reply) => self.command(command, reply),
            Event::Snapshot(names, reply) => {
                let _ = reply.send(self.snapshot(&names));
            }
            Event::Started(node, result) => self.started(&node, result),
            Event::Stopped(node) => self.stopped(&node),
            Event::InitExited(node, pid) => self.init_exited(&node, pid),
            Event::Health(node, pid, health) => self.health_reported(&node, pid, health),
            Event::Network(event) => self.network_event(event),
            Event::Pair(event) => self.pair.handle(event),
        }
        self.reconcile();
        self.audit_network_when_due();
        self.refresh_templates();
        self.answer_waiters();
    }

    /// Called when a retry time passes.
    pub fn tick(&mut self) {
        self.reconcile();
        self.audit_network_when_due();
        self.refresh_templates();
        self.answer_waiters();
    }

    fn command(&mut self, command: Command, reply: oneshot::Sender<Response>) {
        let result = match command {
            Command::Start(names) => self.start_nodes(names),
            Command::Stop(names) => self.stop_nodes(names),
            Command::Restart(names) => self.restart_nodes(names),
            Command::Reload(config) => self.reload(*config),
            Command::ExecTarget(node) => {
                let _ = reply.send(self.exec_target(&node));
                return;
            }
            Command::PairInvite => {
                let _ = reply.send(match self.pair.invite() {
                    Ok(token) => Response::PairInvite { token },
                    Err(error) => Response::Error {
                        message: format!("pair invite: {error}"),
                    },
                });
                return;
            }
            Command::PairJoin(token) => {
                let running: Vec<String> = self
                    .nodes
                    .iter()
                    .filter(|(_, entry)| {
                        entry.handle.is_some()
                            || matches!(entry.phase, Phase::Starting | Phase::Stopping)
                    })
                    .map(|(name, _)| name.clone())
                    .collect();
                self.pair.join(&token, &running, reply);
                return;
            }
            Command::PairStatus => {
                let _ = reply.send(Response::PairStatus(self.pair.status()));
                return;
            }
            Command::PairWitness(token) => {
                self.pair.add_witness(&token, reply);
                return;
            }
        };
        match result {
            Ok(waiter) => self.waiters.push(Waiter { reply, ..waiter }),
            Err(message) => {
                let _ = reply.send(Response::Error { message });
            }
        }
    }

    fn known(&self, names: &[String]) -> Result<Vec<String>, String> {
        if names.is_empty() {
            return Err("name at least one node".into());
        }
        for name in names {
            if self.nodes.get(name).is_none_or(|e| e.spec.is_none()) {
                return Err(format!("no node named {name} in {}", self.config.origin));
            }
        }
        Ok(names.to_vec())
    }

    fn set_desired(&mut self, names: &[String], running: bool) -> Result<(), String> {
        self.desired.set_running(names, running).map_err(|e| {
            format!(
                "cannot record the desired state of {}: {e}",
                names.join(", ")
            )
        })
    }

    fn start_nodes(&mut self, names: Vec<String>) -> Result<Waiter, String> {
        let names = self.known(&names)?;
        self.set_desired(&names, true)?;
        for name in &names {
            let entry = self.nodes.get_mut(name).expect("known node");
            entry.retry_at = None;
            if entry.phase == Phase::Failed && entry.handle.is_none() {
                entry.phase = Phase::Stopped;
            }
        }
        Ok(Waiter::new(names, Target::Running))
    }

    fn stop_nodes(&mut self, names: Vec<String>) -> Result<Waiter, String> {
        let names = self.known(&names)?;
        self.set_desired(&names, false)?;
        for name in &names {
            self.nodes
                .get_mut(name)
                .expect("known node")
                .restart_pending = false;
        }
        Ok(Waiter::new(names, Target::Stopped))
    }

    fn restart_nodes(&mut self, names: Vec<String>) -> Result<Waiter, String> {
        let names = self.known(&names)?;
        self.set_desired(&names, true)?;
        for name in &names {
            let entry = self.nodes.get_mut(name).expect("known node");
            entry.retry_at = None;
            entry.error = None;
            match entry.phase {
                Phase::Running | Phase::Starting | Phase::Stopping => entry.restart_pending = true,
                Phase::Failed if entry.handle.is_some() => entry.restart_pending = true,
                Phase::Failed | Phase::Stopped => entry.phase = Phase::Stopped,
            }
        }
        Ok(Waiter::new(names, Target::Running))
    }

    /// Adopts a new, already validated configuration: adds, removes and restarts only what
    /// changed.
    fn reload(&mut self, config: Config) -> Result<Waiter, String> {
        let (old, new) = (&self.config.network, &config.network);
        if (&old.bridge, old.subnet, old.host_ip, &old.link_prefix)
            != (&new.bridge, new.subnet, new.host_ip, &new.link_prefix)
        {
            return Err(
                "configuration not reloaded: bridge, subnet, host_ip and link_prefix change only with a restart of the agent"
                    .into(),
            );
        }
        let not_applied = super::reload::pending_settings(&self.config, &config);
        let mut config = super::reload::in_force(&self.config, config);
        // A change refused before stays refused: the node keeps the definition it runs.
        let mut still_refused = BTreeMap::new();
        for (name, entry) in &self.nodes {
            if let (Some((refused, why)), Some(spec)) = (&entry.refused, &entry.spec) {
                if config.nodes.get(name) == Some(refused) {
                    config.nodes.insert(name.clone(), spec.clone());
                    still_refused.insert(name.clone(), why.clone());
                }
            }
        }
        self.apply_network(&config)
            .map_err(|e| format!("configuration not reloaded: inter-node policy: {e}"))?;
        for setting in &not_applied {
            tracing::warn!("not applied: {setting}");
        }
        let mut report = ReloadReport {
            not_applied,
            ..ReloadReport::default()
        };
        let mut targets = Vec::new();
        for (name, entry) in &mut self.nodes {
            if !config.nodes.contains_key(name) && entry.spec.take().is_some() {
                report.stopped.push(name.clone());
                targets.push((name.clone(), Target::Stopped));
            }
        }
        for (name, spec) in &config.nodes {
            let wanted = self.desired.wants_running(name);
            let entry = self
                .nodes
                .entry(name.clone())
                .or_insert_with(|| NodeEntry::new(None));
            if let Some(error) = still_refused.remove(name) {
                report.refused.push(RefusedChange {
                    node: name.clone(),
                    error,
                });
                continue;
            }
            if entry.refused.take().is_some() && entry.error_starts_with(CHANGE_REFUSED) {
                entry.error = None;
            }
            let running_spec = entry.handle.as_ref().map(|h| &h.record.spec);
            let previous = entry.spec.replace(spec.clone());
            if previous.is_none() && entry.handle.is_none() {
                report.started.push(name.clone());
            } else if running_spec.is_some_and(|running| running != spec) {
                entry.restart_pending = true;
                report.restarted.push(name.clone());
            } else if previous.as_ref() != Some(spec) && entry.phase == Phase::Failed {
                entry.phase = Phase::Stopped;
                report.restarted.push(name.clone());
            } else {
                report.unchanged.push(name.clone());
                continue;
            }
            if wanted {
                targets.push((name.clone(), Target::Running));
            }
        }
        self.config = config;
        self.templates_rendered_for = None;
        let (reply, _) = oneshot::channel();
        Ok(Waiter {
            targets,
            reply,
            report: Some(report),
        })
    }

    /// The inter-node policy and every running node's hosts file, for `config`.
    fn apply_network(&self, config: &Config) -> Result<(), crate::net::NetError> {
        self.runtime.network.apply_policy(config)?;
        let running: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, entry)| entry.handle.is_some())
            .map(|(name, _)| name.clone())
            .collect();
        self.runtime.update_hosts(config, &running);
        Ok(())
    }

    fn exec_target(&self, node: &str) -> Response {
        let handle = self.nodes.get(node).and_then(|entry| {
            entry
                .handle
                .as_ref()
                .filter(|_| entry.phase != Phase::Stopping)
        });
        match handle {
            Some(handle) => Response::ExecTarget(ExecTarget {
                pid: handle.record.pid,
                cgroup_join: handle
                    .cgroup
                    .join_files()
                    .into_iter()
                    .map(|p| p.display().to_string())
                    .collect(),
                capabilities: handle.record.spec.definition.capabilities.clone(),
                user_namespace: handle.record.id_base.is_some(),
            }),
            None if self.nodes.contains_key(node) => Response::Error {
                message: format!("node {node} is not running"),
            },
            None => Response::Error {
                message: format!("no node named {node}"),
            },
        }
    }

    fn snapshot(&self, names: &[String]) -> Result<Snapshot, String> {
        if let Some(unknown) = names.iter().find(|n| !self.nodes.contains_key(*n)) {
            return Err(format!("no node named {unknown}"));
        }
        let nodes = self
            .nodes
            .iter()
            .filter(|(name, _)| names.is_empty() || names.contains(name))
            .map(|(name, entry)| {
                let spec = entry
                    .spec
                    .as_ref()
                    .or(entry.handle.as_ref().map(|h| &h.record.spec));
                NodeSnapshot {
                    name: name.clone(),
                    role: spec.map(|s| s.role.clone()).unwrap_or_default(),
                    state: entry.phase.state(),
                    pid: entry.handle.as_ref().map(|h| h.record.pid),
                    ip: spec.map(|s| s.ip().to_string()).unwrap_or_default(),
                    started_at: entry.handle.as_ref().map(|h| h.record.started_at),
                    restarts: entry.restarts,
                    error: entry.error.clone(),
                    degraded: self.network.degraded.get(name).cloned(),
                    desired_running: entry.spec.is_some() && self.desired.wants_running(name),
                    handle: entry.handle.clone(),
                }
            })
            .collect();
        Ok(Snapshot {
            host: self.config.host.name.clone(),
            config: self.config.origin.clone(),
            nodes,
            pair: self.pair.status(),
        })
    }

    fn started(&mut self, node: &str, result: Result<Box<NodeHandle>, RuntimeError>) {
        let Some(entry) = self.nodes.get_mut(node) else {
            return;
        };
        match result {
            Ok(handle) => {
                let role = &handle.record.spec.role;
                tracing::info!(node, role, pid = handle.record.pid, "node running");
                for process in &handle.processes {
                    tracing::info!(
                        node,
                        role,
                        process = process.name,
                        pid = process.pid,
                        state = ?process.state,
                        "process started"
                    );
                }
                let handle = Arc::new(*handle);
                entry.phase = Phase::Running;
                entry.previous = None;
                entry.error = entry
                    .refused
                    .as_ref()
                    .map(|(_, why)| format!("{CHANGE_REFUSED}{why}"));
                entry.health = Some(first_health(&handle.record.spec));
                entry.handle = Some(handle.clone());
                self.watch(node, &handle);
            }
            Err(error) => self.start_failed(node, error.to_string()),
        }
    }

    /// A start failed: a node that stopped to run a changed definition starts again with the
    /// definition it ran before, and the change is reported as refused; any other is failed.
    fn start_failed(&mut self, node: &str, error: String) {
        let entry = self.nodes.get_mut(node).expect("known node");
        let role = entry.spec.as_ref().map(|s| s.role.clone());
        let (Some(previous), Some(changed)) = (entry.previous.take(), entry.spec.clone()) else {
            tracing::error!(node, role, "start failed: {error}");
            entry.phase = Phase::Failed;
            entry.error = Some(match &entry.refused {
                Some((_, why)) => format!("{error} (its changed definition was refused: {why})"),
                None => error,
            });
            return;
        };
        tracing::error!(
            node,
            role,
            "changed definition refused, starting the node again with its previous definition: {error}"
        );
        entry.spec = Some(previous.clone());
        entry.refused = Some((changed, error.clone()));
        entry.phase = Phase::Stopped;
        entry.retry_at = None;
        self.config.nodes.insert(node.to_string(), previous);
        if let Err(error) = self.apply_network(&self.config) {
            tracing::error!(
                node,
                "inter-node policy for the previous definition: {error}"
            );
        }
        for report in self.waiters.iter_mut().filter_map(|waiter| {
            let waits = waiter.targets.iter().any(|(name, _)| name == node);
            waiter.report.as_mut().filter(|_| waits)
        }) {
            report.restarted.retain(|name| name != node);
            report.refused.push(RefusedChange {
                node: node.to_string(),
                error: error.clone(),
            });
        }
    }

    fn stopped(&mut self, node: &str) {
        if let Some(entry) = self.nodes.get_mut(node) {
            entry.phase = Phase::Stopped;
            entry.handle = None;
            entry.rendered = None;
            entry.health = None;
        }
    }

    /// A running node's init reported a new health: templates see it at the next render.
    fn health_reported(&mut self, node: &str, pid: i32, health: String) {
        let Some(entry) = self.nodes.get_mut(node) else {
            return;
        };
        let current = entry.handle.as_ref().is_some_and(|h| h.record.pid == pid);
        if !current || entry.health.as_ref() == Some(&health) {
            return;
        }
        let role = entry.spec.as_ref().map(|s| s.role.as_str());
        let was = entry
            .health
            .as_deref()
            .unwrap_or(crate::template::HEALTH_UNKNOWN);
        tracing::info!(node, role, was, health, "health changed");
        entry.health = Some(health);
    }

    fn init_exited(&mut self, node: &str, pid: i32) {
        let Some(entry) = self.nodes.get_mut(node) else {
            return;
        };
        let current = entry.handle.as_ref().is_some_and(|h| h.record.pid == pid);
        if !current || !matches!(entry.phase, Phase::Running | Phase::Failed) {
            return;
        }
        let role = entry.spec.as_ref().map(|s| s.role.as_str());
        tracing::warn!(
            node,
            role,
            pid,
            "init exited; cleaning up and restarting the node"
        );
        entry.restarts += 1;
        // A node that ran for a while before its init died starts its backoff afresh.
        let ran_for = entry.handle.as_ref().map_or(0, |h| {
            crate::runtime::unix_now().saturating_sub(h.record.started_at)
        });
        if ran_for >= RETRY_CAP.as_secs() {
            entry.deaths_in_row = 0;
        }
        entry.deaths_in_row += 1;
        let delay = (RETRY_BASE * (1 << (entry.deaths_in_row - 1).min(6))).min(RETRY_CAP);
        entry.error = Some(format!(
            "init (pid {pid}) exited unexpectedly; next start in {}s",
            delay.as_secs()
        ));
        entry.retry_at = Some(Instant::now() + delay);
        entry.phase = Phase::Stopping;
        entry.handle = None;
        entry.health = None;
        let runtime = self.runtime.clone();
        let events = self.events.clone();
        let name = node.to_string();
        tokio::task::spawn_blocking(move || {
            runtime.cleanup(&name);
            let _ = events.send(Event::Stopped(name));
        });
    }

    /// Moves every node one step towards what is wanted of it.
    fn reconcile(&mut self) {
        let now = Instant::now();
        let mut removed = Vec::new();
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for name in names {
            let wanted = self.desired.wants_running(&name);
            let entry = self.nodes.get_mut(&name).expect("listed");
            let wanted = wanted && entry.spec.is_some();
            match (entry.phase, entry.handle.is_some()) {
                (Phase::Starting | Phase::Stopping, _) => {}
                (_, true) => {
                    let changed = entry
                        .spec
                        .as_ref()
                        .zip(entry.handle.as_ref())
                        .is_some_and(|(spec, handle)| *spec != handle.record.spec);
                    if !wanted {
                        entry.previous = None;
                        self.begin_stop(&name);
                    } else if entry.restart_pending || changed {
                        // What it ran before, to fall back on if a changed definition fails.
                        entry.previous = entry
                            .handle
                            .as_ref()
                            .filter(|_| changed)
                            .map(|handle| handle.record.spec.clone());
                        entry.restart_pending = false;
                        let previous = entry.handle.take();
                        self.begin_start(&name, previous);
                    }
                }
                (Phase::Stopped | Phase::Running, false) => {
                    let due = entry.retry_at.is_none_or(|at| at <= now);
                    if wanted && (due || entry.restart_pending) {
                        entry.restart_pending = false;
                        entry.retry_at = None;
                        self.begin_start(&name, None);
                    } else if entry.spec.is_none() {
                        removed.push(name);
                    } else if !wanted {
                        entry.restart_pending = false;
                    }
                }
                (Phase::Failed, false) => {
                    if entry.spec.is_none() {
                        removed.push(name);
                    } else if !wanted {
                        // A failed node that nothing runs of is stopped once it is no longer
                        // wanted (a `stop` of it is answered); its error stays shown.
                        entry.phase = Phase::Stopped;
                    }
                }
            }
        }
        for name in removed {
            self.nodes.remove(&name);
        }
    }

    /// Starts a node; with the handle of its running `previous` life, restarts it (the runtime
    /// keeps its sandbox when it can).
    fn begin_start(&mut self, node: &str, previous: Option<Arc<NodeHandle>>) {
        // Its own files are read once it runs: it renders them as one of the running nodes.
        let mut running = self.running_nodes();
        let entry = self.nodes.get_mut(node).expect("known node");
        let spec = entry.spec.clone().expect("configured node");
        running.insert(node.to_string(), first_health(&spec));
        let templates = match crate::template::render_node(&self.config, &spec, &running) {
            Ok(templates) => templates,
            Err(error) => {
                let Some(previous) = previous else {
                    return self.start_failed(node, error.to_string());
                };
                // Stopped first, as any restart without its sandbox: the start that follows
                // fails the same way, and falls back to the previous definition if it changed.
                tracing::error!(node, role = spec.role, "restart failed: {error}");
                entry.handle = Some(previous);
                self.begin_stop(node);
                return;
            }
        };
        entry.rendered = Some(
            templates
                .iter()
                .map(|file| (file.dest.clone(), file.text.clone()))
                .collect(),
        );
        entry.phase = Phase::Starting;
        let restarts = entry.restarts;
        let runtime = self.runtime.clone();
        let events = self.events.clone();
        let name = node.to_string();
        tracing::info!(
            node,
            role = spec.role,
            "{}",
            match previous {
                Some(_) => "restarting",
                None => "starting",
            }
        );
        tokio::task::spawn_blocking(move || {
            let result = match previous {
                Some(previous) => runtime.restart(&previous, &spec, restarts, &templates),
                None => runtime.start(&spec, restarts, &templates),
            };
            let result = result.map(Box::new);
            let _ = events.send(Event::Started(name, result));
        });
    }

    fn begin_stop(&mut self, node: &str) {
        let entry = self.nodes.get_mut(node).expect("known node");
        let Some(handle) = entry.handle.take() else {
            return;
        };
        entry.phase = Phase::Stopping;
        let runtime = self.runtime.clone();
        let events = self.events.clone();
        let name = node.to_string();
        tracing::info!(node, role = handle.record.spec.role, "stopping");
        tokio::task::spawn_blocking(move || {
            runtime.stop(&handle);
            let _ = events.send(Event::Stopped(name));
        });
    }

    /// The configured nodes that are up, with their health: what templates list as `nodes`.
    fn running_nodes(&self) -> Running {
        self.nodes
            .iter()
            .filter(|(_, entry)| {
                entry.phase == Phase::Running && entry.handle.is_some() && entry.spec.is_some()
            })
            .map(|(name, entry)| {
                let health = entry.health.as_deref();
                let health = health.unwrap_or(crate::template::HEALTH_UNKNOWN);
                (name.clone(), health.to_string())
            })
            .collect()
    }

    /// Re-renders the templates of every running node once the set of running nodes, the
    /// health of one of them, or the configuration changed; only files whose text changed are
    /// replaced, and only their nodes are told to reload.
    fn refresh_templates(&mut self) {
        let running = self.running_nodes();
        if self.templates_rendered_for.as_ref() == Some(&running) {
            return;
        }
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for name in names {
            self.refresh_node_templates(&name, &running);
        }
        self.templates_rendered_for = Some(running);
    }

    fn refresh_node_templates(&mut self, node: &str, running: &Running) {
        let entry = self.nodes.get_mut(node).expect("listed");
        let (Some(spec), Some(handle)) = (&entry.spec, &entry.handle) else {
            return;
        };
        // A node about to restart for a changed definition renders at its next start.
        if entry.phase != Phase::Running
            || spec.definition.templates.is_empty()
            || *spec != handle.record.spec
        {
            return;
        }
        let role = spec.role.as_str();
        let files = match crate::template::render_node(&self.config, spec, running) {
            Ok(files) => files,
            Err(error) => {
                tracing::error!(node, role, "templates not re-rendered: {error}");
                entry.error = Some(format!("{TEMPLATES_FAILED}{error}"));
                return;
            }
        };
        if entry.error_starts_with(TEMPLATES_FAILED) {
            entry.error = None;
        }
        let dir = self.runtime.templates_dir(node);
        let installed = entry.rendered.get_or_insert_with(|| {
            let dests: Vec<String> = files.iter().map(|file| file.dest.clone()).collect();
            crate::template::installed(&dir, &dests)
        });
        let changed: Vec<Rendered> = files
            .into_iter()
            .filter(|file| installed.get(&file.dest) != Some(&file.text))
            .collect();
        if changed.is_empty() {
            return;
        }
        if let Err(error) = crate::template::install(&dir, &changed, handle.record.id_base) {
            tracing::error!(node, role, "writing re-rendered templates: {error}");
            entry.rendered = None;
            return;
        }
        for file in &changed {
            installed.insert(file.dest.clone(), file.text.clone());
        }
        let dests: Vec<&str> = changed.iter().map(|file| file.dest.as_str()).collect();
        tracing::info!(node, role, "templates re-rendered: {}", dests.join(", "));
        // One signal per process, however many of its files changed.
        let reloads: BTreeSet<(String, String)> = changed
            .into_iter()
            .filter_map(|file| file.reload)
            .map(|reload| (reload.process, reload.signal))
            .collect();
        if reloads.is_empty() {
            return;
        }
        let socket = handle.paths.control_socket();
        let (node, role) = (node.to_string(), role.to_string());
        tokio::task::spawn_blocking(move || {
            for (process, signal) in reloads {
                let request = InitRequest::Signal {
                    process: process.clone(),
                    signal: signal.clone(),
                };
                match crate::runtime::init_request(&socket, &request) {
                    Ok(InitReply::Signalled { pid: Some(pid) }) => {
                        tracing::info!(node, role, process, pid, "sent {signal} to reload")
                    }
                    Ok(InitReply::Signalled { pid: None }) => tracing::info!(
                        node,
                        role,
                        process,
                        "not running: it reads the new files when it starts"
                    ),
                    Ok(other) => {
                        tracing::warn!(node, role, process, "reload: unexpected reply {other:?}")
                    }
                    Err(error) => tracing::warn!(node, role, process, "reload: {error}"),
                }
            }
        });
    }

    /// Asks the init of a node whose role has a health check for its health, every check
    /// interval (within [`HEALTH_POLL_MIN`], [`HEALTH_POLL_MAX`]), and reports each change to the
    /// core. Ends once the core has let go of the handle (the node stopped or its init died).
    fn poll_health(&self, node: &str, handle: &Arc<NodeHandle>) {
        let Some(check) = &handle.record.spec.definition.health else {
            return;
        };
        let period = check.interval.clamp(HEALTH_POLL_MIN, HEALTH_POLL_MAX);
        let handle = Arc::downgrade(handle);
        let events = self.events.clone();
        let name = node.to_string();
        tokio::spawn(async move {
            let mut last: Option<String> = None;
            loop {
                tokio::time::sleep(period).await;
                let Some((socket, pid)) = handle
                    .upgrade()
                    .map(|h| (h.paths.control_socket(), h.record.pid))
                else {
                    return;
                };
                let Some(health) = super::init_client::ask_health(&socket).await else {
                    continue;
                };
                if last.as_ref() == Some(&health.state) {
                    continue;
                }
                last = Some(health.state.clone());
                if events
                    .send(Event::Health(name.clone(), pid, health.state))
                    .is_err()
                {
                    return;
                }
            }
        });
    }

    /// Watches the init's pidfd and reports its exit to the core, and polls its health.
    fn watch(&self, node: &str, handle: &Arc<NodeHandle>) {
        self.poll_health(node, handle);
        let Ok(pidfd) = handle.pidfd.try_clone() else {
            tracing::error!(node, "cannot watch the init: dup of pidfd failed");
            return;
        };
        let events = self.events.clone();
        let name = node.to_string();
        let pid = handle.record.pid;
        tokio::spawn(async move {
            // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and the same for
            // the AsyncFd's whole life.
            let Ok(watched) =
                (unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) })
            else {
                return;
            };
            if watched.readable().await.is_ok() {
                crate::runtime::reap(std::os::fd::AsFd::as_fd(watched.get_ref()));
                let _ = events.send(Event::InitExited(name, pid));
            }
        });
    }

    fn answer_waiters(&mut self) {
        let waiters = std::mem::take(&mut self.waiters);
        for waiter in waiters {
            match self.outcome(&waiter.targets) {
                None => self.waiters.push(waiter),
                Some(Err(message)) => {
                    let _ = waiter.reply.send(Response::Error { message });
                }
                Some(Ok(())) => {
                    let response = match waiter.report {
                        Some(report) => Response::Reloaded(report),
                        None => Response::Done {
                            nodes: waiter.targets.into_iter().map(|(n, _)| n).collect(),
                        },
                    };
                    let _ = waiter.reply.send(response);
                }
            }
        }
    }

    /// `None` while any node is still on its way; else success or the collected failures.
    fn outcome(&self, targets: &[(String, Target)]) -> Option<Result<(), String>> {
        let mut failures = Vec::new();
        for (name, target) in targets {
            let Some(entry) = self.nodes.get(name) else {
                continue;
            };
            if matches!(entry.phase, Phase::Starting | Phase::Stopping) || entry.restart_pending {
                return None;
            }
            match (target, entry.phase) {
                (Target::Running, Phase::Running) | (Target::Stopped, Phase::Stopped) => {}
                (Target::Running, Phase::Failed) => failures.push(format!(
                    "{name}: {}",
                    entry.error.as_deref().unwrap_or("failed")
                )),
                (Target::Running, Phase::Stopped) if entry.retry_at.is_some() => failures.push(
                    format!("{name}: {}", entry.error.as_deref().unwrap_or("stopped")),
                ),
                _ => return None,
            }
        }
        Some(if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("\n"))
        })
    }
}

impl Phase {
    fn state(self) -> NodeState {
        match self {
            Phase::Stopped => NodeState::Stopped,
            Phase::Starting => NodeState::Starting,
            Phase::Running => NodeState::Running,
            Phase::Stopping => NodeState::Stopping,
            Phase::Failed => NodeState::Failed,
        }
    }
}

impl NodeEntry {
    fn new(spec: Option<NodeSpec>) -> Self {
        NodeEntry {
            spec,
            phase: Phase::Stopped,
            handle: None,
            restarts: 0,
            error: None,
            restart_pending: false,
            retry_at: None,
            deaths_in_row: 0,
            rendered: None,
            health: None,
            previous: None,
            refused: None,
        }
    }

    fn error_starts_with(&self, prefix: &str) -> bool {
        self.error.as_deref().is_some_and(|e| e.starts_with(prefix))
    }
}

/// A node's health from its start until its init first reports one.
fn first_health(spec: &NodeSpec) -> String {
    if spec.definition.health.is_some() {
        "starting"
    } else {
        "none"
    }
    .to_string()
}

impl Waiter {
    fn new(names: Vec<String>, target: Target) -> Waiter {
        let (reply, _) = oneshot::channel();
        Waiter {
            targets: names.into_iter().map(|n| (n, target)).collect(),
            reply,
            report: None,
        }
    }
}
