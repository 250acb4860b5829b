//! The links and routes of the agent's network namespace, which the configuration is checked
//! against (`config::check_against_host`).

use std::net::Ipv4Addr;

use super::{NetError, Netlink};
use crate::config::{Cidr, HostRoute, HostView};

/// Where the kernel lists the IPv4 routes of the main table, for the namespace of the process
/// that reads it.
const ROUTES: &str = "/proc/net/route";

/// Reads the links (over netlink) and the main table's IPv4 routes of this network namespace.
pub fn read_host_view() -> Result<HostView, NetError> {
    let links = Netlink::connect()?.links()?;
    let text = std::fs::read_to_string(ROUTES).map_err(|source| NetError::Io {
        what: format!("read {ROUTES}"),
        source,
    })?;
    Ok(HostView {
        routes: routes(&text),
        links,
    })
}

/// The routes of a `/proc/net/route` text: after a header line, the device, destination and
/// mask (8th field) as the hex of the address's bytes in memory order; unreadable lines are
/// skipped.
fn routes(text: &str) -> Vec<HostRoute> {
    let address = |hex: &str| u32::from_str_radix(hex, 16).ok().map(u32::to_ne_bytes);
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let destination = address(fields.get(1)?)?;
            let mask = address(fields.get(7)?)?;
            Some(HostRoute {
                destination: Cidr {
                    address: Ipv4Addr::from(destination),
                    prefix: u32::from_be_bytes(mask).count_ones() as u8,
                },
                device: fields.first()?.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_read_with_device_and_prefix() {
        let a = |text: &str| u32::from_ne_bytes(text.parse::<Ipv4Addr>().unwrap().octets());
        let text = format!(
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             eth0\t00000000\t{:08X}\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
             msbr0\t{:08X}\t00000000\t0001\t0\t0\t0\t{:08X}\t0\t0\t0\n\
             torn\n",
            a("192.0.2.1"),
            a("172.16.0.0"),
            a("255.255.255.0"),
        );
        let cidr = |text: &str| Cidr::parse(text).unwrap();
        assert_eq!(
            routes(&text),
            [
                HostRoute {
                    destination: cidr("0.0.0.0/0"),
                    device: "eth0".into()
                },
                HostRoute {
                    destination: cidr("172.16.0.0/24"),
                    device: "msbr0".into()
                },
            ]
        );
    }
}
