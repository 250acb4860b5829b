//! The daemon <-> init protocol.
//!
//! Spawning is a handshake on a socket pair inherited as fd 3: the daemon sends [`Handshake::Go`],
//! the init joins its cgroup and answers [`Handshake::Ready`] once the node's
//! processes run, or [`Handshake::Failed`] naming the step that failed. After that the daemon
//! talks to the init on its control socket (inherited as fd 4, bound at `run_dir/nodes/<node>/
//! init.sock`) with one [`InitRequest`] per connection.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{LogRotation, NodeSpec};

/// The fd numbers the init finds its inherited descriptors at.
pub const HANDSHAKE_FD: i32 = 3;
pub const CONTROL_FD: i32 = 4;
pub const LOG_DIR_FD: i32 = 5;
/// The node cgroup's freeze file, open for writing (`/dev/null` on a host without a freezer).
pub const FREEZE_FD: i32 = 6;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "message", rename_all = "snake_case")]
pub enum Handshake {
    Go(Box<InitPlan>),
    Ready { processes: Vec<ProcessStatus> },
    Failed { step: String, error: String },
}

/// Everything the init needs to build the node's root and run its processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitPlan {
    pub spec: NodeSpec,
    /// Read-only image rootfs: the overlay's lower layer (an idmapped mount of it when the node
    /// has a user namespace).
    pub image_rootfs: PathBuf,
    /// The node runs in a user namespace of its own.
    pub user_namespace: bool,
    pub upper_dir: PathBuf,
    pub work_dir: PathBuf,
    /// Where the overlay is mounted (inside the node's own mount namespace only).
    pub root_mount: PathBuf,
    /// Host directory and node path of every volume.
    pub volumes: Vec<VolumeMount>,
    /// Host file bind-mounted over the node's /etc/hosts.
    pub hosts_file: PathBuf,
    /// Host file bind-mounted over the node's /etc/resolv.conf.
    pub resolv_file: PathBuf,
    /// Host directory of the node's rendered templates, bind-mounted read-only at
    /// `template::IN_NODE`, each template's `dest` a symlink into it; `None` when the role has
    /// no templates.
    #[serde(default)]
    pub templates_dir: Option<PathBuf>,
    pub stop_timeout: Duration,
    /// When the processes' log files are rotated and how many rotated ones are kept.
    #[serde(default)]
    pub log_rotation: LogRotation,
    /// Files the init writes "0" into to move itself into the node's cgroup before anything
    /// else, then unsharing its cgroup namespace there (cgroup v1). Empty when it was cloned
    /// straight into its cgroup and namespace (v2).
    pub join_cgroup: Vec<PathBuf>,
    /// What the init writes into [`FREEZE_FD`] to freeze its node's cgroup when it fences;
    /// `None` on a v1 host without the freezer controller, where a fence only takes the links
    /// down.
    #[serde(default)]
    pub freeze_value: Option<String>,
    /// The node's network namespace is configured already: kept across a restart with its
    /// links, in a node that cannot change it (no CAP_NET_ADMIN). The init leaves it as it is.
    #[serde(default)]
    pub network_configured: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeMount {
    pub source: PathBuf,
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum InitRequest {
    Status,
    /// Stop every process (SIGTERM, SIGKILL after the stop timeout) and exit.
    Stop,
    /// Send `signal` (`SIGHUP`) to the main pid of the named process: a template it reads
    /// changed.
    Signal {
        process: String,
        signal: String,
    },
    /// The agent holds quorum and still owns the node: the init may run it for `lease` more
    /// (from when it reads this, on CLOCK_BOOTTIME); it fences the node when the lease lapses.
    /// The first renewal arms the fence: an init never renewed (a standalone host's) never
    /// fences. A fenced init's renewal (the agent thawed it) brings its links back.
    Renew {
        lease: Duration,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum InitReply {
    Status {
        processes: Vec<ProcessStatus>,
        /// Absent from an init older than health checks: the default reads as unknown.
        #[serde(default)]
        health: HealthStatus,
    },
    Stopping,
    /// The pid signalled (in the node's pid namespace); `None` when the process was not
    /// running, so it reads the new file when it next starts.
    Signalled {
        pid: Option<i32>,
    },
    /// The lease runs again; `unfenced` when the init was fenced and has brought its links
    /// back up and announced them with a gratuitous ARP.
    Renewed {
        unfenced: bool,
    },
    /// The init was fenced and could not bring its links back; the next renewal tries again.
    StillFenced {
        error: String,
    },
}

/// The node's health as its init's checks see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthStatus {
    /// none (the role has no check), starting (no verdict yet), healthy or unhealthy; unknown
    /// when the init did not say.
    pub state: String,
    /// The reason the last failed check gave, kept after the checks pass again.
    pub last_error: Option<String>,
    /// When the last check finished, in seconds since the Unix epoch.
    pub checked_at_unix: Option<u64>,
}

impl Default for HealthStatus {
    fn default() -> Self {
        HealthStatus {
            state: "unknown".into(),
            last_error: None,
            checked_at_unix: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessStatus {
    pub name: String,
    /// Pid inside the node's pid namespace; `None` while not running.
    pub pid: Option<i32>,
    /// running, backoff, crashloop, failed, exited or stopped.
    pub state: ProcessState,
    pub restarts: u32,
    /// Last exit, exec error or crash-loop reason.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    Running,
    /// Exited; waiting for its restart delay.
    Backoff,
    /// Exited soon after starting several times in a row; still retried at the longest delay.
    Crashloop,
    /// Could not be started at all (exec error); not retried until the node restarts.
    Failed,
    /// Exited and its restart policy keeps it down.
    Exited,
    Stopped,
}

impl ProcessState {
    /// Whether this state makes the node count as failed.
    pub fn is_failure(self) -> bool {
        matches!(self, ProcessState::Crashloop | ProcessState::Failed)
    }
}
