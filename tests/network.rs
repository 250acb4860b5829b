//! The internal network: planned addresses, names, fw1's public entry with DNAT keeping the
//! client address, masquerade (over the host veth and over a real uplink with a macvlan), the
//! DOS filter, the inter-node policy, reload, clean-up.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::network::{can_connect, http_get, run, stack, stack_with, Outside};
use common::{wait_for, TestHost, DB_STAND_IN, LB_STAND_IN, WEB_STAND_IN};

#[test]
fn nodes_get_planned_addresses_routes_and_names() {
    let host = stack("netplan", "");
    let net = &host.net;
    for (node, offset) in [("fw1", 1), ("lb1", 11), ("web1", 21), ("db1", 41)] {
        let addresses = host.exec_stdout(node, &["ip", "-o", "-4", "addr", "show", "eth0"]);
        assert!(
            addresses.contains(&format!("{}/24", net.ip(offset))),
            "{node}: {addresses}"
        );
        let lo = host.exec_stdout(node, &["ip", "-o", "link", "show", "lo"]);
        assert!(lo.contains("UP"), "{node}: lo is down: {lo}");
    }
    let route = host.exec_stdout("web1", &["ip", "route"]);
    assert!(
        route.contains(&format!("default via {}", net.ip(1))),
        "not via fw1: {route}"
    );
    let fw_route = host.exec_stdout("fw1", &["ip", "route"]);
    assert!(
        fw_route.contains(&format!("default via {}", net.public_gateway())),
        "{fw_route}"
    );

    let hosts = host.exec_stdout("db1", &["cat", "/etc/hosts"]);
    for node in ["fw1", "lb1", "web1", "db1"] {
        assert!(hosts.contains(&format!("{node}.i")), "{hosts}");
    }
    // Names resolve, and the host reaches every node.
    assert!(can_connect(&host, "web1", "db1.i:3306"));
    let from_host = http_get(&format!("{}:80", net.ip(11)), "/", Duration::from_secs(2));
    assert!(
        from_host.is_some_and(|r| r.contains(" 200 ")),
        "host cannot reach lb1"
    );
    // The host-side link names are derived from the node names.
    let links = net.links();
    for node in ["fw1", "lb1", "web1", "db1"] {
        assert!(
            links.contains(&format!("{}-{node}", net.link_prefix)),
            "{links:?}"
        );
    }
    // Both ends of a node's veth were made with one queue each way.
    let web1_netns = format!("--net=/proc/{}/ns/net", host.node_pid("web1"));
    let host_link = format!("{}-web1", net.link_prefix);
    for command in [
        vec!["ip", "-d", "link", "show", &host_link],
        vec!["nsenter", &web1_netns, "ip", "-d", "link", "show", "eth0"],
    ] {
        let shown = std::process::Command::new(command[0])
            .args(&command[1..])
            .output()
            .unwrap();
        let (out, err) = (
            String::from_utf8_lossy(&shown.stdout),
            String::from_utf8_lossy(&shown.stderr),
        );
        assert!(
            out.contains("numtxqueues 1 numrxqueues 1"),
            "{command:?}: {out} {err}"
        );
    }
}

/// A network the host routes fw1's public side to (`uplink = "host"`): an [`Outside`] on a veth
/// of its own, with forwarding on for this test's two links only (the host's global setting is
/// left alone).
struct BeyondTheHost {
    outside: Outside,
    address: String,
}

impl BeyondTheHost {
    fn new(host: &TestHost) -> BeyondTheHost {
        let k = host.net.k;
        let uplink = format!("{}ox", host.net.link_prefix);
        let outside = Outside::new(&uplink, &format!("10.211.{k}.1/24"));
        run(&[
            "ip",
            "addr",
            "add",
            &format!("10.211.{k}.254/24"),
            "dev",
            &uplink,
        ]);
        let public_net = format!("10.210.{k}.0/24");
        let via = format!("10.211.{k}.254");
        outside.run(&["ip", "route", "add", &public_net, "via", &via]);
        let public_link = format!("{}_fw1", host.net.link_prefix);
        for link in [&uplink, &public_link] {
            std::fs::write(format!("/proc/sys/net/ipv4/conf/{link}/forwarding"), "1").unwrap();
        }
        BeyondTheHost {
            outside,
            address: format!("10.211.{k}.1"),
        }
    }
}

#[test]
fn the_public_side_dnats_to_lb1_keeps_the_client_and_masquerades_outbound() {
    let host = stack("netpublic", "");
    let net = &host.net;
    let response = http_get(
        &format!("{}:80", net.public_ip()),
        "/cgi-bin/ip",
        Duration::from_secs(2),
    )
    .expect("public_ip:80 does not answer");
    // busybox httpd listens on IPv6 and shows IPv4 clients mapped.
    let client = format!("client=[::ffff:{}]", net.public_gateway());
    assert!(response.contains(&client), "{response}");

    // web1 opens a connection out: it leaves fw1 with fw1's public address, and the host
    // routes it on (the host's own services are not reachable that way: see isolation.rs).
    let beyond = BeyondTheHost::new(&host);
    let peer = beyond.outside.accept_from(&beyond.address, |port| {
        let connect = format!("echo out | timeout 2 nc -w 1 {} {port}", beyond.address);
        let _ = host.exec("web1", &["sh", "-c", &connect]);
    });
    let peer = peer.expect("web1's outbound connection never arrived");
    assert_eq!(peer.ip().to_string(), net.public_ip(), "not masqueraded");
    // Nothing else is open on the public side.
    let other = http_get(
        &format!("{}:8080", net.public_ip()),
        "/",
        Duration::from_millis(500),
    );
    assert!(other.is_none());
}

/// A production uplink (`uplink = "<interface>"`): fw1's public side is a macvlan on it, in
/// fw1's namespace, and the outside reaches lb1 through it (client address kept) while a node's
/// outbound connection leaves with the public address.
#[test]
fn on_a_real_uplink_fw1_gets_a_macvlan_the_outside_reaches_lb1_through() {
    let mut outside = None;
    let host = stack_with("netuplink", "", |host| {
        let uplink = format!("{}up", host.net.link_prefix);
        let world = Outside::new(&uplink, &format!("{}/24", host.net.public_gateway()));
        let text = std::fs::read_to_string(&host.config).unwrap();
        let text = text.replacen(
            "uplink = \"host\"",
            &format!("uplink = \"{}\"", world.uplink),
            1,
        );
        std::fs::write(&host.config, text).unwrap();
        outside = Some(world);
    });
    let outside = outside.unwrap();
    let net = &host.net;

    let fw1_netns = format!("--net=/proc/{}/ns/net", host.node_pid("fw1"));
    let eth1 = run(&["nsenter", &fw1_netns, "ip", "-d", "address", "show", "eth1"]);
    assert!(eth1.contains("macvlan mode bridge"), "{eth1}");
    assert!(
        eth1.contains(&format!("inet {}/24", net.public_ip())),
        "{eth1}"
    );
    assert!(
        !host.net.links().iter().any(|l| l.contains('_')),
        "no veth to the host with a real uplink: {:?}",
        host.net.links()
    );

    let public = format!("{}:80", net.public_ip());
    let page = outside.within(|| http_get(&public, "/cgi-bin/ip", Duration::from_secs(3)));
    let page = page.expect("the public address does not answer from outside");
    assert!(
        page.contains(&format!("client=[::ffff:{}]", net.public_gateway())),
        "{page}"
    );

    // web1 connects out: the outside sees fw1's public address.
    let gateway = net.public_gateway();
    let peer = outside.accept_from(&gateway, |port| {
        let connect = format!("echo out | timeout 2 nc -w 1 {gateway} {port}");
        let _ = host.exec("web1", &["sh", "-c", &connect]);
    });
    let peer = peer.expect("web1's outbound connection never arrived");
    assert_eq!(peer.ip().to_string(), net.public_ip(), "not masqueraded");
}

#[test]
fn the_policy_allows_declared_flows_only() {
    let host = stack("netpolicy", "");
    assert!(
        can_connect(&host, "web1", "db1.i:3306"),
        "web1 -> db1:3306 must pass"
    );
    assert!(
        !can_connect(&host, "lb1", "db1.i:3306"),
        "lb1 -> db1:3306 must be dropped"
    );
    assert!(
        !can_connect(&host, "web1", "lb1.i:80"),
        "web1 -> lb1:80 must be dropped"
    );
    assert!(
        can_connect(&host, "lb1", "web1.i:80"),
        "lb1 -> web1:80 must pass"
    );
    // New connections from a node to the host are refused by the agent's input chain.
    let listener = TcpListener::bind(format!("{}:0", host.net.host_ip())).unwrap();
    let port = listener.local_addr().unwrap().port();
    let to_host = host.exec(
        "web1",
        &["sh", "-c", &format!("echo x | nc -w 1 host.i {port}")],
    );
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "web1 reached the host: {to_host:?}"
    );
    let table = host.net.policy_table();
    assert!(table.status.success());
}

#[test]
fn the_dos_filter_drops_a_burst_and_spares_the_whitelist() {
    let mut host = stack("netdos", "[network.dos]\nrate = 2\nburst = 2\n");
    let target = format!("{}:80", host.net.public_ip());
    let burst = |count: usize| {
        (0..count)
            .filter(|_| http_get(&target, "/", Duration::from_millis(300)).is_some())
            .count()
    };
    let served = burst(20);
    assert!(
        served < 12,
        "{served} of 20 served: the DOS filter let the burst through"
    );

    let whitelisted = format!(
        "[network.dos]\nrate = 2\nburst = 2\nwhitelist = [\"{}\"]\n",
        host.net.public_gateway()
    );
    host.write_config(&format!(
        "[nodes.fw1]\nrole = \"fw\"\n[nodes.lb1]\nrole = \"lb\"\n[nodes.web1]\nrole = \"web\"\n[nodes.db1]\nrole = \"db\"\n{LB_STAND_IN}{DB_STAND_IN}{WEB_STAND_IN}{whitelisted}"
    ));
    host.cli(&["reload"]);
    host.wait_node_state("fw1", "running");
    std::thread::sleep(Duration::from_secs(1));
    let served = burst(20);
    assert_eq!(served, 20, "a whitelisted source was limited");
    host.kill_daemon(libc::SIGTERM);
    host.start_daemon();
}

#[test]
fn reload_adds_names_everywhere_and_stop_removes_links() {
    let host = stack("netreload", "");
    let web1 = host.node_pid("web1");
    // The bridge keeps its own MAC address as nodes' links join it (the nodes' ARP entries for
    // the host stay right); the kernel would otherwise take the lowest of its ports'.
    let sysfs = std::path::Path::new("/sys/class/net").join(&host.net.bridge);
    let bridge_mac = || std::fs::read_to_string(sysfs.join("address")).unwrap();
    let mac_before = bridge_mac();
    assert_eq!(
        std::fs::read_to_string(sysfs.join("addr_assign_type"))
            .unwrap()
            .trim(),
        "3",
        "the bridge's address is not pinned"
    );
    host.write_config(&format!(
        "[nodes.fw1]\nrole = \"fw\"\n[nodes.lb1]\nrole = \"lb\"\n[nodes.web1]\nrole = \"web\"\n[nodes.web2]\nrole = \"web\"\n[nodes.db1]\nrole = \"db\"\n{LB_STAND_IN}{DB_STAND_IN}{WEB_STAND_IN}",
    ));
    let report = host.cli(&["reload"]);
    assert!(report.contains("started: web2"), "{report}");
    assert_eq!(host.node_pid("web1"), web1, "web1 was restarted");
    assert_eq!(bridge_mac(), mac_before, "the bridge changed its address");
    for node in ["fw1", "lb1", "web1", "web2", "db1"] {
        let hosts = host.exec_stdout(node, &["cat", "/etc/hosts"]);
        assert!(hosts.contains("web2.i"), "{node}: {hosts}");
    }
    let address = host.exec_stdout("web2", &["ip", "-o", "-4", "addr", "show", "eth0"]);
    assert!(address.contains(&host.net.ip(22)), "{address}");

    host.cli(&["stop", "fw1", "lb1", "web1", "web2", "db1"]);
    host.assert_nothing_left();
    let on_bridge = std::process::Command::new("ip")
        .args(["-o", "link", "show", "master", &host.net.bridge])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&on_bridge.stdout).trim(),
        "",
        "links left on the bridge"
    );
    wait_for("links to go", Duration::from_secs(5), || {
        host.net.links().is_empty()
    });
}

/// The bridge a host link is a port of, from sysfs.
fn bridge_of(link: &str) -> Option<String> {
    let master = std::fs::read_link(format!("/sys/class/net/{link}/master")).ok()?;
    Some(master.file_name()?.to_string_lossy().into_owned())
}

/// Waits (bounded) until every node's link is on the bridge, no node shows degraded, and lb1
/// reaches web1 and the host reaches lb1 again.
fn wait_network_whole(host: &TestHost, nodes: &[&str]) {
    wait_for(
        "the network to be put back",
        Duration::from_secs(15),
        || {
            nodes.iter().all(|node| {
                bridge_of(&format!("{}-{node}", host.net.link_prefix)).as_deref()
                    == Some(host.net.bridge.as_str())
                    && host.node(node)["degraded"].is_null()
            })
        },
    );
    assert!(can_connect(host, "lb1", "web1.i:80"), "lb1 -> web1");
    let lb1 = format!("{}:80", host.net.ip(11));
    assert!(
        http_get(&lb1, "/", Duration::from_secs(2)).is_some(),
        "the host does not reach lb1"
    );
}

#[test]
fn a_lost_link_or_bridge_is_put_back_without_restarting_nodes() {
    let mut host = stack("netrepair", "");
    let nodes = ["fw1", "lb1", "web1", "db1"];
    let pids: Vec<i32> = nodes.iter().map(|node| host.node_pid(node)).collect();
    let prefix = host.net.link_prefix.clone();
    let bridge = host.net.bridge.clone();

    // A node's link: eth0 goes with it; both are made again, eth0 addressed inside.
    run(&["ip", "link", "del", &format!("{prefix}-web1")]);
    wait_network_whole(&host, &nodes);
    let eth0 = host.exec_stdout("web1", &["ip", "-o", "-4", "addr", "show", "eth0"]);
    assert!(eth0.contains(&host.net.ip(21)), "{eth0}");
    assert!(
        host.daemon_log().contains("its link (eth0) was gone"),
        "the repair is not logged with its reason"
    );

    // The bridge: made again with its address, every node's link attached to it.
    run(&["ip", "link", "del", &bridge]);
    wait_network_whole(&host, &nodes);

    // The bridge deleted while the agent is down: the next one puts it back at start-up and
    // attaches the nodes it re-adopts.
    host.kill_daemon(libc::SIGKILL);
    run(&["ip", "link", "del", &bridge]);
    host.start_daemon();
    wait_network_whole(&host, &nodes);
    let after: Vec<i32> = nodes.iter().map(|node| host.node_pid(node)).collect();
    assert_eq!(after, pids, "a node was restarted");

    // fw1's public link carries its address, routes and rules: fw1 restarts to have it back.
    run(&["ip", "link", "del", &format!("{prefix}_fw1")]);
    wait_for("fw1 to restart", Duration::from_secs(15), || {
        let fw1 = host.node("fw1");
        fw1["state"] == "running" && fw1["pid"].as_i64() != Some(i64::from(pids[0]))
    });
    assert_eq!(
        host.node("fw1")["restarts"],
        1,
        "the restart is not counted"
    );
    assert!(
        host.daemon_log().contains("its public link was gone"),
        "the restart is not logged with its reason"
    );
    let public = format!("{}:80", host.net.public_ip());
    wait_for(
        "the public address to answer",
        Duration::from_secs(10),
        || http_get(&public, "/", Duration::from_secs(1)).is_some(),
    );
}

/// What a node's life is made of, as seen from the host.
#[derive(Debug)]
struct Life {
    init: i32,
    namespaces: Vec<(&'static str, String)>,
    /// Held open, so a namespace made after this one went cannot reuse its inode number.
    _held: Vec<std::fs::File>,
    /// The interface index of each of its host-side links.
    links: Vec<(String, String)>,
}

fn life(host: &TestHost, node: &str, links: &[String]) -> Life {
    let init = host.node_pid(node);
    let kinds = ["user", "net", "pid", "mnt", "uts", "ipc"];
    Life {
        init,
        namespaces: kinds
            .into_iter()
            .map(|kind| (kind, common::process_namespace(init, kind)))
            .collect(),
        _held: kinds
            .into_iter()
            .map(|kind| std::fs::File::open(format!("/proc/{init}/ns/{kind}")).unwrap())
            .collect(),
        links: links
            .iter()
            .map(|link| {
                let index = std::fs::read_to_string(format!("/sys/class/net/{link}/ifindex"))
                    .unwrap_or_else(|e| panic!("{link}: {e}"));
                (link.clone(), index.trim().to_string())
            })
            .collect(),
    }
}

fn pinned_namespaces(host: &TestHost) -> Vec<String> {
    let nodes = host.run_dir().join("nodes");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|line| line.contains(nodes.to_str().unwrap()))
        .map(str::to_string)
        .collect()
}

/// `restart` starts a new init (new pid, mount, uts and ipc namespaces) in the user and network
/// namespaces its previous init left: the links (fw1's public one too) keep their interface
/// index, fw1 its rules, the node its neighbours, also after the daemon was killed; `stop`
/// leaves nothing, no pin either.
#[test]
fn restart_keeps_the_network_namespace_and_links_and_stop_removes_them() {
    let mut host = stack("netrestart", "");
    let net = &host.net;
    let prefix = &net.link_prefix;
    let fw1_links = vec![format!("{prefix}-fw1"), format!("{prefix}_fw1")];
    let web1_links = vec![format!("{prefix}-web1")];
    let before = [
        life(&host, "fw1", &fw1_links),
        life(&host, "web1", &web1_links),
    ];
    assert_eq!(
        pinned_namespaces(&host).len(),
        8,
        "user and net pinned for each of 4 nodes: {:#?}",
        pinned_namespaces(&host)
    );

    host.cli(&["restart", "fw1", "web1"]);
    let after = [
        life(&host, "fw1", &fw1_links),
        life(&host, "web1", &web1_links),
    ];
    for (before, after) in before.iter().zip(&after) {
        assert_ne!(before.init, after.init, "the init is the same");
        for ((kind, was), (_, is)) in before.namespaces.iter().zip(&after.namespaces) {
            match *kind {
                "user" | "net" => assert_eq!(was, is, "{kind} namespace not kept"),
                _ => assert_ne!(was, is, "{kind} namespace not new"),
            }
        }
        assert_eq!(before.links, after.links, "links made again");
    }
    // fw1's rules are in place: the public side still reaches lb1, keeping the client.
    let fw1 = format!("--net=/proc/{}/ns/net", host.node_pid("fw1"));
    let rules = run(&[
        "nsenter",
        &fw1,
        "nft",
        "list",
        "table",
        "inet",
        "magestack_fw",
    ]);
    assert!(rules.contains("dnat"), "{rules}");
    let response = http_get(
        &format!("{}:80", net.public_ip()),
        "/cgi-bin/ip",
        Duration::from_secs(2),
    )
    .expect("public_ip:80 does not answer after fw1's restart");
    assert!(
        response.contains(&format!("client=[::ffff:{}]", net.public_gateway())),
        "{response}"
    );
    // web1 reaches its neighbour, and the host reaches web1.
    assert!(can_connect(&host, "web1", "db1.i:3306"));
    let from_host = http_get(&format!("{}:80", net.ip(21)), "/", Duration::from_secs(2));
    assert!(from_host.is_some(), "the host cannot reach web1");
    let address = host.exec_stdout("web1", &["ip", "-o", "-4", "addr", "show", "eth0"]);
    assert_eq!(address.matches(&net.ip(21)).count(), 1, "{address}");
    assert_eq!(pinned_namespaces(&host).len(), 8);

    // A daemon killed and started again adopts the nodes and finds their sandboxes.
    host.kill_daemon(libc::SIGKILL);
    host.start_daemon();
    host.wait_node_state("web1", "running");
    host.cli(&["restart", "web1"]);
    let again = life(&host, "web1", &web1_links);
    assert_ne!(again.init, after[1].init);
    assert_eq!(again.namespaces[..2], after[1].namespaces[..2]);
    assert_eq!(again.links, after[1].links);
    assert_eq!(pinned_namespaces(&host).len(), 8);

    drop((before, after, again));
    host.cli(&["stop", "fw1", "lb1", "web1", "db1"]);
    host.assert_nothing_left();
    assert_eq!(pinned_namespaces(&host), Vec::<String>::new());
}
