//! What an operator lives with: the systemd unit and its notifications, the journal, `/metrics`,
//! `logs` and their rotation, `exec`, `reload` and SIGHUP, `config check`, completions and the
//! manual page.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{sleeper_nodes, wait_for, TestHost, AGENT};
use openmetrics_parser::{MetricFamily, OpenMetricsType, OpenMetricsValue};

/// A daemon this test starts itself (with an environment or a namespace `TestHost` does not
/// give), killed by its pid if the test ends early. The nodes are left to `TestHost`.
struct OwnDaemon(Option<Child>);

impl OwnDaemon {
    fn start(host: &TestHost, command: &mut Command) -> OwnDaemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(daemon_log_path(host))
            .unwrap();
        let child = command
            .env("MAGESTACK_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        OwnDaemon(Some(child))
    }

    /// SIGTERM, and the daemon's exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().unwrap();
        // SAFETY: kill on the pid of our own unreaped child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap()
    }
}

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_for_socket(host: &TestHost) {
    wait_for("the daemon's socket", Duration::from_secs(20), || {
        host.try_cli(&["status", "--json"]).status.success()
    });
}

fn daemon_log_path(host: &TestHost) -> std::path::PathBuf {
    host.dir.join("daemon.log")
}

fn agent_run(host: &TestHost) -> Command {
    let mut command = Command::new(AGENT);
    command.args(["--config", host.config.to_str().unwrap(), "run"]);
    command
}

/// The fields of one entry in journald's native protocol: `KEY=value` lines, or `KEY`, a
/// little-endian 64-bit length and that many bytes, then a newline.
fn journal_fields(datagram: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let mut rest = datagram;
    while let Some(end) = rest.iter().position(|b| *b == b'\n') {
        let line = String::from_utf8_lossy(&rest[..end]).into_owned();
        rest = &rest[end + 1..];
        match line.split_once('=') {
            Some((key, value)) => fields.push((key.to_string(), value.to_string())),
            None => {
                let length = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
                let value = String::from_utf8_lossy(&rest[8..8 + length]).into_owned();
                fields.push((line, value));
                rest = &rest[8 + length + 1..];
            }
        }
    }
    fields
}

/// Service manager notifications: datagrams of `KEY=value` lines.
fn receive_text(socket: &UnixDatagram, limit: Instant) -> Vec<(Instant, String)> {
    receive_until(socket, limit)
        .into_iter()
        .map(|(at, datagram)| (at, String::from_utf8(datagram).unwrap()))
        .collect()
}

/// Every datagram that arrives on `socket` until `limit`, with its arrival time.
fn receive_until(socket: &UnixDatagram, limit: Instant) -> Vec<(Instant, Vec<u8>)> {
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 64 << 10];
    while let Some(left) = limit.checked_duration_since(Instant::now()) {
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match socket.recv(&mut buffer) {
            Ok(count) => received.push((Instant::now(), buffer[..count].to_vec())),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(error) => panic!("receiving: {error}"),
        }
    }
    received
}

#[test]
fn systemd_gets_ready_status_and_watchdog_pings_at_half_the_timeout() {
    let host = TestHost::new("notify", &sleeper_nodes(&["n1"]));
    let socket_path = host.dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let mut daemon = OwnDaemon::start(
        &host,
        agent_run(&host)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "400000"),
    );

    let began = Instant::now();
    let mut messages = Vec::new();
    while !messages
        .iter()
        .any(|(_, m): &(Instant, String)| m.contains("READY=1"))
    {
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "no READY=1: {messages:?}\n{}",
            host.daemon_log()
        );
        messages.extend(receive_text(
            &socket,
            Instant::now() + Duration::from_millis(100),
        ));
    }
    // READY comes once the first reconcile ran, with the summary as STATUS.
    let ready = messages
        .iter()
        .find(|(_, m)| m.contains("READY=1"))
        .unwrap();
    assert!(ready.1.contains("STATUS=1 node: "), "{ready:?}");
    wait_for_socket(&host);
    host.wait_node_state("n1", "running");

    let window = Duration::from_secs(2);
    let pings: Vec<Instant> = receive_text(&socket, Instant::now() + window)
        .into_iter()
        .inspect(|message| messages.push(message.clone()))
        .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(at, _)| at)
        .collect();
    // Every 200 ms (half of WATCHDOG_USEC): about 10 in 2 s, and never a gap systemd would take
    // for a hung daemon.
    assert!(
        (7..=12).contains(&pings.len()),
        "{} pings in {window:?}: {messages:?}",
        pings.len()
    );
    for pair in pings.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap > Duration::from_millis(100) && gap < Duration::from_millis(400),
            "a watchdog gap of {gap:?}"
        );
    }
    assert!(
        messages
            .iter()
            .any(|(_, m)| m.contains("STATUS=1 node: 1 running")),
        "{messages:?}"
    );

    host.cli(&["stop", "n1"]);
    assert!(daemon.terminate().success());
    host.assert_nothing_left();
    let last = receive_text(&socket, Instant::now() + Duration::from_millis(200));
    assert!(
        last.iter().any(|(_, m)| m.contains("STOPPING=1")),
        "{last:?}"
    );
}

#[test]
fn without_a_watchdog_for_this_pid_no_pings_are_sent() {
    let host = TestHost::new("nowdog", &sleeper_nodes(&["n1"]));
    let socket_path = host.dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let mut daemon = OwnDaemon::start(
        &host,
        agent_run(&host)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "200000")
            .env("WATCHDOG_PID", "1"),
    );
    wait_for_socket(&host);
    host.wait_node_state("n1", "running");
    let messages = receive_text(&socket, Instant::now() + Duration::from_millis(600));
    assert!(
        !messages.iter().any(|(_, m)| m.contains("WATCHDOG=1")),
        "{messages:?}"
    );
    host.cli(&["stop", "n1"]);
    assert!(daemon.terminate().success());
    host.assert_nothing_left();
}

#[test]
fn the_systemd_unit_has_what_the_agent_needs_and_verifies() {
    let unit_source = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/magestack-agent.service");
    let unit = std::fs::read_to_string(&unit_source).unwrap();
    for line in [
        "Type=notify",
        "KillMode=process",
        "Delegate=yes",
        "Restart=always",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ExecStart=/usr/local/bin/magestack-agent run",
    ] {
        assert!(unit.lines().any(|l| l == line), "no {line} in the unit");
    }
    assert!(unit.lines().any(|l| l.starts_with("WatchdogSec=")));

    // The unit as installed: the binary at its ExecStart path (here the one under test), and the
    // manual page its Documentation= names, generated by the agent itself.
    let dir = tempfile::tempdir().unwrap();
    let installed = dir.path().join("magestack-agent.service");
    std::fs::write(
        &installed,
        unit.replace("/usr/local/bin/magestack-agent", AGENT),
    )
    .unwrap();
    let man = dir.path().join("man/man1");
    std::fs::create_dir_all(&man).unwrap();
    let pages = Command::new(AGENT)
        .args(["man", "--dir", man.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(pages.success());

    let verify = Command::new("systemd-analyze")
        .args(["verify", installed.to_str().unwrap()])
        .env("MANPATH", dir.path().join("man"))
        .current_dir(dir.path())
        .output()
        .expect("systemd-analyze (package systemd, installed by scripts/setup.sh)");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn the_daemon_logs_to_the_journal_with_node_role_and_process_fields() {
    let host = TestHost::new("journal", &sleeper_nodes(&["j1"]));
    // A journal socket of our own, seen at the fixed path only by the daemon: it runs in a mount
    // namespace of its own with a private /run.
    let journal = host.dir.join("journal");
    std::fs::create_dir(&journal).unwrap();
    let socket = UnixDatagram::bind(journal.join("socket")).unwrap();
    let stderr = std::fs::File::create(daemon_log_path(&host)).unwrap();
    let stream = stderr.metadata().unwrap();
    let script = format!(
        "mount --make-rprivate / && mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && mount --bind {} /run/systemd/journal && exec {AGENT} --config {} run",
        journal.display(),
        host.config.display()
    );
    let mut command = Command::new("unshare");
    command.args(["--mount", "sh", "-c", &script]).env(
        "JOURNAL_STREAM",
        format!("{}:{}", stream.dev(), stream.ino()),
    );
    let mut daemon = OwnDaemon::start(&host, &mut command);
    wait_for_socket(&host);
    host.wait_node_state("j1", "running");

    let entries: Vec<Vec<(String, String)>> =
        receive_until(&socket, Instant::now() + Duration::from_millis(500))
            .into_iter()
            .map(|(_, datagram)| journal_fields(&datagram))
            .collect();
    let find = |message: &str| {
        entries
            .iter()
            .find(|entry| entry.contains(&("MESSAGE".into(), message.into())))
            .unwrap_or_else(|| panic!("no journal entry {message:?} in {entries:#?}"))
    };
    let has = |entry: &Vec<(String, String)>, key: &str, value: &str| {
        assert!(
            entry.contains(&(key.into(), value.into())),
            "no {key}={value} in {entry:?}"
        );
    };
    let running = find("node running");
    has(running, "NODE", "j1");
    has(running, "ROLE", "sleeper");
    has(running, "SYSLOG_IDENTIFIER", "magestack-agent");
    let process = find("process started");
    has(process, "NODE", "j1");
    has(process, "PROCESS", "sleep");
    // Nothing went to stderr: it is the journal stream.
    assert!(!host.daemon_log().contains("node running"));

    host.cli(&["stop", "j1"]);
    assert!(daemon.terminate().success());
    host.assert_nothing_left();
}

/// A free port on 127.0.0.1 (free when asked; the daemon binds it a moment later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over TCP: the status line, the headers and the body.
fn http_get(port: u16, path: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

type Family = MetricFamily<OpenMetricsType, OpenMetricsValue>;

/// The value of the sample of `family` whose labels include `labels`.
fn sample(family: &Family, labels: &[(&str, &str)]) -> Option<f64> {
    family.iter_samples().find_map(|sample| {
        let set = sample.get_labelset().ok()?;
        labels
            .iter()
            .all(|(name, value)| set.get_label_value(name) == Some(*value))
            .then(|| match &sample.value {
                OpenMetricsValue::Gauge(n) | OpenMetricsValue::Unknown(n) => n.as_f64(),
                OpenMetricsValue::Counter(c) => c.value.as_f64(),
                OpenMetricsValue::Info => 1.0,
                OpenMetricsValue::Histogram(h) => h.count.unwrap_or_default() as f64,
                other => panic!("unexpected value {other:?}"),
            })
    })
}

#[test]
fn metrics_parse_as_openmetrics_and_have_per_node_series() {
    let port = free_port();
    let mut host = TestHost::new(
        "metrics",
        &format!(
            "{}[nodes.m2.resources]\nmemory = \"64M\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            sleeper_nodes(&["m1", "m2"])
        ),
    );
    host.start_daemon();
    host.wait_node_state("m1", "running");
    host.wait_node_state("m2", "running");
    let sleep_pid = host.node("m1")["processes"][0]["pid"].as_i64().unwrap();
    host.exec_stdout("m1", &["kill", &sleep_pid.to_string()]);
    wait_for("m1's sleep to restart", Duration::from_secs(10), || {
        host.node("m1")["processes"][0]["restarts"] == 1
    });

    let (status, headers, body) = http_get(port, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(
        headers.contains("Content-Type: application/openmetrics-text"),
        "{headers}"
    );
    let exposition = openmetrics_parser::openmetrics::parse_openmetrics(&body)
        .unwrap_or_else(|error| panic!("does not parse: {error:?}\n{body}"));
    let family = |name: &str| {
        exposition
            .families
            .get(name)
            .unwrap_or_else(|| panic!("no family {name} in\n{body}"))
    };
    for node in ["m1", "m2"] {
        let labels = [("node", node), ("role", "sleeper")];
        let with = |key, value| [labels[0], labels[1], (key, value)];
        assert_eq!(
            sample(family("magestack_node_state"), &with("state", "running")),
            Some(1.0)
        );
        assert_eq!(
            sample(family("magestack_node_state"), &with("state", "failed")),
            Some(0.0)
        );
        assert_eq!(
            sample(family("magestack_node_restarts"), &labels),
            Some(0.0)
        );
        assert!(sample(family("magestack_node_memory_bytes"), &labels).unwrap() > 0.0);
        assert!(sample(family("magestack_node_cpu_seconds"), &labels).is_some());
        assert!(sample(family("magestack_node_uptime_seconds"), &labels).is_some());
        assert!(sample(family("magestack_node_health"), &with("health", "none")).is_some());
        assert_eq!(
            sample(
                family("magestack_process_running"),
                &[("node", node), ("process", "sleep")]
            ),
            Some(1.0)
        );
    }
    assert_eq!(
        sample(
            family("magestack_process_restarts"),
            &[("node", "m1"), ("process", "sleep")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            family("magestack_node_memory_limit_bytes"),
            &[("node", "m2")]
        ),
        Some(f64::from(64u32 << 20))
    );
    assert_eq!(
        sample(
            family("magestack_agent_build"),
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert!(sample(family("magestack_reconcile_duration_seconds"), &[]).unwrap() >= 1.0);

    let (status, _, _) = http_get(port, "/");
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    // The human status: a host line and a row per node, no colour without a terminal.
    let table = host.cli(&["status"]);
    assert!(table.starts_with("metrics  magestack-agent "), "{table}");
    assert!(table.contains("2 nodes: 2 running"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("m2") && l.contains("/64M")),
        "{table}"
    );
    assert!(!table.contains('\x1b'), "{table}");
}

/// A role whose process says hello, then writes a line each time /tmp/go appears in its node.
const TALKER_ROLE: &str = r#"
[roles.talker]
image = "busybox"
[[roles.talker.process]]
name = "talk"
command = ["sh", "-c", "echo hello-1; echo hello-2; echo hello-3; while true; do if [ -e /tmp/go ]; then rm /tmp/go; echo followed; fi; sleep 0.1; done"]
[[roles.talker.process]]
name = "quiet"
command = ["sh", "-c", "echo shush; exec sleep 1000000"]
"#;

/// Lines a child writes to its stdout, as they come.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

fn wait_line(lines: &mpsc::Receiver<String>, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if wanted(&line) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("the line never came; saw {seen:?}");
}

#[test]
fn logs_show_a_nodes_output_and_follow_new_lines() {
    let mut host = TestHost::new(
        "logs",
        &format!("[nodes.l1]\nrole = \"talker\"\n{TALKER_ROLE}"),
    );
    host.start_daemon();
    host.wait_node_state("l1", "running");
    wait_for("the greeting", Duration::from_secs(10), || {
        host.cli(&["logs", "l1", "talk"]).contains("hello-3")
    });

    assert_eq!(
        host.cli(&["logs", "l1", "talk"]),
        "hello-1\nhello-2\nhello-3\n"
    );
    assert_eq!(host.cli(&["logs", "l1", "talk", "-n", "1"]), "hello-3\n");
    let all = host.cli(&["logs", "l1"]);
    assert!(all.contains(" talk | hello-2\n"), "{all}");
    assert!(all.contains("quiet | shush\n"), "{all}");
    let unknown = host.try_cli(&["logs", "l1", "nope"]);
    assert!(!unknown.status.success());
    let message = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        message.contains("no process nope") && message.contains("quiet, talk"),
        "{message}"
    );

    let mut follower = Command::new(AGENT)
        .args(["--config", host.config.to_str().unwrap()])
        .args(["logs", "l1", "talk", "-f", "-n", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(&mut follower);
    wait_line(&lines, |l| l == "hello-3");
    for _ in 0..2 {
        host.exec_stdout("l1", &["touch", "/tmp/go"]);
        wait_line(&lines, |l| l == "followed");
    }
    follower.kill().unwrap();
    follower.wait().unwrap();
}

#[test]
fn log_rotation_keeps_a_bounded_number_of_files() {
    let mut host = TestHost::new(
        "rotate",
        r#"
[nodes.r1]
role = "chatty"
[roles.chatty]
image = "busybox"
[[roles.chatty.process]]
name = "chat"
command = ["sh", "-c", "while [ ! -e /tmp/go ]; do sleep 0.05; done; i=0; while [ $i -lt 3000 ]; do echo line-$i-padding-padding-padding; i=$((i+1)); done; echo done; exec sleep 1000000"]
[logs]
max_size = "4K"
keep = 2
"#,
    );
    host.start_daemon();
    let init = host.wait_node_state("r1", "running")["pid"]
        .as_i64()
        .unwrap() as i32;
    // The init stops reading for a while: the process must wait for it, not lose lines, once
    // the pipe (64K) is full.
    // SAFETY: kill takes plain integers; the pid is this test's node init.
    unsafe { libc::kill(init, libc::SIGSTOP) };
    let output = host.exec("r1", &["touch", "/tmp/go"]);
    std::thread::sleep(Duration::from_millis(800));
    // SAFETY: as above.
    unsafe { libc::kill(init, libc::SIGCONT) };
    assert!(output.status.success());
    let dir = host.log_dir().join("r1");
    wait_for("the last line", Duration::from_secs(20), || {
        std::fs::read_to_string(dir.join("chat.log")).is_ok_and(|t| t.ends_with("done\n"))
    });
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("chat"))
        .collect();
    files.sort();
    assert_eq!(files, ["chat.log", "chat.log.1", "chat.log.2"]);
    // The kept files hold the end of the output, in order, with nothing lost between them.
    let text: String = ["chat.log.2", "chat.log.1", "chat.log"]
        .iter()
        .map(|name| std::fs::read_to_string(dir.join(name)).unwrap())
        .collect();
    let numbers: Vec<u32> = text
        .lines()
        .filter_map(|l| l.strip_prefix("line-")?.split('-').next()?.parse().ok())
        .collect();
    assert!(numbers.len() > 100, "{} lines kept", numbers.len());
    assert_eq!(*numbers.last().unwrap(), 2999);
    let gaps: Vec<&[u32]> = numbers.windows(2).filter(|w| w[1] != w[0] + 1).collect();
    assert!(gaps.is_empty(), "gaps {gaps:?} in\n{text}");
    for name in &files {
        let size = std::fs::metadata(dir.join(name)).unwrap().len();
        assert!(size <= 4096 + 64 * 1024, "{name}: {size} bytes");
    }
    // `logs -n` reads across the rotated files.
    let shown = host.cli(&["logs", "r1", "chat", "-n", "200"]);
    assert_eq!(shown.lines().count(), 200);
    assert_eq!(shown.lines().last(), Some("done"));
}

#[test]
fn exec_passes_the_exit_code_runs_in_the_node_and_as_a_user() {
    let mut host = TestHost::new("exec", &sleeper_nodes(&["e1"]));
    host.start_daemon();
    host.wait_node_state("e1", "running");

    let seven = host.exec("e1", &["sh", "-c", "exit 7"]);
    assert_eq!(seven.status.code(), Some(7));
    assert_eq!(host.exec_stdout("e1", &["hostname"]), "e1\n");
    assert_eq!(
        host.cli(&["exec", "--user", "nobody", "e1", "--", "id", "-u"]),
        "65534\n"
    );
    assert_eq!(
        host.cli(&["exec", "-u", "65534", "e1", "--", "id", "-g"]),
        "65534\n"
    );
    assert_eq!(
        host.cli(&[
            "exec",
            "--user",
            "nobody",
            "e1",
            "--",
            "sh",
            "-c",
            "echo $USER $HOME"
        ]),
        "nobody /nonexistent\n"
    );
    // As nobody it cannot do what the node's root can.
    let denied = host.cli(&[
        "exec",
        "--user",
        "nobody",
        "e1",
        "--",
        "sh",
        "-c",
        "touch /etc/x; echo $?",
    ]);
    assert_ne!(denied, "0\n");
    assert_eq!(host.exec_stdout("e1", &["id", "-u"]), "0\n");

    let unknown = host.try_cli(&["exec", "--user", "mysql", "e1", "--", "true"]);
    assert!(!unknown.status.success());
    let message = String::from_utf8_lossy(&unknown.stderr);
    assert!(message.contains("user `mysql`"), "{message}");
}

fn memory_config(r1: &str, r2: &str) -> String {
    format!(
        "{}[nodes.r1.resources]\nmemory = \"{r1}\"\n[nodes.r2.resources]\nmemory = \"{r2}\"\n",
        sleeper_nodes(&["r1", "r2"])
    )
}

#[test]
fn reload_and_sighup_restart_only_the_node_whose_memory_changed() {
    let mut host = TestHost::new("opsrld", &memory_config("64M", "64M"));
    host.start_daemon();
    host.wait_node_state("r1", "running");
    host.wait_node_state("r2", "running");
    let (r1, r2) = (host.node_pid("r1"), host.node_pid("r2"));

    host.write_config(&memory_config("96M", "64M"));
    let report = host.cli(&["reload"]);
    assert!(report.contains("restarted: r1"), "{report}");
    assert!(report.contains("unchanged: r2"), "{report}");
    let new_r1 = host.node("r1");
    assert_eq!(new_r1["state"], "running");
    assert_ne!(new_r1["pid"].as_i64(), Some(i64::from(r1)));
    assert_eq!(new_r1["memory_limit_bytes"], 96 << 20);
    assert_eq!(host.node_pid("r2"), r2);

    // SIGHUP (systemd's ExecReload) does the same.
    let r1 = host.node_pid("r1");
    host.write_config(&memory_config("96M", "80M"));
    // SAFETY: kill takes plain integers; the pid is this test's daemon.
    unsafe { libc::kill(host.daemon_pid() as i32, libc::SIGHUP) };
    wait_for("r2 to restart", Duration::from_secs(20), || {
        let node = host.node("r2");
        node["state"] == "running" && node["memory_limit_bytes"] == 80 << 20
    });
    assert_ne!(host.node_pid("r2"), r2);
    assert_eq!(host.node_pid("r1"), r1);
    assert!(host.daemon_log().contains("SIGHUP: reloading"));
}

#[test]
fn a_reload_with_a_syntax_error_changes_nothing() {
    let mut host = TestHost::new("badrld", &memory_config("64M", "64M"));
    host.start_daemon();
    host.wait_node_state("r1", "running");
    host.wait_node_state("r2", "running");
    let pids = (host.node_pid("r1"), host.node_pid("r2"));

    // Memory changed for both, and a table header left open.
    let broken = format!(
        "{}[nodes.r3\nrole = \"sleeper\"\n",
        memory_config("32M", "32M")
    );
    host.write_config(&broken);
    let text = std::fs::read_to_string(&host.config).unwrap();
    let line = text.lines().position(|l| l == "[nodes.r3").unwrap() + 1;
    let located = format!("agent.toml:{line}:");
    // The CLI still finds the daemon, which says where the file broke.
    let refused = host.try_cli(&["reload"]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains(&located), "{located} not in {message}");
    // SIGHUP reaches the daemon, which refuses the file and keeps what runs.
    // SAFETY: kill takes plain integers; the pid is this test's daemon.
    unsafe { libc::kill(host.daemon_pid() as i32, libc::SIGHUP) };
    wait_for(
        "the refused reload in the log",
        Duration::from_secs(10),
        || {
            let log = host.daemon_log();
            log.contains("configuration not reloaded") && log.contains(&located)
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    host.write_config(&memory_config("64M", "64M"));
    assert_eq!((host.node_pid("r1"), host.node_pid("r2")), pids);
    for node in ["r1", "r2"] {
        let status = host.node(node);
        assert_eq!(status["state"], "running");
        assert_eq!(status["memory_limit_bytes"], 64 << 20);
    }
    assert_eq!(host.status()["nodes"].as_array().unwrap().len(), 2);
}

#[test]
fn config_check_names_the_line_of_an_error() {
    let host = TestHost::new(
        "cfgline",
        &format!(
            "{}[nodes.bad]\nrole = \"sleeper\"\nmemroy = \"1G\"\n",
            sleeper_nodes(&["c1"])
        ),
    );
    let text = std::fs::read_to_string(&host.config).unwrap();
    let line = text.lines().position(|l| l.starts_with("memroy")).unwrap() + 1;
    let output = host.try_cli(&["config", "check"]);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    let located = format!("{}:{line}:1: ", host.config.display());
    assert!(
        message.contains(&located) && message.contains("memroy"),
        "{located} not in {message}"
    );

    host.write_config(&sleeper_nodes(&["c1"]));
    let ok = host.cli(&["config", "check"]);
    assert!(ok.contains("ok, 1 nodes: c1"), "{ok}");
}

#[test]
fn completions_and_the_manual_page_are_generated_from_the_cli() {
    for shell in ["bash", "zsh", "fish"] {
        let output = Command::new(AGENT)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(output.status.success(), "{shell}");
        let script = String::from_utf8(output.stdout).unwrap();
        for word in [
            "magestack-agent",
            "status",
            "reload",
            "logs",
            "follow",
            "user",
        ] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    let output = Command::new(AGENT).arg("man").output().unwrap();
    assert!(output.status.success());
    let page = String::from_utf8(output.stdout).unwrap();
    assert!(page.contains(".TH magestack-agent 1"), "{page}");
    for command in ["status", "logs", "exec", "reload", "completions"] {
        assert!(page.contains(command), "no {command} in the manual page");
    }
    // With --dir: the page the unit's Documentation= names, and one per subcommand it lists.
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(AGENT)
        .args(["man", "--dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success());
    for page in [
        "magestack-agent.1",
        "magestack-agent-exec.1",
        "magestack-agent-logs.1",
    ] {
        assert!(dir.path().join(page).is_file(), "no {page}");
    }
    let exec = std::fs::read_to_string(dir.path().join("magestack-agent-exec.1")).unwrap();
    assert!(exec.contains("user"), "{exec}");
}

#[test]
fn a_node_whose_start_failed_can_be_stopped() {
    let config = "[nodes.bad1]\nrole = \"broken\"\n[roles.broken]\nimage = \"busybox\"\n[[roles.broken.process]]\nname = \"missing\"\ncommand = [\"/no/such/program\"]\n";
    let mut host = TestHost::new("stopfailed", config);
    host.start_daemon();
    host.wait_node_state("bad1", "failed");
    // Bounded: before, the answer never came.
    let stop = Command::new("timeout")
        .args([
            "10",
            AGENT,
            "--config",
            host.config.to_str().unwrap(),
            "stop",
            "bad1",
        ])
        .output()
        .unwrap();
    assert!(stop.status.success(), "{stop:?}");
    let bad1 = host.node("bad1");
    assert_eq!(bad1["state"], "stopped", "{bad1}");
    assert!(
        bad1["error"]
            .as_str()
            .is_some_and(|e| e.contains("/no/such/program")),
        "the failure is still shown: {bad1}"
    );
}
