//! Role health checks run by the init inside the node: tcp, exec, and none; what `status` shows.

mod common;

use std::time::Duration;

use common::{wait_for, TestHost};

/// How long a node may take to reach a health verdict with checks every 200 ms.
const VERDICT: Duration = Duration::from_secs(10);

/// A host running one node `t1` of role `subject` with `processes` and a `[health]` table.
/// `name` is short: the host's cgroup name, built from it, is limited to 32 characters.
fn host_with(name: &str, processes: &str, health: &str) -> TestHost {
    let mut host = TestHost::new(
        name,
        &format!(
            "[nodes.t1]\nrole = \"subject\"\n[roles.subject]\nimage = \"busybox\"\n{processes}{health}"
        ),
    );
    host.start_daemon();
    host.wait_node_state("t1", "running");
    host
}

const SLEEP: &str =
    "[[roles.subject.process]]\nname = \"sleep\"\ncommand = [\"sleep\", \"1000000\"]\n";

/// Waits until t1's health is `state`; returns the node's status.
fn wait_health(host: &TestHost, state: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_for(&format!("t1 to become {state}"), VERDICT, || {
        last = host.node("t1");
        last["health"] == state
    });
    last
}

#[test]
fn a_listening_server_is_healthy() {
    let host = host_with(
        "hc-tcp",
        "[[roles.subject.process]]\nname = \"httpd\"\ncommand = [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/\"]\n",
        "[roles.subject.health]\ntcp = 8080\ninterval = \"200ms\"\n",
    );
    let node = wait_health(&host, "healthy");
    assert_eq!(node["state"], "running", "{node}");
    assert!(node["error"].is_null(), "{node}");
    let table = host.cli(&["status"]);
    assert!(
        table.contains("HEALTH") && table.contains("healthy"),
        "{table}"
    );
}

#[test]
fn a_port_nobody_listens_on_is_unhealthy_with_the_reason() {
    let host = host_with(
        "hc-refused",
        SLEEP,
        "[roles.subject.health]\ntcp = 8081\ninterval = \"200ms\"\n",
    );
    let node = wait_health(&host, "unhealthy");
    let error = node["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("tcp 127.0.0.1:8081: connection refused"),
        "{node}"
    );
    assert_eq!(
        node["state"], "running",
        "health does not fail the node: {node}"
    );
}

#[test]
fn an_exec_check_follows_the_command_s_exit_status() {
    let host = host_with(
        "hc-exec",
        SLEEP,
        "[roles.subject.health]\nexec = [\"sh\", \"-c\", \"test -e /tmp/ok\"]\ninterval = \"200ms\"\n",
    );
    let node = wait_health(&host, "unhealthy");
    let error = node["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("exec sh -c test -e /tmp/ok: exited with status 1"),
        "{node}"
    );
    host.exec_stdout("t1", &["touch", "/tmp/ok"]);
    let node = wait_health(&host, "healthy");
    assert!(node["error"].is_null(), "{node}");
    // Exec checks are the init's children, never taken for role processes.
    let process = &node["processes"][0];
    assert_eq!(
        (process["state"].as_str(), process["restarts"].as_u64()),
        (Some("running"), Some(0)),
        "{node}"
    );
}

#[test]
fn a_role_without_a_check_shows_none() {
    let host = host_with("hc-none", SLEEP, "");
    wait_health(&host, "none");
    host.cli(&["stop", "t1"]);
    assert_eq!(host.node("t1")["health"], "unknown");
}
