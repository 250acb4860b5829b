//! The configuration exactly as written: serde shapes that refuse unknown fields, with spans kept
//! for the values that later checks may need to point at.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub host: RawHost,
    #[serde(default)]
    pub network: RawNetwork,
    pub nodes: Option<BTreeMap<Spanned<String>, RawNode>>,
    #[serde(default)]
    pub roles: BTreeMap<Spanned<String>, RawRole>,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub logs: RawLogs,
    #[serde(default)]
    pub pair: RawPair,
    /// The stack's id slots: a node (or `@<role>` for a role's shared volumes) to its slot.
    pub slots: Option<Spanned<BTreeMap<Spanned<String>, Spanned<i64>>>>,
}

/// The pair link with the partner host; off unless `listen` is set.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPair {
    pub listen: Option<Spanned<String>>,
    pub heartbeat: Option<Spanned<String>>,
    pub lease: Option<Spanned<String>>,
    pub fence_margin: Option<Spanned<String>>,
    pub fence_command: Option<Spanned<Vec<String>>>,
    pub alert_command: Option<Spanned<Vec<String>>>,
}

/// Rotation of the nodes' process output files.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLogs {
    pub max_size: Option<Spanned<String>>,
    pub keep: Option<Spanned<i64>>,
}

/// The Prometheus endpoint; off unless `listen` is set.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHost {
    pub name: Option<Spanned<String>>,
    pub state_dir: Option<Spanned<String>>,
    /// Where images are stored; `state_dir/images` unless given.
    pub image_dir: Option<Spanned<String>>,
    /// Which tool builds images from recipes: `auto` (the default), `mmdebstrap`, `debootstrap`.
    pub image_builder: Option<Spanned<String>>,
    pub run_dir: Option<Spanned<String>>,
    pub log_dir: Option<Spanned<String>>,
    pub cgroup: Option<Spanned<String>>,
    pub stop_timeout: Option<Spanned<String>>,
    /// The first host id of the nodes' id ranges.
    pub id_base: Option<Spanned<i64>>,
    /// Where the stack (nodes and roles shared with the partner) is: relative to this file's
    /// directory, or absolute; `stack.toml` beside it unless given.
    pub stack: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub bridge: Option<Spanned<String>>,
    pub subnet: Option<Spanned<String>>,
    pub host_ip: Option<Spanned<String>>,
    pub uplink: Option<Spanned<String>>,
    pub public_ip: Option<Spanned<String>>,
    pub public_gateway: Option<Spanned<String>>,
    /// Host-side link names are `<link_prefix>-<node>` (and `<link_prefix>_<node>` for fw1's
    /// public link); one or two characters.
    pub link_prefix: Option<Spanned<String>>,
    pub dos: Option<RawDos>,
    pub forward: Option<Vec<RawForward>>,
}

/// The DOS filter on fw1: new connections per second allowed from one source address.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDos {
    pub rate: Option<Spanned<i64>>,
    pub burst: Option<Spanned<i64>>,
    #[serde(default)]
    pub whitelist: Vec<Spanned<String>>,
}

/// A public port fw1 forwards to a node, optionally only from listed source networks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    pub port: Spanned<i64>,
    pub to: Spanned<String>,
    #[serde(default)]
    pub from: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub role: Spanned<String>,
    /// The node's home host; the host that first commits it into the stack unless given.
    pub host: Option<Spanned<String>>,
    pub ip: Option<Spanned<String>>,
    pub resources: Option<RawResources>,
}

/// A role as written, in a shipped `roles/<role>.toml` or inline under `[roles.<role>]`; every
/// field is optional so an inline definition can override only what it names.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRole {
    /// Words for the operator reading the file; accepted and not used.
    #[serde(default, rename = "description")]
    pub _description: Option<String>,
    pub image: Option<Spanned<String>>,
    /// The bounding set of the role's processes (replaces the default).
    pub capabilities: Option<Spanned<Vec<String>>>,
    /// Opt out of the user namespace; only with a stated reason.
    pub privileged: Option<Spanned<bool>>,
    pub privileged_reason: Option<String>,
    pub process: Option<Vec<RawProcess>>,
    pub resources: Option<RawResources>,
    pub volume: Option<Vec<RawVolume>>,
    pub health: Option<RawHealth>,
    pub allow: Option<Vec<RawAllow>>,
    pub template: Option<Vec<RawTemplate>>,
    /// Public keys by user, offered to the role's templates as `node.ssh_keys` (the acc role
    /// renders them into its authorized_keys files).
    pub ssh_keys: Option<RawSshKeys>,
}

/// `user = ["<type> <base64> [comment]", ...]`, each user and key with its place.
pub type RawSshKeys = BTreeMap<Spanned<String>, Vec<Spanned<String>>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProcess {
    pub name: Spanned<String>,
    pub command: Spanned<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<Spanned<String>, String>,
    pub user: Option<String>,
    pub restart: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawResources {
    pub memory: Option<Spanned<String>>,
    /// Space for the node's writable layer and its own volumes together (btrfs quota group).
    pub disk: Option<Spanned<String>>,
    pub cpus: Option<Spanned<f64>>,
    pub pids: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVolume {
    pub name: Spanned<String>,
    pub path: Spanned<String>,
    pub shared: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub tcp: Option<Spanned<i64>>,
    pub http: Option<Spanned<String>>,
    pub exec: Option<Spanned<Vec<String>>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub healthy_after: Option<Spanned<i64>>,
    pub unhealthy_after: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAllow {
    pub from: Spanned<Vec<String>>,
    pub ports: Spanned<Vec<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTemplate {
    pub source: Spanned<String>,
    pub dest: Spanned<String>,
    /// The role process told to re-read its configuration when the rendered file changes.
    pub reload_process: Option<Spanned<String>>,
    /// The signal it is sent; HUP unless given.
    pub reload_signal: Option<Spanned<String>>,
}
