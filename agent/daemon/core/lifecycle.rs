//! Each node's life: what a finished start, a stop or a dead init does to it, and the step that
//! moves it towards what is wanted of it:
//!
//! - wanted (configured, not stopped by an operator, and this host's to run: see
//!   `pair/ownership.rs`) and stopped -> start (after `retry_at`
//!   when its init died: [`RETRY_BASE`] doubling to [`RETRY_CAP`]);
//! - running and not wanted -> stop;
//! - running and wanted, and a restart pending or its running definition differs from the
//!   configured one -> restart (the node is `starting` meanwhile);
//! - stopped and no longer configured -> forgotten.

use std::time::Duration;

use super::node::{first_health, Init, Launched};
use super::{Action, Core, Now, Phase, PolicyFor};
use crate::runtime::RuntimeError;
use crate::template::Running;

/// First delay before restarting a node whose init died; doubles up to [`RETRY_CAP`].
pub(super) const RETRY_BASE: Duration = Duration::from_secs(1);
pub(super) const RETRY_CAP: Duration = Duration::from_secs(60);

/// How a node's `error` starts while it runs its previous definition because the changed one
/// failed to start (cleared once the configuration changes it again).
pub(super) const CHANGE_REFUSED: &str = "changed definition refused, running the previous one: ";

impl Core {
    pub(super) fn started(&mut self, node: &str, result: Result<Box<Launched>, RuntimeError>) {
        let Some(entry) = self.nodes.get_mut(node) else {
            return;
        };
        let Launched { init, processes } = match result {
            Ok(launched) => *launched,
            Err(error) => return self.start_failed(node, &error),
        };
        let role = &init.spec.role;
        tracing::info!(node, role, pid = init.pid, "node running");
        for process in &processes {
            tracing::info!(
                node,
                role,
                process = process.name,
                pid = process.pid,
                state = ?process.state,
                "process started"
            );
        }
        entry.phase = Phase::Running;
        entry.previous = None;
        entry.error = entry
            .refused
            .as_ref()
            .map(|(_, why)| format!("{CHANGE_REFUSED}{why}"));
        entry.health = Some(first_health(&init.spec));
        entry.init = Some(init);
        self.actions.push(Action::Watch(node.to_string()));
    }

    /// A start failed: a node that stopped to run a changed definition starts again with the
    /// definition it ran before, and the change is reported as refused; any other is failed.
    pub(super) fn start_failed(&mut self, node: &str, error: &dyn std::fmt::Display) {
        let error = error.to_string();
        let entry = self.nodes.get_mut(node).expect("known node");
        let role = entry.spec.as_ref().map(|s| s.role.clone());
        let (Some(previous), Some(changed)) = (entry.previous.take(), entry.spec.clone()) else {
            tracing::error!(node, role, "start failed: {error}");
            entry.phase = Phase::Failed;
            // A failed node waits for an operator: a restart asked meanwhile is answered with
            // the failure.
            entry.restart_pending = false;
            entry.error = Some(match &entry.refused {
                Some((_, why)) => format!("{error} (its changed definition was refused: {why})"),
                None => error,
            });
            return;
        };
        tracing::error!(
            node,
            role,
            "changed definition refused, starting the node again with its previous definition: {error}"
        );
        entry.spec = Some(previous.clone());
        entry.refused = Some((changed, error.clone()));
        entry.phase = Phase::Stopped;
        entry.retry_at = None;
        self.config.nodes.insert(node.to_string(), previous);
        self.actions.push(Action::ApplyPolicy {
            config: Box::new(self.config.clone()),
            running: self.running_names(),
            why: PolicyFor::PreviousDefinition(node.to_string()),
        });
        for report in self
            .waiters
            .iter_mut()
            .filter(|waiter| waiter.waits_for(node))
            .filter_map(|waiter| waiter.report.as_mut())
        {
            report.restarted.retain(|name| name != node);
            report.refused.push(crate::api::control::RefusedChange {
                node: node.to_string(),
                error: error.clone(),
            });
        }
    }

    pub(super) fn stopped(&mut self, node: &str) {
        if let Some(entry) = self.nodes.get_mut(node) {
            entry.phase = Phase::Stopped;
            entry.init = None;
            entry.rendered.clear();
            entry.health = None;
        }
    }

    /// A running node's init reported a new health: templates see it at the next render.
    pub(super) fn health_reported(&mut self, node: &str, pid: i32, health: String) {
        let Some(entry) = self.nodes.get_mut(node) else {
            return;
        };
        let current = entry.init.as_ref().is_some_and(|init| init.pid == pid);
        if !current || entry.health.as_ref() == Some(&health) {
            return;
        }
        let role = entry.spec.as_ref().map(|s| s.role.as_str());
        let was = entry
            .health
            .as_deref()
            .unwrap_or(crate::template::HEALTH_UNKNOWN);
        tracing::info!(node, role, was, health, "health changed");
        entry.health = Some(health);
    }

    /// A node's init exited on its own: what it left is cleaned up, and it is started again
    /// after a backoff that a long enough run resets.
    pub(super) fn init_exited(&mut self, now: &Now, node: &str, pid: i32) {
        let Some(entry) = self.nodes.get_mut(node) else {
            return;
        };
        let current = entry.init.as_ref().is_some_and(|init| init.pid == pid);
        if !current || !matches!(entry.phase, Phase::Running | Phase::Failed) {
            return;
        }
        let role = entry.spec.as_ref().map(|s| s.role.as_str());
        tracing::warn!(
            node,
            role,
            pid,
            "init exited; cleaning up and restarting the node"
        );
        entry.restarts += 1;
        // A node that ran for a while before its init died starts its backoff afresh.
        let ran_for = entry
            .init
            .as_ref()
            .map_or(0, |init| now.unix_secs.saturating_sub(init.started_at));
        if ran_for >= RETRY_CAP.as_secs() {
            entry.deaths_in_row = 0;
        }
        entry.deaths_in_row += 1;
        let delay = retry_delay(entry.deaths_in_row);
        entry.error = Some(format!(
            "init (pid {pid}) exited unexpectedly; next start in {}s",
            delay.as_secs()
        ));
        entry.retry_at = Some(now.instant + delay);
        entry.phase = Phase::Stopping;
        entry.init = None;
        entry.health = None;
        self.actions.push(Action::CleanUp(node.to_string()));
    }

    /// Moves every node one step towards what is wanted of it.
    pub(super) fn reconcile(&mut self, now: &Now) {
        let mut removed = Vec::new();
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for name in names {
            // Wanted by the operator, and this host's to run.
            let wanted = self.wants_running(&name) && self.ownership.may_run(&name).is_ok();
            let entry = self.nodes.get_mut(&name).expect("listed");
            let wanted = wanted && entry.spec.is_some();
            match (entry.phase, entry.init.is_some()) {
                (Phase::Starting | Phase::Stopping, _) => {}
                (_, true) => {
                    let changed = entry
                        .spec
                        .as_ref()
                        .zip(entry.init.as_ref())
                        .is_some_and(|(spec, init)| *spec != init.spec);
                    if !wanted {
                        entry.previous = None;
                        self.begin_stop(&name);
                    } else if entry.restart_pending || changed {
                        // What it ran before, to fall back on if a changed definition fails.
                        entry.previous = entry
                            .init
                            .as_ref()
                            .filter(|_| changed)
                            .map(|init| init.spec.clone());
                        entry.restart_pending = false;
                        let previous = entry.init.take();
                        self.begin_start(&name, previous);
                    }
                }
                (Phase::Stopped | Phase::Running, false) => {
                    let due = entry.retry_at.is_none_or(|at| at <= now.instant);
                    if wanted && (due || entry.restart_pending) {
                        entry.restart_pending = false;
                        entry.retry_at = None;
                        self.begin_start(&name, None);
                    } else if entry.spec.is_none() {
                        removed.push(name);
                    } else if !wanted {
                        entry.restart_pending = false;
                    }
                }
                (Phase::Failed, false) => {
                    if entry.spec.is_none() {
                        removed.push(name);
                    } else if !wanted {
                        // A failed node that nothing runs of is stopped once it is no longer
                        // wanted (a `stop` of it is answered); its error stays shown.
                        entry.phase = Phase::Stopped;
                    }
                }
            }
        }
        for name in removed {
            self.nodes.remove(&name);
        }
    }

    /// Starts a node; with its running `previous` init, restarts it (the runtime keeps its
    /// sandbox when it can).
    fn begin_start(&mut self, node: &str, previous: Option<Init>) {
        // Its own files are read once it runs: it renders them as one of the running nodes.
        let mut running = self.running_nodes();
        let entry = self.nodes.get_mut(node).expect("known node");
        let spec = entry.spec.clone().expect("configured node");
        running.insert(node.to_string(), first_health(&spec));
        let templates = match crate::template::render_node(&self.config, &spec, &running) {
            Ok(templates) => templates,
            Err(error) => {
                let Some(previous) = previous else {
                    return self.start_failed(node, &error);
                };
                // Stopped first, as any restart without its sandbox: the start that follows
                // fails the same way, and falls back to the previous definition if it changed.
                tracing::error!(node, role = spec.role, "restart failed: {error}");
                entry.init = Some(previous);
                self.begin_stop(node);
                return;
            }
        };
        entry.rendered = templates
            .iter()
            .map(|file| (file.dest.clone(), file.text.clone()))
            .collect();
        entry.phase = Phase::Starting;
        let restarts = entry.restarts;
        tracing::info!(
            node,
            role = spec.role,
            "{}",
            match previous {
                Some(_) => "restarting",
                None => "starting",
            }
        );
        self.actions.push(match previous {
            Some(_) => Action::Restart {
                spec,
                restarts,
                templates,
            },
            None => Action::Start {
                spec,
                restarts,
                templates,
            },
        });
    }

    fn begin_stop(&mut self, node: &str) {
        let entry = self.nodes.get_mut(node).expect("known node");
        let Some(init) = entry.init.take() else {
            return;
        };
        entry.phase = Phase::Stopping;
        tracing::info!(node, role = init.spec.role, "stopping");
        self.actions.push(Action::Stop(node.to_string()));
    }

    /// The configured nodes that are up, with their health: what templates list as `nodes`.
    pub(super) fn running_nodes(&self) -> Running {
        self.nodes
            .iter()
            .filter(|(_, entry)| {
                entry.phase == Phase::Running && entry.init.is_some() && entry.spec.is_some()
            })
            .map(|(name, entry)| {
                let health = entry.health.as_deref();
                let health = health.unwrap_or(crate::template::HEALTH_UNKNOWN);
                (name.clone(), health.to_string())
            })
            .collect()
    }
}

/// How long a node waits before its next start after `deaths` deaths of its init in a row.
pub(super) fn retry_delay(deaths: u32) -> Duration {
    (RETRY_BASE * (1 << (deaths.max(1) - 1).min(6))).min(RETRY_CAP)
}
