//! A reload cannot take a node down: values that cannot run are refused before anything changes,
//! a changed node that still fails to start runs again on its previous definition, settings only
//! a restart applies are named, and a configuration that is not even TOML leaves `status`, `stop`
//! and `reload` working.

mod common;

use std::time::Duration;

use common::{sleeper_nodes, TestHost};

/// `[nodes.<node>.resources] <field> = <value>` after a sleeper node of that name.
fn with_resource(node: &str, field: &str, value: &str) -> String {
    format!(
        "{}[nodes.{node}.resources]\n{field} = {value}\n",
        sleeper_nodes(&[node])
    )
}

/// The 1-based line of the configuration file that starts with `start`.
fn line_of(host: &TestHost, start: &str) -> usize {
    let text = std::fs::read_to_string(&host.config).unwrap();
    text.lines().position(|l| l.starts_with(start)).unwrap() + 1
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn values_that_cannot_run_are_refused_and_the_node_keeps_running() {
    let mut host = TestHost::new("bounds", &sleeper_nodes(&["b1"]));
    host.start_daemon();
    host.wait_node_state("b1", "running");
    let pid = host.node_pid("b1");

    for (field, value, bound) in [
        ("pids", "1", "at least 16"),
        ("pids", "99999999999999", "at most 4194304"),
        ("memory", "\"1\"", "at least 16M"),
        ("memory", "\"2T\"", "at most 1T"),
        ("cpus", "0.001", "at least 0.01"),
        ("cpus", "4096.0", "at most 1024"),
    ] {
        host.write_config(&with_resource("b1", field, value));
        let located = format!(
            "{}:{}:{}: nodes.b1.resources.{field}: ",
            host.config.display(),
            line_of(&host, field),
            field.len() + 4
        );
        for command in [&["config", "check"][..], &["reload"]] {
            let refused = host.try_cli(command);
            let message = stderr(&refused);
            assert!(
                !refused.status.success(),
                "{field} = {value}: {command:?} passed"
            );
            assert!(
                message.contains(&located) && message.contains(bound),
                "{command:?}: `{located}` and `{bound}` not in {message}"
            );
        }
        let node = host.node("b1");
        assert_eq!(
            (node["state"].as_str(), node["pid"].as_i64()),
            (Some("running"), Some(pid as i64))
        );
    }
    // The bounds themselves run.
    host.write_config(&format!(
        "{}[nodes.b1.resources]\npids = 16\nmemory = \"16M\"\ncpus = 0.01\n",
        sleeper_nodes(&["b1"])
    ));
    let report = host.cli(&["reload"]);
    assert!(report.contains("restarted: b1"), "{report}");
    assert_eq!(host.node("b1")["memory_limit_bytes"], 16 << 20);
}

/// Sleeper f1 and f2 of another role; with `volume`, the sleeper role gets a volume whose path
/// is a file in the image: that passes every check, and the node's init cannot mount it.
fn fallback_config(volume: bool) -> String {
    let mut text = sleeper_nodes(&["f1"]);
    text.push_str(concat!(
        "[nodes.f2]\nrole = \"other\"\n[roles.other]\nimage = \"busybox\"\n",
        "[[roles.other.process]]\nname = \"sleep\"\ncommand = [\"sleep\", \"1000000\"]\n",
    ));
    if volume {
        text.push_str("[[roles.sleeper.volume]]\nname = \"accounts\"\npath = \"/etc/passwd\"\n");
    }
    text
}

#[test]
fn a_changed_node_that_fails_to_start_runs_again_on_its_previous_definition() {
    let mut host = TestHost::new("fallback", &fallback_config(false));
    host.start_daemon();
    host.wait_node_state("f1", "running");
    host.wait_node_state("f2", "running");
    let (f1, f2) = (host.node_pid("f1"), host.node_pid("f2"));

    host.write_config(&fallback_config(true));
    host.cli(&["config", "check"]);
    let reload = host.try_cli(&["reload"]);
    let (out, err) = (String::from_utf8_lossy(&reload.stdout), stderr(&reload));
    assert!(
        !reload.status.success(),
        "a refused change is a failed reload: {out}"
    );
    assert!(out.contains("unchanged: f2"), "{out}\n{err}");
    assert!(
        err.contains("refused: f1: ") && err.contains("/etc/passwd"),
        "the refused change and why: {err}"
    );
    let node = host.wait_node_state("f1", "running");
    assert_ne!(
        node["pid"].as_i64(),
        Some(i64::from(f1)),
        "f1 was not restarted"
    );
    let error = node["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("refused") && error.contains("/etc/passwd"),
        "{node:#}"
    );
    assert_eq!(host.node_pid("f2"), f2);
    // The previous definition runs: no volume over the node's accounts.
    assert!(host
        .exec_stdout("f1", &["cat", "/etc/passwd"])
        .contains("root:"));
    assert!(
        host.daemon_log().contains("previous definition"),
        "{}",
        host.daemon_log()
    );

    // The same refused change is not tried again by the next reload.
    let f1 = host.node_pid("f1");
    let again = host.try_cli(&["reload"]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("refused: f1: "),
        "{}",
        stderr(&again)
    );
    assert_eq!(host.node_pid("f1"), f1);

    // Back to what runs: nothing restarts and the refusal is over.
    host.write_config(&fallback_config(false));
    let report = host.cli(&["reload"]);
    assert!(report.contains("unchanged: f1 f2"), "{report}");
    assert_eq!(host.node_pid("f1"), f1);
    assert!(host.node("f1")["error"].is_null(), "{}", host.node("f1"));
}

#[test]
fn a_reload_names_host_settings_it_cannot_apply() {
    let mut host = TestHost::new("hostset", &sleeper_nodes(&["h1"]));
    host.start_daemon();
    host.wait_node_state("h1", "running");
    let pid = host.node_pid("h1");

    let text = std::fs::read_to_string(&host.config).unwrap();
    let changed = text
        .replace(
            &format!("cgroup = \"{}\"", host.cgroup),
            &format!("cgroup = \"{}/moved\"", host.cgroup),
        )
        .replace("stop_timeout = \"2s\"", "stop_timeout = \"3s\"");
    assert_ne!(changed, text);
    std::fs::write(&host.config, &changed).unwrap();
    for _ in 0..2 {
        let report = host.cli(&["reload"]);
        assert!(report.contains("unchanged: h1"), "{report}");
        assert!(
            report.contains(&format!(
                "host.cgroup: `{0}` until the agent restarts, then `{0}/moved`",
                host.cgroup
            )),
            "{report}"
        );
        assert!(
            report.contains("host.stop_timeout: `2s` until the agent restarts, then `3s`"),
            "{report}"
        );
    }
    assert_eq!(host.node_pid("h1"), pid);
    assert!(host.node_cgroup_exists("h1"));
}

#[test]
fn a_config_that_is_not_toml_leaves_status_stop_and_reload_working() {
    let mut host = TestHost::new("nottoml", &sleeper_nodes(&["t1", "t2"]));
    host.start_daemon();
    host.wait_node_state("t1", "running");
    host.wait_node_state("t2", "running");
    let t1 = host.node_pid("t1");

    // A table header left open.
    host.write_config(&format!(
        "{}[nodes.t3\nrole = \"sleeper\"\n",
        sleeper_nodes(&["t1", "t2"])
    ));
    let line = line_of(&host, "[nodes.t3");
    assert_eq!(host.status()["nodes"].as_array().unwrap().len(), 2);
    let refused = host.try_cli(&["reload"]);
    let message = stderr(&refused);
    assert!(!refused.status.success());
    assert!(
        message.contains("configuration not reloaded")
            && message.contains(&format!("{}:{line}:", host.config.display())),
        "the daemon's refusal naming file and line: {message}"
    );
    host.cli(&["stop", "t2"]);
    assert_eq!(host.node("t2")["state"], "stopped");
    std::thread::sleep(Duration::from_millis(200));
    let t1_now = host.node("t1");
    assert_eq!(t1_now["state"], "running");
    assert_eq!(t1_now["pid"].as_i64(), Some(i64::from(t1)));
    assert_eq!(host.status()["nodes"].as_array().unwrap().len(), 2);
}
