//! Commands waiting for their nodes: `start`, `stop`, `restart` and `reload` are answered once
//! every node they named has settled, with the failures collected. A later command that turns a
//! node the other way answers the earlier one for that node as overtaken, so no command waits
//! for a state its node will no longer reach (a reload only stops waiting for that node).

use super::{Action, CommandId, Core, Phase};
use crate::api::control::{ReloadReport, Response};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    Running,
    Stopped,
}

pub(super) struct Waiter {
    command: CommandId,
    targets: Vec<(String, Target)>,
    /// Nodes a later command turned the other way, with why: they count as failures.
    overtaken: Vec<(String, &'static str)>,
    /// A reload's report, completed while its nodes settle.
    pub(super) report: Option<ReloadReport>,
}

impl Waiter {
    pub(super) fn new(command: CommandId, names: Vec<String>, target: Target) -> Waiter {
        Waiter {
            command,
            targets: names.into_iter().map(|n| (n, target)).collect(),
            overtaken: Vec::new(),
            report: None,
        }
    }

    pub(super) fn reload(
        command: CommandId,
        targets: Vec<(String, Target)>,
        report: ReloadReport,
    ) -> Waiter {
        Waiter {
            command,
            targets,
            overtaken: Vec::new(),
            report: Some(report),
        }
    }

    pub(super) fn waits_for(&self, node: &str) -> bool {
        self.targets.iter().any(|(name, _)| name == node)
    }
}

impl Core {
    /// `names` are now wanted towards `target`: earlier waiters for the other state of them
    /// stop waiting.
    pub(super) fn supersede(&mut self, names: &[String], target: Target) {
        let why = match target {
            Target::Running => "started again by a later command",
            Target::Stopped => "stopped by a later command",
        };
        for waiter in &mut self.waiters {
            let (overtaken, kept) = std::mem::take(&mut waiter.targets)
                .into_iter()
                .partition(|(name, wanted)| *wanted != target && names.contains(name));
            waiter.targets = kept;
            // A reload did its part once its configuration was adopted: it only stops waiting.
            if waiter.report.is_none() {
                let overtaken: Vec<(String, Target)> = overtaken;
                let overtaken = overtaken.into_iter().map(|(name, _)| (name, why));
                waiter.overtaken.extend(overtaken);
            }
        }
    }

    pub(super) fn answer_waiters(&mut self) {
        let waiters = std::mem::take(&mut self.waiters);
        for waiter in waiters {
            let response = match self.outcome(&waiter) {
                None => {
                    self.waiters.push(waiter);
                    continue;
                }
                Some(Err(message)) => Response::Error { message },
                Some(Ok(())) => match waiter.report {
                    Some(report) => Response::Reloaded(report),
                    None => Response::Done {
                        nodes: waiter.targets.into_iter().map(|(n, _)| n).collect(),
                    },
                },
            };
            self.actions.push(Action::Reply(waiter.command, response));
        }
    }

    /// `None` while any node is still on its way; else success or the collected failures.
    fn outcome(&self, waiter: &Waiter) -> Option<Result<(), String>> {
        let mut failures = Vec::new();
        for (name, target) in &waiter.targets {
            let Some(node) = self.nodes.get(name) else {
                continue;
            };
            if node.in_flight() || node.restart_pending {
                return None;
            }
            match (target, node.phase) {
                (Target::Running, Phase::Running) | (Target::Stopped, Phase::Stopped) => {}
                (Target::Running, Phase::Failed) => failures.push(format!(
                    "{name}: {}",
                    node.error.as_deref().unwrap_or("failed")
                )),
                (Target::Running, Phase::Stopped) if node.retry_at.is_some() => failures.push(
                    format!("{name}: {}", node.error.as_deref().unwrap_or("stopped")),
                ),
                _ => return None,
            }
        }
        failures.extend(
            waiter
                .overtaken
                .iter()
                .map(|(name, why)| format!("{name}: {why}")),
        );
        Some(if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("\n"))
        })
    }
}
