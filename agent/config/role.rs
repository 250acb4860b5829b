//! Role definitions: each source (a shipped `roles/<role>.toml`, an inline `[roles.<role>]`) is
//! checked against its own text, then the inline one is laid over the shipped one.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use toml::Spanned;

use super::bounds;
use super::duration::parse_duration;
use super::model::{
    AllowRule, HealthCheck, HealthSpec, HttpTarget, ProcessSpec, Resources, RestartPolicy, Role,
    TemplateReload, TemplateSpec, VolumeSpec,
};
use super::raw::{
    RawAllow, RawHealth, RawProcess, RawResources, RawRole, RawSshKeys, RawTemplate, RawVolume,
};
use super::size::parse_size;
use super::source::{Diagnostic, Source};

/// A role as one source defines it: every field optional, every value already checked.
#[derive(Debug, Default, Clone)]
pub struct PartialRole {
    pub image: Option<String>,
    pub capabilities: Option<Vec<String>>,
    pub privileged: Option<bool>,
    pub processes: Option<Vec<ProcessSpec>>,
    pub resources: Resources,
    pub volumes: Option<Vec<VolumeSpec>>,
    pub health: PartialHealth,
    pub allow: Option<Vec<AllowRule>>,
    pub templates: Option<Vec<TemplateSpec>>,
    /// Public keys by user; laid over a base user by user.
    pub ssh_keys: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Default, Clone)]
pub struct PartialHealth {
    pub check: Option<HealthCheck>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub healthy_after: Option<u32>,
    pub unhealthy_after: Option<u32>,
}

/// Collects the problems of one source, each located in that source's text.
pub struct Checker<'a> {
    pub source: &'a Source,
    pub diagnostics: &'a mut Vec<Diagnostic>,
}

impl Checker<'_> {
    pub fn error<T>(&mut self, value: &Spanned<T>, message: impl Into<String>) {
        let diagnostic = self.source.at(Some(value.span()), message);
        self.diagnostics.push(diagnostic);
    }

    pub fn error_at(&mut self, span: Option<std::ops::Range<usize>>, message: impl Into<String>) {
        let diagnostic = self.source.at(span, message);
        self.diagnostics.push(diagnostic);
    }

    pub fn role(&mut self, role: &str, raw: RawRole) -> PartialRole {
        if let Some(list) = &raw.capabilities {
            for name in list.get_ref() {
                match crate::confinement::parse_capability(name) {
                    Err(error) => self.error(list, format!("roles.{role}.capabilities: {error}")),
                    Ok(capability) => {
                        let refused = crate::confinement::REFUSED_CAPABILITIES
                            .iter()
                            .find(|(refused, _)| *refused == capability);
                        if let Some((_, why)) = refused {
                            self.error(
                                list,
                                format!("roles.{role}.capabilities: `{name}` is refused: {why}"),
                            );
                        }
                    }
                }
            }
        }
        if let Some(privileged) = &raw.privileged {
            let reason = raw.privileged_reason.as_deref().unwrap_or("").trim();
            if *privileged.get_ref() && reason.is_empty() {
                self.error(
                    privileged,
                    format!("roles.{role}.privileged: a privileged role must say why in `privileged_reason`"),
                );
            }
        }
        PartialRole {
            image: raw.image.map(Spanned::into_inner),
            capabilities: raw.capabilities.map(Spanned::into_inner),
            privileged: raw.privileged.map(Spanned::into_inner),
            processes: raw.process.map(|list| self.processes(role, list)),
            resources: raw
                .resources
                .map(|resources| self.resources(&format!("roles.{role}.resources"), resources))
                .unwrap_or_default(),
            volumes: raw.volume.map(|list| self.volumes(role, list)),
            health: raw
                .health
                .map(|health| self.health(role, health))
                .unwrap_or_default(),
            allow: raw.allow.map(|list| self.allow(role, list)),
            templates: raw.template.map(|list| self.templates(role, list)),
            ssh_keys: raw
                .ssh_keys
                .map(|keys| self.ssh_keys(role, keys))
                .unwrap_or_default(),
        }
    }

    /// `ssh_keys = { root = ["ssh-ed25519 AAAA... ops"], www-data = [...] }`: user names as
    /// /etc/passwd has them, each key one line of an authorized_keys file (type, base64 and an
    /// optional comment; no options).
    fn ssh_keys(&mut self, role: &str, raw: RawSshKeys) -> BTreeMap<String, Vec<String>> {
        let mut users = BTreeMap::new();
        for (user, keys) in raw {
            let field = format!("roles.{role}.ssh_keys.{}", user.get_ref());
            if !is_user_name(user.get_ref()) {
                self.error(
                    &user,
                    format!("{field}: user names are lowercase letters, digits, '_' and '-', starting with a letter or '_' (at most 32)"),
                );
            }
            let mut lines = Vec::new();
            for key in keys {
                if let Err(message) = check_public_key(key.get_ref()) {
                    self.error(&key, format!("{field}: {message}"));
                }
                lines.push(key.into_inner().trim().to_string());
            }
            users.insert(user.into_inner(), lines);
        }
        users
    }

    fn processes(&mut self, role: &str, list: Vec<RawProcess>) -> Vec<ProcessSpec> {
        let mut names = BTreeSet::new();
        let mut processes = Vec::new();
        for raw in list {
            let field = format!("roles.{role}.process.{}", raw.name.get_ref());
            if !is_simple_name(raw.name.get_ref()) {
                self.error(
                    &raw.name,
                    format!("{field}: process names use letters, digits, '-' and '_' (at most 32)"),
                );
            }
            if !names.insert(raw.name.get_ref().clone()) {
                self.error(
                    &raw.name,
                    format!("{field}: a second process has this name"),
                );
            }
            if raw.command.get_ref().is_empty() || raw.command.get_ref()[0].is_empty() {
                self.error(
                    &raw.command,
                    format!("{field}.command: must name a program"),
                );
            }
            let restart = match raw.restart {
                None => RestartPolicy::Always,
                Some(text) => RestartPolicy::parse(text.get_ref()).unwrap_or_else(|message| {
                    self.error(&text, format!("{field}.{message}"));
                    RestartPolicy::Always
                }),
            };
            for key in raw.env.keys() {
                if !is_env_name(key.get_ref()) {
                    self.error(
                        key,
                        format!(
                            "{field}.env: `{}` is not a variable name: ASCII letters, digits and '_', not starting with a digit",
                            key.get_ref().escape_debug()
                        ),
                    );
                }
            }
            processes.push(ProcessSpec {
                name: raw.name.into_inner(),
                command: raw.command.into_inner(),
                env: raw
                    .env
                    .into_iter()
                    .map(|(key, value)| (key.into_inner(), value))
                    .collect(),
                user: raw.user,
                restart,
            });
        }
        processes
    }

    pub fn resources(&mut self, field: &str, raw: RawResources) -> Resources {
        let memory_bytes = raw.memory.and_then(|memory| {
            let checked = parse_size(memory.get_ref()).and_then(|bytes| {
                bounds::memory(bytes, memory.get_ref()).map_err(|e| e.to_string())
            });
            checked
                .map_err(|message| self.error(&memory, format!("{field}.memory: {message}")))
                .ok()
        });
        let disk_bytes = raw
            .disk
            .and_then(|disk| self.size(&format!("{field}.disk"), &disk));
        let cpus = raw.cpus.and_then(|cpus| {
            bounds::cpus(*cpus.get_ref())
                .map_err(|error| self.error(&cpus, format!("{field}.cpus: {error}")))
                .ok()
        });
        let pids = raw.pids.and_then(|pids| {
            bounds::pids(*pids.get_ref())
                .map_err(|error| self.error(&pids, format!("{field}.pids: {error}")))
                .ok()
        });
        Resources {
            memory_bytes,
            disk_bytes,
            cpus,
            pids,
        }
    }

    /// A size above 0, as `memory` and `disk` take it.
    fn size(&mut self, field: &str, value: &Spanned<String>) -> Option<u64> {
        match parse_size(value.get_ref()) {
            Ok(0) => self.error(value, format!("{field}: must be more than 0")),
            Ok(bytes) => return Some(bytes),
            Err(message) => self.error(value, format!("{field}: {message}")),
        }
        None
    }

    fn volumes(&mut self, role: &str, list: Vec<RawVolume>) -> Vec<VolumeSpec> {
        let mut names = BTreeSet::new();
        let mut paths: BTreeMap<String, String> = BTreeMap::new();
        let mut volumes = Vec::new();
        for raw in list {
            let field = format!("roles.{role}.volume.{}", raw.name.get_ref());
            if !is_simple_name(raw.name.get_ref()) {
                self.error(
                    &raw.name,
                    format!("{field}: volume names use letters, digits, '-' and '_' (at most 32)"),
                );
            }
            if !names.insert(raw.name.get_ref().clone()) {
                self.error(&raw.name, format!("{field}: a second volume has this name"));
            }
            if let Err(message) = check_node_path(raw.path.get_ref()) {
                self.error(&raw.path, format!("{field}.path: {message}"));
            }
            let path = raw.path.get_ref().trim_end_matches('/').to_string();
            if let Some(other) = paths.insert(path, raw.name.get_ref().clone()) {
                self.error(
                    &raw.path,
                    format!(
                        "{field}.path: `{}` is also the path of volume {other}",
                        raw.path.get_ref()
                    ),
                );
            }
            volumes.push(VolumeSpec {
                name: raw.name.into_inner(),
                path: raw.path.into_inner(),
                shared: raw.shared.unwrap_or(false),
            });
        }
        volumes
    }

    fn health(&mut self, role: &str, raw: RawHealth) -> PartialHealth {
        let field = format!("roles.{role}.health");
        let mut checks = Vec::new();
        if let Some(port) = raw.tcp {
            match u16::try_from(*port.get_ref()) {
                Ok(value) if value > 0 => checks.push(HealthCheck::Tcp(value)),
                _ => self.error(&port, format!("{field}.tcp: not a port number")),
            }
        }
        if let Some(url) = raw.http {
            if let Err(message) = HttpTarget::parse(url.get_ref()) {
                self.error(&url, format!("{field}.http: {message}"));
            }
            checks.push(HealthCheck::Http(url.into_inner()));
        }
        if let Some(command) = raw.exec {
            if command.get_ref().is_empty() {
                self.error(&command, format!("{field}.exec: must name a program"));
            }
            checks.push(HealthCheck::Exec(command.into_inner()));
        }
        if checks.len() > 1 {
            self.error_at(None, format!("{field}: give one of tcp, http or exec"));
        }
        PartialHealth {
            check: checks.into_iter().next(),
            interval: raw
                .interval
                .and_then(|d| self.duration(&field, "interval", d)),
            timeout: raw
                .timeout
                .and_then(|d| self.duration(&field, "timeout", d)),
            healthy_after: raw
                .healthy_after
                .and_then(|n| self.count(&field, "healthy_after", n)),
            unhealthy_after: raw
                .unhealthy_after
                .and_then(|n| self.count(&field, "unhealthy_after", n)),
        }
    }

    fn duration(&mut self, field: &str, key: &str, value: Spanned<String>) -> Option<Duration> {
        match parse_duration(value.get_ref()) {
            Ok(duration) if !duration.is_zero() => Some(duration),
            Ok(_) => {
                self.error(&value, format!("{field}.{key}: must be more than 0"));
                None
            }
            Err(message) => {
                self.error(&value, format!("{field}.{key}: {message}"));
                None
            }
        }
    }

    fn count(&mut self, field: &str, key: &str, value: Spanned<i64>) -> Option<u32> {
        match u32::try_from(*value.get_ref()) {
            Ok(count) if count > 0 => Some(count),
            _ => {
                self.error(
                    &value,
                    format!("{field}.{key}: must be a whole number above 0"),
                );
                None
            }
        }
    }

    fn allow(&mut self, role: &str, list: Vec<RawAllow>) -> Vec<AllowRule> {
        list.into_iter()
            .map(|raw| {
                let field = format!("roles.{role}.allow");
                let ports = raw
                    .ports
                    .get_ref()
                    .iter()
                    .filter_map(|port| match u16::try_from(*port) {
                        Ok(value) if value > 0 => Some(value),
                        _ => {
                            self.error(&raw.ports, format!("{field}.ports: {port} is not a port"));
                            None
                        }
                    })
                    .collect();
                AllowRule {
                    from: raw.from.into_inner(),
                    ports,
                }
            })
            .collect()
    }

    /// `from` of each of an inline role's `[[allow]]` rules names a role among `known` (shipped or
    /// inline), or is `*` for every node: a misspelt role would otherwise open nothing, silently.
    pub fn allow_sources(&mut self, role: &str, list: &[RawAllow], known: &BTreeSet<String>) {
        for rule in list {
            for from in rule.from.get_ref() {
                if from != "*" && !known.contains(from) {
                    self.error(
                        &rule.from,
                        format!(
                            "roles.{role}.allow.from: `{from}` is not a role (known: {}; `*` is every node)",
                            known.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
                        ),
                    );
                }
            }
        }
    }

    fn templates(&mut self, role: &str, list: Vec<RawTemplate>) -> Vec<TemplateSpec> {
        let field = format!("roles.{role}.template");
        let mut dests = BTreeSet::new();
        let mut templates = Vec::new();
        for raw in list {
            if let Err(message) = check_template_source(raw.source.get_ref()) {
                self.error(&raw.source, format!("{field}.source: {message}"));
            }
            if let Err(message) = check_node_path(raw.dest.get_ref())
                .and_then(|()| check_template_dest(raw.dest.get_ref()))
            {
                self.error(&raw.dest, format!("{field}.dest: {message}"));
            }
            if !dests.insert(raw.dest.get_ref().clone()) {
                self.error(
                    &raw.dest,
                    format!("{field}.dest: a second template renders to this path"),
                );
            }
            let signal = raw.reload_signal.as_ref().and_then(|signal| {
                parse_signal(signal.get_ref())
                    .map_err(|message| {
                        self.error(signal, format!("{field}.reload_signal: {message}"))
                    })
                    .ok()
            });
            let reload = match raw.reload_process {
                Some(process) => Some(TemplateReload {
                    process: process.into_inner(),
                    signal: signal.unwrap_or_else(|| "SIGHUP".into()),
                }),
                None => {
                    if let Some(signal) = &raw.reload_signal {
                        self.error(
                            signal,
                            format!("{field}.reload_signal: name the process to signal in `reload_process`"),
                        );
                    }
                    None
                }
            };
            templates.push(TemplateSpec {
                source: raw.source.into_inner(),
                dest: raw.dest.into_inner(),
                reload,
            });
        }
        templates
    }
}

/// A user name as `useradd` accepts it by default.
fn is_user_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && name.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// The key types sshd accepts in an authorized_keys file.
const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// One public key as `ssh-keygen` writes it: `<type> <base64> [comment]`, on one line.
fn check_public_key(key: &str) -> Result<(), String> {
    if key.contains(['\n', '\r', '\0']) {
        return Err("a key must be one line".into());
    }
    let mut fields = key.split_whitespace();
    let kind = fields.next().unwrap_or_default();
    if !SSH_KEY_TYPES.contains(&kind) {
        return Err(format!(
            "`{}` is not a public key like `ssh-ed25519 AAAA... comment` (known types: {})",
            kind.chars().take(40).collect::<String>(),
            SSH_KEY_TYPES.join(", ")
        ));
    }
    let data = fields.next().unwrap_or_default();
    let base64 = data.len() >= 16
        && data
            .trim_end_matches('=')
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/');
    if !base64 {
        return Err(format!(
            "the `{kind}` key has no base64 key data after its type"
        ));
    }
    Ok(())
}

/// A signal name as a role writes it (`HUP` or `SIGHUP`), normalised to `SIGHUP`.
pub fn parse_signal(text: &str) -> Result<String, String> {
    let name = if text.starts_with("SIG") {
        text.to_string()
    } else {
        format!("SIG{text}")
    };
    match name.parse::<nix::sys::signal::Signal>() {
        Ok(nix::sys::signal::Signal::SIGKILL | nix::sys::signal::Signal::SIGSTOP) => Err(format!(
            "`{text}` cannot be caught, so it cannot ask for a reload"
        )),
        Ok(_) => Ok(name),
        Err(_) => Err(format!("`{text}` is not a signal name like HUP or USR2")),
    }
}

/// A template's `dest`: not a file the init mounts itself, nor inside the rendered files.
fn check_template_dest(dest: &str) -> Result<(), String> {
    let inside = super::TEMPLATES_IN_NODE;
    if ["/etc/hosts", "/etc/resolv.conf"].contains(&dest) {
        Err(format!("`{dest}` is written by the agent"))
    } else if dest == inside
        || dest.starts_with(&format!("{inside}/"))
        || inside.starts_with(&format!("{dest}/"))
    {
        Err(format!(
            "`{dest}` overlaps {inside}, where the rendered files are mounted"
        ))
    } else if dest.ends_with('/') {
        Err(format!("`{dest}` must name a file"))
    } else {
        Ok(())
    }
}

/// A template's `source`: a relative path of plain names below a `templates/` directory.
fn check_template_source(source: &str) -> Result<(), String> {
    let plain = !source.is_empty()
        && !source.starts_with('/')
        && source
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != ".." && !part.contains('\0'));
    if plain {
        Ok(())
    } else {
        Err(format!(
            "`{source}` must be a relative path below templates/, like `haproxy.cfg` or `lb/haproxy.cfg`"
        ))
    }
}

impl PartialRole {
    /// This definition laid over `base`: tables merge key by key, arrays and values replace.
    pub fn merged_over(self, base: PartialRole) -> PartialRole {
        PartialRole {
            image: self.image.or(base.image),
            capabilities: self.capabilities.or(base.capabilities),
            privileged: self.privileged.or(base.privileged),
            processes: self.processes.or(base.processes),
            resources: self.resources.merged_over(&base.resources),
            volumes: self.volumes.or(base.volumes),
            health: PartialHealth {
                check: self.health.check.or(base.health.check),
                interval: self.health.interval.or(base.health.interval),
                timeout: self.health.timeout.or(base.health.timeout),
                healthy_after: self.health.healthy_after.or(base.health.healthy_after),
                unhealthy_after: self.health.unhealthy_after.or(base.health.unhealthy_after),
            },
            allow: self.allow.or(base.allow),
            templates: self.templates.or(base.templates),
            ssh_keys: {
                let mut keys = base.ssh_keys;
                keys.extend(self.ssh_keys);
                keys
            },
        }
    }

    /// The finished role, or what it still lacks.
    pub fn complete(self) -> Result<Role, String> {
        let image = self.image.ok_or("has no `image`")?;
        let templates = self.templates.unwrap_or_default();
        let processes = self.processes.unwrap_or_default();
        for template in &templates {
            if let Some(reload) = &template.reload {
                if !processes.iter().any(|p| p.name == reload.process) {
                    return Err(format!(
                        "template `{}`: reload_process `{}` is not one of the role's processes",
                        template.source, reload.process
                    ));
                }
            }
        }
        let health = match self.health.check {
            Some(check) => Some(HealthSpec {
                check,
                interval: self.health.interval.unwrap_or(Duration::from_secs(10)),
                timeout: self.health.timeout.unwrap_or(Duration::from_secs(2)),
                healthy_after: self.health.healthy_after.unwrap_or(1),
                unhealthy_after: self.health.unhealthy_after.unwrap_or(3),
            }),
            None if self.health.interval.is_some() || self.health.timeout.is_some() => {
                return Err("has a [health] table without tcp, http or exec".into())
            }
            None => None,
        };
        Ok(Role {
            image,
            capabilities: self.capabilities.unwrap_or_else(|| {
                crate::confinement::DEFAULT_CAPABILITIES
                    .iter()
                    .map(|c| c.to_string())
                    .collect()
            }),
            privileged: self.privileged.unwrap_or(false),
            processes,
            resources: self.resources,
            volumes: self.volumes.unwrap_or_default(),
            health,
            allow: self.allow.unwrap_or_default(),
            templates,
            ssh_keys: self.ssh_keys,
        })
    }
}

impl Resources {
    pub fn merged_over(&self, base: &Resources) -> Resources {
        Resources {
            memory_bytes: self.memory_bytes.or(base.memory_bytes),
            disk_bytes: self.disk_bytes.or(base.disk_bytes),
            cpus: self.cpus.or(base.cpus),
            pids: self.pids.or(base.pids),
        }
    }
}

/// An environment variable's name as a shell can set it: ASCII letters, digits and '_', not
/// starting with a digit. Stricter than the kernel (anything without '=' or NUL): a name a shell
/// cannot name is a typo more often than a need.
fn is_env_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Names that become file names and cgroup or log paths.
pub fn is_simple_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A path inside a node that the agent mounts or writes: absolute, normal, and not a kernel
/// filesystem the init mounts itself.
pub fn check_node_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path == "/" {
        return Err(format!("`{path}` must be an absolute path below /"));
    }
    if path
        .split('/')
        .any(|part| part == ".." || part == "." || part.contains('\0'))
    {
        return Err(format!("`{path}` must not contain `.` or `..` parts"));
    }
    for reserved in ["/proc", "/sys", "/dev"] {
        if path == reserved || path.starts_with(&format!("{reserved}/")) {
            return Err(format!(
                "`{path}` is inside {reserved}, which the node's init owns"
            ));
        }
    }
    Ok(())
}
