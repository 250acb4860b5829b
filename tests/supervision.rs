//! The init supervises: restarts with backoff, marks crash loops, reports exec errors, reaps
//! orphans, and stops gracefully with SIGKILL after the timeout.

mod common;

use std::time::{Duration, Instant};

use common::{wait_for, TestHost};

fn host_with(name: &str, processes: &str) -> TestHost {
    let mut host = TestHost::new(
        name,
        &format!(
            "[nodes.t1]\nrole = \"subject\"\n[roles.subject]\nimage = \"busybox\"\n{processes}"
        ),
    );
    host.start_daemon();
    host
}

fn process(host: &TestHost, node: &str, index: usize) -> serde_json::Value {
    host.node(node)["processes"][index].clone()
}

#[test]
fn a_killed_process_is_restarted() {
    let host = host_with(
        "restart",
        "[[roles.subject.process]]\nname = \"sleep\"\ncommand = [\"sleep\", \"100000\"]\n",
    );
    host.wait_node_state("t1", "running");
    let before = process(&host, "t1", 0)["pid"].as_i64().unwrap();
    host.exec_stdout("t1", &["kill", &before.to_string()]);
    wait_for("the process to come back", Duration::from_secs(10), || {
        let p = process(&host, "t1", 0);
        p["restarts"] == 1 && p["state"] == "running" && p["pid"].as_i64() != Some(before)
    });
    assert_eq!(host.node("t1")["state"], "running");
}

#[test]
fn a_process_that_exits_at_once_backs_off_into_crashloop() {
    let host = host_with(
        "crashloop",
        "[[roles.subject.process]]\nname = \"flaky\"\ncommand = [\"sh\", \"-c\", \"exit 3\"]\n",
    );
    let started = Instant::now();
    wait_for("crashloop", Duration::from_secs(10), || {
        process(&host, "t1", 0)["state"] == "crashloop"
    });
    std::thread::sleep(Duration::from_secs(2));
    let p = process(&host, "t1", 0);
    let elapsed = started.elapsed().as_secs_f64();
    let restarts = p["restarts"].as_u64().unwrap();
    // 250 ms doubling: a busy loop would restart thousands of times.
    assert!(
        (3..=8).contains(&restarts),
        "{restarts} restarts in {elapsed:.1}s: {p}"
    );
    assert!(
        p["last_error"].as_str().unwrap().contains("crash loop"),
        "{p}"
    );
    let node = host.node("t1");
    assert_eq!(node["state"], "failed", "{node}");
    assert!(node["error"].as_str().unwrap().contains("flaky"), "{node}");
}

#[test]
fn a_missing_program_fails_the_node_with_the_exec_error() {
    let host = host_with(
        "noexec",
        "[[roles.subject.process]]\nname = \"ghost\"\ncommand = [\"/usr/bin/does-not-exist\"]\n",
    );
    let node = host.wait_node_state("t1", "failed");
    let error = node["error"].as_str().unwrap();
    assert!(
        error.contains("does-not-exist") && error.contains("No such file"),
        "{error}"
    );
    let start = host.try_cli(&["start", "t1"]);
    assert!(
        !start.status.success(),
        "start of a node that cannot exec succeeded"
    );
    let stderr = String::from_utf8_lossy(&start.stderr);
    assert!(stderr.contains("No such file"), "{stderr}");
    host.assert_nothing_left();
}

#[test]
fn orphans_are_reaped_by_the_init() {
    let host = host_with(
        "reap",
        "[[roles.subject.process]]\nname = \"parent\"\ncommand = [\"sh\", \"-c\", \"for i in 1 2 3 4 5; do sh -c 'sleep 0.1 &'; done; exec sleep 100000\"]\n",
    );
    host.wait_node_state("t1", "running");
    std::thread::sleep(Duration::from_millis(800));
    let ps = host.exec_stdout("t1", &["ps", "-o", "pid,stat,args"]);
    assert!(
        !ps.lines().any(|l| l.split_whitespace().nth(1) == Some("Z")),
        "zombies left:\n{ps}"
    );
    assert_eq!(process(&host, "t1", 0)["restarts"], 0);
}

#[test]
fn restart_never_leaves_an_exited_process_down() {
    let host = host_with(
        "never",
        "[[roles.subject.process]]\nname = \"once\"\ncommand = [\"true\"]\nrestart = \"never\"\n[[roles.subject.process]]\nname = \"sleep\"\ncommand = [\"sleep\", \"100000\"]\n",
    );
    wait_for("the one-shot to exit", Duration::from_secs(10), || {
        process(&host, "t1", 0)["state"] == "exited"
    });
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(process(&host, "t1", 0)["restarts"], 0);
    assert_eq!(host.node("t1")["state"], "running");
}

#[test]
fn stop_escalates_to_sigkill_after_the_timeout() {
    let host = host_with(
        "stubborn",
        "[[roles.subject.process]]\nname = \"stubborn\"\ncommand = [\"sh\", \"-c\", \"trap '' TERM; while true; do sleep 1; done\"]\n",
    );
    host.wait_node_state("t1", "running");
    let pid = host.node_pid("t1");
    let started = Instant::now();
    host.cli(&["stop", "t1"]);
    let took = started.elapsed();
    // The test config's stop_timeout is 2 s.
    assert!(
        took >= Duration::from_millis(1900),
        "stopped in {took:?}: SIGTERM was not ignored?"
    );
    assert!(took < Duration::from_secs(6), "stop took {took:?}");
    assert!(!common::process_alive(pid));
    host.assert_nothing_left();
    let log = std::fs::read_to_string(host.log_dir().join("t1/init.log")).unwrap();
    assert!(log.contains("stop timeout"), "{log}");
}

#[test]
fn process_output_goes_to_its_log_file() {
    let host = host_with(
        "logs",
        "[[roles.subject.process]]\nname = \"talker\"\ncommand = [\"sh\", \"-c\", \"echo out; echo err >&2; exec sleep 100000\"]\n",
    );
    host.wait_node_state("t1", "running");
    let log = host.log_dir().join("t1/talker.log");
    wait_for("the log lines", Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("out") && t.contains("err"))
    });
}
