//! The daemon's core as a pure step, in the manner of `init/supervisor.rs`: the state of every
//! node, the operator's wishes and the commands waiting for their nodes; an event and the time
//! in, the actions that carry the decision out. No tokio, no runtime, no I/O, no clock: the
//! executor (`daemon/executor.rs`) carries the actions out and feeds their outcomes back as
//! events, errors typed. The step only writes its decisions to the log.
//!
//! After every event the step moves each node one step towards what is wanted of it
//! (`lifecycle.rs`), starts a network audit when one is due (`network.rs`), re-renders the
//! templates that the running nodes changed (`templates.rs`) and answers the commands whose
//! nodes have settled (`waiters.rs`).

mod commands;
mod lifecycle;
mod network;
mod node;
mod templates;
mod waiters;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::api::control::{NodeState, Response};
use crate::config::{Config, NodeNetwork, NodeSpec};
use crate::net::NetError;
use crate::pair::ownership::Ownership;
use crate::runtime::RuntimeError;
use crate::template::{Rendered, Running};

use commands::Parked;
use network::NetworkAudit;
pub use network::NetworkEvent;
pub use node::{Adopted, Init, Launched};
use node::{Node, Phase};
use waiters::Waiter;

/// The time a step runs at: the monotonic clock for deadlines, the wall clock for the records'
/// start times.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    pub unix_secs: u64,
}

/// Names an operator's command until it is answered.
pub type CommandId = u64;

/// What an operator asks of the nodes.
#[derive(Debug)]
pub enum Command {
    Start(Vec<String>),
    Stop(Vec<String>),
    Restart(Vec<String>),
    /// A new, already validated configuration.
    Reload(Box<Config>),
}

/// What the inter-node policy is applied for; its outcome comes back with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyFor {
    /// A reload, which goes on only once the policy holds.
    Reload(CommandId),
    /// A node that falls back to its previous definition.
    PreviousDefinition(String),
}

/// Templates that could not be written, and what the node's files hold now.
#[derive(Debug)]
pub struct InstallFailed {
    pub error: std::io::Error,
    pub on_disk: BTreeMap<String, String>,
}

#[derive(Debug)]
pub enum Event {
    Command(CommandId, Command),
    /// The outcome of [`Action::RecordWishes`].
    WishesRecorded(CommandId, std::io::Result<()>),
    /// The outcome of [`Action::ApplyPolicy`].
    PolicyApplied(PolicyFor, Result<(), NetError>),
    Started(String, Result<Box<Launched>, RuntimeError>),
    /// A stop or clean-up job ended: nothing of the node runs.
    Stopped(String),
    /// The init with this pid exited.
    InitExited(String, i32),
    /// The health a node's init (by its pid) reported, sent when it differs from the last one
    /// that init reported.
    Health(String, i32, String),
    /// The outcome of [`Action::InstallTemplates`].
    TemplatesInstalled {
        node: String,
        pid: i32,
        files: Vec<Rendered>,
        result: Result<(), InstallFailed>,
    },
    /// The network audit's notifications and findings.
    Network(NetworkEvent),
    /// Time passed (a retry or an audit is due).
    Tick,
}

/// One thing the executor does for the core.
#[derive(Debug)]
pub enum Action {
    /// Answer a command; each command is answered exactly once.
    Reply(CommandId, Box<Response>),
    /// Persist the nodes an operator stopped, before anything acts on it; the outcome comes
    /// back as [`Event::WishesRecorded`] before any other event.
    RecordWishes(CommandId, BTreeSet<String>),
    /// Apply the inter-node policy of `config` and write the hosts file of the running nodes;
    /// the outcome comes back as [`Event::PolicyApplied`] before any other event.
    ApplyPolicy {
        config: Box<Config>,
        running: Vec<String>,
        why: PolicyFor,
    },
    /// Start a node that nothing runs of; ends with [`Event::Started`].
    Start {
        spec: NodeSpec,
        restarts: u32,
        templates: Vec<Rendered>,
    },
    /// Stop the node's running init and start `spec` in its place (in its kept sandbox); ends
    /// with [`Event::Started`].
    Restart {
        spec: NodeSpec,
        restarts: u32,
        templates: Vec<Rendered>,
    },
    /// Stop the node's running init; ends with [`Event::Stopped`].
    Stop(String),
    /// Remove what the dead init of the node left; ends with [`Event::Stopped`].
    CleanUp(String),
    /// Watch the node's new init for its exit and its health.
    Watch(String),
    /// Write these rendered files of the node (init `pid`); the outcome comes back as
    /// [`Event::TemplatesInstalled`] before any other event.
    InstallTemplates {
        node: String,
        pid: i32,
        files: Vec<Rendered>,
    },
    /// Ask the node's init to signal each (process, signal) once, to read its new files.
    SignalReloads {
        node: String,
        reloads: BTreeSet<(String, String)>,
    },
    /// Audit the bridge and these running nodes' links, repair what is missing, and report it
    /// as [`Event::Network`].
    AuditNetwork(Vec<AuditedNode>),
}

/// A running node whose network an audit checks.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditedNode {
    pub name: String,
    pub init_pid: i32,
    pub network: NodeNetwork,
}

/// One node as `status` shows it, before the executor completes it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
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
    /// Its home host (this host's name when the stack names none).
    pub home: String,
}

/// Why a question about nodes has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("no node named {0}")]
    Unknown(String),
    #[error("node {0} is not running")]
    NotRunning(String),
}

pub struct Core {
    config: Config,
    /// The nodes an operator stopped (as recorded): every other configured node should run.
    stopped: BTreeSet<String>,
    nodes: BTreeMap<String, Node>,
    waiters: Vec<Waiter>,
    /// Commands waiting for the outcome of an action before they go on.
    parked: Parked,
    /// The running nodes (with their health) the templates were last rendered with; `None`
    /// forces a render (a new configuration may bring new template texts).
    templates_rendered_for: Option<Running>,
    /// The network audit: when it is due, and the nodes whose network it is repairing.
    network: NetworkAudit,
    /// Which nodes this host may run. Standalone for now (it owns every node): the pair's
    /// leases and the witness are not wired in yet.
    ownership: Ownership,
    /// What the step under way decided.
    actions: Vec<Action>,
}

impl Core {
    /// The core of a daemon that starts with `config`, the operator's `stopped` nodes, the
    /// nodes it re-adopted and those whose init died while it was away (with their restarts);
    /// the actions watch the adopted inits.
    pub fn new(
        config: Config,
        stopped: BTreeSet<String>,
        adopted: Vec<Adopted>,
        dead_restarts: BTreeMap<String, u32>,
        now: &Now,
    ) -> (Core, Vec<Action>) {
        let ownership = Ownership::standalone(&config.host.name);
        let mut core = Core {
            nodes: config
                .nodes
                .values()
                .map(|spec| (spec.name.clone(), Node::new(Some(spec.clone()))))
                .collect(),
            config,
            stopped,
            waiters: Vec::new(),
            parked: Parked::default(),
            templates_rendered_for: None,
            network: NetworkAudit::new(now.instant),
            ownership,
            actions: Vec::new(),
        };
        for (name, restarts) in dead_restarts {
            // Its init died while the daemon was away: it is restarted, and that counts.
            let node = core.node_entry(&name);
            node.restarts = restarts + 1;
            node.error = Some("init exited while the agent was not running".into());
        }
        for adopted in adopted {
            let Launched { init, processes } = adopted.launched;
            let name = init.spec.name.clone();
            let node = core.node_entry(&name);
            node.restarts = adopted.restarts;
            node.phase = if processes.iter().any(|p| p.state.is_failure()) {
                Phase::Failed
            } else {
                Phase::Running
            };
            node.health = Some(node::first_health(&init.spec));
            node.rendered = adopted.templates;
            node.init = Some(init);
            core.actions.push(Action::Watch(name));
        }
        let actions = std::mem::take(&mut core.actions);
        (core, actions)
    }

    /// Takes one event at `now` and returns what to do about it.
    pub fn step(&mut self, now: &Now, event: Event) -> Vec<Action> {
        match event {
            Event::Command(id, command) => self.command(id, command),
            Event::WishesRecorded(id, result) => self.wishes_recorded(id, result),
            Event::PolicyApplied(why, result) => self.policy_applied(why, result),
            Event::Started(node, result) => self.started(&node, result),
            Event::Stopped(node) => self.stopped(&node),
            Event::InitExited(node, pid) => self.init_exited(now, &node, pid),
            Event::Health(node, pid, health) => self.health_reported(&node, pid, health),
            Event::TemplatesInstalled {
                node,
                pid,
                files,
                result,
            } => self.templates_installed(&node, pid, files, result),
            Event::Network(event) => self.network_event(now, event),
            Event::Tick => {}
        }
        self.reconcile(now);
        self.audit_network_when_due(now);
        self.refresh_templates();
        self.answer_waiters();
        std::mem::take(&mut self.actions)
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Which nodes this host may run, and at which epochs: what a fenced node's thaw asks.
    pub fn ownership(&self) -> &Ownership {
        &self.ownership
    }

    /// The state of every node the core knows, for the service manager's one-line status.
    pub fn node_states(&self) -> Vec<NodeState> {
        self.nodes.values().map(|node| node.phase.state()).collect()
    }

    /// When the core must take a step even without events.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let retries = self.nodes.values().filter_map(|node| node.retry_at);
        retries.chain(self.network.due()).min()
    }

    /// The named nodes (every node when empty) as `status` shows them.
    pub fn snapshot(&self, names: &[String]) -> Result<Vec<NodeView>, QueryError> {
        if let Some(unknown) = names.iter().find(|n| !self.nodes.contains_key(*n)) {
            return Err(QueryError::Unknown(unknown.clone()));
        }
        let views = self
            .nodes
            .iter()
            .filter(|(name, _)| names.is_empty() || names.contains(name))
            .map(|(name, node)| {
                let spec = node.known_spec();
                let home = self.home_of(name);
                let state = match node.phase.state() {
                    NodeState::Stopped if home != self.config.host.name => NodeState::Remote,
                    state => state,
                };
                NodeView {
                    name: name.clone(),
                    role: spec.map(|s| s.role.clone()).unwrap_or_default(),
                    state,
                    pid: node.init.as_ref().map(|init| init.pid),
                    ip: spec.map(|s| s.ip().to_string()).unwrap_or_default(),
                    started_at: node.init.as_ref().map(|init| init.started_at),
                    restarts: node.restarts,
                    error: node.error.clone(),
                    degraded: self.network.degraded.get(name).cloned(),
                    desired_running: node.spec.is_some() && self.wants_running(name),
                    home,
                }
            })
            .collect();
        Ok(views)
    }

    /// Whether `exec` may enter the node: its init runs and is not being stopped.
    pub fn exec_target(&self, node: &str) -> Result<(), QueryError> {
        match self.nodes.get(node) {
            Some(entry) if entry.init.is_some() && entry.phase != Phase::Stopping => Ok(()),
            Some(_) => Err(QueryError::NotRunning(node.to_string())),
            None => Err(QueryError::Unknown(node.to_string())),
        }
    }

    /// The nodes that run or are being started or stopped (`pair join` wants none).
    pub fn busy_nodes(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, node)| node.init.is_some() || node.in_flight())
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn wants_running(&self, node: &str) -> bool {
        !self.stopped.contains(node) && self.is_home(node)
    }

    /// Whether `node`'s home is this host: a node of the stack homed on the partner runs
    /// there, and here only once a takeover moves it (ownership, `pair/ownership.rs`).
    fn is_home(&self, node: &str) -> bool {
        self.home_of(node) == self.config.host.name
    }

    /// `node`'s home host: its `host` in the stack, else this host.
    fn home_of(&self, node: &str) -> String {
        self.config
            .homes
            .get(node)
            .cloned()
            .unwrap_or_else(|| self.config.host.name.clone())
    }

    fn node_entry(&mut self, name: &str) -> &mut Node {
        self.nodes
            .entry(name.to_string())
            .or_insert_with(|| Node::new(None))
    }

    /// The nodes whose init runs, in name order.
    fn running_names(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, node)| node.init.is_some())
            .map(|(name, _)| name.clone())
            .collect()
    }
}
