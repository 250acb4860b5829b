//! Several agents on one machine: each claims its dirs and cgroup parent per machine and its
//! bridge, link prefix and subnet per network namespace. One that overlaps a running agent is
//! refused, naming it and the setting, and changes nothing of it; agents in their own network
//! namespaces share network names; a killed agent's claims die with it; a sweep leaves alone
//! what its agent did not make.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::Netns;
use common::{process_alive, sleeper_nodes, TestHost, AGENT};

fn running_host(name: &str, nodes: &[&str]) -> TestHost {
    let mut host = TestHost::new(name, &sleeper_nodes(nodes));
    host.start_daemon();
    for node in nodes {
        host.wait_node_state(node, "running");
    }
    host
}

/// What a second agent must leave as it was: the nodes' inits, the links on the host (index and
/// name) and the policy table.
#[derive(Debug, PartialEq)]
struct Footprint {
    pids: Vec<i32>,
    links: Vec<String>,
    table: String,
}

fn footprint(host: &TestHost, nodes: &[&str]) -> Footprint {
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    let ours =
        |name: &str| name == host.net.bridge || host.net.links().iter().any(|link| link == name);
    let links = String::from_utf8_lossy(&links.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(": ");
            let index = fields.next()?;
            let name = fields.next()?.split('@').next()?;
            ours(name).then(|| format!("{index}: {name}"))
        })
        .collect();
    let table = host.net.policy_table();
    assert!(table.status.success(), "no policy table");
    Footprint {
        pids: nodes.iter().map(|node| host.node_pid(node)).collect(),
        links,
        table: String::from_utf8_lossy(&table.stdout).into_owned(),
    }
}

/// Runs a daemon on `host`'s configuration and expects it to give up at once; returns what it
/// said. One still running after the limit is killed and fails the test.
fn refused_start(host: &TestHost) -> String {
    let log = host.dir.join("refused.log");
    let mut child = Command::new(AGENT)
        .args(["--config", host.config.to_str().unwrap(), "run"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "the second agent exited successfully");
            return std::fs::read_to_string(&log).unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "a second agent overlapping a running one was not refused:\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The refusal names the running agent: its pid, configuration file and, but for the cgroup
/// parent (whose claim the kernel knows only by pid and command line), its host name.
fn assert_names(refusal: &str, setting: &str, holder: &TestHost, pid: u32) {
    let mut expected = vec![
        setting.to_string(),
        format!("pid {pid}"),
        holder.config.display().to_string(),
    ];
    if setting != "host.cgroup" {
        expected.push(format!("host `{}`", holder.name));
    }
    for expected in expected {
        assert!(
            refusal.contains(&expected),
            "`{expected}` not in the refusal:\n{refusal}"
        );
    }
}

#[test]
fn a_second_agent_sharing_a_dir_or_the_cgroup_parent_is_refused_and_changes_nothing() {
    let nodes = ["n1", "n2"];
    let first = running_host("clfirst", &nodes);
    let before = footprint(&first, &nodes);
    for (key, setting) in [
        ("cgroup", "host.cgroup"),
        ("state_dir", "host.state_dir"),
        ("run_dir", "host.run_dir"),
    ] {
        let second = TestHost::new("clsecond", &sleeper_nodes(&["n1", "n3"]));
        second.set_setting(key, &first.setting(key));
        let refusal = refused_start(&second);
        assert_names(&refusal, setting, &first, first.daemon_pid());
        assert_eq!(footprint(&first, &nodes), before, "after a refused {key}");
    }
    for node in nodes {
        assert_eq!(first.node(node)["state"], "running");
    }
}

#[test]
fn a_second_agent_on_the_same_bridge_link_prefix_or_subnet_is_refused_and_changes_nothing() {
    let first = running_host("nlfirst", &["n1"]);
    let before = footprint(&first, &["n1"]);
    for (key, setting) in [
        ("bridge", "network.bridge"),
        ("link_prefix", "network.link_prefix"),
        ("subnet", "network.subnet"),
    ] {
        let second = TestHost::new("nlsecond", &sleeper_nodes(&["n1"]));
        second.set_setting(key, &first.setting(key));
        if key == "subnet" {
            second.set_setting("host_ip", &format!("\"{}\"", first.net.ip(253)));
            let refusal = refused_start(&second);
            assert!(refusal.contains(setting), "{refusal}");
        } else {
            let refusal = refused_start(&second);
            assert_names(&refusal, setting, &first, first.daemon_pid());
        }
        assert_eq!(footprint(&first, &["n1"]), before, "after a refused {key}");
        assert!(
            second.net.links().is_empty(),
            "the refused agent made links"
        );
    }
}

#[test]
fn agents_in_their_own_network_namespaces_share_bridge_link_prefix_and_subnet() {
    // Declared first, dropped last: after both hosts stopped their nodes and daemons.
    let spaces = [Netns::new("cla"), Netns::new("clb")];
    let mut hosts = [
        TestHost::new("nsa", &sleeper_nodes(&["n1"])),
        TestHost::new("nsb", &sleeper_nodes(&["n1"])),
    ];
    for key in ["bridge", "link_prefix", "subnet", "host_ip"] {
        let value = hosts[0].setting(key);
        hosts[1].set_setting(key, &value);
    }
    let bridge = hosts[0].net.bridge.clone();
    let link = format!("{}-n1", hosts[0].net.link_prefix);
    for (host, space) in hosts.iter_mut().zip(&spaces) {
        host.start_daemon_in_netns(&space.0);
    }
    let mut pids = Vec::new();
    for (host, space) in hosts.iter().zip(&spaces) {
        host.wait_node_state("n1", "running");
        pids.push(host.node_pid("n1"));
        let links = space.links();
        assert!(
            links.contains(&format!(": {bridge}:")) && links.contains(&format!(": {link}@")),
            "{}: {links}",
            space.0
        );
    }
    assert_ne!(pids[0], pids[1]);
    assert!(
        hosts[0].net.links().is_empty(),
        "a node link in the host's namespace"
    );
    // Each one's sweep at a restart leaves the other's node alone.
    hosts[0].kill_daemon(libc::SIGKILL);
    hosts[0].start_daemon_in_netns(&spaces[0].0);
    for (host, pid) in hosts.iter().zip(&pids) {
        assert_eq!(host.node_pid("n1"), *pid);
    }
}

#[test]
fn a_killed_agent_leaves_no_claim_behind_and_the_next_one_is_named() {
    let mut first = running_host("stale", &["n1"]);
    let init = first.node_pid("n1");
    first.kill_daemon(libc::SIGKILL);
    assert!(process_alive(init));

    // Another configuration file with every setting of the killed agent: its node, still
    // running, holds none of the killed agent's claims.
    let mut next = TestHost::new("stalenext", &sleeper_nodes(&["n1"]));
    for key in [
        "state_dir",
        "run_dir",
        "cgroup",
        "bridge",
        "link_prefix",
        "subnet",
        "host_ip",
    ] {
        next.set_setting(key, &first.setting(key));
    }
    next.start_daemon();
    assert_eq!(next.node_pid("n1"), init, "the node was not re-adopted");

    let third = TestHost::new("stalethird", &sleeper_nodes(&["n2"]));
    third.set_setting("cgroup", &first.setting("cgroup"));
    let refusal = refused_start(&third);
    assert_names(&refusal, "host.cgroup", &next, next.daemon_pid());
}

#[test]
fn a_sweep_leaves_alone_links_and_cgroups_its_agent_did_not_make() {
    let mut host = TestHost::new("foreign", &sleeper_nodes(&["n1"]));
    // A link with the host's prefix and a cgroup under its parent, holding a process: neither
    // made by this agent.
    let link = format!("{}-stray", host.net.link_prefix);
    let made = Command::new("ip")
        .args(["link", "add", &link, "type", "bridge"])
        .status()
        .unwrap();
    assert!(made.success());
    let mut stray = Command::new("sleep").arg("1000").spawn().unwrap();
    let roots = common::cgroup_roots();
    for root in &roots {
        let dir = root.join(&host.cgroup).join("stray");
        std::fs::create_dir_all(&dir).unwrap();
        if root.ends_with("pids") || roots.len() == 1 {
            std::fs::write(dir.join("cgroup.procs"), stray.id().to_string()).unwrap();
        }
    }
    let untouched = |host: &TestHost, stray: &mut std::process::Child, when: &str| {
        assert!(stray.try_wait().unwrap().is_none(), "{when}: killed");
        assert!(host.node_cgroup_exists("stray"), "{when}: cgroup removed");
        assert!(
            host.net.links().contains(&link),
            "{when}: link removed\n{}",
            host.daemon_log()
        );
    };

    host.start_daemon();
    host.wait_node_state("n1", "running");
    untouched(&host, &mut stray, "start-up sweep");
    host.cli(&["stop", "n1"]);
    untouched(&host, &mut stray, "stop");
    host.cli(&["start", "n1"]);
    host.kill_daemon(libc::SIGKILL);
    host.start_daemon();
    host.wait_node_state("n1", "running");
    untouched(&host, &mut stray, "sweep after a crash");

    let _ = stray.kill();
    let _ = stray.wait();
    let _ = Command::new("ip").args(["link", "del", &link]).status();
}
