//! Putting back what went missing of the internal network while nodes run: the bridge (and
//! its address), a node's port on it, a node's link. Observed once, planned as data, then
//! applied; what cannot be put back from outside the node restarts it.
//!
//! - A deleted bridge takes no port with it: the nodes' links stay, detached. The bridge is
//!   made again and they are attached to it.
//! - A deleted veth end takes its peer, the node's `eth0`, with it. The pair is made again with
//!   `eth0` directly in the node's namespace (same MAC), and `eth0` is configured from
//!   a thread of the daemon inside that namespace: the node's processes keep running.
//! - fw1's public link on the host (`uplink = "host"`) carries its public address, routes and
//!   firewall: fw1 restarts to have them made whole.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

use super::netlink::{LinkState, Netlink, PeerIdentity};
use super::{
    disable_ipv6, open_netns, HostNetwork, NetError, NODE_INTERFACE, NODE_INTERFACE_INDEX,
};
use crate::config::NodeNetwork;

/// A running node as the audit needs it.
pub struct RunningNode<'a> {
    pub name: &'a str,
    pub init_pid: i32,
    pub network: &'a NodeNetwork,
}

/// What the audit found of the host's side.
#[derive(Debug, Default)]
pub struct Observed {
    pub bridge: Option<LinkState>,
    pub bridge_addressed: bool,
    /// Every link the audit looked up by name, present or not.
    pub links: BTreeMap<String, Option<LinkState>>,
}

/// One repair, and the node it is for (none for the bridge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// The bridge is gone or lost its address: make it whole again.
    Bridge,
    /// The node's link is there but on no bridge, or another one.
    Reattach { node: String },
    /// The node's link is gone, and its `eth0` with it.
    Relink { node: String },
    /// What cannot be put back from outside: the node restarts.
    Restart { node: String, reason: String },
}

impl Repair {
    pub fn node(&self) -> Option<&str> {
        match self {
            Repair::Bridge => None,
            Repair::Reattach { node } | Repair::Relink { node } | Repair::Restart { node, .. } => {
                Some(node)
            }
        }
    }

    /// Why the node is degraded until the repair is done.
    pub fn reason(&self) -> String {
        match self {
            Repair::Bridge => "the bridge was gone".into(),
            Repair::Reattach { .. } => "its link was off the bridge".into(),
            Repair::Relink { .. } => "its link (eth0) was gone".into(),
            Repair::Restart { reason, .. } => reason.clone(),
        }
    }
}

/// The repairs `observed` calls for, bridge first (a relinked node needs it).
pub fn plan(observed: &Observed, network: &HostNetwork, nodes: &[RunningNode<'_>]) -> Vec<Repair> {
    let mut repairs = Vec::new();
    if observed.bridge.is_none() || !observed.bridge_addressed {
        repairs.push(Repair::Bridge);
    }
    let bridge = observed.bridge.map(|bridge| bridge.index);
    for node in nodes {
        let name = node.name.to_string();
        let public_lost = node.network.public.as_ref().is_some_and(|public| {
            public.uplink == "host"
                && matches!(
                    observed.links.get(&network.public_link(node.name)),
                    Some(None)
                )
        });
        if public_lost {
            repairs.push(Repair::Restart {
                node: name,
                reason: "its public link was gone: restarted to make it again".into(),
            });
            continue;
        }
        match observed.links.get(&network.node_link(node.name)) {
            Some(None) => repairs.push(Repair::Relink { node: name }),
            Some(Some(link)) if bridge.is_none() || link.controller != bridge => {
                repairs.push(Repair::Reattach { node: name })
            }
            _ => {}
        }
    }
    repairs
}

impl HostNetwork {
    /// Looks at the bridge and at every running node's links on the host.
    pub fn observe(&self, nodes: &[RunningNode<'_>]) -> Result<Observed, NetError> {
        self.with_host(|host| {
            let bridge = host.link_state(&self.settings.bridge)?;
            let bridge_addressed = match bridge {
                Some(bridge) => host.has_address(bridge.index, self.settings.host_ip)?,
                None => false,
            };
            let mut links = BTreeMap::new();
            for node in nodes {
                let mut names = vec![self.node_link(node.name)];
                if node.network.public.is_some() {
                    names.push(self.public_link(node.name));
                }
                for name in names {
                    let state = host.link_state(&name)?;
                    links.insert(name, state);
                }
            }
            Ok(Observed {
                bridge,
                bridge_addressed,
                links,
            })
        })
    }

    /// Applies one repair (not `Restart`, which is the core's to do).
    pub fn repair(&self, repair: &Repair, nodes: &[RunningNode<'_>]) -> Result<(), NetError> {
        let node = |name: &str| {
            nodes
                .iter()
                .find(|node| node.name == name)
                .ok_or_else(|| NetError::Missing(format!("running node {name}")))
        };
        match repair {
            Repair::Bridge => self.ensure_bridge(),
            Repair::Reattach { node } => {
                let link = self.node_link(node);
                self.with_host(|host| {
                    let bridge = self.bridge_index(host)?;
                    let index = host
                        .link_index(&link)?
                        .ok_or_else(|| NetError::Missing(format!("link {link}")))?;
                    host.set_controller(index, bridge, &link)
                })
            }
            Repair::Relink { node: name } => {
                let node = node(name)?;
                let netns = open_netns(node.init_pid)?;
                // Any index: the first eth0's may still be held while the kernel lets go of it.
                let eth0 = PeerIdentity {
                    index: None,
                    ..node_peer(node.network)
                };
                self.with_host(|host| self.attach_node_link(host, node.name, eth0, &netns))?;
                configure_node_link_inside(&netns, node.network)
            }
            Repair::Restart { node, .. } => Err(NetError::Missing(format!(
                "a repair of {node} from outside (it restarts)"
            ))),
        }
    }
}

/// `eth0` of a relinked node: addressed, up, its default route, no IPv6; from a thread of the
/// daemon that joined the node's network namespace (its socket and /proc/sys/net are the
/// node's then).
fn configure_node_link_inside(netns: &OwnedFd, network: &NodeNetwork) -> Result<(), NetError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                    NetError::Io {
                        what: "enter the node's network namespace".into(),
                        source: e.into(),
                    }
                })?;
                disable_ipv6(NODE_INTERFACE)?;
                // fw1's default route leaves by its public link, which is still there.
                let gateway = network.public.as_ref().map_or(network.gateway, |_| None);
                let node = Netlink::connect()?;
                let index = node
                    .link_index(NODE_INTERFACE)?
                    .ok_or_else(|| NetError::Missing(format!("{NODE_INTERFACE} in the node")))?;
                node.configure_node_link(
                    index,
                    network.address.address,
                    network.address.prefix,
                    NODE_INTERFACE,
                    gateway,
                )
            })
            .join()
            .unwrap_or_else(|_| Err(NetError::Missing("the repair thread".into())))
    })
}

/// A node's `eth0`: index 2 in a fresh namespace (the node configures it without looking it
/// up), and the MAC its address gives it, so neighbours' entries stay right.
pub(super) fn node_peer(network: &NodeNetwork) -> PeerIdentity {
    PeerIdentity {
        index: Some(NODE_INTERFACE_INDEX),
        mac: Some(super::netlink::node_mac(network.address.address)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default node set's fw1 (public side on the host) and web1, on the default network.
    fn default_set() -> (HostNetwork, crate::config::Config) {
        let config = crate::config::load(None).unwrap();
        (HostNetwork::new(config.network.clone()), config)
    }

    fn running<'a>(config: &'a crate::config::Config, names: &[&'a str]) -> Vec<RunningNode<'a>> {
        names
            .iter()
            .map(|name| RunningNode {
                name,
                init_pid: 1,
                network: &config.nodes[*name].network,
            })
            .collect()
    }

    fn link(index: u32, controller: Option<u32>) -> Option<LinkState> {
        Some(LinkState { index, controller })
    }

    fn whole() -> Observed {
        Observed {
            bridge: link(10, None),
            bridge_addressed: true,
            links: [
                ("ms-fw1".to_string(), link(11, Some(10))),
                ("ms_fw1".to_string(), link(12, None)),
                ("ms-web1".to_string(), link(13, Some(10))),
            ]
            .into(),
        }
    }

    #[test]
    fn a_whole_network_needs_nothing() {
        let (network, config) = default_set();
        let nodes = running(&config, &["fw1", "web1"]);
        assert_eq!(plan(&whole(), &network, &nodes), []);
    }

    #[test]
    fn a_lost_bridge_is_made_again_and_every_link_attached() {
        let (network, config) = default_set();
        let nodes = running(&config, &["fw1", "web1"]);
        let mut observed = whole();
        observed.bridge = None;
        observed.bridge_addressed = false;
        assert_eq!(
            plan(&observed, &network, &nodes),
            [
                Repair::Bridge,
                Repair::Reattach { node: "fw1".into() },
                Repair::Reattach {
                    node: "web1".into()
                },
            ]
        );
        let mut observed = whole();
        observed.bridge_addressed = false;
        assert_eq!(plan(&observed, &network, &nodes), [Repair::Bridge]);
    }

    #[test]
    fn a_lost_link_is_made_again_and_a_lost_public_link_restarts_the_gateway() {
        let (network, config) = default_set();
        let nodes = running(&config, &["fw1", "web1"]);
        let mut observed = whole();
        observed.links.insert("ms-web1".into(), None);
        observed.links.insert("ms-fw1".into(), link(11, Some(99)));
        assert_eq!(
            plan(&observed, &network, &nodes),
            [
                Repair::Reattach { node: "fw1".into() },
                Repair::Relink {
                    node: "web1".into()
                },
            ]
        );
        observed.links.insert("ms_fw1".into(), None);
        let repairs = plan(&observed, &network, &nodes);
        assert!(
            matches!(&repairs[0], Repair::Restart { node, reason } if node == "fw1" && reason.contains("public link")),
            "{repairs:?}"
        );
        assert_eq!(repairs.len(), 2, "{repairs:?}");
    }
}
