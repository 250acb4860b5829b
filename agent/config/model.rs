//! The configuration after parsing, merging and checking: what the rest of the agent works from.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole, valid configuration of one host.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from, or `<embedded default>`.
    pub origin: String,
    pub host: HostSettings,
    pub network: NetworkSettings,
    /// Every configured node, by name, with its effective definition.
    pub nodes: BTreeMap<String, NodeSpec>,
    pub metrics: MetricsSettings,
    pub logs: LogRotation,
    pub pair: PairSettings,
    /// The text of every template a node's role names, by its `source` as written.
    pub templates: BTreeMap<String, TemplateText>,
    /// Where the stack is (or goes when the host pairs), and whether nodes and roles came from it.
    pub stack: StackFile,
    /// Each node's home host, where the configuration names one (`host = "dh1"`).
    pub homes: BTreeMap<String, String>,
    /// The stack's id slots (`[slots]`): a node, or `@<role>` for a role's shared volumes, to
    /// the slot of its id range, the same on both hosts of a pair. Empty without a stack.
    pub slots: BTreeMap<String, u32>,
}

/// The stack file of a configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StackFile {
    /// `None` for the embedded default, which has no directory.
    pub path: Option<std::path::PathBuf>,
    /// Whether the nodes and roles were read from it (else from agent.toml).
    pub in_use: bool,
}

/// One template's text and the file it was read from (for error messages).
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateText {
    /// `<config dir>/templates/<source>`, or `roles/templates/<source>` when shipped.
    pub file: String,
    pub text: String,
}

/// How a node's `log_dir/<node>/<process>.log` is rotated: renamed to `<process>.log.1` once it
/// reaches `max_size` (older ones shift to `.2`, `.3`, ...), with at most `keep` rotated files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRotation {
    pub max_size: u64,
    pub keep: u32,
}

impl Default for LogRotation {
    fn default() -> Self {
        LogRotation {
            max_size: 10 << 20,
            keep: 5,
        }
    }
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSettings {
    /// Where `GET /metrics` is served; `None` (the default) serves nothing.
    pub listen: Option<SocketAddr>,
}

/// `[pair]`: this host's end of the pair link and the timing of its heartbeats.
#[derive(Debug, Clone, PartialEq)]
pub struct PairSettings {
    /// Where this host accepts the partner's TLS connections, and the address it gives the
    /// partner to dial; `None` (the default) leaves the host standalone.
    pub listen: Option<SocketAddr>,
    /// How often a host tells its peers it is alive.
    pub heartbeat: Duration,
    /// How long a peer's silence is tolerated.
    pub lease: Duration,
    /// Added to the lease before a takeover.
    pub fence_margin: Duration,
    /// Powers the partner off (exit 0: it is off); used by failover only, with the witness's
    /// agreement. Program and arguments, run without a shell.
    pub fence_command: Option<Vec<String>>,
    /// Runs on every fence, takeover and refused takeover decision, with the event in its
    /// environment. Program and arguments, run without a shell.
    pub alert_command: Option<Vec<String>>,
}

impl PairSettings {
    /// How long a node's init holds the lease its agent renews, before it fences the node.
    ///
    /// The partner's lease for this host lapses `lease` after the last heartbeat it received,
    /// and that heartbeat may be one `heartbeat` older than the agent's last renewal of the
    /// init; the init then needs time to take the links down and freeze, budgeted one more
    /// `heartbeat` (it takes milliseconds). So the init's lease is `lease - 2 * heartbeat`,
    /// at least one `heartbeat` (the agent renews every `heartbeat`); the configuration
    /// check refuses settings that leave less (`lease` under three heartbeats).
    pub fn init_lease(&self) -> Duration {
        self.lease
            .saturating_sub(2 * self.heartbeat)
            .max(self.heartbeat)
    }
}

impl Default for PairSettings {
    fn default() -> Self {
        PairSettings {
            listen: None,
            heartbeat: Duration::from_millis(100),
            lease: Duration::from_millis(500),
            fence_margin: Duration::from_millis(200),
            fence_command: None,
            alert_command: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostSettings {
    pub name: String,
    pub state_dir: PathBuf,
    /// The image store: `state_dir/images` unless `[host] image_dir` says otherwise.
    pub image_dir: PathBuf,
    /// Which tool builds images from recipes (`[host] image_builder`).
    pub image_builder: ImageBuilder,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    /// Parent cgroup of every node, relative to the root of each hierarchy.
    pub cgroup: String,
    /// How long a node's processes get between SIGTERM and SIGKILL.
    pub stop_timeout: Duration,
    /// The first host id of the nodes' id ranges (`[host] id_base`): distinct for unrelated
    /// agents on one machine, the same on both hosts of a pair.
    pub id_base: u32,
}

/// Where a node sees its rendered template files: a read-only bind of the host directory they
/// are written to, each template's `dest` a symlink into it.
pub const TEMPLATES_IN_NODE: &str = "/run/magestack/templates";

/// Ids a node maps: 0..65536 inside, a range of as many on the host.
pub const ID_RANGE: u32 = 65536;
/// The first host id given to nodes unless `[host] id_base` says otherwise: above the host's
/// system and login ids and the usual subordinate id ranges (100000-165535 for a first user).
pub const DEFAULT_ID_BASE: u32 = 1 << 20;
/// At least this many ranges fit above any `id_base`.
pub const MIN_ID_RANGES: u32 = 1024;
/// The highest `id_base` that leaves [`MIN_ID_RANGES`] below 2^32 - 1 (the last id is no id).
pub const LAST_ID_BASE: u32 = (u32::MAX / ID_RANGE - MIN_ID_RANGES) * ID_RANGE;

/// Whether `base` can start the nodes' id ranges: whole ranges, none of them the host's own
/// ids 0..65536, room for [`MIN_ID_RANGES`].
pub fn valid_id_base(base: u32) -> bool {
    base.is_multiple_of(ID_RANGE) && (ID_RANGE..=LAST_ID_BASE).contains(&base)
}

/// The operator's choice of the tool that builds images from recipes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ImageBuilder {
    /// mmdebstrap when it is installed, else debootstrap.
    #[default]
    Auto,
    Mmdebstrap,
    Debootstrap,
}

impl ImageBuilder {
    pub fn parse(text: &str) -> Result<ImageBuilder, String> {
        match text {
            "auto" => Ok(ImageBuilder::Auto),
            "mmdebstrap" => Ok(ImageBuilder::Mmdebstrap),
            "debootstrap" => Ok(ImageBuilder::Debootstrap),
            other => Err(format!(
                "`{other}` is not one of auto, mmdebstrap, debootstrap"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NetworkSettings {
    pub bridge: String,
    pub subnet: Subnet,
    pub host_ip: Ipv4Addr,
    /// Host-side links of node `n` are `<link_prefix>-n` and `<link_prefix>_n`.
    pub link_prefix: String,
    /// The public side of fw1, when `public_ip` is set.
    pub public: Option<PublicSide>,
}

/// An IPv4 address with its prefix length, "203.0.113.10/24".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cidr {
    pub address: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let error =
            || format!("`{text}` is not an IPv4 address with a prefix, like 203.0.113.10/24");
        let (address, prefix) = text.split_once('/').ok_or_else(error)?;
        let prefix: u8 = prefix.parse().map_err(|_| error())?;
        if prefix > 32 {
            return Err(error());
        }
        Ok(Cidr {
            address: address.parse().map_err(|_| error())?,
            prefix,
        })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        };
        u32::from(ip) & mask == u32::from(self.address) & mask
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// fw1's side facing the outside world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublicSide {
    /// `host`: a veth pair to the host, whose side carries `gateway`; else the name of the
    /// host interface fw1 gets a macvlan on.
    pub uplink: String,
    pub address: Cidr,
    pub gateway: Ipv4Addr,
    /// Where public 80/443 go (lb1), if there is an lb1.
    pub web_entry: Option<Ipv4Addr>,
    pub forwards: Vec<PortForward>,
    pub dos: DosFilter,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortForward {
    pub port: u16,
    pub to_node: String,
    pub to_ip: Ipv4Addr,
    pub to_port: u16,
    /// Source networks allowed; empty means everyone.
    pub from: Vec<Cidr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DosFilter {
    /// New connections per second from one source address before it is dropped.
    pub rate: u32,
    pub burst: u32,
    pub whitelist: Vec<Cidr>,
}

/// How one node is attached to the internal network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeNetwork {
    pub address: Cidr,
    /// Default route; `None` for fw1 with a public side (its route goes out there).
    pub gateway: Option<Ipv4Addr>,
    pub public: Option<PublicSide>,
}

/// An IPv4 network, "172.16.0.0/24".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn parse(text: &str) -> Result<Subnet, String> {
        let error = || format!("`{text}` is not an IPv4 subnet like 172.16.0.0/24");
        let (address, prefix) = text.split_once('/').ok_or_else(error)?;
        let address: Ipv4Addr = address.parse().map_err(|_| error())?;
        let prefix: u8 = prefix.parse().map_err(|_| error())?;
        if !(8..=30).contains(&prefix) {
            return Err(format!(
                "subnet `{text}`: the prefix must be between /8 and /30"
            ));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Subnet {
            network: Ipv4Addr::from(u32::from(address) & mask),
            prefix,
        })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == u32::from(self.network)
    }

    /// The address `offset` hosts into the subnet, if it is a usable host address.
    pub fn host(&self, offset: u32) -> Option<Ipv4Addr> {
        let size = 1u32 << (32 - self.prefix);
        (offset > 0 && offset < size - 1).then(|| Ipv4Addr::from(u32::from(self.network) + offset))
    }

    pub fn is_usable_host(&self, ip: Ipv4Addr) -> bool {
        let offset = u32::from(ip).wrapping_sub(u32::from(self.network));
        self.contains(ip) && self.host(offset).is_some()
    }

    /// Whether the subnet and `other` share an address: one of them holds the other.
    pub fn overlaps(&self, other: Cidr) -> bool {
        let shorter = self.prefix.min(other.prefix);
        let within = Cidr {
            address: self.network,
            prefix: shorter,
        };
        within.contains(other.address)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The effective definition of one node: its role's definition, with the node's own resources
/// laid over the role's, and its place on the network. Two specs that compare equal run the
/// same way, which is what `reload` uses to decide on restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub name: String,
    pub role: String,
    /// Flattened: a record keeps the shape it had when these were the spec's own fields.
    #[serde(flatten)]
    pub definition: Role,
    pub network: NodeNetwork,
}

impl NodeSpec {
    /// The node's address on the internal network.
    pub fn ip(&self) -> Ipv4Addr {
        self.network.address.address
    }
}

/// A role with everything a node needs to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Role {
    pub image: String,
    /// The bounding set of the role's processes.
    pub capabilities: Vec<String>,
    /// Runs without a user namespace (root inside is root outside).
    pub privileged: bool,
    pub processes: Vec<ProcessSpec>,
    /// A node's: the role's, with the node's own `[nodes.<node>.resources]` over them.
    pub resources: Resources,
    pub volumes: Vec<VolumeSpec>,
    pub health: Option<HealthSpec>,
    pub allow: Vec<AllowRule>,
    pub templates: Vec<TemplateSpec>,
    /// Public keys by user (`[roles.<role>] ssh_keys`), for the role's templates.
    #[serde(default)]
    pub ssh_keys: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessSpec {
    pub name: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub user: Option<String>,
    pub restart: RestartPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn parse(text: &str) -> Result<RestartPolicy, String> {
        match text {
            "always" => Ok(RestartPolicy::Always),
            "on-failure" => Ok(RestartPolicy::OnFailure),
            "never" => Ok(RestartPolicy::Never),
            other => Err(format!(
                "restart = `{other}` is not one of always, on-failure, never"
            )),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub memory_bytes: Option<u64>,
    /// Disk space for the node's writable layer and its own volumes together (not its role's
    /// shared volumes); enforced by a btrfs quota group where the state dir is on btrfs.
    #[serde(default)]
    pub disk_bytes: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub name: String,
    /// Absolute path inside the node.
    pub path: String,
    /// One volume for every node of the role (`state_dir/volumes/@<role>/<name>`) instead of
    /// one per node.
    #[serde(default)]
    pub shared: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthSpec {
    pub check: HealthCheck,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_after: u32,
    pub unhealthy_after: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheck {
    Tcp(u16),
    Http(String),
    Exec(Vec<String>),
}

/// Where an `http` check sends its GET. The check runs inside the node, so the host is an IPv4
/// address or `localhost`, never a name to resolve; a bare path means 127.0.0.1 port 80.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    /// What the request's Host header says.
    pub host: String,
    pub address: SocketAddrV4,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpTarget {
    pub fn parse(text: &str) -> Result<HttpTarget, String> {
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "`{}` contains spaces or control characters",
                text.escape_default()
            ));
        }
        if text.starts_with('/') {
            return Ok(HttpTarget {
                host: Ipv4Addr::LOCALHOST.to_string(),
                address: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 80),
                path: text.to_string(),
            });
        }
        if text.starts_with("https://") {
            return Err(format!(
                "`{text}`: https is not checked; give the plain http port, like http://127.0.0.1:80/health"
            ));
        }
        let rest = text.strip_prefix("http://").ok_or_else(|| {
            format!("`{text}` is not a path like /health or a URL like http://127.0.0.1:80/health")
        })?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) if rest[at..].starts_with('?') => (&rest[..at], format!("/{}", &rest[at..])),
            Some(at) => (&rest[..at], rest[at..].to_string()),
            None => (rest, "/".to_string()),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => match port.parse::<u16>() {
                Ok(port) if port > 0 => (host, port),
                _ => return Err(format!("`{text}`: `{port}` is not a port number")),
            },
            None => (authority, 80),
        };
        let ip = match host {
            "localhost" => Ipv4Addr::LOCALHOST,
            _ => host.parse().map_err(|_| {
                format!("`{text}`: the host must be an IPv4 address or localhost, not `{host}`")
            })?,
        };
        Ok(HttpTarget {
            host: host.to_string(),
            address: SocketAddrV4::new(ip, port),
            path,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllowRule {
    pub from: Vec<String>,
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateSpec {
    /// Path below `templates/` next to the configuration file, else below the shipped
    /// `roles/templates/`.
    pub source: String,
    /// Absolute path inside the node where the rendered file appears.
    pub dest: String,
    /// What is told to re-read the file when its rendering changes; `None` for software that
    /// reads it afresh on every use.
    pub reload: Option<TemplateReload>,
}

/// A signal to one of the role's processes (its main pid, not its group).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateReload {
    pub process: String,
    /// Signal name with its `SIG` prefix, as `SIGHUP`.
    pub signal: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_normalises_and_bounds_hosts() {
        let subnet = Subnet::parse("172.16.0.9/24").unwrap();
        assert_eq!(subnet.to_string(), "172.16.0.0/24");
        assert_eq!(subnet.host(1), Some(Ipv4Addr::new(172, 16, 0, 1)));
        assert_eq!(subnet.host(0), None);
        assert_eq!(subnet.host(255), None);
        assert!(subnet.is_usable_host(Ipv4Addr::new(172, 16, 0, 254)));
        assert!(!subnet.is_usable_host(Ipv4Addr::new(172, 16, 1, 1)));
        assert!(Subnet::parse("172.16.0.0").is_err());
        assert!(Subnet::parse("172.16.0.0/31").is_err());
    }

    #[test]
    fn http_targets_are_local_addresses_with_a_path() {
        let target = HttpTarget::parse("/health").unwrap();
        assert_eq!(target.address, "127.0.0.1:80".parse().unwrap());
        assert_eq!(target.path, "/health");
        let target = HttpTarget::parse("http://127.0.0.1:8080/a/b?c=d").unwrap();
        assert_eq!(target.address, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(target.path, "/a/b?c=d");
        let target = HttpTarget::parse("http://localhost").unwrap();
        assert_eq!(target.address, "127.0.0.1:80".parse().unwrap());
        assert_eq!(
            (target.host.as_str(), target.path.as_str()),
            ("localhost", "/")
        );
        assert_eq!(HttpTarget::parse("http://10.0.0.1?x").unwrap().path, "/?x");
        for bad in [
            "health",
            "https://127.0.0.1/",
            "http://example.com/",
            "http://127.0.0.1:0/",
            "http://127.0.0.1:http/",
            "/a b",
            "/a\r\nX: y",
        ] {
            assert!(HttpTarget::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
