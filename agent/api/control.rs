//! The CLI <-> daemon protocol on `run_dir/agent.sock`: one request, one response, per connection.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Every node when `nodes` is empty.
    Status {
        nodes: Vec<String>,
    },
    Start {
        nodes: Vec<String>,
    },
    Stop {
        nodes: Vec<String>,
    },
    Restart {
        nodes: Vec<String>,
    },
    Reload,
    /// What `exec` needs to enter a running node.
    ExecTarget {
        node: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    Status(StatusReport),
    /// The named nodes reached the requested state.
    Done {
        nodes: Vec<String>,
    },
    Reloaded(ReloadReport),
    ExecTarget(ExecTarget),
    Error {
        message: String,
    },
}

/// `status --json`: a stable interface. Fields may be added, never renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub host: HostStatus,
    pub nodes: Vec<NodeStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    pub name: String,
    pub version: String,
    pub uptime_s: u64,
    pub config: String,
    pub cgroup_version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub role: String,
    /// starting, running, stopping, stopped or failed.
    pub state: NodeState,
    /// Host pid of the node's init.
    pub pid: Option<i32>,
    pub ip: String,
    pub uptime_s: Option<u64>,
    /// Times the agent restarted the node after its init died.
    pub restarts: u32,
    pub memory_bytes: Option<u64>,
    pub cpu_usec: Option<u64>,
    /// The role's health check as the node's init sees it: none (the role has no check),
    /// starting, healthy or unhealthy; unknown when the node is not running or its init did
    /// not answer.
    pub health: String,
    pub processes: Vec<ProcessStatus>,
    /// Why the node is failed or was last restarted.
    pub error: Option<String>,
    /// Whether the node should be running (false after `stop`).
    pub desired: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Starting => "starting",
            NodeState::Running => "running",
            NodeState::Stopping => "stopping",
            NodeState::Stopped => "stopped",
            NodeState::Failed => "failed",
        }
    }
}

pub use super::init::ProcessStatus;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub started: Vec<String>,
    pub stopped: Vec<String>,
    pub restarted: Vec<String>,
    pub unchanged: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecTarget {
    pub pid: i32,
    /// The files a single-threaded process writes "0" into to join the node's cgroup.
    pub cgroup_join: Vec<String>,
    /// The node's capability bounding set, which `exec`'d commands get too.
    pub capabilities: Vec<String>,
}
