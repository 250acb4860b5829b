//! `status`: the core's snapshot completed with each running init's own report and the node's
//! cgroup figures, gathered concurrently outside the core.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::world::NodeSnapshot;
use crate::api::control::{HostStatus, NodeState, NodeStatus, StatusReport};
use crate::api::init::{InitReply, InitRequest, ProcessStatus};
use crate::runtime::unix_now;

/// How long one init may take to answer before its processes are reported as unknown.
const INIT_TIMEOUT: Duration = Duration::from_millis(500);

pub async fn report(host: HostStatus, snapshots: Vec<NodeSnapshot>) -> StatusReport {
    let queries = snapshots.into_iter().map(|snapshot| async move {
        let processes = match &snapshot.handle {
            Some(handle) => ask_init(&handle.paths.control_socket())
                .await
                .unwrap_or_default(),
            None => Vec::new(),
        };
        node_status(snapshot, processes)
    });
    let nodes = futures_util::future::join_all(queries).await;
    StatusReport { host, nodes }
}

fn node_status(snapshot: NodeSnapshot, processes: Vec<ProcessStatus>) -> NodeStatus {
    let stats = snapshot.handle.as_ref().map(|h| h.cgroup.stats());
    let process_failure = processes.iter().find(|p| p.state.is_failure());
    let state = match (snapshot.state, process_failure) {
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
        .or(snapshot.error);
    NodeStatus {
        name: snapshot.name,
        role: snapshot.role,
        state,
        pid: snapshot.pid,
        ip: snapshot.ip,
        uptime_s: snapshot.started_at.map(|at| unix_now().saturating_sub(at)),
        restarts: snapshot.restarts,
        memory_bytes: stats.as_ref().map(|s| s.memory_bytes),
        cpu_usec: stats.as_ref().map(|s| s.cpu_usec),
        health: "unknown".into(),
        processes,
        error,
        desired: if snapshot.desired_running {
            "running".into()
        } else {
            "stopped".into()
        },
    }
}

async fn ask_init(socket: &std::path::Path) -> Option<Vec<ProcessStatus>> {
    let exchange = async {
        let mut stream = UnixStream::connect(socket).await.ok()?;
        let mut line = serde_json::to_vec(&InitRequest::Status).ok()?;
        line.push(b'\n');
        stream.write_all(&line).await.ok()?;
        let mut reply = Vec::new();
        BufReader::new(stream)
            .read_until(b'\n', &mut reply)
            .await
            .ok()?;
        match crate::api::decode_line::<InitReply>(&reply).ok()? {
            InitReply::Status { processes } => Some(processes),
            InitReply::Stopping => None,
        }
    };
    tokio::time::timeout(INIT_TIMEOUT, exchange)
        .await
        .ok()
        .flatten()
}
