//! The internal network: the host bridge, each node's veth (its `eth0` created directly in the
//! node's network namespace), fw1's public side and rules, the inter-node policy, and the names
//! every node sees.

pub mod fence;
mod firewall;
mod garp;
mod host_view;
mod monitor;
mod names;
mod netlink;
mod nft;
mod policy;
mod ports;
mod repair;

use std::os::fd::OwnedFd;

pub use firewall::render as render_firewall;
pub use host_view::read_host_view;
pub use monitor::watch_links;
pub use names::{hosts_file, resolv_conf};
pub use netlink::{Netlink, PeerIdentity};
pub use policy::{render as render_policy, table_name as policy_table};
pub use repair::{plan as plan_repairs, Observed, Repair, RunningNode};

use crate::config::{Config, NetworkSettings, NodeNetwork, NodeSpec, PublicSide};

/// The name of a node's network interface on the internal network, inside the node.
pub const NODE_INTERFACE: &str = "eth0";
/// The index `eth0` is given in its node's namespace, where only `lo` (1) exists before it.
pub const NODE_INTERFACE_INDEX: u32 = 2;
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
pub struct HostNetwork {
    pub settings: NetworkSettings,
    /// One netlink connection in the host's namespace, shared by every start and stop.
    host: std::sync::Mutex<Option<Netlink>>,
    /// The bridge's interface index once looked up (0: not yet). Looking it up by name costs
    /// more than creating the veth; it is looked up again when a creation fails.
    bridge_index: std::sync::atomic::AtomicU32,
}

impl HostNetwork {
    pub fn new(settings: NetworkSettings) -> Self {
        HostNetwork {
            settings,
            host: std::sync::Mutex::new(None),
            bridge_index: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// `<prefix>-<node>`: the host end of the node's `eth0`.
    pub fn node_link(&self, node: &str) -> String {
        format!("{}-{node}", self.settings.link_prefix)
    }

    /// `<prefix>_<node>`: the host end of fw1's public veth (`uplink = "host"`).
    pub fn public_link(&self, node: &str) -> String {
        public_link(&self.settings.link_prefix, node)
    }

    /// The bridge with the host's address, created if missing (idempotent); bridged traffic is
    /// sent through the host's netfilter hooks so the inter-node policy applies to it.
    pub fn ensure_bridge(&self) -> Result<(), NetError> {
        self.bridge_index
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.with_host(|host| {
            host.ensure_bridge(
                &self.settings.bridge,
                self.settings.host_ip,
                self.settings.subnet.prefix,
            )
        })?;
        disable_ipv6(&self.settings.bridge)?;
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

    /// The host side of a freshly cloned node: a veth on the bridge whose other end is created
    /// directly in the node's network namespace as `eth0` (no move between namespaces), and for
    /// fw1 its public link and rules. The node's init configures the inside (see
    /// [`configure_inside`]).
    pub fn attach(&self, spec: &NodeSpec, init_pid: i32) -> Result<(), NetError> {
        let netns = open_netns(init_pid)?;
        self.with_host(|host| self.attach_links(host, spec, &netns, Present::default()))
    }

    /// The host side of a node started in the network namespace its previous init left
    /// (`runtime/sandbox.rs`): links still there are kept, missing ones made again, and fw1's
    /// rules applied again (one atomic replacement: a process of fw1 may have changed them).
    /// True when every link was still there.
    ///
    /// Host links are looked up with `if_nametoindex` (an ioctl the kernel answers under RCU),
    /// not netlink, which waits for the RTNL lock that a namespace being torn down elsewhere
    /// holds for milliseconds.
    pub fn reattach(&self, spec: &NodeSpec, init_pid: i32) -> Result<bool, NetError> {
        let netns = open_netns(init_pid)?;
        let on_host = |link: &str| nix::net::if_::if_nametoindex(link).is_ok();
        let present = Present {
            node: on_host(&self.node_link(&spec.name)),
            public: match &spec.network.public {
                None => true,
                Some(public) if public.uplink == "host" => on_host(&self.public_link(&spec.name)),
                Some(_) => link_inside(&netns, PUBLIC_INTERFACE)?,
            },
        };
        if present.node && spec.network.public.is_none() {
            return Ok(true);
        }
        self.with_host(|host| self.attach_links(host, spec, &netns, present))?;
        Ok(present.node && present.public)
    }

    fn attach_links(
        &self,
        host: &Netlink,
        spec: &NodeSpec,
        netns: &OwnedFd,
        present: Present,
    ) -> Result<(), NetError> {
        if !present.node {
            self.add_node_link(host, spec, netns)?;
        }
        if let Some(public) = spec.network.public.as_ref() {
            if !present.public {
                self.add_public_link(host, spec, public, netns)?;
            }
            nft::apply(&firewall::render(public), Some(netns))?;
        }
        Ok(())
    }

    /// fw1's public link: a veth whose host end is the public side's gateway, or a macvlan
    /// on the uplink.
    fn add_public_link(
        &self,
        host: &Netlink,
        spec: &NodeSpec,
        public: &PublicSide,
        netns: &OwnedFd,
    ) -> Result<(), NetError> {
        if public.uplink != "host" {
            return host.add_macvlan(&public.uplink, PUBLIC_INTERFACE, netns);
        }
        let link = self.public_link(&spec.name);
        host.delete_link(&link)?;
        host.add_veth(
            &link,
            None,
            PUBLIC_INTERFACE,
            PeerIdentity::default(),
            netns,
        )?;
        disable_ipv6(&link)?;
        host.address_link(&link, public.gateway, public.address.prefix)
            .map(drop)
    }

    /// The node's veth: the host end on the bridge, `eth0` in the node.
    fn add_node_link(
        &self,
        host: &Netlink,
        spec: &NodeSpec,
        netns: &OwnedFd,
    ) -> Result<(), NetError> {
        let eth0 = repair::node_peer(&spec.network);
        self.attach_node_link(host, &spec.name, eth0, netns)
    }

    /// The node's veth: the host end on the bridge, `eth0` (as `eth0` says) made directly in
    /// the node's network namespace `netns`, IPv6 off on the host end.
    fn attach_node_link(
        &self,
        host: &Netlink,
        node: &str,
        eth0: PeerIdentity,
        netns: &OwnedFd,
    ) -> Result<(), NetError> {
        let bridge = self.bridge_index(host)?;
        let link = self.node_link(node);
        if let Err(error) = host.add_veth(&link, Some(bridge), NODE_INTERFACE, eth0, netns) {
            tracing::debug!(node, "creating {link} again: {error}");
            // A link of the node's previous life still goes away with its old namespace, and
            // may be gone by the time we look (churn hits that window): remove it if it is
            // still there and try once more. The bridge may have been made again meanwhile.
            self.bridge_index
                .store(0, std::sync::atomic::Ordering::Relaxed);
            let bridge = self.bridge_index(host)?;
            host.delete_link(&link)?;
            host.add_veth(&link, Some(bridge), NODE_INTERFACE, eth0, netns)?;
        }
        disable_ipv6(&link)
    }

    /// Runs `work` on the shared host netlink connection, connecting on first use. After a
    /// failure the connection is dropped: an exchange cut short may leave answers or a running
    /// dump on it (the next dump would be refused), so the next caller starts afresh.
    fn with_host<T>(
        &self,
        work: impl FnOnce(&Netlink) -> Result<T, NetError>,
    ) -> Result<T, NetError> {
        let mut guard = self.host.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(Netlink::connect()?);
        }
        let result = work(guard.as_ref().expect("connected"));
        if result.is_err() {
            *guard = None;
        }
        result
    }

    fn bridge_index(&self, host: &Netlink) -> Result<u32, NetError> {
        use std::sync::atomic::Ordering;
        match self.bridge_index.load(Ordering::Relaxed) {
            0 => {
                let index = host
                    .link_index(&self.settings.bridge)?
                    .ok_or_else(|| NetError::Missing(format!("bridge {}", self.settings.bridge)))?;
                self.bridge_index.store(index, Ordering::Relaxed);
                Ok(index)
            }
            index => Ok(index),
        }
    }

    /// Removes a node's host-side links (their peers go with them). Idempotent.
    pub fn detach(&self, node: &str) -> Result<(), NetError> {
        self.with_host(|host| {
            host.delete_link(&self.node_link(node))?;
            host.delete_link(&self.public_link(node))
        })
    }

    /// Replaces the inter-node policy and the nodes' port rules in one atomic nft transaction.
    pub fn apply_policy(&self, config: &Config) -> Result<(), NetError> {
        let rules = policy::render(config) + &ports::render(config);
        nft::apply(&rules, None)
    }

    /// Removes the policy and port tables (used when the host network is torn down).
    pub fn remove_policy(&self) -> Result<(), NetError> {
        let table = policy::table_name(&self.settings.bridge);
        nft::apply(
            &format!(
                "table inet {table}\ndelete table inet {table}\ntable bridge {table}\ndelete table bridge {table}\n"
            ),
            None,
        )
    }
}

/// Which of a node's links exist already (in a network namespace kept from its previous init).
#[derive(Debug, Default, Clone, Copy)]
struct Present {
    /// The node's veth (host end on the bridge, `eth0` inside).
    node: bool,
    /// fw1's public link.
    public: bool,
}

/// Whether the network namespace `netns` has a link named `name`, asked from a thread that
/// joins it (a thread's network namespace is its own).
fn link_inside(netns: &OwnedFd, name: &str) -> Result<bool, NetError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                    |errno| NetError::Io {
                        what: "join the node's network namespace".into(),
                        source: errno.into(),
                    },
                )?;
                Ok(Netlink::connect()?.link_index(name)?.is_some())
            })
            .join()
            .unwrap_or_else(|_| Err(NetError::netlink("look for a link in the node", "panicked")))
    })
}

/// `<prefix>_<node>`: the host end of a gateway node's public veth (`uplink = "host"`).
pub fn public_link(prefix: &str, node: &str) -> String {
    format!("{prefix}_{node}")
}

/// Run by the node's init inside its network namespace (where it holds CAP_NET_ADMIN): loopback
/// up, `eth0` addressed and up, the default route, and for fw1 its public address and
/// forwarding.
pub fn configure_inside(network: &NodeNetwork) -> Result<(), NetError> {
    // Before any link is up: no link-local address, so no IPv6 path the policy does not plan
    // (loopback keeps ::1, which leaves no namespace).
    let public = network.public.as_ref().map(|_| PUBLIC_INTERFACE);
    for interface in ["default", NODE_INTERFACE].into_iter().chain(public) {
        disable_ipv6(interface)?;
    }
    configure_links(network)?;
    if network.public.is_some() {
        // /proc/sys/net belongs to the namespace of the process that opens it.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|source| NetError::Io {
            what: "enable forwarding in the gateway node".into(),
            source,
        })?;
    }
    Ok(())
}

/// The node's links addressed and up with its routes, from inside its namespace; what is
/// there already is fine, so this also brings a fenced node's links back (the kernel dropped
/// their routes when they went down).
fn configure_links(network: &NodeNetwork) -> Result<(), NetError> {
    let node = Netlink::connect()?;
    // fw1's default route leaves by its public link, made ready below.
    let gateway = match network.public {
        Some(_) => None,
        None => network.gateway,
    };
    node.configure_node_link(
        NODE_INTERFACE_INDEX,
        network.address.address,
        network.address.prefix,
        NODE_INTERFACE,
        gateway,
    )?;
    if let Some(public) = &network.public {
        node.address_link(
            PUBLIC_INTERFACE,
            public.address.address,
            public.address.prefix,
        )?;
        node.default_route(public.gateway)?;
    }
    Ok(())
}

/// Turns IPv6 off on an interface (or `all`/`default`) of the caller's network namespace: the
/// internal network and the policy are IPv4, and a link-local IPv6 address (predictable from
/// the MAC) would be a way around both. A kernel without IPv6 has nothing to turn off.
fn disable_ipv6(interface: &str) -> Result<(), NetError> {
    let sysctl = format!("/proc/sys/net/ipv6/conf/{interface}/disable_ipv6");
    match std::fs::write(&sysctl, "1") {
        Err(error)
            if error.kind() == std::io::ErrorKind::NotFound
                && !std::path::Path::new("/proc/sys/net/ipv6").exists() =>
        {
            Ok(())
        }
        result => result.map_err(|source| NetError::Io {
            what: format!("turn IPv6 off: {sysctl}"),
            source,
        }),
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
