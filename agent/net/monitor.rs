//! The kernel's word on the internal network: link and IPv4 address notifications
//! (`RTNLGRP_LINK`, `RTNLGRP_IPV4_IFADDR`) read on a thread of their own, so a deleted bridge or
//! node link is put back within moments rather than at the next periodic audit.

use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::NetError;
use crate::config::NetworkSettings;

/// Multicast groups as `bind` takes them: links, and IPv4 addresses.
const GROUPS: u32 = libc::RTMGRP_LINK as u32 | libc::RTMGRP_IPV4_IFADDR as u32;

/// Calls `notify` from a thread of its own whenever the bridge or one of this host's node
/// links goes away or changes, or an IPv4 address is removed. A notification never says what
/// changed: the audit looks for itself. The thread lives as long as the daemon.
pub fn watch_links(
    settings: &NetworkSettings,
    notify: impl Fn() + Send + 'static,
) -> Result<(), NetError> {
    let mut socket =
        Socket::new(NETLINK_ROUTE).map_err(|e| NetError::netlink("open a netlink socket", e))?;
    socket
        .bind(&SocketAddr::new(0, GROUPS))
        .map_err(|e| NetError::netlink("listen to link notifications", e))?;
    let ours = Ours {
        bridge: settings.bridge.clone(),
        prefix: settings.link_prefix.clone(),
    };
    std::thread::Builder::new()
        .name("link-monitor".into())
        .spawn(move || {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                match socket.recv(&mut &mut buffer[..], 0) {
                    Ok(size) => {
                        if concerns_us(&buffer[..size], &ours) {
                            notify();
                        }
                    }
                    // Lost notifications (ENOBUFS) may have been ours: look.
                    Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => notify(),
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(error) => {
                        tracing::error!(
                            "link notifications stopped: {error}; the periodic audit remains"
                        );
                        return;
                    }
                }
            }
        })
        .map_err(|source| NetError::Io {
            what: "start the link monitor".into(),
            source,
        })?;
    Ok(())
}

/// The names this host's network owns.
struct Ours {
    bridge: String,
    prefix: String,
}

impl Ours {
    fn owns(&self, name: &str) -> bool {
        name == self.bridge
            || name
                .strip_prefix(self.prefix.as_str())
                .is_some_and(|rest| rest.starts_with('-') || rest.starts_with('_'))
    }
}

/// Whether a datagram of notifications tells of a change to one of our links (any change: a
/// port leaving the bridge is a `NEWLINK`), or of an address removed anywhere (the message
/// carries only the index, and the bridge's address is what matters).
fn concerns_us(datagram: &[u8], ours: &Ours) -> bool {
    let mut offset = 0;
    while offset < datagram.len() {
        let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[offset..])
        else {
            // Undecodable: do not guess, look.
            return true;
        };
        let length = message.header.length as usize;
        match message.payload {
            NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::DelLink(link) | RouteNetlinkMessage::NewLink(link),
            ) => {
                let named_ours = link.attributes.iter().any(
                    |attribute| matches!(attribute, LinkAttribute::IfName(name) if ours.owns(name)),
                );
                if named_ours {
                    return true;
                }
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(_)) => return true,
            _ => {}
        }
        if length == 0 {
            break;
        }
        offset += (length + 3) & !3;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::{NetlinkHeader, NetlinkMessage};
    use rtnetlink::LinkUnspec;

    fn datagram(messages: Vec<RouteNetlinkMessage>) -> Vec<u8> {
        let mut bytes = Vec::new();
        for inner in messages {
            let mut message = NetlinkMessage::new(
                NetlinkHeader::default(),
                NetlinkPayload::InnerMessage(inner),
            );
            message.finalize();
            let mut buffer = vec![0u8; message.buffer_len()];
            message.serialize(&mut buffer);
            bytes.extend_from_slice(&buffer);
            bytes.resize((bytes.len() + 3) & !3, 0);
        }
        bytes
    }

    fn link(name: &str) -> rtnetlink::packet_route::link::LinkMessage {
        LinkUnspec::new_with_name(name).build()
    }

    #[test]
    fn only_our_links_and_removed_addresses_concern_us() {
        let ours = Ours {
            bridge: "msbr0".into(),
            prefix: "ms".into(),
        };
        let dg = |messages| concerns_us(&datagram(messages), &ours);
        assert!(dg(vec![RouteNetlinkMessage::DelLink(link("msbr0"))]));
        assert!(dg(vec![RouteNetlinkMessage::DelLink(link("ms-web1"))]));
        assert!(dg(vec![RouteNetlinkMessage::NewLink(link("ms_fw1"))]));
        assert!(!dg(vec![RouteNetlinkMessage::DelLink(link("eth0"))]));
        assert!(!dg(vec![RouteNetlinkMessage::DelLink(link("msx-web1"))]));
        assert!(dg(vec![
            RouteNetlinkMessage::NewLink(link("docker0")),
            RouteNetlinkMessage::DelLink(link("ms-db1")),
        ]));
        assert!(dg(vec![
            RouteNetlinkMessage::DelAddress(Default::default())
        ]));
        assert!(concerns_us(&[1, 2, 3, 4, 5, 6, 7, 8], &ours), "undecodable");
    }

    proptest::proptest! {
        #[test]
        fn any_datagram_is_judged_without_panicking(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)
        ) {
            let ours = Ours { bridge: "b".into(), prefix: "p".into() };
            let _ = concerns_us(&bytes, &ours);
        }
    }
}
