//! The inter-node policy: one nftables table owned by the agent, on the host, for traffic
//! bridged between nodes. Node-to-node traffic is dropped unless a role's `[[allow]]` admits
//! it; replies (established, related) pass; acc and monitor reach every node; new connections
//! from nodes to the host itself are refused, through the bridge and, with `uplink = "host"`,
//! through the host end of fw1's public link. IPv6 is off on every link of the internal
//! network; the table drops what IPv6 might still cross it all the same.
//!
//! Bridged frames reach the inet family's forward hook through br_netfilter, with the bridge
//! as both input and output interface.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::Ipv4Addr;

use crate::config::Config;

/// How many tracked flows one node may hold open through the bridge at once.
pub const FLOWS_PER_NODE: u32 = 4096;

/// Roles whose nodes may open connections to every node.
pub const REACH_EVERYTHING: &[&str] = &["acc", "monitor"];

/// `magestack_<bridge>`: one table per bridge, so only the agent's own table is ever touched.
pub fn table_name(bridge: &str) -> String {
    format!("magestack_{}", bridge.replace('-', "_"))
}

pub fn render(config: &Config) -> String {
    let network = &config.network;
    let bridge = &network.bridge;
    let subnet = network.subnet;
    let table = table_name(bridge);
    let ips_of = |role: &str| -> BTreeSet<Ipv4Addr> {
        config
            .nodes
            .values()
            .filter(|n| role == "*" || n.role == role)
            .map(|n| n.ip())
            .collect()
    };

    let mut rules = Vec::new();
    let reach_all: BTreeSet<Ipv4Addr> = REACH_EVERYTHING.iter().flat_map(|r| ips_of(r)).collect();
    if !reach_all.is_empty() {
        rules.push(format!("ip saddr {} accept", set(&reach_all)));
    }
    let mut seen_roles = BTreeSet::new();
    for node in config.nodes.values() {
        if !seen_roles.insert(node.role.as_str()) {
            continue;
        }
        let targets = ips_of(&node.role);
        for allow in &node.definition.allow {
            if allow.ports.is_empty() {
                continue;
            }
            let ports = set(&allow.ports.iter().collect::<BTreeSet<_>>());
            let mut sources: BTreeSet<Ipv4Addr> = BTreeSet::new();
            for from in &allow.from {
                sources.extend(ips_of(from));
                // What fw forwards in keeps the outside client's address.
                if from == "fw" || from == "*" {
                    rules.push(format!(
                        "ip saddr != {subnet} ip daddr {} tcp dport {ports} accept",
                        set(&targets)
                    ));
                }
            }
            if !sources.is_empty() {
                rules.push(format!(
                    "ip saddr {} ip daddr {} tcp dport {ports} accept",
                    set(&sources),
                    set(&targets)
                ));
            }
        }
    }
    if let Some(public) = &network.public {
        for forward in &public.forwards {
            rules.push(format!(
                "ip saddr != {subnet} ip daddr {} tcp dport {} accept",
                forward.to_ip, forward.to_port
            ));
        }
    }
    // Traffic a node routes out through the gateway is the gateway's to filter.
    rules.push(format!("ip saddr {subnet} ip daddr != {subnet} accept"));

    let mut text = String::new();
    // Creating the table first makes the delete valid on a first run; all of it is one
    // transaction, so the old rules stay until the new ones are in place.
    let _ = writeln!(
        text,
        "table inet {table}\ndelete table inet {table}\ntable inet {table} {{"
    );
    let _ = writeln!(
        text,
        "  chain forward {{\n    type filter hook forward priority filter; policy accept;"
    );
    let _ = writeln!(
        text,
        "    iifname \"{bridge}\" oifname \"{bridge}\" jump nodes\n  }}"
    );
    // Bridged flows are tracked in the host's own table, which the host and every agent on it
    // share: a node may hold only so many at once.
    let _ = writeln!(
        text,
        "  set node_flows {{\n    type ipv4_addr; size 65535; flags dynamic;\n  }}"
    );
    let _ = writeln!(
        text,
        "  chain nodes {{\n    ct state established,related accept\n    ct state invalid drop\n    ct state new add @node_flows {{ ip saddr ct count over {FLOWS_PER_NODE} }} drop"
    );
    for rule in &rules {
        let _ = writeln!(text, "    {rule}");
    }
    let _ = writeln!(text, "    drop\n  }}");
    let _ = writeln!(
        text,
        "  chain input {{\n    type filter hook input priority filter; policy accept;"
    );
    let _ = writeln!(text, "    iifname \"{bridge}\" ct state new drop");
    // With `uplink = "host"` the gateway's public link ends on the host: only replies to the
    // host's own connections come in there (what fw1 forwards out is routed, not input).
    for link in host_public_links(config) {
        let _ = writeln!(
            text,
            "    iifname \"{link}\" ct state established,related accept\n    iifname \"{link}\" drop"
        );
    }
    let _ = writeln!(text, "  }}\n}}");
    text
}

/// The host ends of the public links of gateway nodes whose uplink is the host itself.
fn host_public_links(config: &Config) -> Vec<String> {
    config
        .nodes
        .values()
        .filter(|node| {
            node.network
                .public
                .as_ref()
                .is_some_and(|public| public.uplink == "host")
        })
        .map(|node| super::public_link(&config.network.link_prefix, &node.name))
        .collect()
}

fn set<T: std::fmt::Display>(items: &BTreeSet<T>) -> String {
    if items.len() == 1 {
        return items.iter().next().expect("one item").to_string();
    }
    let joined: Vec<String> = items.iter().map(ToString::to_string).collect();
    format!("{{ {} }}", joined.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_roles_give_the_shipped_policy() {
        let config = crate::config::load(None).unwrap();
        let rules = render(&config);
        assert!(rules.contains("table inet magestack_msbr0 {"), "{rules}");
        assert!(
            rules.contains("ip saddr 172.16.0.1 ip daddr 172.16.0.11 tcp dport { 80, 443 } accept"),
            "{rules}"
        );
        assert!(
            rules.contains("ip saddr { 172.16.0.61, 172.16.0.71 } accept"),
            "{rules}"
        );
        assert!(
            rules.contains(
                "ip saddr 172.16.0.11 ip daddr { 172.16.0.21, 172.16.0.22 } tcp dport 80 accept"
            ),
            "{rules}"
        );
        assert!(
            rules.contains("ip daddr 172.16.0.41 tcp dport { 3306, 6379, 6380 } accept"),
            "{rules}"
        );
        assert!(
            rules.contains("ip daddr 172.16.0.51 tcp dport 25 accept"),
            "{rules}"
        );
        assert!(
            rules.contains(
                "ip saddr != 172.16.0.0/24 ip daddr 172.16.0.11 tcp dport { 80, 443 } accept"
            ),
            "{rules}"
        );
        assert!(rules.trim_end().ends_with('}'));
        assert!(
            rules.contains("ct state new add @node_flows { ip saddr ct count over 4096 } drop"),
            "{rules}"
        );
        // Whatever is not accepted is dropped, IPv6 included; the host takes nothing new from
        // the bridge (either family) or from fw1's public link.
        assert!(rules.contains("    drop\n  }\n  chain input"), "{rules}");
        assert!(
            rules.contains("    iifname \"msbr0\" ct state new drop\n"),
            "{rules}"
        );
        assert!(
            rules.contains("iifname \"ms_fw1\" ct state established,related accept\n    iifname \"ms_fw1\" drop"),
            "{rules}"
        );
        // Node-to-node is dropped by default; lb to db on 3306 is not among the accepts.
        assert!(
            !rules.contains("ip saddr 172.16.0.11 ip daddr 172.16.0.41"),
            "{rules}"
        );
    }

    #[test]
    fn table_names_are_nft_identifiers() {
        assert_eq!(table_name("ms-br0"), "magestack_ms_br0");
    }
}
