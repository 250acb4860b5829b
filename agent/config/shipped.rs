//! What ships inside the binary: the role definitions of `roles/` and the default configuration.

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
