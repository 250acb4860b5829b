//! Asking a running node's init what it knows (its processes and the role's health), over its
//! control socket, with a deadline: what `status` reports and the health poll watches.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::api::init::{HealthStatus, InitReply, InitRequest, ProcessStatus};

/// How long one init may take to answer before its processes are reported as unknown.
const INIT_TIMEOUT: Duration = Duration::from_millis(500);

/// What a running init says about its node.
pub(super) struct InitAnswer {
    pub processes: Vec<ProcessStatus>,
    pub health: HealthStatus,
}

/// What a running init says of its node's health; `None` when it did not answer in time.
pub(super) async fn ask_health(socket: &std::path::Path) -> Option<HealthStatus> {
    ask_init(socket).await.map(|answer| answer.health)
}

pub(super) async fn ask_init(socket: &std::path::Path) -> Option<InitAnswer> {
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
            InitReply::Status { processes, health } => Some(InitAnswer { processes, health }),
            InitReply::Stopping | InitReply::Signalled { .. } => None,
        }
    };
    tokio::time::timeout(INIT_TIMEOUT, exchange)
        .await
        .ok()
        .flatten()
}
