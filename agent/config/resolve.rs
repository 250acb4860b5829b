//! From the configuration as written to the effective definition of every node.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::duration::parse_duration;
use super::model::{
    valid_id_base, Cidr, Config, HostSettings, ImageBuilder, LogRotation, MetricsSettings,
    NetworkSettings, NodeNetwork, NodeSpec, Role, StackFile, TemplateText, DEFAULT_ID_BASE,
    ID_RANGE, LAST_ID_BASE, MIN_ID_RANGES,
};
use super::plan::{node_index, planned_offset, OTHER_ROLES_FROM};
use super::raw::{RawConfig, RawHost, RawLogs, RawMetrics, RawNode, RawRole};
use super::role::{Checker, PartialRole};
use super::shipped::{role_source, DEFAULT_NODES};
use super::source::{Diagnostic, Source};
use super::ConfigError;

/// Checks and resolves one configuration text. `kept` are addresses nodes have now (those that
/// run): a node of a role outside the address plan keeps its address when it is still free, so
/// adding or removing another such node never renumbers it.
pub fn resolve(source: &Source, kept: &BTreeMap<String, Ipv4Addr>) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(&source.text).map_err(|error| {
        ConfigError::Invalid(vec![source.at(error.span(), error.message().trim())])
    })?;
    let mut diagnostics = Vec::new();
    let mut checker = Checker {
        source,
        diagnostics: &mut diagnostics,
    };

    let host = host_settings(&mut checker, raw.host);
    let metrics = metrics_settings(&mut checker, raw.metrics);
    let logs = log_rotation(&mut checker, raw.logs);
    let pair = super::pair::pair_settings(&mut checker, raw.pair);
    let network = super::network::network_settings(&mut checker, raw.network);
    let known_roles: BTreeSet<String> = super::shipped::ROLES
        .iter()
        .map(|(name, _)| name.to_string())
        .chain(raw.roles.keys().map(|name| name.get_ref().clone()))
        .collect();
    let inline_roles: BTreeMap<String, (Spanned<String>, PartialRole)> = raw
        .roles
        .into_iter()
        .map(|(name, role)| {
            check_role_name(&mut checker, &name);
            if let Some(allow) = &role.allow {
                checker.allow_sources(name.get_ref(), allow, &known_roles);
            }
            let partial = checker.role(name.get_ref(), role);
            (name.get_ref().clone(), (name, partial))
        })
        .collect();
    let mut templates = BTreeMap::new();
    let roles = complete_roles(&mut checker, inline_roles, &mut templates);

    let raw_nodes = raw.nodes.unwrap_or_else(default_nodes);
    let homes = node_homes(&mut checker, &raw_nodes);
    let slots = id_slots(&mut checker, raw.slots, !source.appended.is_empty());
    let network = network.map(|(mut network, pending)| {
        let mut nodes = node_specs(&mut checker, raw_nodes, &roles, &network, kept);
        super::network::attach_nodes(&mut checker, &mut network, pending, &mut nodes);
        (network, nodes)
    });

    match (host, network) {
        (Some(host), Some((network, nodes))) if diagnostics.is_empty() => Ok(Config {
            origin: source.name.clone(),
            host,
            network,
            nodes,
            metrics,
            logs,
            pair,
            templates,
            stack: StackFile {
                path: super::stack_file::stack_path(source),
                in_use: !source.appended.is_empty(),
            },
            homes,
            slots,
        }),
        _ => Err(ConfigError::Invalid(diagnostics)),
    }
}

/// The stack's id slots: each below [`MIN_ID_RANGES`] (they fit above any `id_base`) and
/// given once; only in a stack.
fn id_slots(
    checker: &mut Checker,
    raw: Option<Spanned<BTreeMap<Spanned<String>, Spanned<i64>>>>,
    in_stack: bool,
) -> BTreeMap<String, u32> {
    let Some(raw) = raw else {
        return BTreeMap::new();
    };
    if !in_stack {
        checker.error(
            &raw,
            "slots: id slots are values of the shared stack (stack.toml); this host keeps its own in state_dir/idmaps.json",
        );
        return BTreeMap::new();
    }
    let mut slots = BTreeMap::new();
    let mut owners: BTreeMap<u32, String> = BTreeMap::new();
    for (owner, slot) in raw.into_inner() {
        let name = owner.get_ref();
        let Some(value) = u32::try_from(*slot.get_ref())
            .ok()
            .filter(|slot| *slot < MIN_ID_RANGES)
        else {
            checker.error(
                &slot,
                format!("slots.{name}: a slot from 0 to {}", MIN_ID_RANGES - 1),
            );
            continue;
        };
        if let Some(other) = owners.insert(value, name.clone()) {
            checker.error(
                &slot,
                format!("slots.{name}: slot {value} is already {other}'s"),
            );
            continue;
        }
        slots.insert(name.clone(), value);
    }
    slots
}

/// The home host each node names.
fn node_homes(
    checker: &mut Checker,
    nodes: &BTreeMap<Spanned<String>, RawNode>,
) -> BTreeMap<String, String> {
    let mut homes = BTreeMap::new();
    for (name, node) in nodes {
        let Some(host) = &node.host else { continue };
        if host.get_ref().is_empty() {
            checker.error(
                host,
                format!("nodes.{}.host: must name a host", name.get_ref()),
            );
            continue;
        }
        homes.insert(name.get_ref().clone(), host.get_ref().clone());
    }
    homes
}

fn default_nodes() -> BTreeMap<Spanned<String>, RawNode> {
    DEFAULT_NODES
        .iter()
        .map(|(node, role)| {
            (
                Spanned::new(0..0, node.to_string()),
                RawNode {
                    role: Spanned::new(0..0, role.to_string()),
                    host: None,
                    ip: None,
                    resources: None,
                },
            )
        })
        .collect()
}

fn host_settings(checker: &mut Checker, raw: RawHost) -> Option<HostSettings> {
    let errors_before = checker.diagnostics.len();
    let name = match raw.name {
        Some(name) if name.get_ref().is_empty() => {
            checker.error(&name, "host.name: must not be empty");
            String::new()
        }
        Some(name) => name.into_inner(),
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|name| name.into_string().ok())
            .unwrap_or_else(|| "localhost".into()),
    };
    let mut dir = |value: Option<Spanned<String>>, field: &str, default: &str| {
        let Some(value) = value else {
            return PathBuf::from(default);
        };
        if !value.get_ref().starts_with('/') {
            checker.error(&value, format!("host.{field}: must be an absolute path"));
        }
        PathBuf::from(value.into_inner())
    };
    let state_dir = dir(raw.state_dir, "state_dir", "/var/lib/magestack");
    let image_dir = match raw.image_dir {
        Some(value) => dir(Some(value), "image_dir", ""),
        None => state_dir.join("images"),
    };
    let run_dir = dir(raw.run_dir, "run_dir", "/run/magestack");
    let log_dir = dir(raw.log_dir, "log_dir", "/var/log/magestack");
    if let Some(stack) = raw
        .stack
        .as_ref()
        .filter(|stack| stack.get_ref().is_empty())
    {
        checker.error(
            stack,
            "host.stack: must name a file (stack.toml unless given)",
        );
    }
    let image_builder = match raw.image_builder {
        Some(value) => ImageBuilder::parse(value.get_ref()).unwrap_or_else(|message| {
            checker.error(&value, format!("host.image_builder: {message}"));
            ImageBuilder::Auto
        }),
        None => ImageBuilder::Auto,
    };
    let cgroup = match raw.cgroup {
        Some(cgroup) => {
            let valid = cgroup
                .get_ref()
                .split('/')
                .all(|part| super::role::is_simple_name(part) && part != "." && part != "..");
            if !valid {
                checker.error(
                    &cgroup,
                    "host.cgroup: a relative cgroup path of simple names (letters, digits, '-', '_'; at most 32 characters each), like `magestack`",
                );
            }
            cgroup.into_inner()
        }
        None => "magestack".into(),
    };
    let stop_timeout = match raw.stop_timeout {
        Some(value) => match parse_duration(value.get_ref()) {
            Ok(timeout) => timeout,
            Err(message) => {
                checker.error(&value, format!("host.stop_timeout: {message}"));
                Duration::ZERO
            }
        },
        None => Duration::from_secs(10),
    };
    let id_base = match raw.id_base {
        Some(value) => u32::try_from(*value.get_ref())
            .ok()
            .filter(|base| valid_id_base(*base))
            .unwrap_or_else(|| {
                checker.error(
                    &value,
                    format!(
                        "host.id_base: a multiple of {ID_RANGE} from {ID_RANGE} to {LAST_ID_BASE}, so that no node's id is the host's own and {MIN_ID_RANGES} id ranges fit below 2^32"
                    ),
                );
                DEFAULT_ID_BASE
            }),
        None => DEFAULT_ID_BASE,
    };
    (checker.diagnostics.len() == errors_before).then_some(HostSettings {
        name,
        state_dir,
        image_dir,
        image_builder,
        run_dir,
        log_dir,
        cgroup,
        stop_timeout,
        id_base,
    })
}

fn metrics_settings(checker: &mut Checker, raw: RawMetrics) -> MetricsSettings {
    let listen = raw
        .listen
        .and_then(|listen| match listen.get_ref().parse::<SocketAddr>() {
            Ok(address) => Some(address),
            Err(_) => {
                checker.error(
                    &listen,
                    format!(
                        "metrics.listen: `{}` is not an address with a port, like 127.0.0.1:9477 or [::1]:9477",
                        listen.get_ref()
                    ),
                );
                None
            }
        });
    MetricsSettings { listen }
}

fn log_rotation(checker: &mut Checker, raw: RawLogs) -> LogRotation {
    let default = LogRotation::default();
    let max_size = match raw.max_size {
        Some(value) => match super::size::parse_size(value.get_ref()) {
            Ok(size) if size >= 4096 => size,
            Ok(_) => {
                checker.error(&value, "logs.max_size: at least 4K");
                default.max_size
            }
            Err(message) => {
                checker.error(&value, format!("logs.max_size: {message}"));
                default.max_size
            }
        },
        None => default.max_size,
    };
    let keep = match raw.keep {
        Some(value) => match u32::try_from(*value.get_ref()) {
            Ok(keep) if keep <= 1000 => keep,
            _ => {
                checker.error(
                    &value,
                    "logs.keep: a number of rotated files from 0 to 1000",
                );
                default.keep
            }
        },
        None => default.keep,
    };
    LogRotation { max_size, keep }
}

fn check_role_name(checker: &mut Checker, name: &Spanned<String>) {
    let text = name.get_ref();
    let valid = text.starts_with(|c: char| c.is_ascii_lowercase())
        && text.len() <= 16
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        checker.error(
            name,
            format!("roles.{text}: role names are lowercase letters, digits and '-', starting with a letter (at most 16)"),
        );
    }
}

/// Every role a node may use: the shipped ones with their inline overrides, and inline-only ones.
/// The text of each template a role names is read into `templates`.
fn complete_roles(
    checker: &mut Checker,
    inline: BTreeMap<String, (Spanned<String>, PartialRole)>,
    templates: &mut BTreeMap<String, TemplateText>,
) -> BTreeMap<String, Role> {
    let mut names: Vec<String> = super::shipped::ROLES
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    names.extend(inline.keys().cloned());
    names.sort();
    names.dedup();

    let mut inline = inline;
    let mut roles = BTreeMap::new();
    for name in names {
        let shipped =
            role_source(&name).map(|source| shipped_role(checker.diagnostics, &source, &name));
        let (key, partial) = match (inline.remove(&name), shipped) {
            (Some((key, over)), Some(base)) => (Some(key), over.merged_over(base)),
            (Some((key, over)), None) => (Some(key), over),
            (None, Some(base)) => (None, base),
            (None, None) => continue,
        };
        match partial.complete() {
            Ok(role) => {
                for template in &role.templates {
                    if templates.contains_key(&template.source) {
                        continue;
                    }
                    match super::shipped::template(checker.source.dir.as_deref(), &template.source)
                    {
                        Ok(text) => {
                            templates.insert(template.source.clone(), text);
                        }
                        Err(message) => {
                            let span = key.as_ref().map(Spanned::span);
                            checker.error_at(span, format!("roles.{name}.template: {message}"));
                        }
                    }
                }
                roles.insert(name, role);
            }
            Err(message) => {
                let span = key.as_ref().map(Spanned::span);
                checker.error_at(span, format!("roles.{name}: {message}"));
            }
        }
    }
    roles
}

fn shipped_role(diagnostics: &mut Vec<Diagnostic>, source: &Source, name: &str) -> PartialRole {
    match toml::from_str::<RawRole>(&source.text) {
        Ok(raw) => Checker {
            source,
            diagnostics,
        }
        .role(name, raw),
        Err(error) => {
            diagnostics.push(source.at(error.span(), error.message().trim()));
            PartialRole::default()
        }
    }
}

fn node_specs(
    checker: &mut Checker,
    raw_nodes: BTreeMap<Spanned<String>, RawNode>,
    roles: &BTreeMap<String, Role>,
    network: &NetworkSettings,
    kept: &BTreeMap<String, Ipv4Addr>,
) -> BTreeMap<String, NodeSpec> {
    let mut nodes = BTreeMap::new();
    let mut addresses: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    let mut unplanned = Vec::new();

    for (name, raw) in raw_nodes {
        let node = name.get_ref().clone();
        if !is_node_name(&node) {
            checker.error(
                &name,
                format!("nodes.{node}: node names are lowercase letters, digits and '-', starting with a letter (at most 12), like web1"),
            );
        }
        let Some(role) = roles.get(raw.role.get_ref()) else {
            let known: Vec<&str> = roles.keys().map(String::as_str).collect();
            checker.error(
                &raw.role,
                format!(
                    "nodes.{node}.role: unknown role `{}` (known: {})",
                    raw.role.get_ref(),
                    known.join(", ")
                ),
            );
            continue;
        };
        let ip = match &raw.ip {
            Some(text) => match text.get_ref().parse::<Ipv4Addr>() {
                Ok(ip) if network.subnet.is_usable_host(ip) && ip != network.host_ip => Some(ip),
                _ => {
                    checker.error(
                        text,
                        format!(
                            "nodes.{node}.ip: `{}` is not a free host address in {} (the host has {})",
                            text.get_ref(),
                            network.subnet,
                            network.host_ip
                        ),
                    );
                    continue;
                }
            },
            None => node_index(&node)
                .and_then(|index| planned_offset(raw.role.get_ref(), index))
                .and_then(|offset| network.subnet.host(offset)),
        };
        if let Some(ip) = ip {
            if let Some(other) = addresses.insert(ip, node.clone()) {
                let span = raw.ip.as_ref().map(Spanned::span).or(Some(name.span()));
                checker.error_at(
                    span,
                    format!("nodes.{node}.ip: address {ip} is already used by node {other}"),
                );
            }
        } else if planned_offset(raw.role.get_ref(), 1).is_some() {
            checker.error(
                &name,
                format!("nodes.{node}: the address plan has no room for this name; set `ip`"),
            );
        } else {
            unplanned.push(node.clone());
        }
        let resources = match raw.resources {
            Some(resources) => checker
                .resources(&format!("nodes.{node}.resources"), resources)
                .merged_over(&role.resources),
            None => role.resources.clone(),
        };
        nodes.insert(
            node.clone(),
            NodeSpec {
                name: node,
                role: raw.role.into_inner(),
                definition: Role {
                    resources,
                    ..role.clone()
                },
                // The prefix, gateway and public side come with the network's settings.
                network: NodeNetwork {
                    address: Cidr {
                        address: ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
                        prefix: 0,
                    },
                    gateway: None,
                    public: None,
                },
            },
        );
    }

    // Nodes outside the plan keep the address they have where it is still free; the others take
    // the lowest free ones from OTHER_ROLES_FROM, in name order.
    let free = |ip: Ipv4Addr, addresses: &BTreeMap<Ipv4Addr, String>| {
        network.subnet.is_usable_host(ip) && ip != network.host_ip && !addresses.contains_key(&ip)
    };
    let mut unplanned_left = Vec::new();
    for node in unplanned {
        match kept.get(&node) {
            Some(ip) if free(*ip, &addresses) => {
                addresses.insert(*ip, node.clone());
                if let Some(spec) = nodes.get_mut(&node) {
                    spec.network.address.address = *ip;
                }
            }
            _ => unplanned_left.push(node),
        }
    }
    let mut offset = OTHER_ROLES_FROM;
    for node in unplanned_left {
        let free = loop {
            match network.subnet.host(offset) {
                Some(ip) if addresses.contains_key(&ip) || ip == network.host_ip => offset += 1,
                other => break other,
            }
        };
        match free {
            Some(ip) => {
                addresses.insert(ip, node.clone());
                if let Some(spec) = nodes.get_mut(&node) {
                    spec.network.address.address = ip;
                }
            }
            None => checker.error_at(
                None,
                format!("nodes.{node}: no free address left in {}", network.subnet),
            ),
        }
    }
    nodes
}

/// Node names become host link names (`ms-<node>`, at most 15 bytes), cgroups and paths.
pub fn is_node_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.len() <= 12
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}
