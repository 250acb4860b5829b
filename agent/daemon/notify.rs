//! Talking to systemd (`Type=notify`): READY=1 once nodes are adopted and the first reconcile
//! ran, STATUS= with a one-line summary when it changes, WATCHDOG=1 from the core loop, and
//! STOPPING=1. Without NOTIFY_SOCKET (not run by systemd) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

/// The daemon's side of the service manager's notification socket.
pub struct ServiceManager {
    /// Half the watchdog timeout, as sd_watchdog_enabled(3) advises; `None` without a watchdog.
    pub watchdog_every: Option<Duration>,
    status: String,
}

impl ServiceManager {
    /// Reads WATCHDOG_USEC (and WATCHDOG_PID) from the environment systemd gave the daemon.
    pub fn from_env() -> ServiceManager {
        ServiceManager {
            watchdog_every: sd_notify::watchdog_enabled().map(|timeout| timeout / 2),
            status: String::new(),
        }
    }

    /// The daemon serves: nodes are adopted and the first reconcile has run.
    pub fn ready(&mut self, status: String) {
        send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        self.status = status;
    }

    /// Shows `status` in `systemctl status`, when it differs from what is shown.
    pub fn status(&mut self, status: String) {
        if status != self.status {
            send(&[NotifyState::Status(&status)]);
            self.status = status;
        }
    }

    /// The core loop is alive.
    pub fn watchdog(&self) {
        send(&[NotifyState::Watchdog]);
    }

    pub fn stopping(&self) {
        send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping; nodes keep running"),
        ]);
    }
}

fn send(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!("cannot notify the service manager: {error}");
    }
}
