//! What a template sees: the node registry as plain values.
//!
//! - `node`: the node rendering it;
//! - `nodes`: the configured nodes that are running, by name;
//! - `all_nodes`: every configured node, running or not;
//! - `host`: this host's `name` and its `ip` on the internal bridge.
//!
//! Each node has `name`, `role`, `ip`, `running`, `health`, `allow` (its role's rules: `from`,
//! `ports`) and `ports` (every port those rules open: what the node serves to the others), and
//! `ssh_keys` (its role's public keys by user, e.g. `node.ssh_keys["www-data"]`).
//!
//! `health` is what the node's init's checks say: `healthy`, `unhealthy`, `starting` (no verdict
//! yet), `none` (its role has no check), or `unknown` (not running, or not asked yet).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::config::{Config, NodeSpec};

/// The running nodes, each with its health (see the module's documentation for the values).
pub type Running = BTreeMap<String, String>;

/// The health of a node that is not running.
pub const HEALTH_UNKNOWN: &str = "unknown";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Context {
    pub node: NodeView,
    pub nodes: Vec<NodeView>,
    pub all_nodes: Vec<NodeView>,
    pub host: HostView,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeView {
    pub name: String,
    pub role: String,
    pub ip: String,
    pub running: bool,
    pub health: String,
    pub ports: Vec<u16>,
    pub allow: Vec<AllowView>,
    /// Public keys by user, from the role's `ssh_keys`.
    pub ssh_keys: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AllowView {
    pub from: Vec<String>,
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostView {
    pub name: String,
    pub ip: String,
}

impl Context {
    /// The view of `spec` with the nodes named in `running` up, in the health given there.
    pub fn new(config: &Config, spec: &NodeSpec, running: &Running) -> Context {
        let all_nodes: Vec<NodeView> = config
            .nodes
            .values()
            .map(|node| NodeView::new(node, running.get(&node.name)))
            .collect();
        Context {
            node: NodeView::new(spec, running.get(&spec.name)),
            nodes: all_nodes.iter().filter(|n| n.running).cloned().collect(),
            all_nodes,
            host: HostView {
                name: config.host.name.clone(),
                ip: config.network.host_ip.to_string(),
            },
        }
    }
}

impl NodeView {
    fn new(spec: &NodeSpec, health: Option<&String>) -> NodeView {
        let ports: BTreeSet<u16> = spec
            .definition
            .allow
            .iter()
            .flat_map(|rule| rule.ports.iter().copied())
            .collect();
        NodeView {
            name: spec.name.clone(),
            role: spec.role.clone(),
            ip: spec.ip().to_string(),
            running: health.is_some(),
            health: health.map_or(HEALTH_UNKNOWN, String::as_str).to_string(),
            ports: ports.into_iter().collect(),
            allow: spec
                .definition
                .allow
                .iter()
                .map(|rule| AllowView {
                    from: rule.from.clone(),
                    ports: rule.ports.clone(),
                })
                .collect(),
            ssh_keys: spec.definition.ssh_keys.clone(),
        }
    }
}
