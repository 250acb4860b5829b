//! Commands waiting for their nodes: `start`, `stop`, `restart` and `reload` are answered once
//! every node they named has settled, with the failures collected. A node that settled the other
//! way because a later command wants it so (an operator's stop or start, a reload that adds it
//! back) answers the earlier command as overtaken rather than keeping it waiting for a state
//! the node will not reach; a reload only stops waiting for it.

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
    /// A reload's report, completed while its nodes settle.
    pub(super) report: Option<ReloadReport>,
}

impl Waiter {
    pub(super) fn new(command: CommandId, names: Vec<String>, target: Target) -> Waiter {
        Waiter {
            command,
            targets: names.into_iter().map(|n| (n, target)).collect(),
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
            report: Some(report),
        }
    }

    pub(super) fn waits_for(&self, node: &str) -> bool {
        self.targets.iter().any(|(name, _)| name == node)
    }
}

impl Core {
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
            self.actions
                .push(Action::Reply(waiter.command, Box::new(response)));
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
            let wanted = node.spec.is_some() && self.wants_running(name);
            let overtaken = match (target, node.phase) {
                (Target::Running, Phase::Running) | (Target::Stopped, Phase::Stopped) => None,
                (Target::Running, Phase::Failed) => {
                    let error = node.error.as_deref().unwrap_or("failed");
                    failures.push(format!("{name}: {error}"));
                    None
                }
                (Target::Running, Phase::Stopped) if node.retry_at.is_some() => {
                    let error = node.error.as_deref().unwrap_or("stopped");
                    failures.push(format!("{name}: {error}"));
                    None
                }
                (Target::Running, Phase::Stopped) if !wanted => Some("stopped by a later command"),
                (Target::Stopped, _) if wanted => Some("started again by a later command"),
                _ => return None,
            };
            // A reload did its part once its configuration was adopted.
            if let Some(why) = overtaken.filter(|_| waiter.report.is_none()) {
                failures.push(format!("{name}: {why}"));
            }
        }
        Some(if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("\n"))
        })
    }
}
