//! Host configuration and role definitions: parse, merge, default, check.
//!
//! Everything is checked before anything runs: a configuration either loads whole, or fails with
//! every problem named by file, line, column and field.

mod bounds;
mod duration;
mod host_view;
mod lenient;
mod model;
mod network;
mod pair;
mod plan;
mod raw;
mod resolve;
mod role;
mod shipped;
mod size;
mod source;
mod stack_file;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use duration::parse_duration;
pub use host_view::{check_against_host, HostLink, HostRoute, HostView};
pub use model::{
    AllowRule, Cidr, Config, DosFilter, HealthCheck, HealthSpec, HostSettings, HttpTarget,
    ImageBuilder, LogRotation, MetricsSettings, NetworkSettings, NodeNetwork, NodeSpec,
    PairSettings, PortForward, ProcessSpec, PublicSide, Resources, RestartPolicy, Role, StackFile,
    Subnet, TemplateReload, TemplateSpec, TemplateText, VolumeSpec, DEFAULT_ID_BASE, ID_RANGE,
    MIN_ID_RANGES, TEMPLATES_IN_NODE,
};
pub use network::{is_link_name, GATEWAY_NODE, WEB_ENTRY_NODE};
pub use plan::in_address_plan;
pub use shipped::{DEFAULT_CONFIG_NAME, DEFAULT_NODES};
pub use size::{format_size, parse_size};
pub use source::{line_column, Diagnostic, Source};
pub use stack_file::{check_stack_text, stack_path, STACK_FILE_NAME};

/// Where the agent looks for its configuration when neither `--config` nor `MAGESTACK_CONFIG`
/// names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/magestack/agent.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid(diagnostics) => diagnostics,
            ConfigError::Read { .. } => &[],
        }
    }
}

/// Which configuration a command uses: an explicit path, else `MAGESTACK_CONFIG`, else
/// [`DEFAULT_CONFIG_PATH`] when it exists, else the embedded default.
pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os("MAGESTACK_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let default = Path::new(DEFAULT_CONFIG_PATH);
    default.exists().then(|| default.to_path_buf())
}

/// The run dir (where the daemon's socket is) as the configuration names it, read leniently:
/// only `[host] run_dir` matters, found even in a file that is not valid TOML, so `status`,
/// `stop` and `reload` keep working while an operator is in the middle of editing it (the daemon
/// then refuses the reload naming where the file broke).
pub fn run_dir(path: Option<&Path>) -> Result<PathBuf, ConfigError> {
    host_dir_leniently(path, "run_dir", "/run/magestack")
}

/// The log dir (where `logs` reads process output), read as leniently as [`run_dir`], so logs
/// stay readable while the configuration does not validate and while the daemon is down.
pub fn log_dir(path: Option<&Path>) -> Result<PathBuf, ConfigError> {
    host_dir_leniently(path, "log_dir", "/var/log/magestack")
}

/// The state dir (where the stack's history is, for `config log` and `config diff`), read as
/// leniently as [`run_dir`].
pub fn state_dir(path: Option<&Path>) -> Result<PathBuf, ConfigError> {
    host_dir_leniently(path, "state_dir", "/var/lib/magestack")
}

/// `[host] <key>` as written, or `default`; nothing else in the file is checked.
fn host_dir_leniently(
    path: Option<&Path>,
    key: &str,
    default: &str,
) -> Result<PathBuf, ConfigError> {
    let source = read_agent(path)?;
    let dir = lenient::host_string(&source.text, key).unwrap_or_else(|| default.to_string());
    Ok(PathBuf::from(dir))
}

/// Reads and checks the configuration at `path`, or the embedded default when `None`.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    parse(&read(path)?)
}

/// The configuration text at `path`, or the embedded default when `None`, followed by the
/// stack's when there is one (`[host] stack`, else `stack.toml` beside it).
pub fn read(path: Option<&Path>) -> Result<Source, ConfigError> {
    let agent = read_agent(path)?;
    match stack_file::stack_path(&agent) {
        Some(stack) if stack.exists() => stack_file::join(agent, Source::from_file(&stack)?),
        _ => Ok(agent),
    }
}

/// [`read`] with `stack` as the stack's text instead of the file's: a version checked before
/// it is written (one from the partner, a rollback).
pub fn read_with_stack(path: Option<&Path>, stack: &str) -> Result<Source, ConfigError> {
    with_stack(read_agent(path)?, stack)
}

/// agent.toml's text `agent` followed by the stack text `stack`, named by the stack's path.
pub fn with_stack(agent: Source, stack: &str) -> Result<Source, ConfigError> {
    let name = stack_file::stack_path(&agent)
        .map(|path| path.display().to_string())
        .unwrap_or_else(|| STACK_FILE_NAME.to_string());
    stack_file::join(agent, Source::new(name, stack))
}

/// agent.toml's text alone.
pub fn read_agent(path: Option<&Path>) -> Result<Source, ConfigError> {
    match path {
        Some(path) => Source::from_file(path),
        None => Ok(shipped::default_config()),
    }
}

/// Checks one configuration text.
pub fn parse(source: &Source) -> Result<Config, ConfigError> {
    parse_keeping(source, &BTreeMap::new())
}

/// [`parse`], where nodes outside the address plan keep the addresses in `kept` (the running
/// nodes') while those are free.
pub fn parse_keeping(
    source: &Source,
    kept: &BTreeMap<String, std::net::Ipv4Addr>,
) -> Result<Config, ConfigError> {
    resolve::resolve(source, kept)
}

#[cfg(test)]
mod tests;
