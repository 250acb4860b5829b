//! The CLI <-> daemon protocol on `run_dir/agent.sock`: one request, one response, per connection.

use std::collections::BTreeMap;

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
    /// Open a one-time invite for a partner host.
    PairInvite,
    /// Make a new stack version equal to `rev` (a counter or an id from `config log`).
    ConfigRollback {
        rev: String,
    },
    /// Pair with the host that printed `token`.
    PairJoin {
        token: String,
    },
    PairStatus,
    /// Add the witness whose token this is to this host's pair.
    PairWitness {
        token: String,
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
    /// The token `pair invite` prints.
    PairInvite {
        token: String,
        /// What moved from agent.toml into the stack, when this invite moved it.
        #[serde(default)]
        moved: Option<String>,
    },
    /// This host is now paired with `partner`.
    PairJoined {
        partner: String,
        #[serde(default)]
        moved: Option<String>,
    },
    PairStatus(PairStatus),
    /// The witness at `address` serves this host's pair now.
    PairWitnessAdded {
        address: String,
    },
    Error {
        message: String,
    },
}

/// `status --json`: a stable interface. Fields may be added, never renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub host: HostStatus,
    pub nodes: Vec<NodeStatus>,
    /// The pair: no partner on a standalone host.
    #[serde(default)]
    pub pair: PairStatus,
    /// The inits' leases and the fences since the agent started.
    #[serde(default)]
    pub fencing: FencingStatus,
}

/// Fencing below the agent, as `status --json` and the metrics show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FencingStatus {
    /// How long each node's init holds the lease this agent renews, in milliseconds; `None` on
    /// a standalone host, whose nodes never fence.
    pub init_lease_ms: Option<u64>,
    /// Whether this host holds quorum (and so renews the leases); `None` when standalone.
    pub quorum: Option<bool>,
    /// Nodes fenced now.
    pub fenced: u64,
    /// Fences found since the agent started.
    pub fences: u64,
    /// Fenced nodes the agent thawed and whose links came back since it started.
    pub unfences: u64,
}

/// `pair status --json`, and `pair` in `status --json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairStatus {
    /// The partner's host name; `None` on a standalone host.
    pub partner: Option<String>,
    /// The partner's pair address (its `[pair] listen`).
    #[serde(default)]
    pub address: Option<String>,
    /// This host's `[pair] listen`.
    #[serde(default)]
    pub listen: Option<String>,
    /// `up`, `connecting` or `down` while paired; `None` on a standalone host.
    pub link: Option<String>,
    /// When the link entered its state, seconds since the epoch.
    #[serde(default)]
    pub link_since_unix: Option<u64>,
    /// Why the link is down, or what is wrong with the pairing.
    #[serde(default)]
    pub last_error: Option<String>,
    /// When this host's pair certificate expires, seconds since the epoch.
    #[serde(default)]
    pub certificate_expires_unix: Option<i64>,
    /// When the open invite expires (on the inviting host, until it is used).
    #[serde(default)]
    pub invite_expires_unix: Option<u64>,
    /// The pair's witness, once one was added.
    pub witness: Option<WitnessStatus>,
    /// Peers refused since the agent started, by reason.
    #[serde(default)]
    pub refused: BTreeMap<String, u64>,
    /// The lease this host holds for each peer it beats with, by role (`partner`, `witness`).
    #[serde(default)]
    pub leases: BTreeMap<String, PeerLease>,
    /// The shared stack's versions on both hosts, and any refused.
    #[serde(default)]
    pub stack: StackStatus,
}

/// `pair status`'s stack: the version in force here, the partner's, and the last refusal each
/// way (cleared when a later version is applied).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackStatus {
    pub version: Option<crate::stack::Version>,
    pub partner_version: Option<crate::stack::VersionId>,
    /// The partner's version this host refused, and why.
    pub refused_here: Option<StackRefusal>,
    /// This host's version the partner refused, and why.
    pub refused_by_partner: Option<StackRefusal>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackRefusal {
    pub version: crate::stack::VersionId,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessStatus {
    /// Its `--listen`, as its token named it.
    pub address: String,
    /// SHA-256 of its certificate, hex.
    pub certificate: String,
    /// Heard within a lease.
    pub reachable: bool,
    pub added_unix: u64,
    /// Why the last heartbeat connection to it ended, while it is not reachable.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// One peer's lease here and its heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerLease {
    /// The partner's name, or the witness's address.
    pub peer: String,
    /// The lease has not run out (a lease runs a full length from the agent's start).
    pub alive: bool,
    pub last_heard_ms_ago: Option<u64>,
    /// Until the lease runs out; negative: since it ran out.
    pub expires_in_ms: i64,
    /// Times it ran out since the agent started.
    pub expiries: u64,
    /// The last heartbeat's round trip, and the median and 99th percentile of the last 1000.
    pub rtt_us: Option<u64>,
    pub rtt_p50_us: Option<u64>,
    pub rtt_p99_us: Option<u64>,
    /// How long the peer's lease for this host runs at least.
    pub held_ms: Option<u64>,
    /// For the partner, while its lease here ran out: whether the witness says it did there.
    pub witness_says_expired: Option<bool>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    pub name: String,
    pub version: String,
    pub uptime_s: u64,
    pub config: String,
    pub cgroup_version: String,
    /// Whether the nodes' memory limits hold their swap too (the kernel accounts swap); when
    /// false a node can swap past its limit on a host with swap.
    #[serde(default)]
    pub swap_limited: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub role: String,
    /// starting, running, stopping, stopped, failed, or remote (homed on the partner).
    pub state: NodeState,
    /// Host pid of the node's init.
    pub pid: Option<i32>,
    pub ip: String,
    pub uptime_s: Option<u64>,
    /// Times the agent restarted the node after its init died.
    pub restarts: u32,
    pub memory_bytes: Option<u64>,
    /// The running node's memory limit; `None` without one (or from an older agent).
    #[serde(default)]
    pub memory_limit_bytes: Option<u64>,
    pub cpu_usec: Option<u64>,
    /// Bytes the running node's writable layer and own volumes take, from its btrfs quota
    /// group; `None` without one (not on btrfs, or from an older agent).
    #[serde(default)]
    pub disk_bytes: Option<u64>,
    /// The running node's configured disk limit (`[resources] disk`); `None` without one.
    #[serde(default)]
    pub disk_limit_bytes: Option<u64>,
    /// Whether that limit holds (false where the state dir is not on btrfs); `None` without a
    /// limit or when the node does not run.
    #[serde(default)]
    pub disk_limit_enforced: Option<bool>,
    /// The role's health check as the node's init sees it: none (the role has no check),
    /// starting, healthy or unhealthy; unknown when the node is not running or its init did
    /// not answer.
    pub health: String,
    pub processes: Vec<ProcessStatus>,
    /// Why the node is failed or was last restarted.
    pub error: Option<String>,
    /// While a running node's network is being repaired: what was missing (`status` shows the
    /// node as degraded).
    #[serde(default)]
    pub degraded: Option<String>,
    /// Whether the node is fenced: its init took its links down and froze it when its lease
    /// lapsed (`status` shows it as fenced); only the agent thaws it, once quorum confirms the
    /// node is still this host's.
    #[serde(default)]
    pub fenced: bool,
    /// While fenced: why, and since when the agent knows (seconds since the epoch).
    #[serde(default)]
    pub fence_reason: Option<String>,
    #[serde(default)]
    pub fenced_since_unix: Option<u64>,
    /// Whether the node should be running (false after `stop`).
    pub desired: String,
    /// The host the node lives on: its `host` in the pair's stack; this host's name on a
    /// standalone host.
    #[serde(default)]
    pub home: Option<String>,
    /// Where the node runs now as this host knows it: this host while its init runs here, its
    /// home while it is `remote`; `None` when it runs nowhere.
    #[serde(default)]
    pub host: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
    /// A node of the pair's stack homed on the partner, and not run here.
    Remote,
}

impl NodeState {
    /// Every state, in the order summaries list them.
    pub const ALL: [NodeState; 6] = [
        NodeState::Running,
        NodeState::Starting,
        NodeState::Stopping,
        NodeState::Stopped,
        NodeState::Failed,
        NodeState::Remote,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Starting => "starting",
            NodeState::Running => "running",
            NodeState::Stopping => "stopping",
            NodeState::Stopped => "stopped",
            NodeState::Failed => "failed",
            NodeState::Remote => "remote",
        }
    }
}

/// "8 nodes: 7 running, 1 failed", for `status` and the service manager's status line.
pub fn summary(states: &[NodeState]) -> String {
    let parts: Vec<String> = NodeState::ALL
        .into_iter()
        .map(|state| (state, states.iter().filter(|s| **s == state).count()))
        .filter(|(_, count)| *count > 0)
        .map(|(state, count)| format!("{count} {}", state.as_str()))
        .collect();
    match states.len() {
        0 => "no nodes".to_string(),
        1 => format!("1 node: {}", parts.join(", ")),
        n => format!("{n} nodes: {}", parts.join(", ")),
    }
}

pub use super::init::ProcessStatus;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub started: Vec<String>,
    pub stopped: Vec<String>,
    pub restarted: Vec<String>,
    pub unchanged: Vec<String>,
    /// Nodes whose changed definition failed to start: each runs its previous one.
    #[serde(default)]
    pub refused: Vec<RefusedChange>,
    /// Settings changed in the file that apply only when the agent restarts.
    #[serde(default)]
    pub not_applied: Vec<PendingSetting>,
    /// The stack version the reload committed (none: the stack was unchanged, or there is none).
    #[serde(default)]
    pub stack_version: Option<crate::stack::Version>,
}

/// A node's changed definition that did not start, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusedChange {
    pub node: String,
    pub error: String,
}

/// A setting the running agent keeps until it restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingSetting {
    /// As the file names it, `host.cgroup`.
    pub field: String,
    /// The value in force.
    pub running: String,
    /// The value in the file.
    pub configured: String,
}

impl std::fmt::Display for PendingSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: `{}` until the agent restarts, then `{}`",
            self.field, self.running, self.configured
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecTarget {
    pub pid: i32,
    /// The files a single-threaded process writes "0" into to join the node's cgroup.
    pub cgroup_join: Vec<String>,
    /// The node's capability bounding set, which `exec`'d commands get too.
    pub capabilities: Vec<String>,
    /// The node has a user namespace of its own, which `exec` joins.
    #[serde(default)]
    pub user_namespace: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_nodes_by_state() {
        use NodeState::*;
        assert_eq!(summary(&[]), "no nodes");
        assert_eq!(summary(&[Starting]), "1 node: 1 starting");
        assert_eq!(
            summary(&[Running, Failed, Running, Stopped, Running]),
            "5 nodes: 3 running, 1 stopped, 1 failed"
        );
    }
}
