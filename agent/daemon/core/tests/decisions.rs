//! Each decision of the core, from the events that lead to it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::super::lifecycle::CHANGE_REFUSED;
use super::super::{Adopted, Init, Launched, Phase, PolicyFor};
use super::harness::{config, config_of, Harness, Taken};
use crate::api::control::Response;
use crate::net::Repair;

const BIGGER_S1: &str = "[nodes.s1.resources]\nmemory = \"64M\"\n";

/// Every node of the base configuration running.
fn running() -> Harness {
    let mut host = Harness::new("");
    host.finish_all();
    host
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| name.to_string()).collect()
}

fn done(names: &[&str]) -> Response {
    Response::Done {
        nodes: names.iter().map(|name| name.to_string()).collect(),
    }
}

fn error_of(response: Option<&Response>) -> String {
    match response {
        Some(Response::Error { message }) => message.clone(),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn configured_nodes_start_at_the_first_step_and_are_watched_once_up() {
    let mut host = Harness::new("");
    let starting: Vec<&String> = host.jobs.keys().collect();
    assert_eq!(starting, ["front1", "s1", "s2"]);
    assert_eq!(host.phase("s1"), Phase::Starting);
    host.finish("s1", true);
    assert!(
        host.last.contains(&Taken::Watch("s1".into())),
        "{:?}",
        host.last
    );
    assert_eq!(host.phase("s1"), Phase::Running);
}

#[test]
fn a_start_of_a_running_node_is_answered_without_recording_anything() {
    let mut host = running();
    let id = host.start(&["s1"]);
    assert_eq!(host.last, [Taken::Reply(id)]);
    assert_eq!(host.reply(id), Some(&done(&["s1"])));
}

#[test]
fn a_stop_is_recorded_before_the_node_stops_and_answered_once_it_has() {
    let mut host = running();
    let id = host.stop(&["s1"]);
    assert_eq!(host.last[0], Taken::RecordWishes(set(&["s1"])));
    assert!(host.last.contains(&Taken::Stop("s1".into())));
    assert_eq!(host.reply(id), None);
    host.finish("s1", true);
    assert_eq!(host.reply(id), Some(&done(&["s1"])));
    assert_eq!(host.phase("s1"), Phase::Stopped);
}

#[test]
fn a_wish_that_cannot_be_recorded_is_refused_and_changes_nothing() {
    let mut host = running();
    host.fail_wishes = true;
    let id = host.stop(&["s1"]);
    assert_eq!(
        error_of(host.reply(id)),
        "cannot record the desired state of s1: desired.json: no space left on device"
    );
    assert!(!host.last.contains(&Taken::Stop("s1".into())));
    host.advance(Duration::from_secs(120));
    assert_eq!(host.phase("s1"), Phase::Running);
    assert!(host.jobs.is_empty());
}

#[test]
fn commands_naming_no_node_or_an_unknown_one_are_refused() {
    let mut host = running();
    let id = host.start(&[]);
    assert_eq!(error_of(host.reply(id)), "name at least one node");
    let id = host.stop(&["s1", "nope"]);
    let message = error_of(host.reply(id));
    assert!(message.starts_with("no node named nope in "), "{message}");
    assert!(host.recorded.is_empty());
}

#[test]
fn a_restart_replaces_the_init_and_is_answered_once_the_new_one_runs() {
    let mut host = running();
    let before = host.inits["s1"];
    let id = host.restart(&["s1"]);
    assert!(host.last.contains(&Taken::Restart("s1".into())));
    assert_eq!(host.phase("s1"), Phase::Starting);
    host.finish("s1", true);
    assert_eq!(host.reply(id), Some(&done(&["s1"])));
    assert_ne!(host.inits["s1"], before);
}

#[test]
fn a_reload_applies_its_policy_first_then_restarts_only_the_changed_node() {
    let mut host = running();
    let id = host.reload(BIGGER_S1);
    assert_eq!(host.last[0], Taken::ApplyPolicy(PolicyFor::Reload(id)));
    let restarts: Vec<&Taken> = host
        .last
        .iter()
        .filter(|t| matches!(t, Taken::Restart(_) | Taken::Start(_)))
        .collect();
    assert_eq!(restarts, [&Taken::Restart("s1".into())]);
    host.finish("s1", true);
    let Some(Response::Reloaded(report)) = host.reply(id) else {
        panic!("{:?}", host.reply(id));
    };
    assert_eq!(report.restarted, ["s1"]);
    assert_eq!(report.unchanged, ["front1", "s2"]);
}

#[test]
fn a_reload_whose_policy_fails_changes_nothing() {
    let mut host = running();
    host.fail_policy = true;
    let id = host.reload(BIGGER_S1);
    assert_eq!(
        error_of(host.reply(id)),
        "configuration not reloaded: inter-node policy: nft: table rejected"
    );
    assert!(host.jobs.is_empty());
    assert_eq!(host.core.config().nodes, config("").nodes);
}

#[test]
fn a_reload_that_moves_the_bridge_is_refused() {
    let mut host = running();
    let id = host.reload("[network]\nbridge = \"other0\"\n");
    let message = error_of(host.reply(id));
    assert!(message.contains("change only with a restart"), "{message}");
    assert!(!host.last.iter().any(|t| matches!(t, Taken::ApplyPolicy(_))));
}

#[test]
fn a_dead_init_is_cleaned_up_and_started_again_after_a_doubling_capped_backoff() {
    let mut host = running();
    for expected in [1, 2, 4, 8, 16, 32, 60, 60] {
        host.init_exits("s1");
        assert!(host.last.contains(&Taken::CleanUp("s1".into())));
        host.finish("s1", true);
        let error = host.error("s1").unwrap();
        assert!(
            error.ends_with(&format!("next start in {expected}s")),
            "{error}"
        );
        host.advance(Duration::from_secs(expected) - Duration::from_millis(1));
        assert!(host.jobs.is_empty(), "started before {expected}s");
        host.advance(Duration::from_millis(1));
        assert_eq!(host.starting("s1").map(|s| s.name.as_str()), Some("s1"));
        host.finish("s1", true);
    }
    // A node that ran a minute before its init died starts its backoff afresh.
    host.advance(Duration::from_secs(60));
    host.init_exits("s1");
    host.finish("s1", true);
    assert!(host.error("s1").unwrap().ends_with("next start in 1s"));
    assert_eq!(host.core.nodes["s1"].restarts, 9);
}

#[test]
fn a_node_the_operator_stopped_is_never_started_by_its_retry() {
    let mut host = running();
    host.init_exits("s1");
    host.finish("s1", true);
    let id = host.stop(&["s1"]);
    assert_eq!(host.reply(id), Some(&done(&["s1"])));
    host.advance(Duration::from_secs(120));
    assert!(host.jobs.is_empty());
    assert_eq!(host.phase("s1"), Phase::Stopped);
}

#[test]
fn a_start_that_fails_leaves_the_node_failed_until_an_operator_starts_it() {
    let mut host = Harness::new("");
    host.finish("s1", false);
    assert_eq!(host.phase("s1"), Phase::Failed);
    let error = host.error("s1").unwrap();
    assert!(
        error.contains("init failed at mounts: no such image"),
        "{error}"
    );
    host.advance(Duration::from_secs(120));
    assert!(host.starting("s1").is_none());
    let id = host.start(&["s1"]);
    assert!(host.starting("s1").is_some());
    host.finish("s1", false);
    assert!(error_of(host.reply(id)).starts_with("s1: node s1: init failed at mounts"));
}

#[test]
fn a_changed_definition_that_fails_falls_back_to_the_previous_one_and_stays_refused() {
    let mut host = running();
    let previous = host.core.nodes["s1"].init.clone().unwrap().spec;
    let id = host.reload(BIGGER_S1);
    host.finish("s1", false);
    assert!(host
        .last
        .contains(&Taken::ApplyPolicy(PolicyFor::PreviousDefinition(
            "s1".into()
        ))));
    assert_eq!(host.starting("s1"), Some(&previous));
    assert_eq!(host.core.config().nodes["s1"], previous);
    host.finish("s1", true);
    let Some(Response::Reloaded(report)) = host.reply(id) else {
        panic!("{:?}", host.reply(id));
    };
    assert!(report.restarted.is_empty(), "{report:?}");
    assert_eq!(report.refused[0].node, "s1");
    assert!(host.error("s1").unwrap().starts_with(CHANGE_REFUSED));
    // The same change again is refused at once, and nothing restarts.
    let again = host.reload(BIGGER_S1);
    let Some(Response::Reloaded(report)) = host.reply(again) else {
        panic!("{:?}", host.reply(again));
    };
    assert_eq!(report.refused[0].node, "s1");
    assert!(host.jobs.is_empty());
    // Another change clears the refusal.
    let other = host.reload("[nodes.s1.resources]\nmemory = \"32M\"\n");
    assert!(host.last.contains(&Taken::Restart("s1".into())));
    host.finish("s1", true);
    assert!(matches!(host.reply(other), Some(Response::Reloaded(_))));
    assert_eq!(host.error("s1"), None);
}

#[test]
fn health_changes_re_render_the_templates_and_reload_their_process_once() {
    let mut host = running();
    let rendered = host.installed.last().unwrap().1.clone();
    assert_eq!(rendered, "front1 none\ns1 starting\ns2 starting\n");
    host.signals.clear();
    host.health("s1", "healthy");
    assert!(host
        .last
        .contains(&Taken::InstallTemplates("front1".into())));
    assert_eq!(
        host.installed.last().unwrap().1,
        "front1 none\ns1 healthy\ns2 starting\n"
    );
    let hup = BTreeSet::from([("serve".to_string(), "SIGHUP".to_string())]);
    assert_eq!(host.signals, [("front1".to_string(), hup)]);
    host.health("s1", "healthy");
    assert_eq!(host.last, [] as [Taken; 0]);
    // A report from an init that is gone changes nothing.
    let pid = host.inits["s1"];
    host.restart(&["s1"]);
    host.finish("s1", true);
    let writes = host.installed.len();
    host.step(super::super::Event::Health(
        "s1".into(),
        pid,
        "unhealthy".into(),
    ));
    assert_eq!(host.installed.len(), writes);
}

#[test]
fn a_later_stop_answers_a_waiting_start_as_overtaken() {
    let mut host = Harness::new("");
    let start = host.start(&["s1"]);
    assert_eq!(host.reply(start), None);
    let stop = host.stop(&["s1"]);
    host.finish("s1", true);
    assert!(host.last.contains(&Taken::Stop("s1".into())));
    assert_eq!(host.reply(start), None);
    host.finish("s1", true);
    assert_eq!(
        error_of(host.reply(start)),
        "s1: stopped by a later command"
    );
    assert_eq!(host.reply(stop), Some(&done(&["s1"])));
}

#[test]
fn adopted_nodes_are_watched_and_their_files_written_only_when_they_differ() {
    let config = config("");
    let spec = config.nodes["front1"].clone();
    let adopted = Adopted {
        launched: Launched {
            init: Init {
                pid: 7,
                started_at: 999_000,
                spec,
            },
            processes: Vec::new(),
        },
        restarts: 3,
        templates: BTreeMap::from([("/etc/front.cfg".to_string(), "front1 none\n".to_string())]),
    };
    let mut host = Harness::with(config, vec![adopted]);
    assert_eq!(host.phase("front1"), Phase::Running);
    assert_eq!(host.core.nodes["front1"].restarts, 3);
    assert!(host.installed.is_empty(), "{:?}", host.installed);
    assert!(host.starting("front1").is_none());
    host.finish("s1", true);
    assert_eq!(
        host.installed,
        [("front1".into(), "front1 none\ns1 starting\n".into())]
    );
}

#[test]
fn a_network_that_cannot_be_repaired_from_outside_restarts_the_node() {
    let mut host = running();
    assert_eq!(host.audits, 1);
    host.audit_ends(vec![Repair::Restart {
        node: "s1".into(),
        reason: "public link lost".into(),
    }]);
    assert!(host.last.contains(&Taken::Restart("s1".into())));
    assert_eq!(
        host.error("s1").as_deref(),
        Some("network: public link lost")
    );
    host.finish("s1", true);
    assert_eq!(host.core.nodes["s1"].restarts, 1);
    // The next audit comes after the interval.
    host.advance(Duration::from_secs(9));
    assert_eq!(host.audits, 0);
    host.advance(Duration::from_secs(1));
    assert_eq!(host.audits, 1);
}

#[test]
fn a_node_homed_on_the_partner_is_not_started_here_and_stops_when_it_moves_there() {
    let nodes = "[nodes.s1]\nrole = \"sleeper\"\nhost = \"h1\"\n[nodes.s2]\nrole = \"sleeper\"\nhost = \"h2\"\n";
    let mut host = Harness::with(config_of(nodes, ""), Vec::new());
    let starting: Vec<&String> = host.jobs.keys().collect();
    assert_eq!(starting, ["s1"]);
    host.finish_all();
    assert_eq!(host.phase("s2"), Phase::Stopped);
    let moved = "[nodes.s1]\nrole = \"sleeper\"\nhost = \"h2\"\n[nodes.s2]\nrole = \"sleeper\"\nhost = \"h2\"\n";
    host.command(super::super::Command::Reload(Box::new(config_of(
        moved, "",
    ))));
    assert_eq!(host.phase("s1"), Phase::Stopping);
    assert!(!host.jobs.contains_key("s2"), "{:?}", host.jobs.keys());
}
