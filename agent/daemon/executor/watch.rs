//! Watching a running init: its exit through its pidfd, and its health, polled from its control
//! socket. Both end once the executor lets go of the node's handle.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;

use super::Event;
use crate::runtime::NodeHandle;

/// How often a running node's init is asked for its health: the role's check interval, within
/// these bounds (an init answers from memory; the check itself runs on its own clock).
const HEALTH_POLL_MIN: Duration = Duration::from_millis(250);
const HEALTH_POLL_MAX: Duration = Duration::from_secs(1);

/// Watches the init's pidfd and reports its exit, and polls its health.
pub(super) fn watch(node: &str, handle: &Arc<NodeHandle>, events: &mpsc::UnboundedSender<Event>) {
    poll_health(node, handle, events);
    let Ok(pidfd) = handle.pidfd.try_clone() else {
        tracing::error!(node, "cannot watch the init: dup of pidfd failed");
        return;
    };
    let events = events.clone();
    let name = node.to_string();
    let pid = handle.record.pid;
    tokio::spawn(async move {
        // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and the same for
        // the AsyncFd's whole life.
        let Ok(watched) = (unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) })
        else {
            return;
        };
        if watched.readable().await.is_ok() {
            crate::runtime::reap(std::os::fd::AsFd::as_fd(watched.get_ref()));
            let _ = events.send(Event::InitExited(name, pid));
        }
    });
}

/// Asks the init of a node whose role has a health check for its health, every check interval
/// (within [`HEALTH_POLL_MIN`], [`HEALTH_POLL_MAX`]), and reports each change. Ends once the
/// executor has let go of the handle (the node stopped or its init died).
fn poll_health(node: &str, handle: &Arc<NodeHandle>, events: &mpsc::UnboundedSender<Event>) {
    let Some(check) = &handle.record.spec.definition.health else {
        return;
    };
    let period = check.interval.clamp(HEALTH_POLL_MIN, HEALTH_POLL_MAX);
    let handle = Arc::downgrade(handle);
    let events = events.clone();
    let name = node.to_string();
    tokio::spawn(async move {
        let mut last: Option<String> = None;
        loop {
            tokio::time::sleep(period).await;
            let Some((socket, pid)) = handle
                .upgrade()
                .map(|h| (h.paths.control_socket(), h.record.pid))
            else {
                return;
            };
            let Some(health) = crate::daemon::init_client::ask_health(&socket).await else {
                continue;
            };
            if last.as_ref() == Some(&health.state) {
                continue;
            }
            last = Some(health.state.clone());
            if events
                .send(Event::Health(name.clone(), pid, health.state))
                .is_err()
            {
                return;
            }
        }
    });
}
