//! Links, addresses and routes over one blocking rtnetlink socket.
//!
//! Messages are built with rtnetlink's builders and netlink-packet-route's types, and sent over
//! a plain `NETLINK_ROUTE` socket: the runtime's callers are blocking, and several requests go
//! to the kernel in one `sendmsg` and are answered in order (a node's `lo`, address, `eth0` and
//! route cost one round trip). Work inside a node's network namespace opens its socket there
//! (a socket belongs to the namespace it was opened in).

use std::cell::Cell;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use rtnetlink::packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLMSG_DONE, NLMSG_ERROR,
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoMacVlan, InfoVeth, LinkAttribute, LinkInfo, LinkMessage, MacVlanMode,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use rtnetlink::{
    AddressMessageBuilder, LinkBridge, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder,
};

use super::NetError;
use crate::config::HostLink;

/// A link as the network audit sees it: its index and the bridge it is a port of, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub controller: Option<u32>,
}

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

/// A locally administered unicast MAC address for the bridge, the same for the same name.
pub fn bridge_mac(name: &str) -> [u8; 6] {
    // FNV-1a: stable across builds and Rust versions, unlike the standard library's hasher.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    let bytes = hash.to_be_bytes();
    [0x02, 0x6d, bytes[0], bytes[1], bytes[2], bytes[3]]
}

/// The loopback device is always the first link of a network namespace.
const LOOPBACK_INDEX: u32 = 1;

/// Room for one datagram from the kernel: a dump sends at most 32 KiB per datagram.
const RECEIVE_BUFFER: usize = 64 * 1024;

/// How long the kernel may take to answer an exchange.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How many times a dump the kernel marks interrupted is asked again.
const DUMP_ATTEMPTS: usize = 3;

/// Netlink messages start at 4-byte boundaries.
fn aligned(length: usize) -> usize {
    (length + 3) & !3
}

/// One request and the header flags it is sent with.
struct Request {
    message: RouteNetlinkMessage,
    flags: u16,
}

impl Request {
    /// A change the kernel acknowledges.
    fn change(message: RouteNetlinkMessage) -> Request {
        Request {
            message,
            flags: NLM_F_REQUEST | NLM_F_ACK,
        }
    }

    /// A creation that fails when the object exists.
    fn create(message: RouteNetlinkMessage) -> Request {
        Request {
            message,
            flags: NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        }
    }

    /// Every object of the message's kind.
    fn dump(message: RouteNetlinkMessage) -> Request {
        Request {
            message,
            flags: NLM_F_REQUEST | NLM_F_DUMP,
        }
    }
}

/// How the kernel answered one request.
#[derive(Default)]
struct Answer {
    /// What it sent before its acknowledgement: a link for a lookup, every link for a dump.
    replies: Vec<RouteNetlinkMessage>,
    /// The errno of a refusal.
    refused: Option<i32>,
    /// A dump the kernel marked inconsistent (links changed while it ran): ask again.
    interrupted: bool,
    /// Replies that could not be decoded, skipped (an unknown kind of link in a dump).
    undecodable: usize,
}

impl Answer {
    fn accepted(self, what: &str) -> Result<Vec<RouteNetlinkMessage>, NetError> {
        match self.refused {
            None => Ok(self.replies),
            Some(errno) => Err(refusal(what, errno)),
        }
    }

    /// Accepted, or refused with `errno`, which the caller takes as success.
    fn accepted_unless(self, errno: i32, what: &str) -> Result<(), NetError> {
        match self.refused {
            Some(refused) if refused == errno => Ok(()),
            _ => self.accepted(what).map(drop),
        }
    }
}

/// Files the messages of one datagram from the kernel under the requests they answer (the
/// first request sent as `first`), and returns how many requests they finished. Messages of
/// other exchanges (one cut short by an error) are skipped by their header alone, and a reply
/// that does not decode is counted and skipped, so one odd link cannot fail a whole dump.
fn file_answers(
    datagram: &[u8],
    first: u32,
    answers: &mut [Answer],
) -> Result<usize, rtnetlink::packet_core::DecodeError> {
    let mut finished = 0;
    let mut rest = datagram;
    while !rest.is_empty() {
        let header = NetlinkBuffer::new_checked(rest)?;
        let length = header.length() as usize;
        let message = &rest[..length];
        rest = rest.get(aligned(length)..).unwrap_or_default();
        let slot = header.sequence_number().wrapping_sub(first) as usize;
        let Some(answer) = answers.get_mut(slot) else {
            continue;
        };
        if header.flags() & NLM_F_DUMP_INTR != 0 {
            answer.interrupted = true;
        }
        let kind = header.message_type();
        let decoded = NetlinkMessage::<RouteNetlinkMessage>::deserialize(message);
        match decoded.map(|message| message.payload) {
            Ok(NetlinkPayload::InnerMessage(reply)) => answer.replies.push(reply),
            Ok(NetlinkPayload::Error(error)) => {
                answer.refused = error.code.map(|code| -code.get());
                finished += 1;
            }
            Ok(NetlinkPayload::Done(done)) => {
                answer.refused = (done.code < 0).then_some(-done.code);
                finished += 1;
            }
            Ok(_) => {}
            Err(_) if kind != NLMSG_ERROR && kind != NLMSG_DONE => answer.undecodable += 1,
            Err(error) => return Err(error),
        }
    }
    Ok(finished)
}

fn refusal(what: &str, errno: i32) -> NetError {
    NetError::netlink(what, std::io::Error::from_raw_os_error(errno))
}

/// An rtnetlink socket in the network namespace of the thread that opened it.
pub struct Netlink {
    socket: Socket,
    /// The sequence number of the last request sent.
    sequence: Cell<u32>,
}

impl Netlink {
    pub fn connect() -> Result<Netlink, NetError> {
        let open = || -> std::io::Result<Socket> {
            let mut socket = Socket::new(NETLINK_ROUTE)?;
            socket.bind_auto()?;
            socket.connect(&SocketAddr::new(0, 0))?;
            // An answer the kernel never sends must not hold up every start and stop.
            nix::sys::socket::setsockopt(
                &socket,
                nix::sys::socket::sockopt::ReceiveTimeout,
                &nix::sys::time::TimeVal::new(ANSWER_TIMEOUT.as_secs() as i64, 0),
            )?;
            Ok(socket)
        };
        let socket = open().map_err(|e| NetError::netlink("open netlink socket", e))?;
        Ok(Netlink {
            socket,
            sequence: Cell::new(0),
        })
    }

    /// Sends `requests` in one datagram and waits for every answer; the kernel handles them in
    /// order, each whatever became of the previous ones.
    fn exchange(&self, what: &str, requests: Vec<Request>) -> Result<Vec<Answer>, NetError> {
        let io = |e: std::io::Error| NetError::netlink(what, e);
        let first = self.sequence.get().wrapping_add(1);
        let count = requests.len();
        let mut datagram = Vec::new();
        for (offset, request) in requests.into_iter().enumerate() {
            let mut header = NetlinkHeader::default();
            header.flags = request.flags;
            header.sequence_number = first.wrapping_add(offset as u32);
            let mut message =
                NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request.message));
            message.finalize();
            let start = datagram.len();
            datagram.resize(start + aligned(message.buffer_len()), 0);
            message.serialize(&mut datagram[start..]);
        }
        self.sequence
            .set(first.wrapping_add(count as u32).wrapping_sub(1));
        self.socket.send(&datagram, 0).map_err(io)?;

        let mut answers: Vec<Answer> = (0..count).map(|_| Answer::default()).collect();
        let mut finished = 0;
        let mut buffer = Vec::with_capacity(RECEIVE_BUFFER);
        while finished < count {
            buffer.clear();
            let size = match self.socket.recv(&mut buffer, libc::MSG_TRUNC) {
                Ok(size) => size,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    return Err(NetError::netlink(
                        what,
                        format!("no answer from the kernel in {ANSWER_TIMEOUT:?}"),
                    ))
                }
                Err(error) => return Err(io(error)),
            };
            if size > buffer.len() {
                return Err(NetError::netlink(
                    what,
                    format!("an answer of {size} bytes did not fit in {RECEIVE_BUFFER}"),
                ));
            }
            finished += file_answers(&buffer, first, &mut answers)
                .map_err(|e| NetError::netlink(what, format!("undecodable answer: {e}")))?;
        }
        Ok(answers)
    }

    fn ask(&self, what: &str, request: Request) -> Result<Answer, NetError> {
        let mut answers = self.exchange(what, vec![request])?;
        Ok(answers.pop().unwrap_or_default())
    }

    /// The index of a link, or `None` when there is no such link.
    pub fn link_index(&self, name: &str) -> Result<Option<u32>, NetError> {
        Ok(self.link(name)?.map(|link| link.header.index))
    }

    /// A link's index and bridge, or `None` when there is no such link.
    pub fn link_state(&self, name: &str) -> Result<Option<LinkState>, NetError> {
        Ok(self.link(name)?.map(|link| LinkState {
            index: link.header.index,
            controller: link.attributes.iter().find_map(|a| match a {
                LinkAttribute::Controller(index) => Some(*index),
                _ => None,
            }),
        }))
    }

    /// A link as the kernel describes it, or `None` when there is no such link.
    fn link(&self, name: &str) -> Result<Option<LinkMessage>, NetError> {
        let what = format!("look up link {name}");
        let lookup = RouteNetlinkMessage::GetLink(LinkUnspec::new_with_name(name).build());
        let answer = self.ask(&what, Request::change(lookup))?;
        if answer.refused == Some(libc::ENODEV) {
            return Ok(None);
        }
        if answer.undecodable > 0 {
            return Err(NetError::netlink(
                &what,
                "the kernel's answer did not decode",
            ));
        }
        Ok(answer
            .accepted(&what)?
            .into_iter()
            .find_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(link) => Some(link),
                _ => None,
            }))
    }

    /// Makes the link `index` a port of the bridge `controller`, up.
    pub fn set_controller(&self, index: u32, controller: u32, link: &str) -> Result<(), NetError> {
        let what = format!("attach {link} to its bridge");
        let change = LinkUnspec::new_with_index(index)
            .controller(controller)
            .up()
            .build();
        self.ask(&what, Request::change(RouteNetlinkMessage::SetLink(change)))?
            .accepted(&what)
            .map(drop)
    }

    /// Whether the link `index` holds the IPv4 `address`.
    pub fn has_address(&self, index: u32, address: Ipv4Addr) -> Result<bool, NetError> {
        let what = format!("list the addresses of link {index}");
        let mut every = AddressMessage::default();
        every.header.family = AddressFamily::Inet;
        every.header.index = index;
        let answer = self.ask(&what, Request::dump(RouteNetlinkMessage::GetAddress(every)))?;
        Ok(answer.accepted(&what)?.iter().any(|reply| match reply {
            RouteNetlinkMessage::NewAddress(found) => {
                found.header.index == index
                    && found.attributes.iter().any(|a| {
                        matches!(a, AddressAttribute::Local(ip) if *ip == std::net::IpAddr::V4(address))
                    })
            }
            _ => false,
        }))
    }

    /// Every link in this namespace, by name, and whether it is a bridge, from a dump the kernel
    /// did not mark inconsistent (links come and go while it runs) when one of a few attempts
    /// gives it.
    pub fn links(&self) -> Result<Vec<HostLink>, NetError> {
        let mut attempt = 1;
        let answer = loop {
            let every = RouteNetlinkMessage::GetLink(LinkMessage::default());
            let answer = self.ask("list links", Request::dump(every))?;
            if !answer.interrupted {
                break answer;
            }
            if attempt == DUMP_ATTEMPTS {
                tracing::warn!("links kept changing during {DUMP_ATTEMPTS} dumps: using the last");
                break answer;
            }
            attempt += 1;
        };
        if answer.undecodable > 0 {
            tracing::debug!(
                skipped = answer.undecodable,
                "links netlink could not decode"
            );
        }
        let replies = answer.accepted("list links")?;
        Ok(replies
            .iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(link) => Some(HostLink {
                    name: link.attributes.iter().find_map(|a| match a {
                        LinkAttribute::IfName(name) => Some(name.clone()),
                        _ => None,
                    })?,
                    bridge: link.attributes.iter().any(|a| {
                        matches!(a, LinkAttribute::LinkInfo(infos)
                            if infos.contains(&LinkInfo::Kind(InfoKind::Bridge)))
                    }),
                }),
                _ => None,
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
                let bridge = LinkBridge::new(name)
                    .address(bridge_mac(name).to_vec())
                    .up()
                    .build();
                let what = format!("create bridge {name}");
                self.ask(&what, Request::create(RouteNetlinkMessage::NewLink(bridge)))?
                    .accepted(&what)?;
                self.link_index(name)?
                    .ok_or_else(|| NetError::Missing(format!("bridge {name} after creating it")))?
            }
        };
        self.pin_mac(name)?;
        self.address_and_up(index, address, prefix, name)?;
        Ok(index)
    }

    /// Makes a bridge made by someone else (or an older agent) keep its current MAC address:
    /// setting it, even to the same value, stops the kernel from changing it as ports join. The
    /// address is read over netlink, not from /sys/class/net, which shows the network namespace
    /// /sys was mounted in rather than the agent's own.
    fn pin_mac(&self, name: &str) -> Result<(), NetError> {
        let link = self
            .link(name)?
            .ok_or_else(|| NetError::Missing(format!("bridge {name}")))?;
        let mac = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(mac) => Some(mac.clone()),
                _ => None,
            })
            .ok_or_else(|| NetError::Missing(format!("a MAC address on {name}")))?;
        let pinned = LinkUnspec::new_with_index(link.header.index)
            .address(mac)
            .build();
        let what = format!("pin the MAC address of {name}");
        self.ask(&what, Request::change(RouteNetlinkMessage::SetLink(pinned)))?
            .accepted(&what)
            .map(drop)
    }

    /// `address` on the link `index` (kept if already there) and the link up, in one exchange.
    fn address_and_up(
        &self,
        index: u32,
        address: Ipv4Addr,
        prefix: u8,
        link: &str,
    ) -> Result<(), NetError> {
        let what = format!("add {address}/{prefix} to {link} and set it up");
        let mut answers = self
            .exchange(
                &what,
                vec![add_address(index, address, prefix), link_up(index)],
            )?
            .into_iter();
        let (added, up) = (
            answers.next().unwrap_or_default(),
            answers.next().unwrap_or_default(),
        );
        added.accepted_unless(libc::EEXIST, &format!("add {address}/{prefix} to {link}"))?;
        up.accepted(&format!("set {link} up")).map(drop)
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
        // One queue each way on both ends, asked for at creation: left out, the kernel makes one
        // per possible CPU and then cuts veths down to one, waiting for an expedited RCU grace
        // period per end while it holds the RTNL lock.
        let single_queues = |link: LinkMessageBuilder<LinkUnspec>| {
            link.append_extra_attribute(LinkAttribute::NumTxQueues(1))
                .append_extra_attribute(LinkAttribute::NumRxQueues(1))
        };
        let mut peer = single_queues(LinkMessageBuilder::<LinkUnspec>::default())
            .name(peer_name.to_string())
            .setns_by_fd(peer_netns.as_fd().as_raw_fd());
        if let Some(index) = index {
            peer = peer.index(index);
        }
        if let Some(mac) = mac {
            peer = peer.address(mac.to_vec());
        }
        let peer = peer.build();
        let mut veth = single_queues(LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(
            InfoKind::Veth,
        ))
        .name(host_name.to_string())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .up();
        if let Some(bridge) = bridge {
            veth = veth.controller(bridge);
        }
        let what = format!("create veth {host_name} (peer {peer_name} in the node)");
        self.ask(
            &what,
            Request::create(RouteNetlinkMessage::NewLink(veth.build())),
        )?
        .accepted(&what)
        .map(drop)
    }

    /// A macvlan on `parent` created directly in the namespace `netns`, named `name`, up.
    pub fn add_macvlan(&self, parent: &str, name: &str, netns: &OwnedFd) -> Result<(), NetError> {
        let parent_index = self
            .link_index(parent)?
            .ok_or_else(|| NetError::Missing(format!("uplink {parent}")))?;
        let macvlan = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::MacVlan)
            .name(name.to_string())
            .link(parent_index)
            .set_info_data(InfoData::MacVlan(vec![InfoMacVlan::Mode(
                MacVlanMode::Bridge,
            )]))
            .setns_by_fd(netns.as_fd().as_raw_fd())
            .up()
            .build();
        let what = format!("create macvlan {name} on {parent}");
        self.ask(
            &what,
            Request::create(RouteNetlinkMessage::NewLink(macvlan)),
        )?
        .accepted(&what)
        .map(drop)
    }

    /// Deletes a link by name; a link that is already gone is fine.
    pub fn delete_link(&self, name: &str) -> Result<(), NetError> {
        let what = format!("delete link {name}");
        let link = LinkUnspec::new_with_name(name).build();
        self.ask(&what, Request::change(RouteNetlinkMessage::DelLink(link)))?
            .accepted_unless(libc::ENODEV, &what)
    }

    /// A node namespace's network in one round trip: `lo` up, the link `index` addressed and
    /// up, and the default route via `gateway`; what is already there (a namespace kept across
    /// a restart) is fine.
    pub fn configure_node_link(
        &self,
        index: u32,
        address: Ipv4Addr,
        prefix: u8,
        link: &str,
        gateway: Option<Ipv4Addr>,
    ) -> Result<(), NetError> {
        let mut requests = vec![
            link_up(LOOPBACK_INDEX),
            add_address(index, address, prefix),
            link_up(index),
        ];
        if let Some(gateway) = gateway {
            requests.push(default_route(gateway));
        }
        let what = format!("configure {link}");
        let mut answers = self.exchange(&what, requests)?.into_iter();
        let mut next = || answers.next().unwrap_or_default();
        next().accepted("set lo up")?;
        next().accepted_unless(libc::EEXIST, &format!("add {address}/{prefix} to {link}"))?;
        next().accepted(&format!("set {link} up"))?;
        if let Some(gateway) = gateway {
            // Already there in a namespace kept across a restart.
            next().accepted_unless(libc::EEXIST, &format!("default route via {gateway}"))?;
        }
        Ok(())
    }

    /// Links by index set down (`up` false) or up, in one round trip; a link already so is
    /// fine.
    pub fn set_links(&self, links: &[(u32, &str)], up: bool) -> Result<(), NetError> {
        let requests = links
            .iter()
            .map(|(index, _)| {
                if up {
                    link_up(*index)
                } else {
                    link_down(*index)
                }
            })
            .collect();
        let state = if up { "up" } else { "down" };
        let answers = self.exchange(&format!("set links {state}"), requests)?;
        for ((_, name), answer) in links.iter().zip(answers) {
            answer.accepted(&format!("set {name} {state}"))?;
        }
        Ok(())
    }

    /// Address on a link by name, and the link up.
    pub fn address_link(&self, name: &str, address: Ipv4Addr, prefix: u8) -> Result<u32, NetError> {
        let index = self
            .link_index(name)?
            .ok_or_else(|| NetError::Missing(format!("link {name}")))?;
        self.address_and_up(index, address, prefix, name)?;
        Ok(index)
    }

    pub fn default_route(&self, gateway: Ipv4Addr) -> Result<(), NetError> {
        let what = format!("default route via {gateway}");
        self.ask(&what, default_route(gateway))?
            .accepted_unless(libc::EEXIST, &what)
    }
}

fn link_up(index: u32) -> Request {
    let up = LinkUnspec::new_with_index(index).up().build();
    Request::change(RouteNetlinkMessage::SetLink(up))
}

fn link_down(index: u32) -> Request {
    let down = LinkUnspec::new_with_index(index).down().build();
    Request::change(RouteNetlinkMessage::SetLink(down))
}

fn add_address(index: u32, address: Ipv4Addr, prefix: u8) -> Request {
    let message = AddressMessageBuilder::<Ipv4Addr>::new()
        .index(index)
        .address(address, prefix)
        .build();
    Request::create(RouteNetlinkMessage::NewAddress(message))
}

fn default_route(gateway: Ipv4Addr) -> Request {
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .build();
    Request::create(RouteNetlinkMessage::NewRoute(route))
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

    fn emit(datagram: &mut Vec<u8>, sequence: u32, payload: NetlinkPayload<RouteNetlinkMessage>) {
        let mut header = NetlinkHeader::default();
        header.sequence_number = sequence;
        let mut message = NetlinkMessage::new(header, payload);
        message.finalize();
        let start = datagram.len();
        datagram.resize(start + aligned(message.buffer_len()), 0);
        message.serialize(&mut datagram[start..]);
    }

    fn acknowledgement(errno: i32) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut error = rtnetlink::packet_core::ErrorMessage::default();
        error.code = std::num::NonZeroI32::new(-errno);
        NetlinkPayload::Error(error)
    }

    #[test]
    fn answers_are_filed_under_their_request_and_stale_ones_ignored() {
        let mut datagram = Vec::new();
        emit(&mut datagram, 6, acknowledgement(0)); // from an exchange cut short before
        let link = LinkUnspec::new_with_index(2).build();
        emit(
            &mut datagram,
            10,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)),
        );
        emit(&mut datagram, 10, acknowledgement(0));
        emit(&mut datagram, 11, acknowledgement(libc::EEXIST));
        let mut answers: Vec<Answer> = (0..3).map(|_| Answer::default()).collect();
        let finished = file_answers(&datagram, 10, &mut answers).unwrap();
        assert_eq!(finished, 2);
        assert_eq!(answers[0].refused, None);
        assert_eq!(answers[0].replies.len(), 1);
        assert_eq!(answers[1].refused, Some(libc::EEXIST));
        assert!(answers[2].replies.is_empty() && answers[2].refused.is_none());

        let mut done = rtnetlink::packet_core::DoneMessage::default();
        done.code = -libc::EINTR;
        let mut datagram = Vec::new();
        emit(&mut datagram, 12, NetlinkPayload::Done(done));
        let finished = file_answers(&datagram, 10, &mut answers).unwrap();
        assert_eq!(finished, 1);
        assert_eq!(answers[2].refused, Some(libc::EINTR));
        let error = answers.pop().unwrap().accepted("list links").unwrap_err();
        assert!(error.to_string().starts_with("list links: "), "{error}");
    }

    #[test]
    fn stale_or_undecodable_replies_are_skipped_and_interrupted_dumps_marked() {
        use rtnetlink::packet_core::Emitable;
        let mut datagram = Vec::new();
        // A message of an earlier exchange whose payload does not decode: skipped unread.
        let mut header = NetlinkHeader::default();
        header.sequence_number = 3;
        header.message_type = 16; // RTM_NEWLINK
        header.length = 20;
        let mut stale = vec![0u8; 20];
        header.emit(&mut stale);
        datagram.extend_from_slice(&stale);
        // An undecodable reply of this exchange, marked interrupted, then the end of the dump.
        let mut odd = vec![0u8; 20];
        header.sequence_number = 10;
        header.flags = NLM_F_DUMP_INTR;
        header.emit(&mut odd);
        datagram.extend_from_slice(&odd);
        let mut done = rtnetlink::packet_core::DoneMessage::default();
        done.code = 0;
        emit(&mut datagram, 10, NetlinkPayload::Done(done));
        let mut answers = vec![Answer::default()];
        assert_eq!(file_answers(&datagram, 10, &mut answers).unwrap(), 1);
        assert_eq!(answers[0].undecodable, 1);
        assert!(answers[0].interrupted);
        assert_eq!(answers[0].refused, None);
    }

    /// Runs `work` on a thread in a network namespace of its own (as root).
    fn in_new_netns<T: Send>(work: impl FnOnce(&Netlink) -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                        .expect("a network namespace (run as root)");
                    work(&Netlink::connect().unwrap())
                })
                .join()
                .unwrap()
        })
    }

    /// A veth pair `<name>` / `<name>p` (this kernel may have no dummy links).
    fn pair(name: &str) -> Request {
        Request::create(RouteNetlinkMessage::NewLink(
            rtnetlink::LinkVeth::new(name, &format!("{name}p")).build(),
        ))
    }

    #[test]
    fn requests_in_one_datagram_are_answered_each_and_dumps_span_datagrams() {
        in_new_netns(|netlink| {
            let answers = netlink
                .exchange("pairs", vec![pair("da"), pair("da"), pair("db")])
                .unwrap();
            let refused: Vec<_> = answers.iter().map(|a| a.refused).collect();
            assert_eq!(refused, [None, Some(libc::EEXIST), None]);
            // Enough links that their dump takes several datagrams of the kernel's.
            let many: Vec<Request> = (0..75).map(|i| pair(&format!("d{i}"))).collect();
            for answer in netlink.exchange("pairs", many).unwrap() {
                assert_eq!(answer.refused, None);
            }
            let names: Vec<String> = netlink
                .links()
                .unwrap()
                .into_iter()
                .map(|l| l.name)
                .collect();
            assert_eq!(names.len(), 1 + 2 * 2 + 2 * 75, "{names:?}");
            assert!(names.iter().any(|n| n == "d74p") && names.iter().any(|n| n == "lo"));
            assert_eq!(netlink.link_index("nothere").unwrap(), None);
            assert!(netlink.link_index("db").unwrap().is_some());
            netlink.delete_link("db").unwrap();
            netlink.delete_link("db").unwrap();
            assert_eq!(netlink.link_index("db").unwrap(), None);
        });
    }

    proptest::proptest! {
        #[test]
        fn any_datagram_is_filed_or_refused_without_panicking(
            datagram in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            first in proptest::prelude::any::<u32>(),
        ) {
            let mut answers: Vec<Answer> = (0..4).map(|_| Answer::default()).collect();
            if let Ok(finished) = file_answers(&datagram, first, &mut answers) {
                proptest::prop_assert!(finished <= datagram.len() / 16);
            }
        }
    }
}
