//! `[pair]`: the address this host's pair link listens on (and gives its partner to dial), and
//! the heartbeat timing.

use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;

use super::duration::parse_duration;
use super::model::PairSettings;
use super::raw::RawPair;
use super::role::Checker;

pub fn pair_settings(checker: &mut Checker, raw: RawPair) -> PairSettings {
    let default = PairSettings::default();
    let listen = raw.listen.and_then(|listen| {
        match listen.get_ref().parse::<SocketAddr>() {
            Ok(address) if address.ip().is_unspecified() || address.port() == 0 => {
                checker.error(
                    &listen,
                    format!(
                        "pair.listen: `{address}` is not an address the partner can dial: name this host's own address on the pair link and a port, like 10.0.0.1:7946"
                    ),
                );
                None
            }
            Ok(address) => Some(address),
            Err(_) => {
                checker.error(
                    &listen,
                    format!(
                        "pair.listen: `{}` is not an address with a port, like 10.0.0.1:7946",
                        listen.get_ref()
                    ),
                );
                None
            }
        }
    });
    let mut duration = |key: &str, value: Option<Spanned<String>>, default: Duration| {
        let Some(value) = value else {
            return default;
        };
        match parse_duration(value.get_ref()) {
            Ok(duration) if !duration.is_zero() => duration,
            Ok(_) => {
                checker.error(&value, format!("pair.{key}: more than 0"));
                default
            }
            Err(message) => {
                checker.error(&value, format!("pair.{key}: {message}"));
                default
            }
        }
    };
    let heartbeat = duration("heartbeat", raw.heartbeat, default.heartbeat);
    let lease_span = raw.lease.as_ref().map(Spanned::span);
    let lease = duration("lease", raw.lease, default.lease);
    let fence_margin = duration("fence_margin", raw.fence_margin, default.fence_margin);
    if lease < 3 * heartbeat {
        checker.error_at(
            lease_span,
            format!(
                "pair.lease: {lease:?} is under three pair.heartbeat ({heartbeat:?}): a node's init holds a lease of pair.lease less two heartbeats (one for the partner's last heartbeat, one to fence in), renewed every heartbeat"
            ),
        );
    }
    PairSettings {
        listen,
        heartbeat,
        lease,
        fence_margin,
        fence_command: raw
            .fence_command
            .and_then(|command| checked_command(checker, "fence_command", command)),
        alert_command: raw
            .alert_command
            .and_then(|command| checked_command(checker, "alert_command", command)),
    }
}

/// A command run without a shell: a program named by an absolute path (the agent's PATH is
/// not the operator's), then its arguments.
fn checked_command(
    checker: &mut Checker,
    key: &str,
    command: Spanned<Vec<String>>,
) -> Option<Vec<String>> {
    let problem = match command.get_ref().first() {
        None => Some("an empty list: name the program, then its arguments".to_string()),
        Some(program) if !program.starts_with('/') => Some(format!(
            "`{program}` is not an absolute path: name the program by its full path, like [\"/usr/local/sbin/page-ops\"]"
        )),
        Some(_) if command.get_ref().iter().any(|word| word.contains('\0')) => {
            Some("a NUL byte in the command".to_string())
        }
        Some(_) => None,
    };
    match problem {
        Some(problem) => {
            checker.error(&command, format!("pair.{key}: {problem}"));
            None
        }
        None => Some(command.into_inner()),
    }
}
