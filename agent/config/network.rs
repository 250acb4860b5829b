//! The `[network]` table, and how each node attaches: address, default route, and for fw1 the
//! public side with its forwards and DOS filter.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use toml::Spanned;

use super::model::{
    Cidr, DosFilter, NetworkSettings, NodeNetwork, NodeSpec, PortForward, PublicSide, Subnet,
};
use super::raw::{RawDos, RawForward, RawNetwork};
use super::role::Checker;

/// The node that is the gateway of the internal network and holds the public side.
pub const GATEWAY_NODE: &str = "fw1";
/// The node public 80/443 are forwarded to.
pub const WEB_ENTRY_NODE: &str = "lb1";

/// What of `[network]` can only be finished once the nodes are known.
pub struct PendingPublic {
    uplink: String,
    address: Option<Cidr>,
    gateway: Option<Ipv4Addr>,
    forwards: Vec<RawForward>,
    dos: Option<RawDos>,
}

pub fn network_settings(
    checker: &mut Checker,
    raw: RawNetwork,
) -> Option<(NetworkSettings, PendingPublic)> {
    let errors_before = checker.diagnostics.len();
    let default_subnet = || Subnet::parse("172.16.0.0/24").expect("default subnet");
    let subnet = match &raw.subnet {
        Some(text) => match Subnet::parse(text.get_ref()) {
            Ok(subnet) => {
                if let Err(message) = check_subnet(text.get_ref(), subnet) {
                    checker.error(text, format!("network.subnet: {message}"));
                }
                subnet
            }
            Err(message) => {
                checker.error(text, format!("network.subnet: {message}"));
                default_subnet()
            }
        },
        None => default_subnet(),
    };
    let host_ip = match raw.host_ip {
        Some(text) => match text.get_ref().parse::<Ipv4Addr>() {
            Ok(ip) if subnet.is_usable_host(ip) => ip,
            _ => {
                checker.error(
                    &text,
                    format!(
                        "network.host_ip: `{}` is not a host address in {subnet}",
                        text.get_ref()
                    ),
                );
                Ipv4Addr::UNSPECIFIED
            }
        },
        None => subnet.host(254).unwrap_or(Ipv4Addr::UNSPECIFIED),
    };
    let bridge = match raw.bridge {
        Some(name) if !is_link_name(name.get_ref()) => {
            checker.error(
                &name,
                "network.bridge: a link name of 1 to 15 letters, digits, '-' or '_'",
            );
            String::new()
        }
        Some(name) => name.into_inner(),
        None => "msbr0".into(),
    };
    let link_prefix = match raw.link_prefix {
        Some(prefix) => {
            let text = prefix.get_ref();
            if !(1..=2).contains(&text.len())
                || !text
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            {
                checker.error(
                    &prefix,
                    "network.link_prefix: one or two lowercase letters or digits",
                );
            }
            prefix.into_inner()
        }
        None => "ms".into(),
    };
    let address = raw
        .public_ip
        .and_then(|text| match Cidr::parse(text.get_ref()) {
            Ok(cidr) if subnet.overlaps(cidr) => {
                checker.error(
                    &text,
                    format!("network.public_ip: {cidr} overlaps the internal subnet {subnet}"),
                );
                None
            }
            Ok(cidr) if cidr.prefix >= 8 && cidr.prefix <= 30 => Some(cidr),
            Ok(_) => {
                checker.error(
                    &text,
                    "network.public_ip: the prefix must be between /8 and /30",
                );
                None
            }
            Err(message) => {
                checker.error(&text, format!("network.public_ip: {message}"));
                None
            }
        });
    let gateway = match raw.public_gateway {
        Some(text) => match text.get_ref().parse::<Ipv4Addr>() {
            Ok(ip) if address.is_none_or(|a| a.contains(ip) && a.address != ip) => Some(ip),
            Ok(_) => {
                checker.error(
                    &text,
                    "network.public_gateway: must be another address in public_ip's network",
                );
                None
            }
            Err(_) => {
                checker.error(&text, "network.public_gateway: not an IPv4 address");
                None
            }
        },
        None => None,
    };
    if address.is_some() != gateway.is_some() {
        checker.error_at(None, "network: public_ip and public_gateway go together");
    }
    let uplink = raw
        .uplink
        .map(Spanned::into_inner)
        .unwrap_or_else(|| "host".into());
    (checker.diagnostics.len() == errors_before).then_some((
        NetworkSettings {
            bridge,
            subnet,
            host_ip,
            link_prefix,
            public: None,
        },
        PendingPublic {
            uplink,
            address,
            gateway,
            forwards: raw.forward.unwrap_or_default(),
            dos: raw.dos,
        },
    ))
}

/// Completes the public side and gives every node its attachment.
pub fn attach_nodes(
    checker: &mut Checker,
    network: &mut NetworkSettings,
    pending: PendingPublic,
    nodes: &mut BTreeMap<String, NodeSpec>,
) {
    let ip_of = |name: &str| nodes.get(name).map(|n| n.ip());
    let public = match (pending.address, pending.gateway) {
        (Some(address), Some(gateway)) => Some(PublicSide {
            uplink: pending.uplink,
            address,
            gateway,
            web_entry: ip_of(WEB_ENTRY_NODE),
            forwards: forwards(checker, pending.forwards, nodes),
            dos: dos_filter(checker, pending.dos),
        }),
        _ => None,
    };
    network.public = public.clone();
    let gateway_node = nodes
        .get(GATEWAY_NODE)
        .filter(|n| n.role == "fw")
        .map(|n| n.ip());
    for node in nodes.values_mut() {
        let is_gateway = node.name == GATEWAY_NODE && node.role == "fw";
        node.network = NodeNetwork {
            address: Cidr {
                address: node.ip(),
                prefix: network.subnet.prefix,
            },
            gateway: match (is_gateway, &public) {
                (true, Some(_)) => None,
                (true, None) => Some(network.host_ip),
                (false, _) => Some(gateway_node.unwrap_or(network.host_ip)),
            },
            public: if is_gateway { public.clone() } else { None },
        };
    }
}

fn forwards(
    checker: &mut Checker,
    raw: Vec<RawForward>,
    nodes: &BTreeMap<String, NodeSpec>,
) -> Vec<PortForward> {
    let mut forwards = Vec::new();
    for forward in raw {
        let port = match u16::try_from(*forward.port.get_ref()) {
            Ok(port) if port > 0 => port,
            _ => {
                checker.error(&forward.port, "network.forward.port: not a port number");
                continue;
            }
        };
        let target = forward
            .to
            .get_ref()
            .split_once(':')
            .and_then(|(node, port)| Some((node, port.parse::<u16>().ok().filter(|p| *p > 0)?)));
        let Some((to_node, to_port)) = target else {
            checker.error(
                &forward.to,
                "network.forward.to: `<node>:<port>`, like acc1:22",
            );
            continue;
        };
        let Some(to_ip) = nodes.get(to_node).map(|n| n.ip()) else {
            checker.error(
                &forward.to,
                format!("network.forward.to: no node named {to_node}"),
            );
            continue;
        };
        let from = cidrs(checker, &forward.from, "network.forward.from");
        forwards.push(PortForward {
            port,
            to_node: to_node.to_string(),
            to_ip,
            to_port,
            from,
        });
    }
    forwards
}

fn dos_filter(checker: &mut Checker, raw: Option<RawDos>) -> DosFilter {
    let mut filter = DosFilter {
        rate: 50,
        burst: 100,
        whitelist: Vec::new(),
    };
    let Some(raw) = raw else { return filter };
    let mut positive = |value: Option<Spanned<i64>>, field: &str, into: &mut u32| {
        if let Some(value) = value {
            match u32::try_from(*value.get_ref()) {
                Ok(number) if number > 0 => *into = number,
                _ => checker.error(
                    &value,
                    format!("network.dos.{field}: a whole number above 0"),
                ),
            }
        }
    };
    positive(raw.rate, "rate", &mut filter.rate);
    positive(raw.burst, "burst", &mut filter.burst);
    filter.whitelist = cidrs(checker, &raw.whitelist, "network.dos.whitelist");
    filter
}

fn cidrs(checker: &mut Checker, raw: &[Spanned<String>], field: &str) -> Vec<Cidr> {
    raw.iter()
        .filter_map(|text| {
            let parsed = if text.get_ref().contains('/') {
                Cidr::parse(text.get_ref())
            } else {
                text.get_ref()
                    .parse::<Ipv4Addr>()
                    .map(|address| Cidr {
                        address,
                        prefix: 32,
                    })
                    .map_err(|_| format!("`{}` is not an IPv4 address or network", text.get_ref()))
            };
            parsed
                .map_err(|message| checker.error(text, format!("{field}: {message}")))
                .ok()
        })
        .collect()
}

/// Loopback addresses, which every network namespace keeps to itself.
const LOOPBACK: Cidr = Cidr {
    address: Ipv4Addr::new(127, 0, 0, 0),
    prefix: 8,
};

/// What parsing alone lets through: host bits (`172.16.0.5/24` is taken for a typo, not
/// silently widened), and the loopback range.
fn check_subnet(text: &str, subnet: Subnet) -> Result<(), String> {
    let written = text
        .split_once('/')
        .and_then(|(address, _)| address.parse::<Ipv4Addr>().ok());
    if written != Some(subnet.network) {
        return Err(format!(
            "`{text}` has host bits set: the network is {subnet}"
        ));
    }
    if subnet.overlaps(LOOPBACK) {
        return Err(format!("{subnet} overlaps loopback ({LOOPBACK})"));
    }
    Ok(())
}

/// Linux interface names: at most 15 bytes, no '/', ':' or spaces.
pub fn is_link_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
