//! What ships inside the binary: the role definitions of `roles/` and the default configuration.

use super::model::TemplateText;
use super::source::Source;

/// The shipped role definitions, by role name.
pub const ROLES: &[(&str, &str)] = &[
    ("fw", include_str!("../../roles/fw.toml")),
    ("lb", include_str!("../../roles/lb.toml")),
    ("web", include_str!("../../roles/web.toml")),
    ("db", include_str!("../../roles/db.toml")),
    ("mail", include_str!("../../roles/mail.toml")),
    ("acc", include_str!("../../roles/acc.toml")),
    ("monitor", include_str!("../../roles/monitor.toml")),
];

/// The shipped templates (`roles/templates/<source>`), by the `source` roles name them with.
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "monitor/monitrc",
        include_str!("../../roles/templates/monitor/monitrc"),
    ),
    (
        "mail/main.cf",
        include_str!("../../roles/templates/mail/main.cf"),
    ),
    (
        "lb/haproxy.cfg",
        include_str!("../../roles/templates/lb/haproxy.cfg"),
    ),
    (
        "acc/sshd_config",
        include_str!("../../roles/templates/acc/sshd_config"),
    ),
    (
        "acc/authorized_keys_root",
        include_str!("../../roles/templates/acc/authorized_keys_root"),
    ),
    (
        "acc/authorized_keys_www-data",
        include_str!("../../roles/templates/acc/authorized_keys_www-data"),
    ),
    (
        "db/init.sql",
        include_str!("../../roles/templates/db/init.sql"),
    ),
    (
        "db/redis-cache.conf",
        include_str!("../../roles/templates/db/redis-cache.conf"),
    ),
    (
        "db/redis-sessions.conf",
        include_str!("../../roles/templates/db/redis-sessions.conf"),
    ),
    (
        "web/site.conf",
        include_str!("../../roles/templates/web/site.conf"),
    ),
    (
        "web/backends.ini",
        include_str!("../../roles/templates/web/backends.ini"),
    ),
    (
        "web/health_check.php",
        include_str!("../../roles/templates/web/health_check.php"),
    ),
];

/// The nodes a host runs when its configuration has no `[nodes]` table.
pub const DEFAULT_NODES: &[(&str, &str)] = &[
    ("fw1", "fw"),
    ("lb1", "lb"),
    ("web1", "web"),
    ("web2", "web"),
    ("db1", "db"),
    ("mail1", "mail"),
    ("acc1", "acc"),
    ("monitor1", "monitor"),
];

pub const DEFAULT_CONFIG_NAME: &str = "<embedded default config>";

pub fn default_config() -> Source {
    Source::new(DEFAULT_CONFIG_NAME, include_str!("default.toml"))
}

pub fn role_source(role: &str) -> Option<Source> {
    ROLES
        .iter()
        .find(|(name, _)| *name == role)
        .map(|(name, text)| Source::new(format!("roles/{name}.toml"), *text))
}

/// The text of template `source`: `templates/<source>` beside the configuration file when it
/// exists there, else the shipped one; `Err` says where it was looked for.
pub fn template(dir: Option<&std::path::Path>, source: &str) -> Result<TemplateText, String> {
    let beside = dir.map(|dir| dir.join("templates").join(source));
    if let Some(path) = &beside {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                return Ok(TemplateText {
                    file: path.display().to_string(),
                    text,
                })
            }
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("cannot read {}: {error}", path.display()))
            }
            Err(_) => {}
        }
    }
    match TEMPLATES.iter().find(|(name, _)| *name == source) {
        Some((name, text)) => Ok(TemplateText {
            file: format!("roles/templates/{name}"),
            text: text.to_string(),
        }),
        None => Err(match beside {
            Some(path) => format!(
                "no template `{source}`: neither {} nor a shipped roles/templates/{source} exists",
                path.display()
            ),
            None => format!("no shipped template roles/templates/{source}"),
        }),
    }
}
