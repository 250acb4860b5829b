//! A model executor for the core: it carries the core's actions out on paper, answers the
//! immediate ones at once as the real executor does, keeps the runtime jobs under way until a
//! test ends them, and checks on every action what must always hold:
//!
//! - at most one runtime job (start, restart, stop, clean-up) in flight per node;
//! - no start or restart of a node the operator's recorded wishes say is stopped;
//! - every command answered at most once, and only commands that were given;
//! - at most one network audit at a time;
//! - the inits the core believes run are exactly those whose handles the executor holds.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::super::{
    Action, Adopted, Command, CommandId, Core, Event, Init, Launched, NetworkEvent, Now, PolicyFor,
};
use crate::api::control::Response;
use crate::config::{Config, NodeSpec};
use crate::net::{NetError, Repair};
use crate::runtime::RuntimeError;

/// Three nodes: two of role `sleeper` (a health check), one `front` whose template lists the
/// running nodes with their health and asks its process `serve` to reload on HUP.
pub const NODES: &str = r#"
[nodes.s1]
role = "sleeper"
[nodes.s2]
role = "sleeper"
[nodes.front1]
role = "front"
"#;

const ROLES: &str = r#"
[host]
name = "h1"
state_dir = "/nonexistent/state"
[roles.sleeper]
image = "busybox"
[[roles.sleeper.process]]
name = "sleep"
command = ["sleep", "1000"]
[roles.sleeper.health]
tcp = 80
[roles.front]
image = "busybox"
[[roles.front.process]]
name = "serve"
command = ["sleep", "1000"]
[[roles.front.template]]
source = "front.cfg"
dest = "/etc/front.cfg"
reload_process = "serve"
reload_signal = "HUP"
"#;

const TEMPLATE: &str = "{% for n in nodes %}{{ n.name }} {{ n.health }}\n{% endfor %}";

/// [`NODES`] with `extra` TOML after them, loaded as `run` loads a file.
pub fn config(extra: &str) -> Config {
    config_of(NODES, extra)
}

/// The roles with `nodes` and `extra`.
pub fn config_of(nodes: &str, extra: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("templates")).unwrap();
    std::fs::write(dir.path().join("templates/front.cfg"), TEMPLATE).unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, format!("{ROLES}\n{nodes}\n{extra}")).unwrap();
    crate::config::load(Some(&path)).unwrap()
}

/// An action, as tests compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    Reply(CommandId),
    RecordWishes(BTreeSet<String>),
    ApplyPolicy(PolicyFor),
    Start(String),
    Restart(String),
    Stop(String),
    CleanUp(String),
    Watch(String),
    InstallTemplates(String),
    SignalReloads(String),
    AuditNetwork,
}

impl Taken {
    fn of(action: &Action) -> Taken {
        match action {
            Action::Reply(id, _) => Taken::Reply(*id),
            Action::RecordWishes(_, stopped) => Taken::RecordWishes(stopped.clone()),
            Action::ApplyPolicy { why, .. } => Taken::ApplyPolicy(why.clone()),
            Action::Start { spec, .. } => Taken::Start(spec.name.clone()),
            Action::Restart { spec, .. } => Taken::Restart(spec.name.clone()),
            Action::Stop(node) => Taken::Stop(node.clone()),
            Action::CleanUp(node) => Taken::CleanUp(node.clone()),
            Action::Watch(node) => Taken::Watch(node.clone()),
            Action::InstallTemplates { node, .. } => Taken::InstallTemplates(node.clone()),
            Action::SignalReloads { node, .. } => Taken::SignalReloads(node.clone()),
            Action::AuditNetwork(_) => Taken::AuditNetwork,
        }
    }
}

/// A runtime job under way.
#[derive(Debug, Clone)]
pub enum Job {
    Start(Box<NodeSpec>),
    Stop,
    CleanUp,
}

pub struct Harness {
    pub core: Core,
    pub now: Now,
    next_command: CommandId,
    next_pid: i32,
    pub jobs: BTreeMap<String, Job>,
    /// The inits whose handles the executor holds, by node: their pids.
    pub inits: BTreeMap<String, i32>,
    /// The last init each node had, held or not: its exit may still be reported.
    pub last_pids: BTreeMap<String, i32>,
    /// The operator's stopped nodes as last written to disk.
    pub recorded: BTreeSet<String>,
    pub issued: BTreeSet<CommandId>,
    pub replies: BTreeMap<CommandId, Response>,
    pub audits: usize,
    pub fail_wishes: bool,
    pub fail_policy: bool,
    /// Reload signals sent, by node.
    pub signals: Vec<(String, BTreeSet<(String, String)>)>,
    /// Template files written, by node.
    pub installed: Vec<(String, String)>,
    /// What the last event led to.
    pub last: Vec<Taken>,
}

impl Harness {
    /// A core over [`config`]`(extra)` that has taken its first step.
    pub fn new(extra: &str) -> Harness {
        Harness::with(config(extra), Vec::new())
    }

    pub fn with(config: Config, adopted: Vec<Adopted>) -> Harness {
        let base = Instant::now();
        let now = Now {
            instant: base,
            unix_secs: 1_000_000,
        };
        let inits: BTreeMap<String, i32> = adopted
            .iter()
            .map(|a| (a.launched.init.spec.name.clone(), a.launched.init.pid))
            .collect();
        let (core, actions) = Core::new(config, BTreeSet::new(), adopted, BTreeMap::new(), &now);
        let mut harness = Harness {
            core,
            now,
            next_command: 0,
            next_pid: 100,
            jobs: BTreeMap::new(),
            last_pids: inits.clone(),
            inits,
            recorded: BTreeSet::new(),
            issued: BTreeSet::new(),
            replies: BTreeMap::new(),
            audits: 0,
            fail_wishes: false,
            fail_policy: false,
            signals: Vec::new(),
            installed: Vec::new(),
            last: Vec::new(),
        };
        let mut queue = VecDeque::new();
        for action in actions {
            harness.carry_out(action, &mut queue);
        }
        harness.step(Event::Tick);
        harness
    }

    /// One event through the core, with the outcomes of the immediate actions fed back first;
    /// every action taken, in order.
    pub fn step(&mut self, event: Event) -> Vec<Taken> {
        let mut queue = VecDeque::from([event]);
        let mut taken = Vec::new();
        while let Some(event) = queue.pop_front() {
            for action in self.core.step(&self.now, event) {
                taken.push(Taken::of(&action));
                self.carry_out(action, &mut queue);
            }
            self.check_inits();
        }
        self.last = taken.clone();
        taken
    }

    fn carry_out(&mut self, action: Action, queue: &mut VecDeque<Event>) {
        match action {
            Action::Reply(id, response) => {
                assert!(
                    self.issued.contains(&id),
                    "reply to command {id}, never given"
                );
                let earlier = self.replies.insert(id, *response);
                assert!(earlier.is_none(), "command {id} answered twice");
            }
            Action::RecordWishes(id, stopped) => {
                let result = if self.fail_wishes {
                    Err(std::io::Error::other(
                        "desired.json: no space left on device",
                    ))
                } else {
                    self.recorded = stopped;
                    Ok(())
                };
                queue.push_back(Event::WishesRecorded(id, result));
            }
            Action::ApplyPolicy { why, .. } => {
                let result = if self.fail_policy {
                    Err(NetError::Nft("table rejected".into()))
                } else {
                    Ok(())
                };
                queue.push_back(Event::PolicyApplied(why, result));
            }
            Action::Start { spec, .. } => {
                self.begin_job(&spec.name.clone(), Job::Start(Box::new(spec.clone())));
                assert!(
                    !self.inits.contains_key(&spec.name),
                    "start of running {}",
                    spec.name
                );
            }
            Action::Restart { spec, .. } => {
                self.begin_job(&spec.name.clone(), Job::Start(Box::new(spec.clone())));
                let held = self.inits.remove(&spec.name);
                assert!(held.is_some(), "restart of {} with no init", spec.name);
            }
            Action::Stop(node) => {
                self.begin_job(&node, Job::Stop);
                assert!(
                    self.inits.remove(&node).is_some(),
                    "stop of {node}: no init"
                );
            }
            Action::CleanUp(node) => {
                self.begin_job(&node, Job::CleanUp);
                assert!(
                    self.inits.remove(&node).is_some(),
                    "clean-up of {node}: no init"
                );
            }
            Action::Watch(node) => {
                assert!(self.inits.contains_key(&node), "watch of {node}: no init");
            }
            Action::InstallTemplates { node, pid, files } => {
                assert_eq!(self.inits.get(&node), Some(&pid), "templates of {node}");
                for file in &files {
                    self.installed.push((node.clone(), file.text.clone()));
                }
                queue.push_back(Event::TemplatesInstalled {
                    node,
                    pid,
                    files,
                    result: Ok(()),
                });
            }
            Action::SignalReloads { node, reloads } => self.signals.push((node, reloads)),
            Action::AuditNetwork(_) => {
                self.audits += 1;
                assert_eq!(self.audits, 1, "two network audits at once");
            }
        }
    }

    fn begin_job(&mut self, node: &str, job: Job) {
        if let Job::Start(_) = job {
            assert!(
                !self.recorded.contains(node),
                "{node} started though the operator stopped it"
            );
        }
        let earlier = self.jobs.insert(node.to_string(), job);
        assert!(
            earlier.is_none(),
            "two jobs in flight for {node}: {earlier:?}"
        );
    }

    /// The core's running inits are the executor's handles.
    fn check_inits(&self) {
        let believed: BTreeMap<String, i32> = self
            .core
            .nodes
            .iter()
            .filter_map(|(name, node)| Some((name.clone(), node.init.as_ref()?.pid)))
            .collect();
        assert_eq!(
            believed, self.inits,
            "the core's inits and the executor's handles"
        );
    }

    pub fn command(&mut self, command: Command) -> CommandId {
        let id = self.next_command;
        self.next_command += 1;
        self.issued.insert(id);
        self.step(Event::Command(id, command));
        id
    }

    pub fn start(&mut self, names: &[&str]) -> CommandId {
        self.command(Command::Start(strings(names)))
    }

    pub fn stop(&mut self, names: &[&str]) -> CommandId {
        self.command(Command::Stop(strings(names)))
    }

    pub fn restart(&mut self, names: &[&str]) -> CommandId {
        self.command(Command::Restart(strings(names)))
    }

    pub fn reload(&mut self, extra: &str) -> CommandId {
        self.command(Command::Reload(Box::new(config(extra))))
    }

    /// Every command given has been answered.
    pub fn all_answered(&self) -> bool {
        self.issued.iter().all(|id| self.replies.contains_key(id))
    }

    /// Ends the job under way for `node`: a start succeeds when `ok`.
    pub fn finish(&mut self, node: &str, ok: bool) {
        let job = self
            .jobs
            .remove(node)
            .unwrap_or_else(|| panic!("no job for {node}"));
        let event = match job {
            Job::Start(spec) if ok => {
                let pid = self.next_pid;
                self.next_pid += 1;
                self.inits.insert(node.to_string(), pid);
                self.last_pids.insert(node.to_string(), pid);
                let init = Init {
                    pid,
                    started_at: self.now.unix_secs,
                    spec: *spec,
                };
                let launched = Launched {
                    init,
                    processes: Vec::new(),
                };
                Event::Started(node.to_string(), Ok(Box::new(launched)))
            }
            Job::Start(_) => Event::Started(
                node.to_string(),
                Err(RuntimeError::Init {
                    node: node.to_string(),
                    step: "mounts".into(),
                    error: "no such image".into(),
                }),
            ),
            Job::Stop | Job::CleanUp => Event::Stopped(node.to_string()),
        };
        self.step(event);
    }

    /// Ends every job under way, starts succeeding, until none is left.
    pub fn finish_all(&mut self) {
        while let Some(node) = self.jobs.keys().next().cloned() {
            self.finish(&node, true);
        }
    }

    /// The init of `node` exits on its own.
    pub fn init_exits(&mut self, node: &str) {
        let pid = self.inits[node];
        self.step(Event::InitExited(node.to_string(), pid));
    }

    pub fn health(&mut self, node: &str, health: &str) {
        let pid = self.inits[node];
        self.step(Event::Health(node.to_string(), pid, health.to_string()));
    }

    /// The audit under way ends with `repairs`, each made.
    pub fn audit_ends(&mut self, repairs: Vec<Repair>) {
        assert_eq!(self.audits, 1, "no audit under way");
        self.audits = 0;
        let outcomes = repairs.into_iter().map(|repair| (repair, Ok(()))).collect();
        self.step(Event::Network(NetworkEvent::Audited(Ok(outcomes))));
    }

    /// Time passes, and the core takes a step.
    pub fn advance(&mut self, by: Duration) {
        self.now.instant += by;
        self.now.unix_secs += by.as_secs();
        self.step(Event::Tick);
    }

    pub fn phase(&self, node: &str) -> super::super::Phase {
        self.core.nodes[node].phase
    }

    pub fn error(&self, node: &str) -> Option<String> {
        self.core.nodes[node].error.clone()
    }

    pub fn reply(&self, id: CommandId) -> Option<&Response> {
        self.replies.get(&id)
    }

    /// The pending start job's definition of `node`.
    pub fn starting(&self, node: &str) -> Option<&NodeSpec> {
        match self.jobs.get(node) {
            Some(Job::Start(spec)) => Some(&**spec),
            _ => None,
        }
    }
}

pub fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| name.to_string()).collect()
}
