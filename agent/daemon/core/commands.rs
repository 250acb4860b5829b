//! The operator's commands: `start`, `stop`, `restart` and `reload`. A command that changes the
//! operator's wishes waits until they are recorded (a wish that cannot be written is refused and
//! changes nothing, in memory either); a reload waits until its inter-node policy holds. Each
//! then registers a waiter, answered once its nodes settle.

use std::collections::{BTreeMap, BTreeSet};

use super::lifecycle::CHANGE_REFUSED;
use super::waiters::{Target, Waiter};
use super::{Action, Command, CommandId, Core, Node, Phase, PolicyFor};
use crate::api::control::{PendingSetting, RefusedChange, ReloadReport, Response};
use crate::config::Config;
use crate::daemon::reload::{in_force, pending_settings};
use crate::net::NetError;

/// What `start`, `stop` and `restart` ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wish {
    Start,
    Stop,
    Restart,
}

impl Wish {
    fn target(self) -> Target {
        match self {
            Wish::Start | Wish::Restart => Target::Running,
            Wish::Stop => Target::Stopped,
        }
    }
}

/// A command that waits for the outcome of an action.
#[derive(Default)]
pub(super) struct Parked {
    wishes: BTreeMap<CommandId, ParkedWish>,
    reloads: BTreeMap<CommandId, ParkedReload>,
}

struct ParkedWish {
    wish: Wish,
    names: Vec<String>,
    /// The operator's stopped nodes once the wish is recorded.
    stopped: BTreeSet<String>,
}

struct ParkedReload {
    /// The configuration to adopt, with the settings only a restart applies kept.
    config: Config,
    not_applied: Vec<PendingSetting>,
    /// Nodes whose changed definition was refused before and comes again, and why.
    still_refused: BTreeMap<String, String>,
}

impl Core {
    pub(super) fn command(&mut self, id: CommandId, command: Command) {
        let (wish, names) = match command {
            Command::Start(names) => (Wish::Start, names),
            Command::Stop(names) => (Wish::Stop, names),
            Command::Restart(names) => (Wish::Restart, names),
            Command::Reload(config) => return self.reload(id, *config),
        };
        if let Err(message) = self.known(&names) {
            return self.reply_error(id, message);
        }
        let mut stopped = self.stopped.clone();
        for name in &names {
            if wish == Wish::Stop {
                stopped.insert(name.clone());
            } else {
                stopped.remove(name);
            }
        }
        if stopped == self.stopped {
            return self.apply_wish(id, wish, names);
        }
        self.actions.push(Action::RecordWishes(id, stopped.clone()));
        let parked = ParkedWish {
            wish,
            names,
            stopped,
        };
        self.parked.wishes.insert(id, parked);
    }

    pub(super) fn wishes_recorded(&mut self, id: CommandId, result: std::io::Result<()>) {
        let Some(ParkedWish {
            wish,
            names,
            stopped,
        }) = self.parked.wishes.remove(&id)
        else {
            return;
        };
        if let Err(error) = result {
            let message = format!(
                "cannot record the desired state of {}: {error}",
                names.join(", ")
            );
            return self.reply_error(id, message);
        }
        // What is on disk now, whatever happened meanwhile.
        self.stopped = stopped;
        match self.known(&names) {
            Ok(()) => self.apply_wish(id, wish, names),
            Err(message) => self.reply_error(id, message),
        }
    }

    pub(super) fn policy_applied(&mut self, why: PolicyFor, result: Result<(), NetError>) {
        match why {
            PolicyFor::Reload(id) => {
                let Some(reload) = self.parked.reloads.remove(&id) else {
                    return;
                };
                match result {
                    Ok(()) => self.apply_reload(id, reload),
                    Err(error) => self.reply_error(
                        id,
                        format!("configuration not reloaded: inter-node policy: {error}"),
                    ),
                }
            }
            PolicyFor::PreviousDefinition(node) => {
                if let Err(error) = result {
                    tracing::error!(
                        node,
                        "inter-node policy for the previous definition: {error}"
                    );
                }
            }
        }
    }

    pub(super) fn reply_error(&mut self, id: CommandId, message: String) {
        self.actions
            .push(Action::Reply(id, Box::new(Response::Error { message })));
    }

    fn known(&self, names: &[String]) -> Result<(), String> {
        if names.is_empty() {
            return Err("name at least one node".into());
        }
        for name in names {
            if self.nodes.get(name).is_none_or(|node| node.spec.is_none()) {
                return Err(format!("no node named {name} in {}", self.config.origin));
            }
        }
        Ok(())
    }

    /// A recorded wish: each named node is put on its way, and the command waits for them.
    fn apply_wish(&mut self, id: CommandId, wish: Wish, names: Vec<String>) {
        for name in &names {
            let node = self.nodes.get_mut(name).expect("known node");
            match wish {
                Wish::Start => {
                    node.retry_at = None;
                    if node.phase == Phase::Failed && node.init.is_none() {
                        node.phase = Phase::Stopped;
                    }
                }
                Wish::Stop => node.restart_pending = false,
                Wish::Restart => {
                    node.retry_at = None;
                    node.error = None;
                    match node.phase {
                        Phase::Running | Phase::Starting | Phase::Stopping => {
                            node.restart_pending = true
                        }
                        Phase::Failed if node.init.is_some() => node.restart_pending = true,
                        Phase::Failed | Phase::Stopped => node.phase = Phase::Stopped,
                    }
                }
            }
        }
        self.waiters.push(Waiter::new(id, names, wish.target()));
    }

    /// A new, already validated configuration: checked against what only a restart changes,
    /// then parked until its inter-node policy is applied.
    fn reload(&mut self, id: CommandId, config: Config) {
        let (old, new) = (&self.config.network, &config.network);
        if (&old.bridge, old.subnet, old.host_ip, &old.link_prefix)
            != (&new.bridge, new.subnet, new.host_ip, &new.link_prefix)
        {
            return self.reply_error(
                id,
                "configuration not reloaded: bridge, subnet, host_ip and link_prefix change only with a restart of the agent"
                    .into(),
            );
        }
        let not_applied = pending_settings(&self.config, &config);
        let mut config = in_force(&self.config, config);
        // A change refused before stays refused: the node keeps the definition it runs.
        let mut still_refused = BTreeMap::new();
        for (name, node) in &self.nodes {
            if let (Some((refused, why)), Some(spec)) = (&node.refused, &node.spec) {
                if config.nodes.get(name) == Some(refused) {
                    config.nodes.insert(name.clone(), spec.clone());
                    still_refused.insert(name.clone(), why.clone());
                }
            }
        }
        self.actions.push(Action::ApplyPolicy {
            config: Box::new(config.clone()),
            running: self.running_names(),
            why: PolicyFor::Reload(id),
        });
        let parked = ParkedReload {
            config,
            not_applied,
            still_refused,
        };
        self.parked.reloads.insert(id, parked);
    }

    /// A reload whose policy holds: adds, removes and restarts only what changed.
    fn apply_reload(&mut self, id: CommandId, reload: ParkedReload) {
        let ParkedReload {
            config,
            not_applied,
            mut still_refused,
        } = reload;
        for setting in &not_applied {
            tracing::warn!("not applied: {setting}");
        }
        let mut report = ReloadReport {
            not_applied,
            ..ReloadReport::default()
        };
        let mut targets = Vec::new();
        for (name, node) in &mut self.nodes {
            if !config.nodes.contains_key(name) && node.spec.take().is_some() {
                report.stopped.push(name.clone());
                targets.push((name.clone(), Target::Stopped));
            }
        }
        for (name, spec) in &config.nodes {
            let wanted = !self.stopped.contains(name);
            let node = self
                .nodes
                .entry(name.clone())
                .or_insert_with(|| Node::new(None));
            if let Some(error) = still_refused.remove(name) {
                report.refused.push(RefusedChange {
                    node: name.clone(),
                    error,
                });
                continue;
            }
            if node.refused.take().is_some() && node.error_starts_with(CHANGE_REFUSED) {
                node.error = None;
            }
            let running_spec = node.init.as_ref().map(|init| &init.spec);
            let previous = node.spec.replace(spec.clone());
            if previous.is_none() && node.init.is_none() {
                report.started.push(name.clone());
            } else if running_spec.is_some_and(|running| running != spec) {
                node.restart_pending = true;
                report.restarted.push(name.clone());
            } else if previous.as_ref() != Some(spec) && node.phase == Phase::Failed {
                node.phase = Phase::Stopped;
                report.restarted.push(name.clone());
            } else {
                report.unchanged.push(name.clone());
                continue;
            }
            if wanted {
                targets.push((name.clone(), Target::Running));
            }
        }
        self.config = config;
        self.templates_rendered_for = None;
        self.waiters.push(Waiter::reload(id, targets, report));
    }
}
