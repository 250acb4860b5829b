//! Nodes outlive the daemon; a new daemon re-adopts them, restarts those that died, keeps the
//! operator's stops, reloads only what changed, and sweeps what it no longer has.

mod common;

use std::time::Duration;

use common::{process_alive, sleeper_nodes, wait_for, TestHost};

fn running_host(name: &str, names: &[&str]) -> TestHost {
    let mut host = TestHost::new(name, &sleeper_nodes(names));
    host.start_daemon();
    for node in names {
        host.wait_node_state(node, "running");
    }
    host
}

#[test]
fn nodes_survive_sigkill_and_sigterm_of_the_daemon_and_are_re_adopted() {
    let mut host = running_host("survive", &["s1", "s2"]);
    // Give s1 a process restart, so the counters' survival is visible.
    let sleep_pid = host.node("s1")["processes"][0]["pid"].as_i64().unwrap();
    host.exec_stdout("s1", &["kill", &sleep_pid.to_string()]);
    wait_for("the restart", Duration::from_secs(10), || {
        host.node("s1")["processes"][0]["restarts"] == 1
    });
    let pids = (host.node_pid("s1"), host.node_pid("s2"));

    for signal in [libc::SIGKILL, libc::SIGTERM] {
        host.kill_daemon(signal);
        assert!(
            process_alive(pids.0) && process_alive(pids.1),
            "a node died with the daemon"
        );
        host.start_daemon();
        assert_eq!(
            (host.node_pid("s1"), host.node_pid("s2")),
            pids,
            "nodes were restarted"
        );
        let s1 = host.node("s1");
        assert_eq!(s1["state"], "running");
        assert_eq!(s1["processes"][0]["restarts"], 1, "{s1}");
        assert_eq!(s1["restarts"], 0);
    }
    assert!(host.daemon_log().contains("re-adopted running node"));
    assert!(
        !host.daemon_log().contains('\x1b'),
        "colour codes in a log that is not a terminal"
    );
    // Supervision resumed: the adopted node's death is noticed.
    let init = pids.1;
    // SAFETY: kill takes plain integers; the pid is the test's own node init.
    unsafe { libc::kill(init, libc::SIGKILL) };
    wait_for("s2 to be restarted", Duration::from_secs(10), || {
        let node = host.node("s2");
        node["state"] == "running" && node["pid"].as_i64() != Some(init as i64)
    });
    assert_eq!(host.node("s2")["restarts"], 1);
}

#[test]
fn a_node_whose_init_died_while_the_daemon_was_down_is_restarted() {
    let mut host = running_host("diedaway", &["s1", "s2"]);
    let (s1, s2) = (host.node_pid("s1"), host.node_pid("s2"));
    host.kill_daemon(libc::SIGKILL);
    // SAFETY: kill takes plain integers; the pid is the test's own node init.
    unsafe { libc::kill(s2, libc::SIGKILL) };
    wait_for("s2's init to die", Duration::from_secs(5), || {
        !process_alive(s2)
    });
    host.start_daemon();
    let node = host.wait_node_state("s2", "running");
    assert_ne!(node["pid"].as_i64(), Some(s2 as i64));
    assert_eq!(node["restarts"], 1, "{node}");
    assert_eq!(host.node_pid("s1"), s1);
}

#[test]
fn a_stopped_node_stays_stopped_across_daemon_restarts() {
    let mut host = running_host("desired", &["s1", "s2"]);
    host.cli(&["stop", "s2"]);
    host.kill_daemon(libc::SIGTERM);
    host.start_daemon();
    std::thread::sleep(Duration::from_millis(300));
    let node = host.node("s2");
    assert_eq!(node["state"], "stopped", "{node}");
    assert_eq!(node["desired"], "stopped");
    host.cli(&["start", "s2"]);
    assert_eq!(host.node("s2")["state"], "running");
}

#[test]
fn reload_restarts_only_what_changed() {
    let host = running_host("reload", &["s1", "s2", "s3"]);
    let (s1, s2) = (host.node_pid("s1"), host.node_pid("s2"));

    // Invalid: nothing changes.
    host.write_config(&format!(
        "{}[nodes.s4]\nrole = \"nope\"\n",
        sleeper_nodes(&["s1", "s2"])
    ));
    let refused = host.try_cli(&["reload"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("nodes.s4.role"));
    assert_eq!((host.node_pid("s1"), host.node_pid("s2")), (s1, s2));
    assert_eq!(host.node("s3")["state"], "running");

    // s1 changes, s2 stays, s3 goes, s4 arrives.
    host.write_config(&format!(
        "{}[nodes.s1.resources]\nmemory = \"32M\"\n[nodes.s4]\nrole = \"sleeper\"\n",
        sleeper_nodes(&["s1", "s2"])
    ));
    let report = host.cli(&["reload"]);
    assert!(report.contains("restarted: s1"), "{report}");
    assert!(report.contains("started: s4"), "{report}");
    assert!(report.contains("stopped: s3"), "{report}");
    assert!(report.contains("unchanged: s2"), "{report}");
    assert_ne!(host.node_pid("s1"), s1);
    assert_eq!(host.node_pid("s2"), s2);
    assert_eq!(host.node("s4")["state"], "running");
    let names: Vec<String> = host.status()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["s1", "s2", "s4"]);
    assert!(!host.node_cgroup_exists("s3"));
    assert!(!host.run_dir().join("nodes/s3").exists());
}

/// Nodes of roles outside the address plan get addresses in name order; one added before them
/// (while the daemon was down, or by reload) must not renumber, and so restart, those running.
#[test]
fn a_node_added_before_running_ones_of_an_unplanned_role_renumbers_none() {
    let mut host = running_host("keepip", &["s2", "s3"]);
    let ip = |host: &TestHost, node: &str| host.node(node)["ip"].as_str().unwrap().to_string();
    let before = [
        (host.node_pid("s2"), ip(&host, "s2")),
        (host.node_pid("s3"), ip(&host, "s3")),
    ];
    assert_eq!(before[0].1, host.net.ip(100));

    host.kill_daemon(libc::SIGTERM);
    host.write_config(&sleeper_nodes(&["s1", "s2", "s3"]));
    host.start_daemon();
    host.wait_node_state("s1", "running");
    let after = [
        (host.node_pid("s2"), ip(&host, "s2")),
        (host.node_pid("s3"), ip(&host, "s3")),
    ];
    assert_eq!(after, before, "a running node was renumbered");
    assert_eq!(ip(&host, "s1"), host.net.ip(102));

    host.write_config(&sleeper_nodes(&["s0", "s1", "s2", "s3"]));
    let report = host.cli(&["reload"]);
    assert!(report.contains("started: s0"), "{report}");
    assert!(report.contains("unchanged: s1 s2 s3"), "{report}");
    assert_eq!(ip(&host, "s0"), host.net.ip(103));
    // Every node's hosts file names each node at the address it has.
    let hosts = host.exec_stdout("s0", &["cat", "/etc/hosts"]);
    assert!(hosts.contains(&format!("{}\ts2.i", before[0].1)), "{hosts}");
}

#[test]
fn start_up_sweeps_leftovers_of_nodes_it_does_not_have() {
    let mut host = TestHost::new("sweep", &sleeper_nodes(&["s1"]));
    // A half-made node: a cgroup holding a process, a run dir with a torn state file.
    let roots = common::cgroup_roots();
    let mut stray = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    for root in &roots {
        let dir = root.join(&host.cgroup).join("ghost");
        std::fs::create_dir_all(&dir).unwrap();
        if root.ends_with("pids") || roots.len() == 1 {
            std::fs::write(dir.join("cgroup.procs"), stray.id().to_string()).unwrap();
        }
    }
    let ghost_run = host.run_dir().join("nodes/ghost");
    std::fs::create_dir_all(&ghost_run).unwrap();
    std::fs::write(ghost_run.join("state.json"), "{ torn").unwrap();
    let ghost_layer = host.state_dir().join("nodes/ghost/upper");
    std::fs::create_dir_all(&ghost_layer).unwrap();

    host.start_daemon();
    host.wait_node_state("s1", "running");
    let status = stray.wait().unwrap();
    assert!(!status.success(), "the stray process was not killed");
    assert!(!host.node_cgroup_exists("ghost"));
    assert!(!ghost_run.exists());
    assert!(!ghost_layer.exists());
    assert!(host.daemon_log().contains("sweeping"));
}

#[test]
fn a_daemon_killed_while_starting_or_stopping_leaves_a_consistent_host() {
    let names = ["s1", "s2", "s3", "s4"];
    let mut host = TestHost::new("crash", &sleeper_nodes(&names));
    for delay_ms in [0u64, 15, 40] {
        host.start_daemon_no_wait();
        std::thread::sleep(Duration::from_millis(delay_ms));
        host.kill_daemon(libc::SIGKILL);
        host.start_daemon();
        for node in names {
            host.wait_node_state(node, "running");
        }
        assert_one_init_per_node(&host, &names);
        host.kill_daemon(libc::SIGKILL);
    }

    // Killed while stopping: the stop was recorded first, so the nodes end stopped.
    host.start_daemon();
    let config = host.config.clone();
    let stopper = std::process::Command::new(common::AGENT)
        .args([
            "--config",
            config.to_str().unwrap(),
            "stop",
            "s1",
            "s2",
            "s3",
            "s4",
        ])
        .spawn()
        .unwrap();
    let desired = host.state_dir().join("desired.json");
    wait_for("the stop to be recorded", Duration::from_secs(10), || {
        std::fs::read_to_string(&desired).is_ok_and(|t| t.contains("s4"))
    });
    host.kill_daemon(libc::SIGKILL);
    let _ = stopper.wait_with_output();
    host.start_daemon();
    for node in names {
        host.wait_node_state(node, "stopped");
    }
    host.assert_nothing_left();
}

/// Every node's cgroup holds exactly one init, and no init runs outside a node cgroup.
fn assert_one_init_per_node(host: &TestHost, names: &[&str]) {
    for node in names {
        let pid = host.node_pid(node);
        let procs = std::fs::read_to_string(
            common::cgroup_roots()[0]
                .join(&host.cgroup)
                .join(node)
                .join("cgroup.procs"),
        )
        .unwrap();
        let inits = procs
            .lines()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| c.contains("init"))
            })
            .count();
        assert_eq!(inits, 1, "{node}: {procs}");
        assert!(procs.lines().any(|p| p == pid.to_string()));
    }
}
