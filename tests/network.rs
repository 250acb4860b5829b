//! The internal network: planned addresses, names, fw1's public entry with DNAT keeping the
//! client address, masquerade (over the host veth and over a real uplink with a macvlan), the
//! DOS filter, the inter-node policy, reload, clean-up.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::{wait_for, TestHost, DB_STAND_IN, LB_STAND_IN, WEB_STAND_IN};

/// fw1, lb1 (busybox httpd with a CGI that prints the client address), web1, db1.
fn stack(name: &str, extra: &str) -> TestHost {
    stack_with(name, extra, |_| {})
}

/// [`stack`], with `prepare` run on the host before its daemon starts.
fn stack_with(name: &str, extra: &str, prepare: impl FnOnce(&TestHost)) -> TestHost {
    let mut host = TestHost::new(
        name,
        &format!(
            r#"
[nodes.fw1]
role = "fw"
[nodes.lb1]
role = "lb"
[nodes.web1]
role = "web"
[nodes.db1]
role = "db"
{LB_STAND_IN}{DB_STAND_IN}{WEB_STAND_IN}
{extra}"#
        ),
    );
    prepare(&host);
    host.start_daemon();
    for node in ["fw1", "lb1", "web1", "db1"] {
        host.wait_node_state(node, "running");
    }
    host.exec_stdout(
        "lb1",
        &[
            "sh",
            "-c",
            "mkdir -p /var/www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho client=$REMOTE_ADDR\\n' > /var/www/cgi-bin/ip && chmod +x /var/www/cgi-bin/ip",
        ],
    );
    host
}

/// One HTTP GET with short, bounded timeouts; the body, or None if the connection failed.
fn http_get(address: &str, path: &str, timeout: Duration) -> Option<String> {
    let address: SocketAddr = address.parse().unwrap();
    let mut stream = TcpStream::connect_timeout(&address, timeout).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// Whether `from` gets an answer over TCP from `target` (`host:port`) within one second (the
/// test servers echo, or answer a stray line with an HTTP error).
fn can_connect(host: &TestHost, from: &str, target: &str) -> bool {
    let (name, port) = target.split_once(':').unwrap();
    host.exec(
        from,
        &[
            "sh",
            "-c",
            &format!("echo ping | nc -w 1 {name} {port} | grep -q ."),
        ],
    )
    .status
    .success()
}

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

    // web1 opens a connection out: it leaves fw1 with fw1's public address.
    let listener = TcpListener::bind(format!("{}:0", net.public_gateway())).unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    // The listener is read only after exec returns: bound nc's life with timeout.
    let connect = format!(
        "echo out | timeout 2 nc -w 1 {} {port}",
        net.public_gateway()
    );
    let _ = host.exec("web1", &["sh", "-c", &connect]);
    let mut peer = None;
    for _ in 0..50 {
        if let Ok((_, address)) = listener.accept() {
            peer = Some(address);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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

/// The world beyond a real uplink: a network namespace held by a sleeping process, reached from
/// the host through a veth whose host end is the uplink fw1's macvlan sits on; the far end holds
/// the public gateway's address. Removed on drop.
struct Outside {
    holder: std::process::Child,
    uplink: String,
}

impl Outside {
    fn new(host: &TestHost) -> Outside {
        let holder = std::process::Command::new("unshare")
            .args(["--net", "sleep", "120"])
            .spawn()
            .unwrap();
        let outside = Outside {
            uplink: format!("{}up", host.net.link_prefix),
            holder,
        };
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        wait_for("the outside namespace", Duration::from_secs(5), || {
            std::fs::read_link(outside.netns()).is_ok_and(|ns| ns != ours)
        });
        let pid = outside.holder.id().to_string();
        run(&[
            "ip",
            "link",
            "add",
            &outside.uplink,
            "type",
            "veth",
            "peer",
            "name",
            "wan",
            "netns",
            &pid,
        ]);
        run(&["ip", "link", "set", &outside.uplink, "up"]);
        let gateway = format!("{}/24", host.net.public_gateway());
        outside.run(&["ip", "addr", "add", &gateway, "dev", "wan"]);
        outside.run(&["ip", "link", "set", "wan", "up"]);
        outside.run(&["ip", "link", "set", "lo", "up"]);
        outside
    }

    fn netns(&self) -> String {
        format!("/proc/{}/ns/net", self.holder.id())
    }

    /// Moves the calling thread into the outside namespace (sockets it opens belong there).
    fn enter(&self) {
        let netns = std::fs::File::open(self.netns()).unwrap();
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    }

    /// `work` on a thread in the outside namespace.
    fn within<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.enter();
                    work()
                })
                .join()
                .unwrap()
        })
    }

    /// A command in the outside namespace; its standard output.
    fn run(&self, command: &[&str]) -> String {
        let netns = format!("--net={}", self.netns());
        let mut args = vec!["nsenter", netns.as_str()];
        args.extend_from_slice(command);
        run(&args)
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.uplink])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

fn run(command: &[&str]) -> String {
    let output = std::process::Command::new(command[0])
        .args(&command[1..])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A production uplink (`uplink = "<interface>"`): fw1's public side is a macvlan on it, in
/// fw1's namespace, and the outside reaches lb1 through it (client address kept) while a node's
/// outbound connection leaves with the public address.
#[test]
fn on_a_real_uplink_fw1_gets_a_macvlan_the_outside_reaches_lb1_through() {
    let mut outside = None;
    let host = stack_with("netuplink", "", |host| {
        let world = Outside::new(host);
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
    let (port_sender, port) = std::sync::mpsc::channel();
    let peer = std::thread::scope(|scope| {
        let listening = scope.spawn(|| {
            outside.enter();
            let listener = TcpListener::bind(format!("{gateway}:0")).unwrap();
            port_sender
                .send(listener.local_addr().unwrap().port())
                .unwrap();
            listener.set_nonblocking(true).unwrap();
            (0..150).find_map(|_| match listener.accept() {
                Ok((_, peer)) => Some(peer),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(20));
                    None
                }
            })
        });
        let port = port.recv().unwrap();
        let connect = format!("echo out | timeout 2 nc -w 1 {gateway} {port}");
        let _ = host.exec("web1", &["sh", "-c", &connect]);
        listening.join().unwrap()
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
    let table = std::process::Command::new("nft")
        .args([
            "list",
            "table",
            "inet",
            &format!("magestack_{}", host.net.bridge),
        ])
        .output()
        .unwrap();
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
