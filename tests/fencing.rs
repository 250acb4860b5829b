//! Fencing below the agent: on a paired host each node's init holds a lease its agent renews.
//! Killed, stopped or hung, the agent renews nothing and the inits fence their nodes (links
//! down, cgroup frozen) within the pair's lease; a node fenced neither answers ARP nor TCP.
//! Only the agent thaws it, once it holds quorum again, and the links come back. A standalone
//! host never fences. Two agents, each in a network namespace of its own (`common::pair`).

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::Netns;
use common::pair::PairHosts;
use common::{wait_for, TestHost, DB_STAND_IN, WEB_STAND_IN};

/// The nodes on host a: busybox httpd on 80 and a TCP echo on 3306.
const NODES: [(&str, u16); 2] = [("web1", 80), ("db1", 3306)];
/// The default `[pair] lease`: a fence must be complete within it.
const PAIR_LEASE: Duration = Duration::from_millis(500);

fn a_nodes() -> String {
    format!("[nodes.web1]\nrole = \"web\"\n[nodes.db1]\nrole = \"db\"\n{WEB_STAND_IN}{DB_STAND_IN}")
}

/// An alert command that appends each alert to `alerts` beside the host's config.
fn alert_script(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("alert.sh");
    let alerts = dir.join("alerts");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$MAGESTACK_EVENT $MAGESTACK_HOST [$MAGESTACK_NODES] $MAGESTACK_REASON\" >> {}\n",
            alerts.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, alerts)
}

/// Host a with its nodes and an alert command, paired with b, both nodes running and renewed.
/// The alerts file lives in the returned directory, removed when it is dropped.
fn paired(tag: &str, pair: &str) -> (PairHosts, Alerts) {
    let dir = tempfile::Builder::new()
        .prefix("magestack-fencing-")
        .tempdir()
        .unwrap();
    let (script, file) = alert_script(dir.path());
    let pair = format!("{pair}alert_command = [\"{}\"]\n", script.display());
    let hosts = PairHosts::start_with(&format!("{tag}a"), &format!("{tag}b"), &a_nodes(), &pair);
    hosts.pair();
    for (node, _) in NODES {
        hosts.a.wait_node_state(node, "running");
    }
    wait_for("a holds quorum", Duration::from_secs(10), || {
        hosts.a.status()["fencing"]["quorum"] == true
    });
    (hosts, Alerts { file, _dir: dir })
}

/// Where the alert command writes, and the directory holding it.
struct Alerts {
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Alerts {
    fn text(&self) -> String {
        std::fs::read_to_string(&self.file).unwrap_or_default()
    }
}

/// What a node looks like from outside.
struct Node {
    name: &'static str,
    port: u16,
    ip: String,
    pid: i32,
}

fn nodes(host: &TestHost) -> Vec<Node> {
    NODES
        .iter()
        .map(|&(name, port)| {
            let status = host.node(name);
            Node {
                name,
                port,
                ip: status["ip"].as_str().unwrap().to_string(),
                pid: status["pid"].as_i64().unwrap() as i32,
            }
        })
        .collect()
}

/// The node's cgroup is frozen, as the kernel's freezer reports it.
fn frozen(host: &TestHost, node: &str) -> bool {
    let unified = PathBuf::from("/sys/fs/cgroup")
        .join(&host.cgroup)
        .join(node);
    if unified.join("cgroup.events").exists() {
        let events = std::fs::read_to_string(unified.join("cgroup.events")).unwrap_or_default();
        return events.lines().any(|line| line == "frozen 1");
    }
    let state = PathBuf::from("/sys/fs/cgroup/freezer")
        .join(&host.cgroup)
        .join(node)
        .join("freezer.state");
    std::fs::read_to_string(state).unwrap_or_default().trim() == "FROZEN"
}

/// The node's eth0 is administratively up, seen from inside its network namespace.
fn eth0_up(node: &Node) -> bool {
    let output = Command::new("nsenter")
        .arg(format!("--net=/proc/{}/ns/net", node.pid))
        .args(["ip", "-o", "link", "show", "eth0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let flags = text
        .split('<')
        .nth(1)
        .and_then(|rest| rest.split('>').next());
    flags.is_some_and(|flags| flags.split(',').any(|flag| flag == "UP"))
}

fn fenced(host: &TestHost, node: &Node) -> bool {
    frozen(host, node.name) && !eth0_up(node)
}

/// An ARP request for the node's address from the host's bridge gets an answer.
fn answers_arp(space: &Netns, bridge: &str, node: &Node) -> bool {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", space.0))
        .args(["arping", "-c", "1", "-w", "1", "-I", bridge, &node.ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// A TCP connection to the node's port from the host's namespace is accepted.
fn answers_tcp(space: &Netns, node: &Node) -> bool {
    let address: SocketAddr = format!("{}:{}", node.ip, node.port).parse().unwrap();
    space.run(move || TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok())
}

/// Polls (every 2 ms, bounded) until every node is fenced; how long that took from `since`.
fn wait_fenced(host: &TestHost, nodes: &[Node], since: Instant, limit: Duration) -> Duration {
    let deadline = since + limit;
    loop {
        if nodes.iter().all(|node| fenced(host, node)) {
            return since.elapsed();
        }
        let state: Vec<String> = nodes
            .iter()
            .map(|n| {
                format!(
                    "{}: frozen {} eth0 up {}",
                    n.name,
                    frozen(host, n.name),
                    eth0_up(n)
                )
            })
            .collect();
        assert!(
            Instant::now() < deadline,
            "not fenced within {limit:?}: {state:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn assert_answering(hosts: &PairHosts, nodes: &[Node]) {
    for node in nodes {
        assert!(!frozen(&hosts.a, node.name), "{} frozen", node.name);
        assert!(eth0_up(node), "{}: eth0 down", node.name);
        assert!(
            answers_arp(&hosts.spaces[0], &hosts.a.net.bridge, node),
            "{} answers no ARP",
            node.name
        );
        assert!(
            answers_tcp(&hosts.spaces[0], node),
            "{} answers no TCP",
            node.name
        );
    }
}

fn assert_silent(hosts: &PairHosts, nodes: &[Node]) {
    for node in nodes {
        assert!(
            !answers_arp(&hosts.spaces[0], &hosts.a.net.bridge, node),
            "fenced {} answers ARP",
            node.name
        );
        assert!(
            !answers_tcp(&hosts.spaces[0], node),
            "fenced {} answers TCP",
            node.name
        );
    }
}

/// Waits until the agent has thawed every node and its links are back, answering again.
fn wait_unfenced(hosts: &PairHosts, nodes: &[Node]) {
    wait_for(
        "the nodes thawed with links up",
        Duration::from_secs(20),
        || {
            nodes
                .iter()
                .all(|node| !frozen(&hosts.a, node.name) && eth0_up(node))
        },
    );
    wait_for("status shows no fence", Duration::from_secs(10), || {
        let status = hosts.a.status();
        nodes
            .iter()
            .all(|node| node_of(&status, node.name)["fenced"] == false)
    });
    assert_answering(hosts, nodes);
}

fn node_of<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|node| node["name"] == name)
        .unwrap()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[test]
fn a_killed_agent_s_nodes_are_fenced_within_the_lease_and_thawed_by_its_successor() {
    let (mut hosts, alerts) = paired("fk", "");
    let nodes = nodes(&hosts.a);
    assert_answering(&hosts, &nodes);
    assert_eq!(hosts.a.status()["fencing"]["init_lease_ms"], 300);

    let killed = Instant::now();
    hosts.a.kill_daemon(libc::SIGKILL);
    let took = wait_fenced(&hosts.a, &nodes, killed, PAIR_LEASE);
    eprintln!("agent killed to every node fenced: {took:?}");
    assert_silent(&hosts, &nodes);
    // Nothing but the agent thaws them.
    std::thread::sleep(Duration::from_secs(1));
    assert!(nodes.iter().all(|node| fenced(&hosts.a, node)));

    let restarted = Instant::now();
    hosts.a.start_daemon_in_netns(&hosts.spaces[0].0.clone());
    wait_unfenced(&hosts, &nodes);
    eprintln!(
        "agent restarted to every node unfenced: {:?}",
        restarted.elapsed()
    );
    let metrics = hosts.metrics(0);
    assert_eq!(metric(&metrics, "magestack_fences_total"), 2, "{metrics}");
    assert_eq!(metric(&metrics, "magestack_unfences_total"), 2, "{metrics}");
    assert_eq!(metric(&metrics, "magestack_nodes_fenced"), 0, "{metrics}");
    for (node, _) in NODES {
        let log = std::fs::read_to_string(hosts.a.log_dir().join(node).join("init.log")).unwrap();
        assert!(log.contains("lease lapsed: links down, freezing"), "{log}");
        assert!(log.contains("links up and announced"), "{log}");
    }
    wait_for("an alert per fenced node", Duration::from_secs(5), || {
        let text = alerts.text();
        NODES
            .iter()
            .all(|(node, _)| text.contains(&format!("fence {}a [{node}] ", "fk")))
    });
}

#[test]
fn an_agent_restarted_within_the_lease_never_fences_its_nodes() {
    // A lease the restart fits in: the init's is 2.8 s.
    let (mut hosts, _alerts) = paired("fr", "lease = \"3s\"\n");
    let nodes = nodes(&hosts.a);
    assert_eq!(hosts.a.status()["fencing"]["init_lease_ms"], 2800);
    let killed = Instant::now();
    hosts.a.kill_daemon(libc::SIGKILL);
    hosts.a.start_daemon_in_netns(&hosts.spaces[0].0.clone());
    wait_for("a holds quorum again", Duration::from_secs(10), || {
        hosts.a.status()["fencing"]["quorum"] == true
    });
    eprintln!("agent killed to quorum again: {:?}", killed.elapsed());
    // Watched for longer than the init's lease after the restart.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for node in &nodes {
            assert!(!frozen(&hosts.a, node.name), "{} frozen", node.name);
            assert!(eth0_up(node), "{}: eth0 down", node.name);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_answering(&hosts, &nodes);
    for (node, _) in NODES {
        // The init writes its log only when it has something to say.
        let log = std::fs::read_to_string(hosts.a.log_dir().join(node).join("init.log"))
            .unwrap_or_default();
        assert!(!log.contains("lease lapsed"), "{log}");
    }
    assert_eq!(hosts.a.status()["fencing"]["fences"], 0);
}

#[test]
fn a_stopped_agent_s_nodes_are_fenced_and_thawed_with_their_links_when_it_resumes() {
    let (hosts, alerts) = paired("fs", "");
    let nodes = nodes(&hosts.a);
    assert_answering(&hosts, &nodes);
    let stopped = Instant::now();
    hosts.a.signal_daemon(libc::SIGSTOP);
    let fenced_in = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let took = wait_fenced(&hosts.a, &nodes, stopped, PAIR_LEASE);
        assert_silent(&hosts, &nodes);
        took
    }));
    hosts.a.signal_daemon(libc::SIGCONT);
    let took = fenced_in.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    eprintln!("agent stopped to every node fenced: {took:?}");
    // It holds quorum (the link stayed up): it thaws them and brings their links back.
    wait_unfenced(&hosts, &nodes);
    let status = hosts.a.status();
    assert_eq!(status["fencing"]["fences"], 2, "{status}");
    assert_eq!(status["fencing"]["unfences"], 2, "{status}");
    wait_for("an alert per fenced node", Duration::from_secs(5), || {
        let text = alerts.text();
        text.lines()
            .filter(|line| line.starts_with("fence "))
            .count()
            >= 2
    });
}

#[test]
fn a_standalone_host_whose_agent_is_killed_never_fences() {
    let mut host = TestHost::new("alone", &a_nodes());
    host.start_daemon();
    for (node, _) in NODES {
        host.wait_node_state(node, "running");
    }
    assert_eq!(
        host.status()["fencing"]["init_lease_ms"],
        serde_json::Value::Null
    );
    let nodes = nodes(&host);
    host.kill_daemon(libc::SIGKILL);
    // Three default pair leases.
    let until = Instant::now() + 3 * PAIR_LEASE;
    while Instant::now() < until {
        for node in &nodes {
            assert!(!frozen(&host, node.name), "{} frozen", node.name);
            assert!(eth0_up(node), "{}: eth0 down", node.name);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for node in &nodes {
        let address: SocketAddr = format!("{}:{}", node.ip, node.port).parse().unwrap();
        assert!(
            TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok(),
            "{} answers no TCP",
            node.name
        );
    }
    host.start_daemon();
    let _ = host.cli(&["stop", "web1", "db1"]);
    host.assert_nothing_left();
}

#[test]
fn a_host_that_loses_quorum_fences_its_nodes_and_thaws_them_when_it_is_back() {
    let (mut hosts, alerts) = paired("fq", "");
    let nodes = nodes(&hosts.a);
    // The partner's agent dies: a's link goes down, a stops renewing.
    let lost = Instant::now();
    hosts.b.kill_daemon(libc::SIGKILL);
    let took = wait_fenced(&hosts.a, &nodes, lost, Duration::from_secs(10));
    eprintln!("partner killed to every node of a fenced: {took:?}");
    assert_silent(&hosts, &nodes);
    let status = hosts.a.status();
    assert_eq!(status["fencing"]["quorum"], false, "{status}");
    for (node, _) in NODES {
        assert_eq!(node_of(&status, node)["fenced"], true, "{status}");
    }
    wait_for("a quorum-lost alert", Duration::from_secs(5), || {
        alerts.text().contains("quorum lost")
    });
    // A fenced node stops at once: killed frozen, never thawed to stop gracefully.
    let stopping = Instant::now();
    hosts.a.cli(&["stop", "db1"]);
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
    assert!(!hosts.a.node_cgroup_exists("db1"));
    hosts.b.start_daemon_in_netns(&hosts.spaces[1].0.clone());
    wait_unfenced(&hosts, &nodes[..1]);
    hosts.a.cli(&["start", "db1"]);
    hosts.a.wait_node_state("db1", "running");
}
