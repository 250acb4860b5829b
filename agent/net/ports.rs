//! Each node's port on the bridge admits only what the node itself may send: frames from its own
//! MAC, IPv4 from its own address (fw1: also the outside clients it forwards), ARP that names
//! its own address and MAC, and no other protocol (VLAN- or PPPoE-tagged frames, which the inet
//! policy never sees, included). The inter-node policy decides by source address; without this
//! table a node with CAP_NET_RAW could send as acc1 and be let in everywhere.
//!
//! One `bridge` family table per bridge, on the prerouting hook: it sees every frame a port
//! brings, bridged to another node or addressed to the host.

use std::fmt::Write;

use super::netlink::node_mac;
use super::policy::table_name;
use crate::config::{Config, NodeSpec};

pub fn render(config: &Config) -> String {
    let table = table_name(&config.network.bridge);
    let prefix = &config.network.link_prefix;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "table bridge {table}\ndelete table bridge {table}\ntable bridge {table} {{"
    );
    let _ = writeln!(
        text,
        "  chain ports {{\n    type filter hook prerouting priority filter; policy accept;"
    );
    for node in config.nodes.values() {
        let _ = writeln!(
            text,
            "    iifname \"{prefix}-{name}\" jump port_{chain}",
            name = node.name,
            chain = chain_name(&node.name)
        );
    }
    let _ = writeln!(text, "  }}");
    for node in config.nodes.values() {
        port_chain(&mut text, config, node);
    }
    let _ = writeln!(text, "}}");
    text
}

/// The rules of one node's port.
fn port_chain(text: &mut String, config: &Config, node: &NodeSpec) {
    let ip = node.ip();
    let mac = node_mac(ip)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    // The gateway forwards the outside's traffic in with the client's address kept.
    let foreign_source = match &node.network.public {
        Some(_) => format!("ip saddr {} ip saddr != {ip} drop", config.network.subnet),
        None => format!("ip saddr != {ip} drop"),
    };
    let _ = writeln!(
        text,
        "  chain port_{chain} {{\n    ether saddr != {mac} drop\n    ether type != {{ ip, arp }} drop\n    {foreign_source}\n    arp saddr ip != {ip} drop\n    arp saddr ether != {mac} drop\n  }}",
        chain = chain_name(&node.name),
    );
}

/// Node names may hold '-', which nft chain names may not.
fn chain_name(node: &str) -> String {
    node.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_port_admits_its_own_node_only() {
        let config = crate::config::load(None).unwrap();
        let rules = render(&config);
        assert!(
            rules.starts_with("table bridge magestack_msbr0\n"),
            "{rules}"
        );
        assert!(
            rules.contains("    iifname \"ms-web1\" jump port_web1\n"),
            "{rules}"
        );
        assert!(
            rules.contains(
                "  chain port_web1 {\n    ether saddr != 02:6e:ac:10:00:15 drop\n    ether type != { ip, arp } drop\n    ip saddr != 172.16.0.21 drop\n    arp saddr ip != 172.16.0.21 drop\n    arp saddr ether != 02:6e:ac:10:00:15 drop\n  }"
            ),
            "{rules}"
        );
        // fw1 brings the outside's clients in, never another node's address.
        assert!(
            rules.contains("ip saddr 172.16.0.0/24 ip saddr != 172.16.0.1 drop"),
            "{rules}"
        );
        assert_eq!(rules.matches("chain port_").count(), config.nodes.len());
    }
}
