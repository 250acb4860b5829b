//! The MageStack stack end to end on its real images (as root): from the host, a request to the
//! public address goes fw1 (DNAT) -> lb1 (haproxy) -> web1/web2 (nginx + php-fpm) -> db1
//! (MariaDB and both Redis instances) and back, with mail1 (Postfix) and acc1 (sshd) running
//! beside them, monit watching them all; a file web1's www-data puts in the shared media volume is served by web2;
//! stopping web1 takes it out of rotation without a failed request, starting it brings it back.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::descriptors::foreign_descriptors;
use common::stack::{build_images, cached_host, get, ip, wait_processes, wait_running};
use common::TestHost;

const STACK: &str = r#"
[nodes.fw1]
role = "fw"
[nodes.lb1]
role = "lb"
[nodes.web1]
role = "web"
[nodes.web2]
role = "web"
[nodes.db1]
role = "db"
[nodes.mail1]
role = "mail"
[nodes.acc1]
role = "acc"
[nodes.monitor1]
role = "monitor"
"#;

const NODES: [&str; 8] = [
    "fw1", "lb1", "web1", "web2", "db1", "mail1", "acc1", "monitor1",
];

/// The web nodes that answered `rounds` requests to the public address with 200.
fn web_nodes_answering(public_ip: &str, rounds: usize) -> BTreeSet<String> {
    (0..rounds)
        .filter_map(|_| get(public_ip, "/health_check.php").ok())
        .filter(|response| response.status == 200)
        .filter_map(|response| response.header("magestack-web-node").map(String::from))
        .collect()
}

/// Polls the public address until every web node in `webs` answers 200 (db1 initialises its
/// datadir first, and haproxy needs two good checks to take a server in); on time-out, shows
/// what the nodes and lb1 said.
fn wait_in_rotation(host: &TestHost, public_ip: &str, webs: &[&str], limit: Duration) {
    let wanted: BTreeSet<String> = webs.iter().map(|web| web.to_string()).collect();
    let deadline = Instant::now() + limit;
    loop {
        let answering = web_nodes_answering(public_ip, 6);
        if answering.is_superset(&wanted) {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "{wanted:?} not all in rotation after {limit:?} (answering: {answering:?})\n{}\n{}",
                host.cli(&["status"]),
                host.cli(&["logs", "lb1", "-n", "40"])
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_request_from_outside_goes_through_fw_lb_and_web_to_the_database() {
    let mut host = cached_host("stack", STACK);
    build_images(&host, &["lb", "web", "db", "mail", "acc", "monitor"]);
    let began = Instant::now();
    host.start_daemon();
    for node in NODES {
        wait_running(&host, node, Duration::from_secs(120));
    }
    eprintln!(
        "timing: daemon start to every node running: {:?}",
        began.elapsed()
    );
    wait_processes(&host, "db1", &["mariadbd", "redis-server"]);
    wait_processes(&host, "lb1", &["haproxy"]);
    wait_processes(&host, "mail1", &["master"]);
    wait_processes(&host, "acc1", &["sshd"]);
    wait_processes(&host, "monitor1", &["monit"]);
    for web in ["web1", "web2"] {
        wait_processes(&host, web, &["nginx", "php-fpm8.2"]);
    }

    let public_ip = host.net.public_ip();
    wait_in_rotation(
        &host,
        &public_ip,
        &["web1", "web2"],
        Duration::from_secs(120),
    );
    eprintln!(
        "timing: daemon start to both web nodes answering from outside: {:?}",
        began.elapsed()
    );
    // Every process of every shipped role holds only what is its node's own.
    for node in NODES {
        let foreign = foreign_descriptors(&host, node);
        assert!(
            foreign.is_empty(),
            "host descriptors in {node}: {foreign:#?}"
        );
    }
    let health = get(&public_ip, "/health_check.php").unwrap();
    assert_eq!(health.status, 200, "{health:?}");
    for checked in ["ok", "mysql", "redis-cache", "redis-session"] {
        assert!(
            health.body.contains(checked),
            "{checked} not reported: {}",
            health.body
        );
    }

    // The media volume is one for both web nodes: an upload through web1 is served by web2.
    let upload = host.try_cli(&[
        "exec",
        "--user",
        "www-data",
        "web1",
        "--",
        "sh",
        "-c",
        "echo shared-upload > /var/www/media/upload.txt",
    ]);
    assert!(
        upload.status.success(),
        "www-data writes in web1's media: {}",
        String::from_utf8_lossy(&upload.stderr)
    );
    let served = get(&ip(&host, "web2"), "/media/upload.txt").unwrap();
    assert_eq!(
        (served.status, served.body.as_str()),
        (200, "shared-upload\n")
    );
    assert_eq!(served.header("magestack-web-node"), Some("web2"));

    host.cli(&["stop", "web1"]);
    // haproxy is reloaded without web1 as soon as it stopped.
    let stopped = Instant::now();
    for round in 0..30 {
        let response = get(&public_ip, "/health_check.php")
            .unwrap_or_else(|error| panic!("request {round} after stopping web1: {error}"));
        assert_eq!(response.status, 200, "request {round}: {response:?}");
        assert_eq!(response.header("magestack-web-node"), Some("web2"));
    }
    eprintln!(
        "timing: 30 requests after stopping web1: {:?}",
        stopped.elapsed()
    );

    host.cli(&["start", "web1"]);
    wait_in_rotation(
        &host,
        &public_ip,
        &["web1", "web2"],
        Duration::from_secs(60),
    );
}
