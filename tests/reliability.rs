//! A node agent runs for years: churn must not leak, a crash or power cut at any instant must
//! leave a state the next daemon recovers from, a full disk must fail cleanly, and a role that
//! crashes in a loop must be backed off.
//!
//! Randomness is seeded from `MAGESTACK_TEST_SEED` (else the clock) and the seed is printed, so
//! a failing round can be replayed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::rng::Rng;
use common::{cgroup_roots, process_alive, sleeper_nodes, wait_for, TestHost, AGENT};

/// Start/stop cycles of the churn test; each cycle starts and stops three nodes, every tenth
/// one restarts them in between (300 cycles take 15-30 s on the 2-core development VM).
const CHURN_CYCLES: usize = 300;
/// Rounds of the kill test; each kills the daemon once and restarts it (100 rounds take about
/// 20 s on the 2-core development VM).
const KILL_ROUNDS: usize = 100;

/// What one test host holds on the machine, counted so that churn can be compared.
#[derive(Debug, Clone, PartialEq)]
struct Footprint {
    mounts: usize,
    cgroups: usize,
    links: usize,
    nft_rules: usize,
    run_files: usize,
    daemon_fds: usize,
    daemon_children: usize,
}

fn footprint(host: &TestHost) -> Footprint {
    let daemon = host.daemon_pid();
    Footprint {
        mounts: std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(host.dir.to_str().unwrap()))
            .count(),
        cgroups: cgroup_roots()
            .iter()
            .map(|root| count_dirs(&root.join(&host.cgroup)))
            .sum(),
        links: host.net.links().len(),
        nft_rules: nft_rules(host),
        run_files: count_entries(&host.run_dir()),
        daemon_fds: std::fs::read_dir(format!("/proc/{daemon}/fd"))
            .unwrap()
            .count(),
        daemon_children: children_of(daemon as i32).len(),
    }
}

/// Lines of the agent's policy table for this host's bridge.
fn nft_rules(host: &TestHost) -> usize {
    let table = format!("magestack_{}", host.net.bridge);
    let output = Command::new("nft")
        .args(["list", "table", "inet", &table])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).lines().count()
}

fn count_dirs(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| 1 + count_dirs(&e.path()))
        .sum()
}

fn count_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            1 + if e.file_type().is_ok_and(|t| t.is_dir()) {
                count_entries(&e.path())
            } else {
                0
            }
        })
        .sum()
}

fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| parent_of(*child) == Some(pid))
        .collect()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn churn_leaves_the_machine_as_it_was() {
    let names = ["c1", "c2", "c3"];
    let mut host = TestHost::new("churn", &sleeper_nodes(&names));
    host.start_daemon();
    for node in names {
        host.wait_node_state(node, "running");
    }
    let args = |verb: &'static str| {
        let mut args = vec![verb];
        args.extend(names);
        args
    };
    // One warm-up cycle: the netlink connection and the blocking pool are made on first use.
    host.cli(&args("stop"));
    host.cli(&args("start"));
    let running = footprint(&host);
    host.cli(&args("stop"));
    host.assert_nothing_left();
    let stopped = footprint(&host);
    let rss_before = rss_kib(host.daemon_pid());
    let began = Instant::now();
    for cycle in 0..CHURN_CYCLES {
        host.cli(&args("start"));
        // Every tenth cycle also goes through restart (stop and start in one request).
        if cycle % 10 == 9 {
            host.cli(&args("restart"));
        }
        if cycle % 100 == 99 {
            eprintln!(
                "cycle {}: daemon RSS {} KiB",
                cycle + 1,
                rss_kib(host.daemon_pid())
            );
        }
        if cycle == CHURN_CYCLES - 1 {
            wait_for("the running footprint", Duration::from_secs(10), || {
                footprint(&host) == running
            });
        }
        host.cli(&args("stop"));
    }
    let elapsed = began.elapsed();
    eprintln!(
        "{CHURN_CYCLES} cycles of {} nodes in {:.1}s",
        names.len(),
        elapsed.as_secs_f64()
    );
    // A stopped node's links go with its namespace a moment after it stops.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = footprint(&host);
    while after != stopped && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        after = footprint(&host);
    }
    assert_eq!(after, stopped, "churn leaked; running: {running:?}");
    let rss_after = rss_kib(host.daemon_pid());
    eprintln!("daemon RSS {rss_before} KiB -> {rss_after} KiB");
    assert!(
        rss_after < rss_before + 4096,
        "daemon RSS grew from {rss_before} KiB to {rss_after} KiB over {CHURN_CYCLES} cycles"
    );
    host.assert_nothing_left();
}

/// The config of the kill test: `names` with a 64M limit, those in `big` at 48M instead.
fn kill_test_config(names: &[&str], big: &[String]) -> String {
    let mut body = sleeper_nodes(names);
    body.push_str("[roles.sleeper.resources]\nmemory = \"64M\"\n");
    // A shared volume: each start forks a helper for its id mapping, which a killed daemon
    // must not leave behind (it would carry the daemon's command line and descriptors).
    body.push_str(
        "[[roles.sleeper.volume]]\nname = \"shared\"\npath = \"/srv/shared\"\nshared = true\n",
    );
    for node in big {
        body.push_str(&format!("[nodes.{node}.resources]\nmemory = \"48M\"\n"));
    }
    body
}

/// Host pids of every init of this test host's `node`, found by command line and by the log
/// dir it holds open (other test hosts run nodes of the same name).
fn inits_of(host: &TestHost, node: &str) -> Vec<i32> {
    let wanted = format!("magestack-agent\0init\0{node}\0");
    let log_dir = host.log_dir().join(node);
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted.as_bytes())
        })
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == log_dir))
        })
        .filter(|pid| process_alive(*pid))
        .collect()
}

/// Processes running this host's daemon command line: the daemon, and any clone of it that
/// never reached its exec (such a copy holds the daemon's lock and sockets).
fn daemon_copies(host: &TestHost) -> Vec<i32> {
    let wanted = format!("--config\0{}\0run\0", host.config.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).ends_with(&wanted))
        })
        .filter(|pid| process_alive(*pid))
        .collect()
}

/// Nodes the operator stopped, as the daemon recorded them.
fn recorded_stops(host: &TestHost) -> Vec<String> {
    let path = host.state_dir().join("desired.json");
    match std::fs::read(&path) {
        Ok(data) => {
            let value: serde_json::Value =
                serde_json::from_slice(&data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            value["stopped"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap().to_string())
                .collect()
        }
        Err(_) => Vec::new(),
    }
}

/// The invariants after a crash: each node runs under exactly one init, in its cgroup, with the
/// configured limit, or it is stopped with nothing left; what the operator asked is honoured.
fn check_consistent(
    host: &TestHost,
    names: &[&str],
    gone: &[&str],
    big: &[String],
) -> Result<(), String> {
    let strays = daemon_copies(host)
        .into_iter()
        .filter(|pid| *pid != host.daemon_pid() as i32)
        .collect::<Vec<_>>();
    if !strays.is_empty() {
        return Err(format!(
            "processes with the daemon's command line besides the daemon: {strays:?}"
        ));
    }
    let stops = recorded_stops(host);
    let status = status_within(host)?;
    for node in gone {
        let listed = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == *node);
        let inits = inits_of(host, node);
        if listed || !inits.is_empty() || host.node_cgroup_exists(node) {
            return Err(format!(
                "removed {node} is still listed ({listed}), has inits {inits:?} or a cgroup"
            ));
        }
        if host.run_dir().join("nodes").join(node).exists() {
            return Err(format!("removed {node} left its run dir"));
        }
    }
    for node in names {
        let entry = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == *node)
            .ok_or(format!("{node} missing from status"))?;
        let inits = inits_of(host, node);
        let cgroup = cgroup_roots()[0].join(&host.cgroup).join(node);
        if stops.contains(&node.to_string()) {
            if entry["state"] != "stopped" {
                return Err(format!("{node} should be stopped: {entry}"));
            }
            if !inits.is_empty() {
                return Err(format!("stopped {node} still has inits {inits:?}"));
            }
            if cgroup.exists() || host.run_dir().join("nodes").join(node).exists() {
                return Err(format!("stopped {node} left its cgroup or run dir"));
            }
            if host
                .net
                .links()
                .contains(&format!("{}-{node}", host.net.link_prefix))
            {
                return Err(format!("stopped {node} left its link"));
            }
        } else {
            if entry["state"] != "running" {
                return Err(format!("{node} should be running: {entry}"));
            }
            let pid = entry["pid"].as_i64().ok_or(format!("{node} has no pid"))? as i32;
            if inits != [pid] {
                return Err(format!("{node}: status pid {pid}, inits {inits:?}"));
            }
            let procs = std::fs::read_to_string(cgroup.join("cgroup.procs"))
                .map_err(|e| format!("{node}: {}: {e}", cgroup.display()))?;
            if !procs.lines().any(|p| p == pid.to_string()) {
                return Err(format!("{node}: init {pid} not in its cgroup: {procs}"));
            }
            let limit = if big.contains(&node.to_string()) {
                48
            } else {
                64
            } << 20;
            if entry["memory_limit_bytes"] != limit {
                return Err(format!("{node} runs an old definition: {entry}"));
            }
        }
    }
    Ok(())
}

/// Waits (bounded) for a CLI child and kills it by pid if the daemon's death left it hanging.
fn finish(mut child: std::process::Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `status --json`, or an error when the daemon does not answer within 10 s (a daemon that
/// accepts no connection must fail the test, not hang it).
fn status_within(host: &TestHost) -> Result<serde_json::Value, String> {
    let mut child = Command::new(AGENT)
        .arg("--config")
        .arg(&host.config)
        .args(["status", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    if !finish(child) {
        return Err("status failed or did not answer in 10s".into());
    }
    let text = reader.join().unwrap();
    serde_json::from_str(&text).map_err(|e| format!("status: {e}: {text}"))
}

#[test]
fn a_daemon_killed_at_random_moments_always_recovers_a_consistent_host() {
    let mut rng = Rng::from_env("kill test");
    let names = ["k1", "k2", "k3"];
    // k4 comes and goes with reloads.
    let mut with_k4 = false;
    let configured = |with_k4: bool| {
        let mut configured = names.to_vec();
        if with_k4 {
            configured.push("k4");
        }
        configured
    };
    let mut big: Vec<String> = Vec::new();
    let mut host = TestHost::new("kill", &kill_test_config(&names, &big));
    host.start_daemon();
    for node in names {
        host.wait_node_state(node, "running");
    }
    let began = Instant::now();
    for round in 0..KILL_ROUNDS {
        let subset: Vec<&str> = names
            .iter()
            .copied()
            .filter(|_| rng.below(2) == 0)
            .collect();
        let subset = if subset.is_empty() {
            vec![names[rng.below(3) as usize]]
        } else {
            subset
        };
        let verb = ["start", "stop", "restart", "reload", "daemon start"][rng.below(5) as usize];
        let offset = Duration::from_millis(rng.below(100));
        let what = format!(
            "round {round}: {verb} {subset:?} (k4 configured: {with_k4}), SIGKILL after {offset:?}"
        );
        eprintln!("{what}");
        let mut client = None;
        match verb {
            "daemon start" => {
                host.kill_daemon(libc::SIGKILL);
                host.start_daemon_no_wait();
            }
            "reload" => {
                let node = subset[0].to_string();
                if rng.below(3) == 0 {
                    with_k4 = !with_k4;
                } else if let Some(at) = big.iter().position(|n| *n == node) {
                    big.remove(at);
                } else {
                    big.push(node);
                }
                host.write_config(&kill_test_config(&configured(with_k4), &big));
                client = Some(vec!["reload".to_string()]);
            }
            verb => {
                let mut args = vec![verb.to_string()];
                args.extend(subset.iter().map(|n| n.to_string()));
                client = Some(args);
            }
        }
        let child = client.as_ref().map(|args| {
            Command::new(AGENT)
                .arg("--config")
                .arg(&host.config)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        });
        std::thread::sleep(offset);
        host.kill_daemon(libc::SIGKILL);
        let succeeded = child.map(finish);
        host.start_daemon();
        // What the client was told is what the host keeps.
        if succeeded == Some(true) && matches!(verb, "start" | "stop" | "restart") {
            let stops = recorded_stops(&host);
            for node in &subset {
                assert_eq!(
                    stops.contains(&node.to_string()),
                    verb == "stop",
                    "{what}: `{verb}` succeeded but {node} is recorded otherwise"
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let gone: &[&str] = if with_k4 { &[] } else { &["k4"] };
            match check_consistent(&host, &configured(with_k4), gone, &big) {
                Ok(()) => break,
                Err(problem) if Instant::now() > deadline => panic!(
                    "{what}: {problem}\nreplay with MAGESTACK_TEST_SEED\ndaemon log:\n{}",
                    host.daemon_log()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    eprintln!(
        "{KILL_ROUNDS} kill rounds in {:.1}s",
        began.elapsed().as_secs_f64()
    );
    let mut stop = vec!["stop"];
    stop.extend(configured(with_k4));
    host.cli(&stop);
    host.assert_nothing_left();
}

#[test]
fn corrupt_state_files_and_a_power_cut_are_recovered_from() {
    let names = ["p1", "p2", "p3"];
    let mut host = TestHost::new("powercut", &sleeper_nodes(&names));
    host.start_daemon();
    for node in names {
        host.wait_node_state(node, "running");
    }
    host.cli(&["stop", "p3"]);
    let (p1, p2) = (host.node_pid("p1"), host.node_pid("p2"));
    host.kill_daemon(libc::SIGKILL);

    // What a disk that lied about a write could leave: a torn record, garbage, a torn wish
    // list, and temp files of writes that never reached their rename.
    let run_dir = host.run_dir();
    let record = |node: &str| run_dir.join("nodes").join(node).join("state.json");
    let torn = std::fs::read(record("p1")).unwrap();
    std::fs::write(record("p1"), &torn[..torn.len() / 2]).unwrap();
    std::fs::write(record("p2"), b"\0\0\0\xff garbage").unwrap();
    std::fs::write(host.run_dir().join("nodes/p1/state.tmp-999999"), b"{\"na").unwrap();
    let desired = host.state_dir().join("desired.json");
    let wishes = std::fs::read(&desired).unwrap();
    std::fs::write(&desired, &wishes[..wishes.len() - 3]).unwrap();
    let stale_temp = host.state_dir().join("desired.tmp-999999");
    std::fs::write(&stale_temp, b"{").unwrap();

    host.start_daemon();
    for node in names {
        host.wait_node_state(node, "running");
    }
    let log = host.daemon_log();
    for file in [record("p1"), record("p2"), desired.clone()] {
        assert!(
            log.lines()
                .any(|l| l.contains("corrupt") && l.contains(file.to_str().unwrap())),
            "no report naming {}:\n{log}",
            file.display()
        );
    }
    assert!(host.state_dir().join("desired.json.corrupt").exists());
    assert!(!stale_temp.exists(), "a stale temp file was kept");
    // The nodes whose records were lost were cleaned up and started afresh, once each.
    wait_for("the old inits to go", Duration::from_secs(10), || {
        !process_alive(p1) && !process_alive(p2)
    });
    for node in names {
        assert_eq!(inits_of(&host, node), [host.node_pid(node)], "{node}");
    }
    assert_ne!(host.node_pid("p1"), p1);
    assert_ne!(host.node_pid("p2"), p2);
    // The wishes are valid again and are kept from now on.
    host.cli(&["stop", "p3"]);
    host.kill_daemon(libc::SIGKILL);
    host.start_daemon();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(host.node("p3")["state"], "stopped");

    // A power cut: every process dies at once, and the run dir (a tmpfs) and the cgroups are
    // gone after the reboot. The nodes come back from the configuration and the wishes.
    let before: Vec<i32> = ["p1", "p2"].iter().map(|n| host.node_pid(n)).collect();
    host.kill_daemon(libc::SIGKILL);
    for pid in &before {
        // SAFETY: kill takes plain integers; the pids are this test's own node inits.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    wait_for("the inits to die", Duration::from_secs(10), || {
        before.iter().all(|pid| !process_alive(*pid))
    });
    // The reboot takes the mounts with it too: the nodes' pinned namespaces.
    let run_dir = host.run_dir().display().to_string();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for mount_point in mountinfo.lines().filter_map(|line| line.split(' ').nth(4)) {
        if mount_point.starts_with(&run_dir) {
            nix::mount::umount2(mount_point, nix::mount::MntFlags::MNT_DETACH).unwrap();
        }
    }
    std::fs::remove_dir_all(host.run_dir()).unwrap();
    for root in cgroup_roots() {
        let parent = root.join(&host.cgroup);
        for node in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            if node.path().is_dir() {
                wait_for("an empty cgroup to go", Duration::from_secs(5), || {
                    std::fs::remove_dir(node.path()).is_ok()
                });
            }
        }
    }
    host.start_daemon();
    for node in ["p1", "p2"] {
        host.wait_node_state(node, "running");
        assert_eq!(inits_of(&host, node), [host.node_pid(node)], "{node}");
    }
    assert_eq!(host.node("p3")["state"], "stopped");
    assert!(inits_of(&host, "p3").is_empty());
}

/// A size-limited tmpfs mounted for a test; detached and its mount point removed on drop, on
/// success and on failure.
struct SmallFilesystem {
    path: PathBuf,
}

impl SmallFilesystem {
    fn mount(path: &Path, options: &str) -> SmallFilesystem {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs on {}", path.display());
        SmallFilesystem { path: path.into() }
    }

    /// Fills every block and then every inode; bounded by the filesystem's own limits.
    fn fill(&self) {
        use std::io::Write;
        let mut filler = std::fs::File::create(self.path.join("filler")).unwrap();
        let chunk = vec![0xa5u8; 1 << 20];
        for _ in 0..1024 {
            if filler.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = filler.sync_all();
        let inodes = self.path.join("inodes");
        if std::fs::create_dir(&inodes).is_ok() {
            for n in 0..100_000 {
                if std::fs::File::create(inodes.join(n.to_string())).is_err() {
                    break;
                }
            }
        }
    }

    fn free(&self) {
        let _ = std::fs::remove_file(self.path.join("filler"));
        let _ = std::fs::remove_dir_all(self.path.join("inodes"));
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let path = std::ffi::CString::new(self.path.to_str().unwrap()).unwrap();
        // SAFETY: umount2 with a valid C string; MNT_DETACH so a busy mount goes too.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[test]
fn a_full_state_disk_fails_a_start_cleanly_and_running_nodes_keep_running() {
    let mut host = TestHost::new("fulldisk", &sleeper_nodes(&["f1"]));
    let disk = SmallFilesystem::mount(&host.state_dir(), "size=16m,nr_inodes=2048,mode=0755");
    host.start_daemon();
    host.wait_node_state("f1", "running");
    let f1 = host.node_pid("f1");
    disk.fill();

    // A new node cannot even be given its id range: a clear error, nothing made.
    host.write_config(&sleeper_nodes(&["f1", "f2"]));
    let reload = host.try_cli(&["reload"]);
    let stderr = String::from_utf8_lossy(&reload.stderr);
    eprintln!("reload on a full disk: {stderr}");
    assert!(!reload.status.success(), "a start on a full disk succeeded");
    assert!(
        stderr.contains("f2")
            && stderr.contains("idmaps.json")
            && stderr.contains("No space left on device"),
        "{stderr}"
    );
    assert_eq!(host.node("f2")["state"], "failed");
    assert!(!host.node_cgroup_exists("f2"));
    assert!(!host.run_dir().join("nodes/f2").exists());
    assert!(!host.state_dir().join("nodes/f2").exists());
    assert!(host.net.links().iter().all(|l| !l.ends_with("-f2")));
    assert!(inits_of(&host, "f2").is_empty());
    let temps: Vec<_> = std::fs::read_dir(host.state_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(temps.is_empty(), "temp files left: {temps:?}");
    // Neither can a wish be recorded; the node it names keeps running.
    let stop = host.try_cli(&["stop", "f1"]);
    let stderr = String::from_utf8_lossy(&stop.stderr);
    assert!(
        !stop.status.success() && stderr.contains("desired.json"),
        "{stderr}"
    );
    assert_eq!(host.node_pid("f1"), f1);
    assert_eq!(host.exec_stdout("f1", &["echo", "alive"]), "alive\n");

    disk.free();
    host.cli(&["start", "f2"]);
    assert_eq!(host.node("f2")["state"], "running");
    assert_eq!(host.node_pid("f1"), f1);
}

#[test]
fn a_crash_looping_role_is_backed_off_shown_and_fixed_by_reload() {
    let role = |command: &str| {
        format!(
            "[nodes.l1]\nrole = \"looper\"\n[roles.looper]\nimage = \"busybox\"\n[[roles.looper.process]]\nname = \"main\"\ncommand = {command}\n"
        )
    };
    let mut host = TestHost::new("crashloop", &role(r#"["sh", "-c", "exit 1"]"#));
    host.start_daemon();
    let node = host.wait_node_state("l1", "failed");
    wait_for("crashloop", Duration::from_secs(10), || {
        host.node("l1")["processes"][0]["state"] == "crashloop"
    });
    let process = host.node("l1")["processes"][0].clone();
    assert!(
        process["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("next try in")),
        "{process}"
    );
    assert!(node["error"].as_str().is_some_and(|e| e.contains("main")));

    // Backed off: over three seconds the node and the daemon use a small part of one core.
    let daemon_ticks = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", host.daemon_pid())).unwrap();
        let fields: Vec<u64> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|f| f.parse().unwrap())
            .collect();
        fields[0] + fields[1]
    };
    let cpu = || host.node("l1")["cpu_usec"].as_u64().unwrap_or(0);
    let (cpu_before, daemon_before, restarts_before) = (
        cpu(),
        daemon_ticks(),
        host.node("l1")["processes"][0]["restarts"]
            .as_u64()
            .unwrap(),
    );
    let window = Duration::from_secs(3);
    std::thread::sleep(window);
    let node_cpu = Duration::from_micros(cpu() - cpu_before);
    let daemon_cpu = Duration::from_millis((daemon_ticks() - daemon_before) * 10);
    let restarts = host.node("l1")["processes"][0]["restarts"]
        .as_u64()
        .unwrap()
        - restarts_before;
    eprintln!(
        "in {window:?}: node cpu {node_cpu:?}, daemon cpu {daemon_cpu:?}, {restarts} restarts"
    );
    assert!(
        node_cpu < window / 10,
        "node used {node_cpu:?} in {window:?}"
    );
    assert!(daemon_cpu < window / 10, "daemon used {daemon_cpu:?}");
    assert!(restarts <= 3, "{restarts} restarts in {window:?}");

    // Fixed by a new definition: reload restarts it and it runs.
    host.write_config(&role(r#"["sleep", "1000000"]"#));
    let report = host.cli(&["reload"]);
    assert!(report.contains("restarted: l1"), "{report}");
    let node = host.wait_node_state("l1", "running");
    assert_eq!(node["processes"][0]["state"], "running", "{node}");
    assert_eq!(node["processes"][0]["restarts"], 0, "{node}");

    // A node whose init dies is restarted after a delay that status shows.
    let init = node["pid"].as_i64().unwrap() as i32;
    // SAFETY: kill takes plain integers; the pid is this test's own node init.
    unsafe { libc::kill(init, libc::SIGKILL) };
    wait_for("the retry to show", Duration::from_secs(5), || {
        host.node("l1")["error"]
            .as_str()
            .is_some_and(|e| e.contains("next start in 1s"))
    });
    wait_for("l1 to run again", Duration::from_secs(10), || {
        let node = host.node("l1");
        node["state"] == "running" && node["pid"].as_i64() != Some(init as i64)
    });
}
