//! The configuration against the machine it is to run on: the routes and links of the network
//! namespace the agent runs in. The caller reads them (`net::read_host_view`), so the checks
//! here stay pure and are tested without a host.

use super::model::{Cidr, Config};
use super::raw::RawConfig;
use super::source::{Diagnostic, Source};

/// What the configuration is checked against.
#[derive(Debug, Clone, Default)]
pub struct HostView {
    /// IPv4 routes of the main table.
    pub routes: Vec<HostRoute>,
    pub links: Vec<HostLink>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoute {
    pub destination: Cidr,
    pub device: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    pub name: String,
    pub bridge: bool,
}

/// The problems of `config` (parsed from `source`) on this host: a `bridge` that names an
/// interface that is not a bridge (`eth0`, `lo`), and a subnet that overlaps a route of the host
/// (it would take the host's way to those addresses).
///
/// Routes on the configured bridge itself are the agent's own (its host address there, from this
/// run or the last one) and never count; a default route overlaps everything and is no
/// collision either.
pub fn check_against_host(source: &Source, config: &Config, host: &HostView) -> Vec<Diagnostic> {
    let network = &config.network;
    let raw = toml::from_str::<RawConfig>(&source.text)
        .map(|raw| raw.network)
        .unwrap_or_default();
    let bridge_span = raw.bridge.as_ref().map(toml::Spanned::span);
    let subnet_span = raw.subnet.as_ref().map(toml::Spanned::span);
    let mut problems = Vec::new();
    if let Some(link) = host
        .links
        .iter()
        .find(|link| link.name == network.bridge && !link.bridge)
    {
        problems.push(source.at(
            bridge_span,
            format!(
                "network.bridge: `{}` is an existing interface that is not a bridge",
                link.name
            ),
        ));
    }
    for route in host
        .routes
        .iter()
        .filter(|route| route.destination.prefix > 0 && route.device != network.bridge)
    {
        if network.subnet.overlaps(route.destination) {
            problems.push(source.at(
                subnet_span.clone(),
                format!(
                    "network.subnet: {} overlaps the host's route to {} on {}",
                    network.subnet, route.destination, route.device
                ),
            ));
        }
    }
    problems
}
