//! A gratuitous ARP: an ARP request for one's own address, broadcast, which every neighbour
//! that has the address cached takes as its new MAC (what `arping -U` sends). Sent on a raw
//! `AF_PACKET` socket of the caller's network namespace, which needs CAP_NET_RAW there.

use std::io;
use std::mem::size_of;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Ethernet header (14 bytes) and an IPv4-over-Ethernet ARP packet (28 bytes).
pub const FRAME_LEN: usize = 42;
const BROADCAST: [u8; 6] = [0xff; 6];
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV4: u16 = 0x0800;
const HARDWARE_ETHERNET: u16 = 1;
const ARP_REQUEST: u16 = 1;

/// The frame announcing that `address` is at `mac`: a broadcast request whose sender and
/// target address are both `address`.
pub fn frame(mac: [u8; 6], address: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut frame = [0u8; FRAME_LEN];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        frame[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(&BROADCAST);
    put(&mac);
    put(&ETHERTYPE_ARP.to_be_bytes());
    put(&HARDWARE_ETHERNET.to_be_bytes());
    put(&ETHERTYPE_IPV4.to_be_bytes());
    put(&[6, 4]);
    put(&ARP_REQUEST.to_be_bytes());
    put(&mac);
    put(&address.octets());
    put(&[0; 6]);
    put(&address.octets());
    frame
}

/// Broadcasts a gratuitous ARP for `address` from `interface`, with the interface's MAC.
pub fn announce(interface: &str, address: Ipv4Addr) -> io::Result<()> {
    let index = nix::net::if_::if_nametoindex(interface).map_err(io::Error::from)?;
    let mac = mac_of(interface)?;
    // SAFETY: socket takes plain integers; the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETHERTYPE_ARP.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value to fill in.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETHERTYPE_ARP.to_be();
    to.sll_ifindex = index as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&BROADCAST);
    let frame = frame(mac, address);
    // SAFETY: the frame and the address outlive the call, and their lengths are theirs.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The link-layer address of `interface`.
fn mac_of(interface: &str) -> io::Result<[u8; 6]> {
    nix::ifaddrs::getifaddrs()
        .map_err(io::Error::from)?
        .filter(|entry| entry.interface_name == interface)
        .find_map(|entry| entry.address?.as_link_addr()?.addr())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{interface} has no link-layer address"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_a_broadcast_request_for_the_sender_s_own_address() {
        let mac = [0x02, 0x6e, 10, 9, 0, 21];
        let frame = frame(mac, Ipv4Addr::new(10, 9, 0, 21));
        let expected: [u8; FRAME_LEN] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // to everyone
            0x02, 0x6e, 10, 9, 0, 21, // from the node
            0x08, 0x06, // ARP
            0x00, 0x01, 0x08, 0x00, 6, 4, // Ethernet, IPv4, address lengths
            0x00, 0x01, // request
            0x02, 0x6e, 10, 9, 0, 21, 10, 9, 0, 21, // sender: the node's MAC and address
            0, 0, 0, 0, 0, 0, 10, 9, 0, 21, // target: the same address
        ];
        assert_eq!(frame, expected);
    }
}
