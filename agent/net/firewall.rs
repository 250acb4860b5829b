//! fw1's rule set, written by the agent into fw1's network namespace: DNAT of public 80/443 to
//! lb1 keeping the client address, port forwards, masquerade of node-initiated traffic, the DOS
//! filter (a per-source rate of new connections, with a whitelist), and nothing else inbound.

use std::fmt::Write;

use super::{NODE_INTERFACE, PUBLIC_INTERFACE};
use crate::config::PublicSide;

pub const TABLE: &str = "magestack_fw";

pub fn render(public: &PublicSide) -> String {
    let (inside, outside) = (NODE_INTERFACE, PUBLIC_INTERFACE);
    let dos = &public.dos;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{"
    );
    let whitelist: Vec<String> = dos.whitelist.iter().map(ToString::to_string).collect();
    let _ = writeln!(
        text,
        "  set dos_whitelist {{\n    type ipv4_addr; flags interval;"
    );
    if !whitelist.is_empty() {
        let _ = writeln!(text, "    elements = {{ {} }}", whitelist.join(", "));
    }
    let _ = writeln!(text, "  }}");
    let _ = writeln!(
        text,
        "  set dos_sources {{\n    type ipv4_addr; flags dynamic; timeout 1m;\n  }}"
    );

    let _ = writeln!(
        text,
        "  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;"
    );
    if let Some(lb) = public.web_entry {
        let _ = writeln!(
            text,
            "    iifname \"{outside}\" tcp dport {{ 80, 443 }} dnat ip to {lb}"
        );
    }
    for forward in &public.forwards {
        let from = if forward.from.is_empty() {
            String::new()
        } else {
            let networks: Vec<String> = forward.from.iter().map(ToString::to_string).collect();
            format!("ip saddr {{ {} }} ", networks.join(", "))
        };
        let _ = writeln!(
            text,
            "    iifname \"{outside}\" {from}tcp dport {} dnat ip to {}:{}",
            forward.port, forward.to_ip, forward.to_port
        );
    }
    let _ = writeln!(text, "  }}");

    let _ = writeln!(
        text,
        "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;"
    );
    let _ = writeln!(text, "    oifname \"{outside}\" masquerade\n  }}");

    let _ = writeln!(
        text,
        "  chain forward {{\n    type filter hook forward priority filter; policy drop;"
    );
    let _ = writeln!(text, "    ct state established,related accept");
    let _ = writeln!(
        text,
        "    iifname \"{inside}\" oifname \"{outside}\" accept"
    );
    let _ = writeln!(
        text,
        "    iifname \"{outside}\" ct status dnat jump dos\n  }}"
    );

    let _ = writeln!(text, "  chain dos {{\n    ip saddr @dos_whitelist accept");
    let _ = writeln!(
        text,
        "    ct state new add @dos_sources {{ ip saddr limit rate over {}/second burst {} packets }} drop",
        dos.rate, dos.burst
    );
    let _ = writeln!(text, "    accept\n  }}");

    let _ = writeln!(
        text,
        "  chain input {{\n    type filter hook input priority filter; policy accept;"
    );
    let _ = writeln!(
        text,
        "    iifname \"{outside}\" ct state established,related accept"
    );
    let _ = writeln!(text, "    iifname \"{outside}\" drop\n  }}\n}}");
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cidr, DosFilter, PortForward};

    #[test]
    fn renders_dnat_forwards_masquerade_and_the_dos_filter() {
        let public = PublicSide {
            uplink: "host".into(),
            address: Cidr::parse("203.0.113.10/24").unwrap(),
            gateway: "203.0.113.1".parse().unwrap(),
            web_entry: Some("172.16.0.11".parse().unwrap()),
            forwards: vec![PortForward {
                port: 3022,
                to_node: "acc1".into(),
                to_ip: "172.16.0.61".parse().unwrap(),
                to_port: 22,
                from: vec![Cidr::parse("198.51.100.0/24").unwrap()],
            }],
            dos: DosFilter {
                rate: 5,
                burst: 3,
                whitelist: vec![Cidr::parse("203.0.113.1/32").unwrap()],
            },
        };
        let rules = render(&public);
        assert!(
            rules.contains("iifname \"eth1\" tcp dport { 80, 443 } dnat ip to 172.16.0.11"),
            "{rules}"
        );
        assert!(
            rules.contains("ip saddr { 198.51.100.0/24 } tcp dport 3022 dnat ip to 172.16.0.61:22"),
            "{rules}"
        );
        assert!(rules.contains("oifname \"eth1\" masquerade"), "{rules}");
        assert!(
            rules.contains("limit rate over 5/second burst 3 packets"),
            "{rules}"
        );
        assert!(rules.contains("elements = { 203.0.113.1/32 }"), "{rules}");
    }
}
