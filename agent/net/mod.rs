//! The internal network: the host bridge, each node's veth (its `eth0` created directly in the
//! node's network namespace), fw1's public side and rules, the inter-node policy, and the names
//! every node sees.

mod firewall;
mod names;
mod netlink;
mod nft;
mod policy;

use std::os::fd::OwnedFd;

pub use firewall::render as render_firewall;
pub use names::{hosts_file, resolv_conf};
pub use netlink::Netlink;
pub use policy::{render as render_policy, table_name as policy_table};

use crate::config::{Config, NetworkSettings, NodeSpec};

/// The name of a node's network interface on the internal network, inside the node.
pub const NODE_INTERFACE: &str = "eth0";
/// fw1's public interface, inside the node.
pub const PUBLIC_INTERFACE: &str = "eth1";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{what}: {error}")]
    Netlink { what: String, error: String },
    #[error("{0} does not exist")]
    Missing(String),
    #[error("nft: {0}")]
    Nft(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl NetError {
    pub fn netlink(what: &str, error: impl std::fmt::Display) -> NetError {
        NetError::Netlink {
            what: what.to_string(),
            error: error.to_string(),
        }
    }
}

/// The host's side of the internal network.
#[derive(Debug, Clone)]
pub struct HostNetwork {
    pub settings: NetworkSettings,
}

impl HostNetwork {
    pub fn new(settings: NetworkSettings) -> Self {
        HostNetwork { settings }
    }

    /// `<prefix>-<node>`: the host end of the node's `eth0`.
    pub fn node_link(&self, node: &str) -> String {
        format!("{}-{node}", self.settings.link_prefix)
    }

    /// `<prefix>_<node>`: the host end of fw1's public veth (`uplink = "host"`).
    pub fn public_link(&self, node: &str) -> String {
        format!("{}_{node}", self.settings.link_prefix)
    }

    /// The bridge with the host's address, created if missing (idempotent); bridged traffic is
    /// sent through the host's netfilter hooks so the inter-node policy applies to it.
    pub fn ensure_bridge(&self) -> Result<(), NetError> {
        let netlink = Netlink::connect()?;
        netlink.ensure_bridge(
            &self.settings.bridge,
            self.settings.host_ip,
            self.settings.subnet.prefix,
        )?;
        let sysctl = "/proc/sys/net/bridge/bridge-nf-call-iptables";
        match std::fs::read_to_string(sysctl) {
            Ok(value) if value.trim() == "1" => Ok(()),
            Ok(_) => std::fs::write(sysctl, "1").map_err(|source| NetError::Io {
                what: format!("enable {sysctl}"),
                source,
            }),
            Err(source) => Err(NetError::Io {
                what: format!("{sysctl} (is br_netfilter available?)"),
                source,
            }),
        }
    }

    /// Connects a freshly cloned node: veth to the bridge with `eth0` made inside the node,
    /// loopback up, address, default route; for fw1 also the public side and its rules.
    pub fn attach(&self, spec: &NodeSpec, init_pid: i32) -> Result<(), NetError> {
        let netns = open_netns(init_pid)?;
        let host = Netlink::connect()?;
        let bridge = host
            .link_index(&self.settings.bridge)?
            .ok_or_else(|| NetError::Missing(format!("bridge {}", self.settings.bridge)))?;
        host.add_veth(
            &self.node_link(&spec.name),
            Some(bridge),
            NODE_INTERFACE,
            &netns,
        )?;
        let public = spec.network.public.as_ref();
        if let Some(public) = public {
            if public.uplink == "host" {
                let link = self.public_link(&spec.name);
                host.add_veth(&link, None, PUBLIC_INTERFACE, &netns)?;
                host.address_link(&link, public.gateway, public.address.prefix)?;
            } else {
                host.add_macvlan(&public.uplink, PUBLIC_INTERFACE, &netns)?;
            }
        }
        let address = spec.network.address;
        let gateway = spec.network.gateway;
        netlink::in_namespace(&netns, move |node| {
            let loopback = node
                .link_index("lo")?
                .ok_or_else(|| NetError::Missing("lo".into()))?;
            node.set_up(loopback, "lo")?;
            node.address_link(NODE_INTERFACE, address.address, address.prefix)?;
            if let Some(public) = public {
                node.address_link(
                    PUBLIC_INTERFACE,
                    public.address.address,
                    public.address.prefix,
                )?;
                node.default_route(public.gateway)?;
                // /proc/sys/net belongs to the namespace of the thread that opens it.
                std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|source| {
                    NetError::Io {
                        what: "enable forwarding in the gateway node".into(),
                        source,
                    }
                })?;
            } else if let Some(gateway) = gateway {
                node.default_route(gateway)?;
            }
            Ok(())
        })?;
        if let Some(public) = public {
            nft::apply(&firewall::render(public), Some(&netns))?;
        }
        Ok(())
    }

    /// Removes a node's host-side links (their peers go with them). Idempotent.
    pub fn detach(&self, node: &str) -> Result<(), NetError> {
        let host = Netlink::connect()?;
        host.delete_link(&self.node_link(node))?;
        host.delete_link(&self.public_link(node))
    }

    /// Nodes that have host-side links, by the link names' prefix.
    pub fn nodes_with_links(&self) -> Result<Vec<String>, NetError> {
        let prefix = &self.settings.link_prefix;
        let names = Netlink::connect()?.link_names()?;
        let mut nodes: Vec<String> = names
            .iter()
            .filter_map(|name| {
                name.strip_prefix(prefix.as_str())
                    .and_then(|rest| rest.strip_prefix('-').or_else(|| rest.strip_prefix('_')))
                    .map(str::to_string)
            })
            .collect();
        nodes.sort();
        nodes.dedup();
        Ok(nodes)
    }

    /// Replaces the inter-node policy table in one atomic nft transaction.
    pub fn apply_policy(&self, config: &Config) -> Result<(), NetError> {
        nft::apply(&policy::render(config), None)
    }

    /// Removes the policy table (used when the host network is torn down).
    pub fn remove_policy(&self) -> Result<(), NetError> {
        let table = policy::table_name(&self.settings.bridge);
        nft::apply(
            &format!("table inet {table}\ndelete table inet {table}\n"),
            None,
        )
    }
}

fn open_netns(pid: i32) -> Result<OwnedFd, NetError> {
    let path = format!("/proc/{pid}/ns/net");
    std::fs::File::open(&path)
        .map(OwnedFd::from)
        .map_err(|source| NetError::Io {
            what: format!("open {path}"),
            source,
        })
}
