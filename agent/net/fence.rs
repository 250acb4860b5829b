//! A fenced node's links, from inside its network namespace (its init does this): taken down so
//! the node neither sends nor answers anything, ARP included, before its cgroup is frozen; and
//! brought back, once the agent has thawed it, with the routes the kernel dropped when they went
//! down and a gratuitous ARP for each address, so neighbours that learnt another MAC meanwhile
//! (the partner's copy of the node) point at this one again.

use std::net::Ipv4Addr;

use super::netlink::Netlink;
use super::{garp, NetError, NODE_INTERFACE, NODE_INTERFACE_INDEX, PUBLIC_INTERFACE};
use crate::config::NodeNetwork;

/// Takes `eth0` (and fw1's public side) down.
pub fn links_down(network: &NodeNetwork) -> Result<(), NetError> {
    let netlink = Netlink::connect()?;
    let mut links = vec![(NODE_INTERFACE_INDEX, NODE_INTERFACE)];
    if network.public.is_some() {
        let index = netlink
            .link_index(PUBLIC_INTERFACE)?
            .ok_or_else(|| NetError::Missing(format!("link {PUBLIC_INTERFACE}")))?;
        links.push((index, PUBLIC_INTERFACE));
    }
    netlink.set_links(&links, false)
}

/// Brings the links back as the node's start configured them, then announces each address.
pub fn links_up(network: &NodeNetwork) -> Result<(), NetError> {
    super::configure_links(network)?;
    announce(NODE_INTERFACE, network.address.address)?;
    if let Some(public) = &network.public {
        announce(PUBLIC_INTERFACE, public.address.address)?;
    }
    Ok(())
}

fn announce(interface: &str, address: Ipv4Addr) -> Result<(), NetError> {
    garp::announce(interface, address).map_err(|source| NetError::Io {
        what: format!("gratuitous ARP for {address} on {interface}"),
        source,
    })
}
