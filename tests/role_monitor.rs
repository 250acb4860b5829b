//! The shipped monitor role on its real image (as root): monit runs in monitor1 in the
//! foreground and checks the other nodes over the network, by the ports their roles serve; its
//! status page answers plain HTTP on port 2812 of monitor1's address; a node whose port answers
//! is OK and one whose port is closed is a failure; a node added by `reload` re-renders
//! monitrc, and monit (the same process, told by SIGHUP) lists and checks it.
//!
//! The other nodes are busybox stand-ins of operator roles (the template checks the ports their
//! allow rules open): `listening` serves port 80 with httpd, `silent` opens port 80 in its rules
//! but runs nothing there. The image is built once into `target/tmp/image-cache` (see
//! `tests/role_db.rs`); timings are printed.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::stack::{build_images, cached_host, ip, wait_processes, wait_running};
use common::{wait_for, TestHost};

/// monit checks every 10 s (`set daemon 10`); a verdict takes at most a cycle or two.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(40);

const ROLES: &str = r#"
[roles.listening]
image = "busybox"
[[roles.listening.process]]
name = "httpd"
command = ["sh", "-c", "mkdir -p /var/www && hostname > /var/www/index.html && exec httpd -f -p 80 -h /var/www"]
[[roles.listening.allow]]
from = ["web"]
ports = [80]

[roles.silent]
image = "busybox"
[[roles.silent.process]]
name = "sleep"
command = ["sleep", "1000000"]
[[roles.silent.allow]]
from = ["web"]
ports = [80]
"#;

/// monitor1, silent1 and the `listening` nodes, each at a fixed address: roles outside the
/// address plan are numbered from .100 in name order, so an added node would otherwise move the
/// ones after it (and monitor1's neighbour cache would still point at their old links).
fn config(host: &TestHost, listening: &[&str]) -> String {
    let mut text = format!(
        "[nodes.monitor1]\nrole = \"monitor\"\n[nodes.silent1]\nrole = \"silent\"\nip = \"{}\"\n",
        host.net.ip(100)
    );
    for (n, name) in listening.iter().enumerate() {
        text.push_str(&format!(
            "[nodes.{name}]\nrole = \"listening\"\nip = \"{}\"\n",
            host.net.ip(101 + n as u32)
        ));
    }
    text + ROLES
}

/// One HTTP/1.0 GET to monit's httpd: status code and body.
fn monit_get(ip: &str, path: &str) -> std::io::Result<(u16, String)> {
    let address = format!("{ip}:2812").parse().unwrap();
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

/// `text` without the terminal colour sequences (`ESC [ ... m`) monit's text report carries.
fn strip_colours(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The `status` line of each remote host in monit's text report, by host name.
fn host_statuses(report: &str) -> Vec<(String, String)> {
    strip_colours(report)
        .split("Remote Host '")
        .skip(1)
        .filter_map(|block| {
            let (name, rest) = block.split_once('\'')?;
            let status = rest
                .lines()
                .map(str::trim)
                .find_map(|l| l.strip_prefix("status"))?
                .trim()
                .to_string();
            Some((name.to_string(), status))
        })
        .collect()
}

/// Polls monit's text report from the host until `done` accepts the statuses (bounded).
fn wait_statuses(
    host: &TestHost,
    ip: &str,
    what: &str,
    done: impl Fn(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    let deadline = Instant::now() + VERDICT_TIMEOUT;
    loop {
        let last = monit_get(ip, "/_status?format=text");
        if let Ok((200, report)) = &last {
            let statuses = host_statuses(report);
            if done(&statuses) {
                return statuses;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {VERDICT_TIMEOUT:?}: {last:?}\n{}",
            String::from_utf8_lossy(&host.try_cli(&["logs", "monitor1", "-n", "40"]).stdout)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn status_of<'a>(statuses: &'a [(String, String)], name: &str) -> Option<&'a str> {
    statuses
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s.as_str())
}

/// The pid of the process named `comm` in `node`'s cgroup.
fn pid_of(host: &TestHost, node: &str, comm: &str) -> u32 {
    let procs = host.cgroup_dirs()[0].join(node).join("cgroup.procs");
    std::fs::read_to_string(procs)
        .unwrap()
        .lines()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{}/comm", pid.trim()))
                .is_ok_and(|c| c.trim() == comm)
        })
        .unwrap_or_else(|| panic!("no {comm} in {node}"))
        .trim()
        .parse()
        .unwrap()
}

fn rendered_monitrc(host: &TestHost) -> String {
    let path = host
        .run_dir()
        .join("nodes/monitor1/templates/etc/monit/magestack.rc");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn monitor_role_runs_monit_checking_every_node_over_the_network() {
    let test_began = Instant::now();
    let mut host = cached_host("rolemon", "");
    host.write_config(&config(&host, &["listening1"]));
    build_images(&host, &["monitor"]);

    let began = Instant::now();
    host.start_daemon();
    for node in ["monitor1", "silent1", "listening1"] {
        wait_running(&host, node, Duration::from_secs(60));
    }
    wait_processes(&host, "monitor1", &["monit"]);
    let running = began.elapsed();
    let monitor = ip(&host, "monitor1");

    // The status page: plain HTTP on monitor1's address, from the host, naming the checks.
    let deadline = Instant::now() + Duration::from_secs(20);
    let page = loop {
        match monit_get(&monitor, "/") {
            Ok((200, body)) => break body,
            other => {
                assert!(Instant::now() < deadline, "no status page: {other:?}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    let answered = began.elapsed();
    assert!(
        page.contains("listening1") && page.contains("silent1"),
        "{page}"
    );
    eprintln!(
        "timing: monitor1 running with monit after {running:.2?}, status page answering after {answered:.2?}"
    );

    // monit's verdicts: the listening node is OK, the silent one failed its port check.
    let statuses = wait_statuses(&host, &monitor, "listening1 OK, silent1 failed", |s| {
        status_of(s, "listening1") == Some("OK")
            && status_of(s, "silent1").is_some_and(|v| v.contains("failed"))
    });
    eprintln!(
        "timing: monit's verdicts after {:.1?}: {statuses:?}",
        began.elapsed()
    );
    // The same through monit's own client in the node.
    let summary = strip_colours(&host.exec_stdout(
        "monitor1",
        &["monit", "-c", "/etc/monit/monitrc", "summary"],
    ));
    let line = |name: &str| {
        summary
            .lines()
            .find(|l| l.contains(&format!(" {name} ")) || l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not in {summary}"))
            .to_string()
    };
    assert!(line("listening1").contains("OK"), "{summary}");
    assert!(line("silent1").contains("failed"), "{summary}");

    // monitor1's own health: its status page accepts connections.
    wait_for("monitor1 healthy", Duration::from_secs(30), || {
        host.node("monitor1")["health"] == "healthy"
    });
    eprintln!("timing: monitor1 healthy after {:.1?}", began.elapsed());

    // A node added by reload: monitrc is re-rendered and the same monit, told by SIGHUP, checks
    // it too.
    let monit = pid_of(&host, "monitor1", "monit");
    host.write_config(&config(&host, &["listening1", "listening2"]));
    let reloaded = Instant::now();
    let report = host.cli(&["reload"]);
    assert!(report.contains("started: listening2"), "{report}");
    wait_for(
        "monitrc to check listening2",
        Duration::from_secs(10),
        || rendered_monitrc(&host).contains("check host listening2 with address"),
    );
    let statuses = wait_statuses(&host, &monitor, "listening2 OK", |s| {
        status_of(s, "listening2") == Some("OK")
    });
    assert_eq!(status_of(&statuses, "listening1"), Some("OK"));
    assert_eq!(
        pid_of(&host, "monitor1", "monit"),
        monit,
        "monit reloaded, not restarted"
    );
    eprintln!(
        "timing: reload adding listening2 until monit reports it OK: {:.1?}",
        reloaded.elapsed()
    );

    host.cli(&["stop", "monitor1", "silent1", "listening1", "listening2"]);
    host.assert_nothing_left();
    eprintln!("timing: whole test {:.1?}", test_began.elapsed());
}
