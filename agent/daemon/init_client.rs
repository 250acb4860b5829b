//! Asking a running node's init what it knows (its processes and the role's health), over its
//! control socket, with a deadline: what `status` reports and the health poll watches; and
//! renewing its lease (fencing).

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
    match exchange(socket, &InitRequest::Status, INIT_TIMEOUT)
        .await
        .ok()?
    {
        InitReply::Status { processes, health } => Some(InitAnswer { processes, health }),
        _ => None,
    }
}

/// Renews the init's lease for `lease`; the init's reply, or why there was none within
/// `timeout` (a frozen init accepts the connection but never answers).
pub(super) async fn renew(
    socket: &std::path::Path,
    lease: Duration,
    timeout: Duration,
) -> Result<InitReply, String> {
    exchange(socket, &InitRequest::Renew { lease }, timeout).await
}

/// One request and its reply within `timeout` (the connect included).
async fn exchange(
    socket: &std::path::Path,
    request: &InitRequest,
    timeout: Duration,
) -> Result<InitReply, String> {
    let exchange = async {
        let mut stream = UnixStream::connect(socket)
            .await
            .map_err(|error| format!("connect {}: {error}", socket.display()))?;
        let mut line = serde_json::to_vec(request).map_err(|error| error.to_string())?;
        line.push(b'\n');
        stream
            .write_all(&line)
            .await
            .map_err(|error| format!("send: {error}"))?;
        let mut reply = Vec::new();
        BufReader::new(stream)
            .read_until(b'\n', &mut reply)
            .await
            .map_err(|error| format!("read: {error}"))?;
        crate::api::decode_line::<InitReply>(&reply).map_err(|error| error.to_string())
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}
