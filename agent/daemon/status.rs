//! `status`: the core's snapshot completed with each running init's own report and the node's
//! cgroup figures, gathered concurrently outside the core.

use super::executor::NodeSnapshot;
use super::init_client::{ask_init, InitAnswer};
use crate::api::control::{
    FencingStatus, HostStatus, NodeState, NodeStatus, PairStatus, StatusReport,
};
use crate::api::init::HealthStatus;
use crate::runtime::{quota, unix_now, NodeRecord};

pub async fn report(
    host: HostStatus,
    snapshots: Vec<NodeSnapshot>,
    pair: PairStatus,
    fencing: FencingStatus,
) -> StatusReport {
    let this_host = host.name.clone();
    let queries = snapshots.into_iter().map(|snapshot| {
        let this_host = this_host.clone();
        async move {
            // A fenced node's init is frozen: it would only make the report wait.
            let answer = match &snapshot.handle {
                Some(handle) if snapshot.fence.is_none() => {
                    ask_init(&handle.paths.control_socket()).await
                }
                _ => None,
            };
            node_status(snapshot, answer, &this_host)
        }
    });
    let nodes = futures_util::future::join_all(queries).await;
    StatusReport {
        host,
        nodes,
        pair,
        fencing,
    }
}

fn node_status(snapshot: NodeSnapshot, answer: Option<InitAnswer>, this_host: &str) -> NodeStatus {
    let NodeSnapshot {
        view,
        handle,
        fence,
    } = snapshot;
    let stats = handle.as_ref().map(|h| h.cgroup.stats());
    let disk = handle.as_ref().map(|h| disk_status(&h.record));
    let (processes, health) = match answer {
        Some(InitAnswer { processes, health }) => (processes, Some(health)),
        None => (Vec::new(), None),
    };
    let (health, health_error) = node_health(view.state, health);
    let process_failure = processes.iter().find(|p| p.state.is_failure());
    let state = match (view.state, process_failure) {
        (NodeState::Running, Some(_)) => NodeState::Failed,
        (state, _) => state,
    };
    let error = process_failure
        .map(|p| {
            format!(
                "process {}: {}",
                p.name,
                p.last_error.as_deref().unwrap_or("failed")
            )
        })
        .or(view.error)
        .or(health_error);
    NodeStatus {
        name: view.name,
        role: view.role,
        state,
        pid: view.pid,
        ip: view.ip,
        uptime_s: view.started_at.map(|at| unix_now().saturating_sub(at)),
        restarts: view.restarts,
        memory_bytes: stats.as_ref().map(|s| s.memory_bytes),
        memory_limit_bytes: handle
            .as_ref()
            .and_then(|h| h.record.spec.definition.resources.memory_bytes),
        cpu_usec: stats.as_ref().map(|s| s.cpu_usec),
        disk_bytes: disk.and_then(|d| d.used),
        disk_limit_bytes: disk.and_then(|d| d.limit),
        disk_limit_enforced: disk.and_then(|d| d.enforced),
        health: health.into(),
        processes,
        error,
        degraded: view.degraded,
        fenced: fence.is_some(),
        fence_reason: fence.as_ref().map(|fence| fence.reason.clone()),
        fenced_since_unix: fence.as_ref().map(|fence| fence.since_unix),
        desired: if view.desired_running {
            "running".into()
        } else {
            "stopped".into()
        },
        host: match state {
            NodeState::Remote => Some(view.home.clone()),
            _ if view.pid.is_some() => Some(this_host.to_string()),
            _ => None,
        },
        home: Some(view.home),
    }
}

/// A running node's disk figures for `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DiskStatus {
    used: Option<u64>,
    limit: Option<u64>,
    enforced: Option<bool>,
}

/// Usage from the node's quota group (a few sysfs reads, no walk of its files); the limit as
/// configured, enforced when the group holds exactly that limit.
fn disk_status(record: &NodeRecord) -> DiskStatus {
    let usage = record.disk_quota.as_ref().and_then(quota::usage);
    disk_figures(record.spec.definition.resources.disk_bytes, usage)
}

fn disk_figures(limit: Option<u64>, usage: Option<quota::Usage>) -> DiskStatus {
    DiskStatus {
        used: usage.map(|u| u.referenced),
        limit,
        enforced: limit.map(|limit| usage.and_then(|u| u.limit) == Some(limit)),
    }
}

/// The node's health for `status`, and the reason to show when it is unhealthy. Only a running
/// node's init is believed; a state this daemon does not know reads as unknown.
fn node_health(state: NodeState, health: Option<HealthStatus>) -> (&'static str, Option<String>) {
    let Some(health) = health.filter(|_| state == NodeState::Running) else {
        return ("unknown", None);
    };
    match health.state.as_str() {
        "none" => ("none", None),
        "starting" => ("starting", None),
        "healthy" => ("healthy", None),
        "unhealthy" => {
            let reason = health.last_error.as_deref().unwrap_or("the check failed");
            ("unhealthy", Some(format!("unhealthy: {reason}")))
        }
        _ => ("unknown", None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::init::InitReply;

    fn health(state: &str, last_error: Option<&str>) -> Option<HealthStatus> {
        Some(HealthStatus {
            state: state.into(),
            last_error: last_error.map(Into::into),
            checked_at_unix: Some(1),
        })
    }

    #[test]
    fn a_running_node_shows_its_init_s_health() {
        for state in ["none", "starting", "healthy"] {
            assert_eq!(
                node_health(NodeState::Running, health(state, Some("old"))),
                (state, None)
            );
        }
        assert_eq!(
            node_health(
                NodeState::Running,
                health("unhealthy", Some("tcp 127.0.0.1:80: connection refused"))
            ),
            (
                "unhealthy",
                Some("unhealthy: tcp 127.0.0.1:80: connection refused".into())
            )
        );
    }

    #[test]
    fn a_disk_limit_is_enforced_when_the_group_holds_it() {
        let usage = |limit| {
            Some(quota::Usage {
                referenced: 12 << 20,
                limit,
            })
        };
        assert_eq!(
            disk_figures(Some(64 << 20), usage(Some(64 << 20))),
            DiskStatus {
                used: Some(12 << 20),
                limit: Some(64 << 20),
                enforced: Some(true)
            }
        );
        // Not on btrfs: no group, no usage.
        assert_eq!(
            disk_figures(Some(64 << 20), None),
            DiskStatus {
                used: None,
                limit: Some(64 << 20),
                enforced: Some(false)
            }
        );
        // The group lost its limit or holds another one.
        assert_eq!(
            disk_figures(Some(64 << 20), usage(None)).enforced,
            Some(false)
        );
        assert_eq!(
            disk_figures(Some(64 << 20), usage(Some(1 << 30))).enforced,
            Some(false)
        );
        // No limit configured: usage of a group kept from an earlier one, nothing to enforce.
        assert_eq!(
            disk_figures(None, usage(None)),
            DiskStatus {
                used: Some(12 << 20),
                limit: None,
                enforced: None
            }
        );
    }

    #[test]
    fn unknown_without_a_running_node_or_a_known_answer() {
        assert_eq!(node_health(NodeState::Running, None), ("unknown", None));
        assert_eq!(
            node_health(NodeState::Stopping, health("healthy", None)),
            ("unknown", None)
        );
        let older_init =
            serde_json::from_str::<InitReply>(r#"{"reply":"status","processes":[]}"#).unwrap();
        let InitReply::Status { health: older, .. } = older_init else {
            panic!("not a status reply");
        };
        assert_eq!(
            node_health(NodeState::Running, Some(older)),
            ("unknown", None)
        );
        assert_eq!(
            node_health(NodeState::Running, health("sleepy", None)),
            ("unknown", None)
        );
    }
}
