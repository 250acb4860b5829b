//! What a node's /etc/hosts and /etc/resolv.conf say.

use std::fmt::Write;

use crate::config::Config;

/// Every configured node as `<node>.i` (and its bare name), plus localhost.
pub fn hosts_file(config: &Config) -> String {
    let mut text =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    let _ = writeln!(text, "{}\thost.i", config.network.host_ip);
    for node in config.nodes.values() {
        let _ = writeln!(text, "{}\t{}.i {}", node.ip(), node.name, node.name);
    }
    text
}

/// The host's upstream resolvers: loopback resolvers (a local stub such as systemd-resolved)
/// cannot be reached from a node and are left out.
pub fn resolv_conf(host_resolv: &str) -> String {
    let mut text = String::new();
    for line in host_resolv.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("nameserver"), Some(address)) => {
                let loopback = address
                    .parse::<std::net::IpAddr>()
                    .map(|ip| ip.is_loopback())
                    .unwrap_or(true);
                if !loopback {
                    let _ = writeln!(text, "nameserver {address}");
                }
            }
            (Some("search" | "options"), Some(_)) => {
                let _ = writeln!(text, "{}", line.trim());
            }
            _ => {}
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lists_every_node_with_the_i_suffix() {
        let config = crate::config::load(None).unwrap();
        let hosts = hosts_file(&config);
        assert!(hosts.contains("172.16.0.21\tweb1.i web1\n"), "{hosts}");
        assert!(hosts.contains("172.16.0.1\tfw1.i fw1\n"), "{hosts}");
        assert!(hosts.contains("172.16.0.254\thost.i\n"), "{hosts}");
    }

    #[test]
    fn loopback_resolvers_are_dropped() {
        let resolv = resolv_conf(
            "# x\nnameserver 127.0.0.53\nnameserver 9.9.9.9\nnameserver ::1\nsearch example.net\n",
        );
        assert_eq!(resolv, "nameserver 9.9.9.9\nsearch example.net\n");
    }
}
