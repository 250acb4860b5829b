//! One node as the core keeps it: its configured definition, where it is in its life, the init
//! that runs it (as plain data: the executor holds the init's handle), and what the core
//! remembers across its restarts.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::api::control::NodeState;
use crate::api::init::ProcessStatus;
use crate::config::NodeSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Stopped,
    Starting,
    Running,
    Stopping,
    /// The last start failed; stays down until an operator starts it again.
    Failed,
}

impl Phase {
    pub(super) fn state(self) -> NodeState {
        match self {
            Phase::Stopped => NodeState::Stopped,
            Phase::Starting => NodeState::Starting,
            Phase::Running => NodeState::Running,
            Phase::Stopping => NodeState::Stopping,
            Phase::Failed => NodeState::Failed,
        }
    }
}

/// A node's running init, as far as decisions need it.
#[derive(Debug, Clone, PartialEq)]
pub struct Init {
    pub pid: i32,
    /// Unix seconds, from the node's record.
    pub started_at: u64,
    /// The definition it runs.
    pub spec: NodeSpec,
}

/// What a successful start (or an adoption) reports: the init and its processes' first states.
#[derive(Debug, Clone)]
pub struct Launched {
    pub init: Init,
    pub processes: Vec<ProcessStatus>,
}

/// A node found running when the daemon started.
#[derive(Debug, Clone)]
pub struct Adopted {
    pub launched: Launched,
    /// From its record: restarts survive the daemon.
    pub restarts: u32,
    /// What is installed of each of its templates (by dest), read from its files.
    pub templates: BTreeMap<String, String>,
}

pub(super) struct Node {
    /// `None` once the node is no longer configured.
    pub(super) spec: Option<NodeSpec>,
    pub(super) phase: Phase,
    /// `Some` exactly while the executor holds a handle of a running init for the node.
    pub(super) init: Option<Init>,
    pub(super) restarts: u32,
    pub(super) error: Option<String>,
    /// Stop, then start again (restart, or a changed definition).
    pub(super) restart_pending: bool,
    /// A node whose init died waits until then before it is started again.
    pub(super) retry_at: Option<Instant>,
    pub(super) deaths_in_row: u32,
    /// What is installed of each template (by dest) for the running node.
    pub(super) rendered: BTreeMap<String, String>,
    /// The running node's health as its init last reported it (before the first report:
    /// `starting`, or `none` for a role without a check); `None` while it is not running.
    pub(super) health: Option<String>,
    /// The definition the node ran before it stopped to run a changed one: started again if
    /// the changed one fails to start.
    pub(super) previous: Option<NodeSpec>,
    /// A changed definition that failed to start, and why: the node runs its previous one (the
    /// `spec`) until the configuration changes it again.
    pub(super) refused: Option<(NodeSpec, String)>,
}

impl Node {
    pub(super) fn new(spec: Option<NodeSpec>) -> Node {
        Node {
            spec,
            phase: Phase::Stopped,
            init: None,
            restarts: 0,
            error: None,
            restart_pending: false,
            retry_at: None,
            deaths_in_row: 0,
            rendered: BTreeMap::new(),
            health: None,
            previous: None,
            refused: None,
        }
    }

    pub(super) fn error_starts_with(&self, prefix: &str) -> bool {
        self.error.as_deref().is_some_and(|e| e.starts_with(prefix))
    }

    /// A start or stop job of the runtime is under way for it.
    pub(super) fn in_flight(&self) -> bool {
        matches!(self.phase, Phase::Starting | Phase::Stopping)
    }

    /// The definition it is known by: the configured one, else the one its init runs.
    pub(super) fn known_spec(&self) -> Option<&NodeSpec> {
        self.spec
            .as_ref()
            .or(self.init.as_ref().map(|init| &init.spec))
    }
}

/// A node's health from its start until its init first reports one.
pub(super) fn first_health(spec: &NodeSpec) -> String {
    if spec.definition.health.is_some() {
        "starting"
    } else {
        "none"
    }
    .to_string()
}
