//! The control socket: one task per connection, root callers only. Each request becomes an
//! event for the core; the answer goes back as one JSON line.

use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::executor::{Command, Event};
use super::stack::StackKeeper;
use super::status;
use crate::api::control::{HostStatus, Request, Response, StatusReport};
use crate::api::{decode_line, MAX_MESSAGE};
use crate::runtime::Runtime;

/// What connection handlers share.
pub struct Server {
    pub events: mpsc::UnboundedSender<Event>,
    /// Reloads and rollbacks go through the stack's keeper, which commits them.
    pub stack: Arc<StackKeeper>,
    pub runtime: Arc<Runtime>,
    pub started: Instant,
}

impl Server {
    pub async fn serve(self: Arc<Self>, listener: UnixListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let server = self.clone();
                    tokio::spawn(async move { server.connection(stream).await });
                }
                Err(error) => {
                    tracing::warn!("control socket accept: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn connection(&self, mut stream: UnixStream) {
        let response = match stream.peer_cred() {
            Ok(cred) if cred.uid() == 0 => self.read_and_answer(&mut stream).await,
            Ok(cred) => {
                tracing::warn!(
                    uid = cred.uid(),
                    pid = cred.pid(),
                    "refused a control connection from a non-root caller"
                );
                Response::Error {
                    message: "permission denied: only root may control the agent".into(),
                }
            }
            Err(error) => Response::Error {
                message: format!("cannot read peer credentials: {error}"),
            },
        };
        if let Ok(mut line) = serde_json::to_vec(&response) {
            line.push(b'\n');
            let _ = stream.write_all(&line).await;
        }
    }

    async fn read_and_answer(&self, stream: &mut UnixStream) -> Response {
        let mut line = Vec::new();
        let mut reader = BufReader::new(stream).take(MAX_MESSAGE + 1);
        if let Err(error) = reader.read_until(b'\n', &mut line).await {
            return Response::Error {
                message: format!("reading the request: {error}"),
            };
        }
        match decode_line::<Request>(&line) {
            Ok(request) => self.answer(request).await,
            Err(error) => Response::Error {
                message: format!("bad request: {error}"),
            },
        }
    }

    async fn answer(&self, request: Request) -> Response {
        let command = match request {
            Request::Status { nodes } => {
                return match self.status_report(nodes).await {
                    Ok(report) => Response::Status(report),
                    Err(message) => Response::Error { message },
                }
            }
            Request::Start { nodes } => Command::Start(nodes),
            Request::Stop { nodes } => Command::Stop(nodes),
            Request::Restart { nodes } => Command::Restart(nodes),
            Request::ExecTarget { node } => Command::ExecTarget(node),
            Request::Reload => return self.reload().await,
            Request::ConfigRollback { rev } => return self.rollback(rev).await,
            Request::PairInvite => Command::PairInvite,
            Request::PairJoin { token } => Command::PairJoin(token),
            Request::PairStatus => Command::PairStatus,
            Request::PairWitness { token } => Command::PairWitness(token),
        };
        self.command(command).await
    }

    /// Sends `command` to the core and waits for its answer.
    async fn command(&self, command: Command) -> Response {
        let (reply, answer) = oneshot::channel();
        if self.events.send(Event::Command(command, reply)).is_err() {
            return shutting_down();
        }
        answer.await.unwrap_or_else(|_| shutting_down())
    }

    /// What `status` and a metrics scrape show: the core's snapshot of `nodes` (every node when
    /// empty), completed outside the core.
    pub async fn status_report(&self, nodes: Vec<String>) -> Result<StatusReport, String> {
        let (reply, answer) = oneshot::channel();
        let gone = || "the agent is shutting down".to_string();
        self.events
            .send(Event::Snapshot(nodes, reply))
            .map_err(|_| gone())?;
        let snapshot = answer
            .await
            .map_err(|_| gone())?
            .map_err(|e| e.to_string())?;
        let host = HostStatus {
            name: snapshot.host,
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_s: self.started.elapsed().as_secs(),
            config: snapshot.config,
            cgroup_version: format!("{:?}", self.runtime.cgroups.version()).to_lowercase(),
            swap_limited: self.runtime.cgroups.limits_swap(),
        };
        Ok(status::report(host, snapshot.nodes, snapshot.pair, snapshot.fencing).await)
    }

    /// `reload` and SIGHUP: reads the configuration again and hands it to the core, which
    /// restarts only what changed; an invalid configuration changes nothing.
    pub async fn reload(&self) -> Response {
        let (config, version) = match self.stack.reload().await {
            Ok(loaded) => loaded,
            Err(message) => return Response::Error { message },
        };
        with_version(
            self.command(Command::Reload(Box::new(config))).await,
            version,
        )
    }

    /// `config rollback REV`: a new version equal to REV, then reloaded like an edit.
    async fn rollback(&self, rev: String) -> Response {
        let (config, version) = match self.stack.rollback(rev).await {
            Ok(rolled_back) => rolled_back,
            Err(message) => return Response::Error { message },
        };
        with_version(
            self.command(Command::Reload(Box::new(config))).await,
            Some(version),
        )
    }

    /// SIGHUP's reload, whose only audience is the log.
    pub async fn reload_on_signal(&self) {
        tracing::info!("SIGHUP: reloading the configuration");
        match self.reload().await {
            Response::Reloaded(report) => tracing::info!(
                started = ?report.started,
                stopped = ?report.stopped,
                restarted = ?report.restarted,
                refused = ?report.refused.iter().map(|r| &r.node).collect::<Vec<_>>(),
                not_applied = ?report.not_applied.iter().map(|s| &s.field).collect::<Vec<_>>(),
                "configuration reloaded"
            ),
            Response::Error { message } => tracing::error!("{message}"),
            other => tracing::error!("unexpected answer to a reload: {other:?}"),
        }
    }
}

/// A reload's answer with the stack version it committed.
fn with_version(response: Response, version: Option<crate::stack::Version>) -> Response {
    match response {
        Response::Reloaded(report) => Response::Reloaded(crate::api::control::ReloadReport {
            stack_version: version,
            ..report
        }),
        other => other,
    }
}

fn shutting_down() -> Response {
    Response::Error {
        message: "the agent is shutting down".into(),
    }
}
