//! The core under random orders of commands, job outcomes, init deaths, health reports, network
//! findings and time, against the model executor's checks (`harness.rs`: one job per node, no
//! start of a node the operator stopped, one answer per command, the inits in step with the
//! handles), and then drained: every command answered, every node where it was wanted.

use std::time::Duration;

use proptest::prelude::*;

use super::super::{Command, Event, NetworkEvent, Phase};
use super::harness::{config_of, Harness, NODES};
use crate::net::Repair;

/// Nodes the operations name: the configured ones, and one that only some reloads add.
const NAMES: [&str; 4] = ["s1", "s2", "front1", "s3"];

/// The configurations a reload brings: the same, a changed definition, a node added, a node
/// removed.
fn reloaded(variant: usize) -> crate::config::Config {
    let s3 = "[nodes.s3]\nrole = \"sleeper\"\n";
    match variant {
        0 => config_of(NODES, ""),
        1 => config_of(NODES, "[nodes.s1.resources]\nmemory = \"64M\"\n"),
        2 => config_of(NODES, s3),
        _ => config_of(&NODES.replace("[nodes.s2]\nrole = \"sleeper\"\n", ""), s3),
    }
}

#[derive(Debug, Clone)]
enum Op {
    Start(Vec<usize>),
    Stop(Vec<usize>),
    Restart(Vec<usize>),
    Reload(usize),
    /// Ends one of the jobs under way (a start succeeds when `ok`).
    Finish {
        pick: usize,
        ok: bool,
    },
    InitExits(usize),
    Health(usize, bool),
    /// The audit under way ends, with a restart of a node when given.
    AuditEnds(Option<usize>),
    NetworkChanged,
    Advance(u64),
    FailWishes(bool),
    FailPolicy(bool),
}

fn names() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0..NAMES.len(), 0..3)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => names().prop_map(Op::Start),
        2 => names().prop_map(Op::Stop),
        2 => names().prop_map(Op::Restart),
        1 => (0usize..4).prop_map(Op::Reload),
        6 => (any::<usize>(), prop::bool::weighted(0.8)).prop_map(|(pick, ok)| Op::Finish { pick, ok }),
        2 => (0..NAMES.len()).prop_map(Op::InitExits),
        1 => (0..NAMES.len(), any::<bool>()).prop_map(|(n, healthy)| Op::Health(n, healthy)),
        1 => prop::option::of(0..NAMES.len()).prop_map(Op::AuditEnds),
        1 => Just(Op::NetworkChanged),
        2 => (0u64..70_000).prop_map(Op::Advance),
        1 => prop::bool::weighted(0.2).prop_map(Op::FailWishes),
        1 => prop::bool::weighted(0.2).prop_map(Op::FailPolicy),
    ]
}

fn named(indices: &[usize]) -> Vec<String> {
    indices.iter().map(|&i| NAMES[i].to_string()).collect()
}

fn apply(host: &mut Harness, op: Op) {
    match op {
        Op::Start(nodes) => {
            host.command(Command::Start(named(&nodes)));
        }
        Op::Stop(nodes) => {
            host.command(Command::Stop(named(&nodes)));
        }
        Op::Restart(nodes) => {
            host.command(Command::Restart(named(&nodes)));
        }
        Op::Reload(variant) => {
            host.command(Command::Reload(Box::new(reloaded(variant))));
        }
        Op::Finish { pick, ok } => {
            let nodes: Vec<String> = host.jobs.keys().cloned().collect();
            if !nodes.is_empty() {
                host.finish(&nodes[pick % nodes.len()], ok);
            }
        }
        Op::InitExits(node) => {
            // Also the exit of an init already being stopped, as its watcher reports it.
            if let Some(&pid) = host.last_pids.get(NAMES[node]) {
                host.step(Event::InitExited(NAMES[node].to_string(), pid));
            }
        }
        Op::Health(node, healthy) => {
            if let Some(&pid) = host.last_pids.get(NAMES[node]) {
                let health = if healthy { "healthy" } else { "unhealthy" };
                host.step(Event::Health(NAMES[node].into(), pid, health.into()));
            }
        }
        Op::AuditEnds(restart) => {
            if host.audits == 1 {
                let repairs = restart
                    .map(|node| Repair::Restart {
                        node: NAMES[node].to_string(),
                        reason: "public link lost".into(),
                    })
                    .into_iter()
                    .collect();
                host.audit_ends(repairs);
            }
        }
        Op::NetworkChanged => {
            host.step(Event::Network(NetworkEvent::Changed));
        }
        Op::Advance(millis) => host.advance(Duration::from_millis(millis)),
        Op::FailWishes(fail) => host.fail_wishes = fail,
        Op::FailPolicy(fail) => host.fail_policy = fail,
    }
}

/// Every job ends well and time passes until nothing is under way and every command is
/// answered.
fn drain(host: &mut Harness) {
    host.fail_wishes = false;
    host.fail_policy = false;
    for _ in 0..50 {
        if host.audits == 1 {
            host.audit_ends(Vec::new());
        }
        host.finish_all();
        // Past the longest backoff: a node waiting to be started again is.
        host.advance(Duration::from_secs(61));
        if host.jobs.is_empty() && host.all_answered() {
            return;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_order_of_events_keeps_the_rules_and_settles(ops in prop::collection::vec(op(), 1..60)) {
        let mut host = Harness::new("");
        for op in ops {
            apply(&mut host, op);
        }
        drain(&mut host);
        let unanswered: Vec<_> = host.issued.iter().filter(|id| !host.replies.contains_key(id)).collect();
        prop_assert!(unanswered.is_empty(), "unanswered commands {:?}", unanswered);
        prop_assert!(host.jobs.is_empty());
        for (name, node) in &host.core.nodes {
            prop_assert!(node.spec.is_some(), "{} removed but not forgotten", name);
            let stopped = host.recorded.contains(name);
            let settled = if stopped {
                node.phase == Phase::Stopped
            } else {
                matches!(node.phase, Phase::Running | Phase::Failed)
            };
            prop_assert!(settled, "{} is {:?}, operator stopped it: {}", name, node.phase, stopped);
        }
        let configured: Vec<&String> = host.core.config().nodes.keys().collect();
        let known: Vec<&String> = host.core.nodes.keys().collect();
        prop_assert_eq!(configured, known);
    }
}
