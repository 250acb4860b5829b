//! `pair invite`, `pair join TOKEN`, `pair witness TOKEN`, `pair status [--json]`: thin clients
//! of the daemon, which owns the pairing.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use magestack_agent::api::control::{PairStatus, PeerLease, Request, Response};
use magestack_agent::runtime::unix_now;

#[derive(Subcommand)]
pub enum PairCommand {
    /// Open a one-time invite (valid one hour) and print its token, alone on one line.
    Invite,
    /// Pair this host (with no nodes running) with the host whose token this is.
    Join { token: String },
    /// Add the witness whose token this is (printed by `magestack-agent witness`) to the pair.
    Witness { token: String },
    /// The partner, the link's state, the witness, the leases and this host's pair certificate.
    Status {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(config_path: &Option<PathBuf>, command: PairCommand) -> Result<ExitCode> {
    match command {
        PairCommand::Invite => match super::request(config_path, &Request::PairInvite)? {
            Response::PairInvite { token, moved } => {
                if let Some(moved) = moved {
                    eprintln!("{moved}");
                }
                println!("{token}");
                Ok(ExitCode::SUCCESS)
            }
            other => super::unexpected(other),
        },
        PairCommand::Join { token } => {
            match super::request(config_path, &Request::PairJoin { token })? {
                Response::PairJoined { partner, moved } => {
                    println!("paired with {partner}");
                    if let Some(moved) = moved {
                        eprintln!("{moved}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                other => super::unexpected(other),
            }
        }
        PairCommand::Witness { token } => {
            match super::request(config_path, &Request::PairWitness { token })? {
                Response::PairWitnessAdded { address } => {
                    println!("witness at {address} added");
                    Ok(ExitCode::SUCCESS)
                }
                other => super::unexpected(other),
            }
        }
        PairCommand::Status { json } => match super::request(config_path, &Request::PairStatus)? {
            Response::PairStatus(status) => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&status)?);
                } else {
                    print!("{}", render(&status, unix_now()));
                }
                Ok(ExitCode::SUCCESS)
            }
            other => super::unexpected(other),
        },
    }
}

/// The status as lines of `label  value`.
fn render(status: &PairStatus, now: u64) -> String {
    let mut lines: Vec<(&str, String)> = Vec::new();
    match (&status.partner, &status.address) {
        (Some(partner), Some(address)) => {
            lines.push(("partner", format!("{partner} at {address}")))
        }
        (Some(partner), None) => lines.push(("partner", partner.clone())),
        _ => lines.push(("partner", "none (standalone)".into())),
    }
    if let Some(link) = &status.link {
        let since = status
            .link_since_unix
            .map(|since| format!(" for {}", super::table::duration(now.saturating_sub(since))))
            .unwrap_or_default();
        lines.push(("link", format!("{link}{since}")));
    }
    if let Some(error) = &status.last_error {
        lines.push(("last error", error.clone()));
    }
    if let Some(witness) = &status.witness {
        let state = if witness.reachable {
            "reachable".to_string()
        } else {
            match &witness.last_error {
                Some(error) => format!("unreachable ({error})"),
                None => "unreachable".into(),
            }
        };
        lines.push(("witness", format!("{}, {state}", witness.address)));
    }
    for (role, lease) in &status.leases {
        lines.push(("lease", format!("{role} {}", lease_line(lease))));
    }
    lines.push((
        "listen",
        status
            .listen
            .clone()
            .unwrap_or_else(|| "not set ([pair] listen)".into()),
    ));
    if let Some(expires) = status.certificate_expires_unix {
        let days = (expires - now as i64) / 86_400;
        lines.push((
            "certificate",
            format!("expires in {days} days (unix {expires})"),
        ));
    }
    if let Some(expires) = status.invite_expires_unix {
        let left = expires.saturating_sub(now);
        lines.push(("invite", format!("open, {left}s left")));
    }
    let stack = &status.stack;
    if let Some(version) = &stack.version {
        lines.push((
            "stack",
            format!(
                "version {} by {}: {}",
                version.name, version.host, version.summary
            ),
        ));
    }
    if let Some(version) = &stack.partner_version {
        lines.push(("partner's", format!("stack version {version}")));
    }
    if let Some(refused) = &stack.refused_here {
        lines.push((
            "refused",
            format!(
                "the partner's stack version {}: {}",
                refused.version,
                one_line(&refused.reason)
            ),
        ));
    }
    if let Some(refused) = &stack.refused_by_partner {
        lines.push((
            "refused by",
            format!(
                "the partner: stack version {}: {}",
                refused.version,
                one_line(&refused.reason)
            ),
        ));
    }
    if !status.refused.is_empty() {
        let refused: Vec<String> = status
            .refused
            .iter()
            .map(|(reason, count)| format!("{reason} {count}"))
            .collect();
        lines.push(("refused", refused.join(", ")));
    }
    lines
        .into_iter()
        .map(|(label, value)| format!("{label:<12}{value}\n"))
        .collect()
}

/// A refusal's reason (a configuration's diagnostics, one a line) on one line.
fn one_line(reason: &str) -> String {
    reason.lines().map(str::trim).collect::<Vec<_>>().join(" ")
}

/// One peer's lease: alive or expired, when last heard, the heartbeat round trip.
fn lease_line(lease: &PeerLease) -> String {
    let mut line = if lease.alive {
        format!("{} alive, {} ms left", lease.peer, lease.expires_in_ms)
    } else {
        format!("{} EXPIRED {} ms ago", lease.peer, -lease.expires_in_ms)
    };
    if let Some(heard) = lease.last_heard_ms_ago {
        line.push_str(&format!(", heard {heard} ms ago"));
    }
    if let (Some(p50), Some(p99)) = (lease.rtt_p50_us, lease.rtt_p99_us) {
        line.push_str(&format!(", round trip p50 {p50} us p99 {p99} us"));
    }
    match lease.witness_says_expired {
        Some(true) => line.push_str(", the witness agrees"),
        Some(false) => line.push_str(", the witness still hears it"),
        None => {}
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standalone_host_shows_no_partner_and_no_link() {
        let text = render(&PairStatus::default(), 100);
        assert_eq!(
            text,
            "partner     none (standalone)\nlisten      not set ([pair] listen)\n"
        );
    }

    #[test]
    fn a_paired_host_shows_partner_link_certificate_and_refusals() {
        let status = PairStatus {
            partner: Some("dh2".into()),
            address: Some("10.0.0.2:7946".into()),
            listen: Some("10.0.0.1:7946".into()),
            link: Some("down".into()),
            link_since_unix: Some(40),
            last_error: Some("connection refused".into()),
            certificate_expires_unix: Some(100 + 3 * 86_400),
            refused: [("wrong_secret".to_string(), 2)].into(),
            witness: Some(magestack_agent::api::control::WitnessStatus {
                address: "10.0.0.3:7947".into(),
                reachable: false,
                last_error: Some("connection refused".into()),
                ..Default::default()
            }),
            leases: [(
                "partner".to_string(),
                PeerLease {
                    peer: "dh2".into(),
                    alive: false,
                    expires_in_ms: -200,
                    last_heard_ms_ago: Some(700),
                    witness_says_expired: Some(true),
                    ..Default::default()
                },
            )]
            .into(),
            ..PairStatus::default()
        };
        let text = render(&status, 100);
        for line in [
            "partner     dh2 at 10.0.0.2:7946",
            "witness     10.0.0.3:7947, unreachable (connection refused)",
            "lease       partner dh2 EXPIRED 200 ms ago, heard 700 ms ago, the witness agrees",
            "link        down for 1m0s",
            "last error  connection refused",
            "certificate expires in 3 days",
            "refused     wrong_secret 2",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
    }
}
