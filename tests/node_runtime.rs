//! A node runs in its own namespaces, cgroup and root; `exec` enters it; volumes persist; stop
//! leaves nothing behind.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{host_namespace, process_namespace, wait_for, TestHost, AGENT, SLEEPER_ROLE};

fn sleeper_host(name: &str, extra: &str) -> TestHost {
    let mut host = TestHost::new(
        name,
        &format!(
            r#"
[nodes.s1]
role = "sleeper"
[nodes.s1.resources]
memory = "64M"
pids = 50
cpus = 0.5
{SLEEPER_ROLE}
[[roles.sleeper.volume]]
name = "data"
path = "/srv/data"
{extra}"#
        ),
    );
    host.start_daemon();
    host.wait_node_state("s1", "running");
    host
}

#[test]
fn a_node_has_its_own_namespaces_root_and_hostname() {
    let host = sleeper_host("ns", "");
    let pid = host.node_pid("s1");
    for kind in ["pid", "mnt", "uts", "ipc", "net", "cgroup"] {
        assert_ne!(
            process_namespace(pid, kind),
            host_namespace(kind),
            "{kind} namespace is shared with the host"
        );
    }
    // The init is PID 1 inside and sees only the node's processes.
    let ps = host.exec_stdout("s1", &["ps", "-o", "pid,args"]);
    assert!(
        ps.lines()
            .any(|l| l.trim().starts_with("1 ") && l.contains("init s1")),
        "{ps}"
    );
    assert!(
        !ps.contains("magestack-agent --config"),
        "host processes visible:\n{ps}"
    );
    assert_eq!(host.exec_stdout("s1", &["hostname"]).trim(), "s1");
    // pivot_root: the host's root is gone, the image's is there.
    let root = host.exec_stdout("s1", &["ls", "/"]);
    assert!(root.contains("bin") && !root.contains("work"), "{root}");
    assert!(!host
        .exec_stdout("s1", &["cat", "/proc/self/mountinfo"])
        .contains(" /work"));
    let hosts = host.exec_stdout("s1", &["cat", "/etc/hosts"]);
    assert!(hosts.contains("s1.i"), "{hosts}");
}

#[test]
fn kernel_filesystems_are_read_only_and_dev_is_minimal() {
    let host = sleeper_host("fs", "");
    let mounts = host.exec_stdout("s1", &["cat", "/proc/self/mounts"]);
    for (target, fstype) in [("/proc", "proc"), ("/sys", "sysfs")] {
        let line = mounts
            .lines()
            .find(|l| l.split(' ').nth(1) == Some(target))
            .unwrap_or_else(|| panic!("{target} not mounted:\n{mounts}"));
        assert!(line.contains(fstype) && line.contains(" ro,"), "{line}");
    }
    for (target, fstype) in [
        ("/run", "tmpfs"),
        ("/tmp", "tmpfs"),
        ("/dev/shm", "tmpfs"),
        ("/dev/pts", "devpts"),
    ] {
        assert!(
            mounts
                .lines()
                .any(|l| l.split(' ').nth(1) == Some(target) && l.contains(fstype)),
            "{target} is not {fstype}:\n{mounts}"
        );
    }
    let mut dev: Vec<String> = host
        .exec_stdout("s1", &["ls", "/dev"])
        .split_whitespace()
        .map(String::from)
        .collect();
    dev.sort();
    assert_eq!(
        dev,
        [
            "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout",
            "tty", "urandom", "zero"
        ]
    );
    let write = host.exec("s1", &["sh", "-c", "echo x > /proc/sys/kernel/hostname"]);
    assert!(!write.status.success(), "/proc/sys was writable");
    assert_eq!(
        host.exec_stdout("s1", &["head", "-c", "4", "/dev/zero"]),
        "\0\0\0\0"
    );
}

#[test]
fn cgroup_limits_follow_resources() {
    let host = sleeper_host("cg", "");
    let pid = host.node_pid("s1");
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let expected = format!("/{}/s1", host.cgroup);
    let read = |file: &str| -> String {
        for dir in host.cgroup_dirs() {
            if let Ok(text) = std::fs::read_to_string(dir.join("s1").join(file)) {
                return text.trim().to_string();
            }
        }
        panic!("no cgroup file {file}");
    };
    if common::cgroup_roots().len() == 1 {
        assert!(cgroup.contains(&format!("0::{expected}")), "{cgroup}");
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("pids.max"), "50");
        assert_eq!(read("cpu.max"), "50000 100000");
    } else {
        for controller in ["memory", "pids", "cpu"] {
            assert!(
                cgroup
                    .lines()
                    .any(|l| l.contains(controller) && l.ends_with(&expected)),
                "init not in the {controller} cgroup:\n{cgroup}"
            );
        }
        assert_eq!(read("memory.limit_in_bytes"), (64u64 << 20).to_string());
        assert_eq!(read("pids.max"), "50");
        assert_eq!(read("cpu.cfs_quota_us"), "50000");
    }
    let status = host.node("s1");
    assert!(status["memory_bytes"].as_u64().unwrap() > 0, "{status}");
}

#[test]
fn exec_passes_stdio_and_exit_code_and_joins_the_cgroup() {
    let host = sleeper_host("exec", "");
    let mut child = Command::new(AGENT)
        .args([
            "--config",
            host.config.to_str().unwrap(),
            "exec",
            "s1",
            "--",
            "sh",
            "-c",
            "cat; echo err >&2; exit 7",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello from the host\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(7));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "hello from the host\n"
    );
    assert_eq!(String::from_utf8_lossy(&output.stderr), "err\n");

    let cgroup = host.exec_stdout("s1", &["cat", "/proc/self/cgroup"]);
    assert!(
        cgroup.contains("pids:/") && !cgroup.contains("process_api"),
        "{cgroup}"
    );
    assert_eq!(host.exec_stdout("s1", &["id", "-u"]).trim(), "0");
    let missing = host.exec("s1", &["no-such-program"]);
    assert_eq!(missing.status.code(), Some(127));
    let stopped = host.exec("nonode", &["true"]);
    assert!(!stopped.status.success());
}

/// This process's descriptors above 2 that are not close-on-exec: its children inherit them.
fn inheritable_fds() -> BTreeSet<u32> {
    let flags = |fd: u32| {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
        let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
        u32::from_str_radix(flags.trim(), 8).ok()
    };
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|fd| *fd > 2 && flags(*fd).is_some_and(|f| f & libc::O_CLOEXEC as u32 == 0))
        .collect()
}

/// Tools that reopen /dev/stdout or /dev/stderr (nginx -T, logging to /dev/stderr) need streams
/// the node's users own: the caller's pipes belong to the host's root.
#[test]
fn exec_without_a_terminal_gives_streams_the_command_can_reopen() {
    let host = sleeper_host("execfds", "");
    let reopen = "echo out > /dev/stdout; echo err > /dev/stderr";
    for user in ["root", "nobody"] {
        let output = host.try_cli(&["exec", "--user", user, "s1", "--", "sh", "-c", reopen]);
        assert!(
            output.status.success(),
            "as {user}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "out\n",
            "as {user}"
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stderr),
            "err\n",
            "as {user}"
        );
    }
    // The command has its three streams and none of exec's own descriptors (what this test
    // process lets its children inherit is the caller's business).
    let listed = host.exec_stdout("s1", &["sh", "-c", "sleep 9 & ls /proc/$!/fd; kill $!"]);
    let fds: BTreeSet<u32> = listed.lines().map(|fd| fd.parse().unwrap()).collect();
    let allowed: BTreeSet<u32> = [0, 1, 2].into_iter().chain(inheritable_fds()).collect();
    assert!(
        fds.is_superset(&[0, 1, 2].into()) && fds.is_subset(&allowed),
        "{fds:?}"
    );

    // One stream for both when the caller's are one: the order is kept.
    let command = format!(
        "{AGENT} --config {} exec s1 -- sh -c 'echo a; echo b >&2; echo c; echo d >/dev/stderr' 2>&1",
        host.config.display()
    );
    let together = Command::new("sh").args(["-c", &command]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&together.stdout), "a\nb\nc\nd\n");

    // A caller that stops reading ends a command that keeps writing, as a pipe would.
    let command = format!(
        "{AGENT} --config {} exec s1 -- yes | head -2",
        host.config.display()
    );
    let head = Command::new("sh").args(["-c", &command]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&head.stdout), "y\ny\n");

    // Input reaches a user's command and ends; the exit code comes back.
    let mut child = Command::new(AGENT)
        .args([
            "--config",
            host.config.to_str().unwrap(),
            "exec",
            "-u",
            "nobody",
            "s1",
        ])
        .args(["--", "sh", "-c", "cat > /dev/stdout; exit 3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let input: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
    let mut stdin = child.stdin.take().unwrap();
    let writer = {
        let input = input.clone();
        std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap())
    };
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&output.stdout) == input,
        "input and output differ"
    );

    // exec ends with its command, even when something it started keeps the streams, or keeps
    // writing to them.
    let began = std::time::Instant::now();
    let output = host.exec("s1", &["sh", "-c", "sleep 60 & echo started"]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "started\n");
    let output = host.exec("s1", &["sh", "-c", "yes spam & echo started"]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("started\n"));
    assert!(
        began.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        began.elapsed()
    );
}

/// `magestack-agent ARGS` run on a terminal by `script`, as an operator's shell would; its
/// output, once it succeeded.
fn on_a_terminal(host: &TestHost, args: &str) -> String {
    let command = format!("{AGENT} --config {} {args}", host.config.display());
    let output = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{args}: {text}");
    text
}

#[test]
fn exec_gives_a_node_pty_when_stdin_is_a_terminal() {
    let host = sleeper_host("pty", "");
    let text = on_a_terminal(&host, "exec s1 -- tty");
    assert!(text.contains("/dev/pts/0"), "not a node pty: {text}");

    // The terminal belongs to the command's user, group tty, as a login's would.
    host.exec_stdout(
        "s1",
        &[
            "sh",
            "-c",
            "echo 'www:x:33:33:www:/tmp:/bin/sh' >> /etc/passwd && echo 'tty:x:5:' >> /etc/group",
        ],
    );
    for (user, owner) in [("root", "0 5 620"), ("www", "33 5 620")] {
        let text = on_a_terminal(
            &host,
            &format!("exec --user {user} s1 -- sh -c 'stat -c \"%u %g %a\" $(tty)'"),
        );
        assert!(text.contains(owner), "{user}'s terminal: {text}");
    }
}

#[test]
fn volumes_are_created_kept_across_restarts_and_visible_on_the_host() {
    let host = sleeper_host("vol", "");
    host.exec_stdout(
        "s1",
        &[
            "sh",
            "-c",
            "echo kept > /srv/data/file; echo lost > /tmp/file",
        ],
    );
    let on_host = host.state_dir().join("volumes/s1/data/file");
    assert_eq!(std::fs::read_to_string(&on_host).unwrap(), "kept\n");
    let before = host.node_pid("s1");
    host.cli(&["restart", "s1"]);
    assert_ne!(host.node_pid("s1"), before);
    assert_eq!(host.exec_stdout("s1", &["cat", "/srv/data/file"]), "kept\n");
    assert!(
        !host.exec("s1", &["cat", "/tmp/file"]).status.success(),
        "/tmp survived a restart"
    );
}

/// A restart makes the next init while the previous one stops, but the next life's processes
/// start only once the previous life's have stopped, however long their SIGTERM handling
/// takes: each life logs its start and, 300 ms into its SIGTERM handler, its stop, into a
/// volume both see.
#[test]
fn a_restart_starts_the_next_life_only_after_the_previous_one_stopped() {
    let mut host = TestHost::new(
        "overlap",
        r#"
[nodes.s1]
role = "slowstop"
[roles.slowstop]
image = "busybox"
[[roles.slowstop.volume]]
name = "data"
path = "/srv/data"
[[roles.slowstop.process]]
name = "main"
command = ["sh", "-c", "echo started >> /srv/data/lives; trap 'sleep 0.3; echo stopped >> /srv/data/lives; exit 0' TERM; while true; do sleep 0.05; done"]
"#,
    );
    host.start_daemon();
    host.wait_node_state("s1", "running");
    let lives = host.state_dir().join("volumes/s1/data/lives");
    let logged = |count: usize| {
        wait_for("the lives to log", Duration::from_secs(5), || {
            std::fs::read_to_string(&lives)
                .unwrap_or_default()
                .lines()
                .count()
                >= count
        })
    };
    // The first life's shell may still be on its way to its `echo`.
    logged(1);
    const RESTARTS: usize = 4;
    for restart in 1..=RESTARTS {
        let before = host.node_pid("s1");
        host.cli(&["restart", "s1"]);
        assert_ne!(host.node_pid("s1"), before);
        // Each restart logs a stop and a start, the start once the next life's shell runs.
        logged(1 + 2 * restart);
    }
    let log = std::fs::read_to_string(&lives).unwrap();
    let mut expected = vec!["started"];
    for _ in 0..RESTARTS {
        expected.extend(["stopped", "started"]);
    }
    assert_eq!(log.lines().collect::<Vec<_>>(), expected, "{log}");
}

#[test]
fn stop_removes_cgroup_run_files_and_processes() {
    let host = sleeper_host("stop", "");
    let pid = host.node_pid("s1");
    host.cli(&["stop", "s1"]);
    let node = host.node("s1");
    assert_eq!(node["state"], "stopped");
    assert!(node["pid"].is_null());
    assert!(!common::process_alive(pid), "init {pid} still alive");
    host.assert_nothing_left();
    assert!(!host.node_cgroup_exists("s1"));
}

/// A restart that fails in the kept sandbox (the role's program deleted from the node's writable
/// layer, so its exec fails) takes the node down whole: no init, cgroup, link, run file or
/// pinned namespace is left.
#[test]
fn a_failed_restart_leaves_nothing() {
    let host = sleeper_host("badrestart", "");
    let pid = host.node_pid("s1");
    host.exec_stdout("s1", &["rm", "/bin/sleep"]);
    let output = host.try_cli(&["restart", "s1"]);
    assert!(!output.status.success(), "the restart succeeded");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("sleep"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let node = host.node("s1");
    assert_eq!(node["state"], "failed");
    assert!(node["pid"].is_null());
    assert!(!common::process_alive(pid), "init {pid} still alive");
    host.assert_nothing_left();
}

#[test]
fn status_json_follows_the_contract() {
    let host = sleeper_host("json", "");
    let status = host.status();
    for key in ["name", "version", "uptime_s"] {
        assert!(
            status["host"].get(key).is_some(),
            "host.{key} missing: {status}"
        );
    }
    assert_eq!(status["host"]["name"], "json");
    let node = &status["nodes"][0];
    for key in [
        "name",
        "role",
        "state",
        "pid",
        "ip",
        "uptime_s",
        "restarts",
        "memory_bytes",
        "cpu_usec",
        "disk_bytes",
        "disk_limit_bytes",
        "disk_limit_enforced",
        "health",
        "processes",
    ] {
        assert!(node.get(key).is_some(), "node.{key} missing: {node}");
    }
    assert_eq!(node["ip"], host.net.ip(100).as_str());
    assert_eq!(node["role"], "sleeper");
    let process = &node["processes"][0];
    for key in ["name", "pid", "state", "restarts"] {
        assert!(
            process.get(key).is_some(),
            "process.{key} missing: {process}"
        );
    }
    assert_eq!(process["state"], "running");
    let table = host.cli(&["status"]);
    assert!(table.contains("s1") && table.contains("running"), "{table}");
}
