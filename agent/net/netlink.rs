//! Blocking links, addresses and routes over rtnetlink, for the runtime's blocking callers.
//!
//! Each operation runs on a current-thread tokio runtime of its own. Work inside a node's
//! network namespace runs on a short-lived thread that joins that namespace first, so no
//! long-lived thread ever changes namespace.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoMacVlan, InfoVeth, LinkAttribute, LinkMessage, MacVlanMode,
};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use super::NetError;

/// What a veth's far end is given at creation beyond its name; `None` leaves it to the kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerIdentity {
    pub index: Option<u32>,
    pub mac: Option<[u8; 6]>,
}

/// The MAC address of a node's `eth0`, from its IPv4 address: the same across restarts, so
/// the host's and the other nodes' neighbour entries stay right when a node comes back (a new
/// random one would leave them pointing at the old link for up to half a minute).
pub fn node_mac(address: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = address.octets();
    [0x02, 0x6e, a, b, c, d]
}

/// `/sys/class/net/<link>/addr_assign_type` of an address set by hand (NET_ADDR_SET).
const NET_ADDR_SET: &str = "3";

/// A locally administered unicast MAC address for the bridge, the same for the same name.
pub fn bridge_mac(name: &str) -> [u8; 6] {
    // FNV-1a: stable across builds and Rust versions, unlike the standard library's hasher.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    let bytes = hash.to_be_bytes();
    [0x02, 0x6d, bytes[0], bytes[1], bytes[2], bytes[3]]
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The loopback device is always the first link of a network namespace.
const LOOPBACK_INDEX: u32 = 1;

/// A netlink connection in the calling thread's network namespace.
pub struct Netlink {
    runtime: tokio::runtime::Runtime,
    handle: Handle,
}

impl Netlink {
    pub fn connect() -> Result<Netlink, NetError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| NetError::netlink("start netlink runtime", e))?;
        let handle = runtime.block_on(async {
            let (connection, handle, _) = rtnetlink::new_connection()
                .map_err(|e| NetError::netlink("open netlink socket", e))?;
            tokio::spawn(connection);
            Ok::<_, NetError>(handle)
        })?;
        Ok(Netlink { runtime, handle })
    }

    fn run<T>(
        &self,
        what: &str,
        future: impl Future<Output = Result<T, rtnetlink::Error>>,
    ) -> Result<T, NetError> {
        self.runtime
            .block_on(future)
            .map_err(|e| NetError::netlink(what, e))
    }

    /// The index of a link, or `None` when there is no such link.
    pub fn link_index(&self, name: &str) -> Result<Option<u32>, NetError> {
        let found = self.runtime.block_on(async {
            self.handle
                .link()
                .get()
                .match_name(name.to_string())
                .execute()
                .try_next()
                .await
        });
        match found {
            Ok(message) => Ok(message.map(|m| m.header.index)),
            Err(rtnetlink::Error::NetlinkError(error)) if error.raw_code() == -libc::ENODEV => {
                Ok(None)
            }
            Err(error) => Err(NetError::netlink(&format!("look up link {name}"), error)),
        }
    }

    /// Names of every link in this namespace.
    pub fn link_names(&self) -> Result<Vec<String>, NetError> {
        let messages: Vec<LinkMessage> = self.run("list links", async {
            self.handle.link().get().execute().try_collect().await
        })?;
        Ok(messages
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(name) => Some(name.clone()),
                    _ => None,
                })
            })
            .collect())
    }

    /// The bridge, created if missing, with `address` on it and up.
    pub fn ensure_bridge(
        &self,
        name: &str,
        address: Ipv4Addr,
        prefix: u8,
    ) -> Result<u32, NetError> {
        let index = match self.link_index(name)? {
            Some(index) => index,
            None => {
                // A MAC address of its own: left to the kernel, a bridge takes the lowest of
                // its ports' and changes it when a node's link with a lower one joins, and the
                // nodes' ARP entries for the host then point nowhere for seconds (replies to
                // the host are lost meanwhile).
                let message = LinkBridge::new(name)
                    .address(bridge_mac(name).to_vec())
                    .up()
                    .build();
                self.run(
                    &format!("create bridge {name}"),
                    self.handle.link().add(message).execute(),
                )?;
                self.link_index(name)?
                    .ok_or_else(|| NetError::Missing(format!("bridge {name} after creating it")))?
            }
        };
        self.pin_mac(index, name)?;
        self.ensure_address(index, address, prefix, name)?;
        self.set_up(index, name)?;
        Ok(index)
    }

    /// Makes a bridge made by someone else (or an older agent) keep its current MAC address:
    /// setting it, even to the same value, stops the kernel from changing it as ports join.
    fn pin_mac(&self, index: u32, name: &str) -> Result<(), NetError> {
        let sysfs = std::path::Path::new("/sys/class/net").join(name);
        let assigned = std::fs::read_to_string(sysfs.join("addr_assign_type")).unwrap_or_default();
        if assigned.trim() == NET_ADDR_SET {
            return Ok(());
        }
        let current =
            std::fs::read_to_string(sysfs.join("address")).map_err(|source| NetError::Io {
                what: format!("read the MAC address of {name}"),
                source,
            })?;
        let mac = parse_mac(current.trim())
            .ok_or_else(|| NetError::Missing(format!("a MAC address on {name}: {current:?}")))?;
        let message = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        self.run(
            &format!("pin the MAC address of {name}"),
            self.handle.link().set(message).execute(),
        )
    }

    fn ensure_address(
        &self,
        index: u32,
        address: Ipv4Addr,
        prefix: u8,
        link: &str,
    ) -> Result<(), NetError> {
        let added = self.runtime.block_on(
            self.handle
                .address()
                .add(index, IpAddr::V4(address), prefix)
                .execute(),
        );
        match added {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(error)) if error.raw_code() == -libc::EEXIST => {
                Ok(())
            }
            Err(error) => Err(NetError::netlink(
                &format!("add {address}/{prefix} to {link}"),
                error,
            )),
        }
    }

    pub fn set_up(&self, index: u32, link: &str) -> Result<(), NetError> {
        let message = LinkUnspec::new_with_index(index).up().build();
        self.run(
            &format!("set {link} up"),
            self.handle.link().set(message).execute(),
        )
    }

    /// A veth pair: `host_name` here, attached to `bridge` and up, and `peer_name` created
    /// directly in the network namespace `peer_netns`. The peer is brought up from inside its
    /// namespace: the kernel refuses (ENOTCONN) to open a veth end before its pair exists.
    /// `peer` may fix the peer's interface index in its namespace (so the node configures it
    /// without looking it up by name) and its MAC address.
    pub fn add_veth(
        &self,
        host_name: &str,
        bridge: Option<u32>,
        peer_name: &str,
        peer: PeerIdentity,
        peer_netns: &OwnedFd,
    ) -> Result<(), NetError> {
        let PeerIdentity { index, mac } = peer;
        let mut peer = LinkMessageBuilder::<LinkUnspec>::default()
            .name(peer_name.to_string())
            .setns_by_fd(peer_netns.as_fd().as_raw_fd());
        if let Some(index) = index {
            peer = peer.index(index);
        }
        if let Some(mac) = mac {
            peer = peer.address(mac.to_vec());
        }
        let peer = peer.build();
        let mut message = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(host_name.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .up();
        if let Some(bridge) = bridge {
            message = message.controller(bridge);
        }
        self.run(
            &format!("create veth {host_name} (peer {peer_name} in the node)"),
            self.handle.link().add(message.build()).execute(),
        )
    }

    /// A macvlan on `parent` created directly in the namespace `netns`, named `name`, up.
    pub fn add_macvlan(&self, parent: &str, name: &str, netns: &OwnedFd) -> Result<(), NetError> {
        let parent_index = self
            .link_index(parent)?
            .ok_or_else(|| NetError::Missing(format!("uplink {parent}")))?;
        let message = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::MacVlan)
            .name(name.to_string())
            .link(parent_index)
            .set_info_data(InfoData::MacVlan(vec![InfoMacVlan::Mode(
                MacVlanMode::Bridge,
            )]))
            .setns_by_fd(netns.as_fd().as_raw_fd())
            .up()
            .build();
        self.run(
            &format!("create macvlan {name} on {parent}"),
            self.handle.link().add(message).execute(),
        )
    }

    /// Deletes a link by name; a link that is already gone is fine.
    pub fn delete_link(&self, name: &str) -> Result<(), NetError> {
        let Some(index) = self.link_index(name)? else {
            return Ok(());
        };
        match self
            .runtime
            .block_on(self.handle.link().del(index).execute())
        {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(error)) if error.raw_code() == -libc::ENODEV => {
                Ok(())
            }
            Err(error) => Err(NetError::netlink(&format!("delete link {name}"), error)),
        }
    }

    /// A fresh node namespace's links in one go: `lo` up, and the link `index` addressed and up,
    /// as concurrent requests on the one connection (each would otherwise wait for the
    /// previous one's answer).
    pub fn configure_node_link(
        &self,
        index: u32,
        address: Ipv4Addr,
        prefix: u8,
        link: &str,
    ) -> Result<(), NetError> {
        let loopback = self
            .handle
            .link()
            .set(LinkUnspec::new_with_index(LOOPBACK_INDEX).up().build());
        let add_address = self
            .handle
            .address()
            .add(index, IpAddr::V4(address), prefix);
        let link_up = self
            .handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build());
        let (loopback, added, up) = self.runtime.block_on(async {
            futures_util::join!(loopback.execute(), add_address.execute(), link_up.execute())
        });
        loopback.map_err(|e| NetError::netlink("set lo up", e))?;
        match added {
            Err(rtnetlink::Error::NetlinkError(error)) if error.raw_code() == -libc::EEXIST => {}
            added => added
                .map_err(|e| NetError::netlink(&format!("add {address}/{prefix} to {link}"), e))?,
        }
        up.map_err(|e| NetError::netlink(&format!("set {link} up"), e))
    }

    /// Address on a link by name, and the link up.
    pub fn address_link(&self, name: &str, address: Ipv4Addr, prefix: u8) -> Result<u32, NetError> {
        let index = self
            .link_index(name)?
            .ok_or_else(|| NetError::Missing(format!("link {name}")))?;
        self.ensure_address(index, address, prefix, name)?;
        self.set_up(index, name)?;
        Ok(index)
    }

    pub fn default_route(&self, gateway: Ipv4Addr) -> Result<(), NetError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        self.run(
            &format!("default route via {gateway}"),
            self.handle.route().add(route).execute(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bridge_mac_is_stable_local_and_unicast() {
        let mac = bridge_mac("msbr0");
        assert_eq!(mac, bridge_mac("msbr0"));
        assert_ne!(mac, bridge_mac("msbr1"));
        assert_eq!(
            mac[0] & 0b11,
            0b10,
            "locally administered, unicast: {mac:02x?}"
        );
    }

    #[test]
    fn a_node_mac_follows_its_address_and_never_is_the_bridge_s() {
        let mac = node_mac("172.16.0.21".parse().unwrap());
        assert_eq!(mac, [0x02, 0x6e, 172, 16, 0, 21]);
        assert_eq!(mac[0] & 0b11, 0b10);
        assert_ne!(mac[1], bridge_mac("msbr0")[1]);
    }

    #[test]
    fn mac_addresses_parse_only_when_whole() {
        assert_eq!(
            parse_mac("02:6d:0a:ff:00:01"),
            Some([0x02, 0x6d, 0x0a, 0xff, 0x00, 0x01])
        );
        for bad in [
            "02:6d:0a:ff:00",
            "02:6d:0a:ff:00:01:02",
            "zz:6d:0a:ff:00:01",
            "",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
