//! `[pair] alert_command`: run on every fence decision (and, with failover, every takeover and
//! refused takeover), without a shell, with the event in its environment:
//! `MAGESTACK_EVENT` (`fence`), `MAGESTACK_HOST`, `MAGESTACK_NODES` (space-separated) and
//! `MAGESTACK_REASON`. It runs on a thread of its own, is given [`ALERT_TIMEOUT`] and then
//! killed; its failure is logged, never acted on.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long an alert command may run.
pub const ALERT_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub event: &'static str,
    pub host: String,
    pub nodes: Vec<String>,
    pub reason: String,
}

/// Starts `command` for `alert` and returns at once.
pub fn raise(command: &[String], alert: Alert) {
    let command = command.to_vec();
    let spawned = std::thread::Builder::new()
        .name("alert".into())
        .spawn(move || run(&command, &alert));
    if let Err(error) = spawned {
        tracing::error!("alert_command: cannot start a thread: {error}");
    }
}

fn run(command: &[String], alert: &Alert) {
    let Some((program, args)) = command.split_first() else {
        return;
    };
    let child = Command::new(program)
        .args(args)
        .env("MAGESTACK_EVENT", alert.event)
        .env("MAGESTACK_HOST", &alert.host)
        .env("MAGESTACK_NODES", alert.nodes.join(" "))
        .env("MAGESTACK_REASON", &alert.reason)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => {
            tracing::error!(event = alert.event, "alert_command {program}: {error}");
            return;
        }
    };
    let deadline = Instant::now() + ALERT_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return,
            Ok(Some(status)) => {
                tracing::warn!(event = alert.event, "alert_command {program}: {status}");
                return;
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            Ok(None) => {
                tracing::warn!(
                    event = alert.event,
                    "alert_command {program}: still running after {ALERT_TIMEOUT:?}, killed"
                );
                // Our own child, by its handle.
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Err(error) => {
                tracing::warn!(
                    event = alert.event,
                    "alert_command {program}: wait: {error}"
                );
                return;
            }
        }
    }
}
