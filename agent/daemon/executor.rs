//! The thin executor around the daemon's core (`core/`): it owns the tokio tasks, the runtime,
//! the channels, the inits' handles and the pairing. It turns what arrives (the control socket's
//! commands, finished start and stop jobs, node watchers, the network monitor, the pair link)
//! into the core's events, carries the core's actions out, blocking runtime work off the event
//! loop with `spawn_blocking`, and feeds their outcomes back as events. It decides nothing about
//! nodes.

mod audit;
mod fencing;
mod pair;
mod watch;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::core::{self as core, Action, CommandId, Core, InstallFailed, NodeView, QueryError};
use super::desired::DesiredState;
use crate::api::control::{ExecTarget, FencingStatus, NodeState, PairStatus, Response};
use crate::api::init::{InitReply, InitRequest};
use crate::config::{Config, NodeSpec};
use crate::runtime::{unix_now, NodeHandle, Runtime, RuntimeError};
use crate::template::Rendered;

pub use super::core::NetworkEvent;
use fencing::Fencing;
pub use fencing::LeaseOutcome;
use pair::PairCore;

/// What the executor's inbox takes.
pub enum Event {
    Command(Command, oneshot::Sender<Response>),
    Snapshot(Vec<String>, oneshot::Sender<Result<Snapshot, QueryError>>),
    Started(String, Result<Box<NodeHandle>, RuntimeError>),
    Stopped(String),
    InitExited(String, i32),
    /// The health a node's init (by its pid) reported, sent when it differs from the last one
    /// that init reported.
    Health(String, i32, String),
    /// The network monitor's notifications and the audit's findings.
    Network(NetworkEvent),
    /// What the pair link saw.
    Pair(crate::pair::PairEvent),
    /// What a renewal of a node's init lease (or its unfence) found.
    Lease(String, LeaseOutcome),
    /// What became of the shared stack.
    Stack(super::stack::StackEvent),
}

pub enum Command {
    Start(Vec<String>),
    Stop(Vec<String>),
    Restart(Vec<String>),
    Reload(Box<Config>),
    ExecTarget(String),
    PairInvite,
    PairJoin(String),
    PairStatus,
    PairWitness(String),
}

/// What `status` shows, taken in the core and completed outside it.
pub struct Snapshot {
    pub host: String,
    pub config: String,
    pub nodes: Vec<NodeSnapshot>,
    pub pair: PairStatus,
    pub fencing: FencingStatus,
}

/// One node's part of a [`Snapshot`]: the core's view, and the handle of its running init.
pub struct NodeSnapshot {
    pub view: NodeView,
    pub handle: Option<Arc<NodeHandle>>,
    /// While the node is fenced.
    pub fence: Option<crate::runtime::freezer::FenceRecord>,
}

pub struct Executor {
    core: Core,
    runtime: Arc<Runtime>,
    desired: DesiredState,
    /// The handle of every running init, by node: the core knows them as `Init`s.
    handles: BTreeMap<String, Arc<NodeHandle>>,
    /// Commands the core has not answered yet.
    replies: BTreeMap<CommandId, oneshot::Sender<Response>>,
    next_command: CommandId,
    events: mpsc::UnboundedSender<Event>,
    /// The pairing, the link's state and the refused peers.
    pair: PairCore,
    /// The inits' leases, the fenced nodes and the freezer's owner.
    fencing: Fencing,
}

impl Executor {
    pub fn new(
        config: Config,
        runtime: Arc<Runtime>,
        desired: DesiredState,
        adopted: Vec<NodeHandle>,
        dead_restarts: BTreeMap<String, u32>,
        events: mpsc::UnboundedSender<Event>,
        stack: Arc<super::stack::StackKeeper>,
    ) -> Executor {
        let pair = PairCore::start(&config, &events, stack);
        let fencing = Fencing::new(&config);
        let mut handles = BTreeMap::new();
        let adopted = adopted
            .into_iter()
            .map(|handle| {
                let name = handle.record.name.clone();
                let dests: Vec<String> = handle
                    .record
                    .spec
                    .definition
                    .templates
                    .iter()
                    .map(|template| template.dest.clone())
                    .collect();
                let adopted = core::Adopted {
                    launched: launched(&handle),
                    restarts: handle.record.restarts,
                    templates: crate::template::installed(&runtime.templates_dir(&name), &dests),
                };
                handles.insert(name, Arc::new(handle));
                adopted
            })
            .collect();
        let stopped = desired.stopped.clone();
        let (core, actions) = Core::new(config, stopped, adopted, dead_restarts, &now());
        let mut executor = Executor {
            core,
            runtime,
            desired,
            handles,
            replies: BTreeMap::new(),
            next_command: 0,
            events,
            pair,
            fencing,
        };
        executor.carry_out_all(actions);
        executor
    }

    /// The state of every node the core knows, for the service manager's one-line status.
    pub fn node_states(&self) -> Vec<NodeState> {
        self.core.node_states()
    }

    /// When the core must take a step even without events.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.core.next_wakeup()
    }

    pub fn handle(&mut self, event: Event) {
        let event = match event {
            Event::Command(command, reply) => match self.command(command, reply) {
                Some(event) => event,
                None => core::Event::Tick,
            },
            Event::Snapshot(names, reply) => {
                let _ = reply.send(self.snapshot(&names));
                core::Event::Tick
            }
            Event::Started(node, result) => {
                let result = result.map(|handle| {
                    let handle = Arc::new(*handle);
                    self.handles.insert(node.clone(), handle.clone());
                    Box::new(launched(&handle))
                });
                core::Event::Started(node, result)
            }
            Event::Stopped(node) => core::Event::Stopped(node),
            Event::InitExited(node, pid) => core::Event::InitExited(node, pid),
            Event::Health(node, pid, health) => core::Event::Health(node, pid, health),
            Event::Network(event) => core::Event::Network(event),
            Event::Pair(event) => {
                self.pair.handle(event);
                core::Event::Tick
            }
            Event::Lease(node, outcome) => {
                // Fencing's own: the core learns nothing from a renewal.
                self.fencing.outcome(&node, outcome, self.core.ownership());
                return;
            }
            Event::Stack(event) => {
                self.pair.stack_event(event);
                core::Event::Tick
            }
        };
        self.step(event);
    }

    /// How often the inits' leases are renewed (every heartbeat).
    pub fn lease_interval(&self) -> std::time::Duration {
        self.fencing.interval()
    }

    /// One heartbeat of fencing: on a paired host, the inits' leases renewed while quorum holds,
    /// fenced nodes found, and thawed once they may be.
    pub fn renew_leases(&mut self) {
        self.fencing.round(
            self.pair.quorum_view(),
            self.core.ownership(),
            &self.handles,
            &self.events,
        );
    }

    /// Called when a retry or an audit is due.
    pub fn tick(&mut self) {
        self.step(core::Event::Tick);
    }

    /// A command for the core becomes its event; the others are answered here.
    fn command(
        &mut self,
        command: Command,
        reply: oneshot::Sender<Response>,
    ) -> Option<core::Event> {
        let command = match command {
            Command::Start(names) => core::Command::Start(names),
            Command::Stop(names) => core::Command::Stop(names),
            Command::Restart(names) => core::Command::Restart(names),
            Command::Reload(config) => core::Command::Reload(config),
            Command::ExecTarget(node) => {
                let _ = reply.send(self.exec_target(&node));
                return None;
            }
            Command::PairInvite => {
                let _ = reply.send(match self.pair.invite() {
                    Ok((token, moved)) => Response::PairInvite { token, moved },
                    Err(error) => Response::Error {
                        message: format!("pair invite: {error}"),
                    },
                });
                return None;
            }
            Command::PairJoin(token) => {
                self.pair.join(&token, &self.core.busy_nodes(), reply);
                return None;
            }
            Command::PairStatus => {
                let _ = reply.send(Response::PairStatus(self.pair.status()));
                return None;
            }
            Command::PairWitness(token) => {
                self.pair.add_witness(&token, reply);
                return None;
            }
        };
        let id = self.next_command;
        self.next_command += 1;
        self.replies.insert(id, reply);
        Some(core::Event::Command(id, command))
    }

    fn exec_target(&self, node: &str) -> Response {
        let target = self.core.exec_target(node).and_then(|()| {
            let handle = self.handles.get(node);
            handle.ok_or_else(|| QueryError::NotRunning(node.to_string()))
        });
        match target {
            Ok(handle) => Response::ExecTarget(ExecTarget {
                pid: handle.record.pid,
                cgroup_join: handle
                    .cgroup
                    .join_files()
                    .into_iter()
                    .map(|p| p.display().to_string())
                    .collect(),
                capabilities: handle.record.spec.definition.capabilities.clone(),
                user_namespace: handle.record.id_base.is_some(),
            }),
            Err(error) => Response::Error {
                message: error.to_string(),
            },
        }
    }

    fn snapshot(&self, names: &[String]) -> Result<Snapshot, QueryError> {
        let nodes = self
            .core
            .snapshot(names)?
            .into_iter()
            .map(|view| NodeSnapshot {
                handle: self.handles.get(&view.name).cloned(),
                fence: self.fencing.fence(&view.name),
                view,
            })
            .collect();
        let config = self.core.config();
        Ok(Snapshot {
            host: config.host.name.clone(),
            config: config.origin.clone(),
            nodes,
            pair: self.pair.status(),
            fencing: self.fencing.status(self.pair.quorum_view().is_some()),
        })
    }

    /// One event through the core, and the outcomes of what it decided that come back at once
    /// (recorded wishes, the applied policy, written templates) before anything else.
    fn step(&mut self, event: core::Event) {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let actions = self.core.step(&now(), event);
            queue.extend(self.carry_out_all(actions));
        }
    }

    fn carry_out_all(&mut self, actions: Vec<Action>) -> Vec<core::Event> {
        actions
            .into_iter()
            .filter_map(|action| self.carry_out(action))
            .collect()
    }

    /// Does one action; the outcome of one done at once is returned, that of a job sent later.
    fn carry_out(&mut self, action: Action) -> Option<core::Event> {
        match action {
            Action::Reply(id, response) => {
                if let Some(reply) = self.replies.remove(&id) {
                    let _ = reply.send(*response);
                }
                None
            }
            Action::RecordWishes(id, stopped) => Some(core::Event::WishesRecorded(
                id,
                self.desired.record(stopped),
            )),
            Action::ApplyPolicy {
                config,
                running,
                why,
            } => {
                let result = self.runtime.network.apply_policy(&config);
                if result.is_ok() {
                    self.runtime.update_hosts(&config, &running);
                }
                Some(core::Event::PolicyApplied(why, result))
            }
            Action::Start {
                spec,
                restarts,
                templates,
            } => {
                self.launch(None, spec, restarts, templates);
                None
            }
            Action::Restart {
                spec,
                restarts,
                templates,
            } => {
                let previous = self.handles.remove(&spec.name);
                // A fenced node's init is frozen: it cannot stop gracefully, and its successor
                // starts afresh after the clean-up kills it (a start does that first).
                let fenced = self.fencing.fence(&spec.name).is_some();
                self.fencing.forget(&spec.name);
                let previous = previous.filter(|_| !fenced);
                if previous.is_none() {
                    tracing::error!(
                        node = spec.name,
                        "restart of a node without a running init: starting it"
                    );
                }
                self.launch(previous, spec, restarts, templates);
                None
            }
            Action::Stop(node) => {
                let handle = self.handles.remove(&node);
                // A fenced node's init is frozen and cannot stop gracefully: it is killed
                // without being thawed (the freezer lets a kill through; see `kill_all`).
                let fenced = self.fencing.fence(&node).is_some();
                self.fencing.forget(&node);
                self.blocking(node, move |runtime, node| {
                    match handle {
                        Some(_) if fenced => runtime.cleanup(&node),
                        Some(handle) => runtime.stop(&handle),
                        None => {}
                    }
                    Event::Stopped(node)
                });
                None
            }
            Action::CleanUp(node) => {
                self.handles.remove(&node);
                self.fencing.forget(&node);
                self.blocking(node, |runtime, node| {
                    runtime.cleanup(&node);
                    Event::Stopped(node)
                });
                None
            }
            Action::Watch(node) => {
                if let Some(handle) = self.handles.get(&node) {
                    watch::watch(&node, handle, &self.events);
                }
                None
            }
            Action::InstallTemplates { node, pid, files } => {
                let result = self.install_templates(&node, &files);
                Some(core::Event::TemplatesInstalled {
                    node,
                    pid,
                    files,
                    result,
                })
            }
            Action::SignalReloads { node, reloads } => {
                if let Some(handle) = self.handles.get(&node) {
                    signal_reloads(handle, reloads);
                }
                None
            }
            Action::AuditNetwork(nodes) => {
                audit::spawn(&self.runtime, nodes, &self.events);
                None
            }
        }
    }

    /// Starts `spec` off the event loop (in place of `previous` when given); ends with
    /// [`Event::Started`].
    fn launch(
        &self,
        previous: Option<Arc<NodeHandle>>,
        spec: NodeSpec,
        restarts: u32,
        templates: Vec<Rendered>,
    ) {
        self.blocking(spec.name.clone(), move |runtime, node| {
            let result = match previous {
                Some(previous) => runtime.restart(&previous, &spec, restarts, &templates),
                None => runtime.start(&spec, restarts, &templates),
            };
            Event::Started(node, result.map(Box::new))
        });
    }

    /// Runs `job` for `node` on a blocking thread and sends the event it ends with.
    fn blocking(&self, node: String, job: impl FnOnce(&Runtime, String) -> Event + Send + 'static) {
        let runtime = self.runtime.clone();
        let events = self.events.clone();
        tokio::task::spawn_blocking(move || {
            let _ = events.send(job(&runtime, node));
        });
    }

    fn install_templates(&self, node: &str, files: &[Rendered]) -> Result<(), InstallFailed> {
        let dir = self.runtime.templates_dir(node);
        let owner = self.handles.get(node).and_then(|h| h.record.id_base);
        crate::template::install(&dir, files, owner).map_err(|error| {
            let dests: Vec<String> = files.iter().map(|file| file.dest.clone()).collect();
            InstallFailed {
                error,
                on_disk: crate::template::installed(&dir, &dests),
            }
        })
    }
}

/// The time a step runs at.
fn now() -> core::Now {
    core::Now {
        instant: Instant::now(),
        unix_secs: unix_now(),
    }
}

/// What the core knows of a running init.
fn launched(handle: &NodeHandle) -> core::Launched {
    core::Launched {
        init: core::Init {
            pid: handle.record.pid,
            started_at: handle.record.started_at,
            spec: handle.record.spec.clone(),
        },
        processes: handle.processes.clone(),
    }
}

/// Asks a node's init, off the event loop, to send each process its reload signal.
fn signal_reloads(handle: &NodeHandle, reloads: std::collections::BTreeSet<(String, String)>) {
    let socket = handle.paths.control_socket();
    let node = handle.record.name.clone();
    let role = handle.record.spec.role.clone();
    tokio::task::spawn_blocking(move || {
        for (process, signal) in reloads {
            let request = InitRequest::Signal {
                process: process.clone(),
                signal: signal.clone(),
            };
            match crate::runtime::init_request(&socket, &request) {
                Ok(InitReply::Signalled { pid: Some(pid) }) => {
                    tracing::info!(node, role, process, pid, "sent {signal} to reload")
                }
                Ok(InitReply::Signalled { pid: None }) => tracing::info!(
                    node,
                    role,
                    process,
                    "not running: it reads the new files when it starts"
                ),
                Ok(other) => {
                    tracing::warn!(node, role, process, "reload: unexpected reply {other:?}")
                }
                Err(error) => tracing::warn!(node, role, process, "reload: {error}"),
            }
        }
    });
}
