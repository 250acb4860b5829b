//! The shipped mail role on its real image (as root): Postfix's master and its resident services
//! run in mail1; a node of the host (a busybox node, `c1`) talks SMTP to mail1:25 with `nc` and
//! may relay to an outside address (250 after RCPT TO, the message queued); the host itself,
//! although on the internal bridge, is not in `mynetworks` and is refused relaying (554 Relay
//! access denied) while mail for nobody's domain is never delivered locally; the health check
//! (tcp 25) passes, and the node stops clean.
//!
//! Why the host may not relay: what the host sends to a node, and whatever a masquerading rule
//! on it forwards, arrives from the host's bridge address; letting that address relay could make
//! an open relay of mail1. Only the nodes' own addresses (and loopback) are in `mynetworks`.
//!
//! The image is built once into `target/tmp/image-cache` (see tests/common/stack.rs); a cold
//! build took about 30 s here. Timings are printed.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::stack::{build_images, cached_host, ip, wait_processes, wait_running};
use common::{wait_for, TestHost, SLEEPER_ROLE};

/// One SMTP conversation from the host: each command with the reply it got (the last line of a
/// multi-line reply), after the greeting.
fn smtp_from_host(address: &str, commands: &[&str]) -> (String, Vec<String>) {
    let stream =
        TcpStream::connect_timeout(&address.parse().unwrap(), Duration::from_secs(2)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut reply = || -> String {
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert!(!line.is_empty(), "the server closed the connection");
            // "250-..." continues a reply, "250 ..." ends it.
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.trim_end().to_string();
            }
        }
    };
    let greeting = reply();
    let replies = commands
        .iter()
        .map(|command| {
            writer
                .write_all(format!("{command}\r\n").as_bytes())
                .unwrap();
            reply()
        })
        .collect();
    (greeting, replies)
}

/// The same conversation from `node` with busybox `nc`, paced so no command goes before the
/// server's reply to the one before it; everything the server said.
fn smtp_from_node(host: &TestHost, node: &str, server: &str, commands: &[&str]) -> String {
    let script: String = commands
        .iter()
        .map(|command| format!("sleep 0.4; printf '%s\\r\\n' '{command}'; "))
        .collect();
    host.exec_stdout(
        node,
        &[
            "sh",
            "-c",
            &format!("({script}sleep 1) | nc -w 5 {server} 25"),
        ],
    )
}

#[test]
fn mail_role_relays_for_the_nodes_and_not_for_others() {
    let test_began = Instant::now();
    let mut host = cached_host(
        "rolemail",
        &format!("[nodes.mail1]\nrole = \"mail\"\n[nodes.c1]\nrole = \"sleeper\"\n{SLEEPER_ROLE}"),
    );
    build_images(&host, &["mail"]);

    let began = Instant::now();
    host.start_daemon();
    let running = wait_running(&host, "mail1", Duration::from_secs(60));
    wait_running(&host, "c1", Duration::from_secs(20));
    // master and its resident services (qmgr, pickup; smtpd comes per connection).
    wait_processes(&host, "mail1", &["master", "qmgr", "pickup"]);
    let up = began.elapsed();
    eprintln!("timing: mail1 running after {running:.2?}, master, qmgr and pickup after {up:.2?}");
    let mail1 = ip(&host, "mail1");
    let c1 = ip(&host, "c1");
    let host_ip = host.net.host_ip();

    // The rendered main.cf: loopback and every node may relay, the host's address may not.
    let networks = host.exec_stdout("mail1", &["postconf", "-h", "mynetworks"]);
    let networks: Vec<&str> = networks.split_whitespace().collect();
    assert_eq!(
        networks,
        ["127.0.0.0/8", &format!("{c1}/32"), &format!("{mail1}/32")],
        "nodes in name order"
    );
    assert_eq!(
        host.exec_stdout("mail1", &["postconf", "-h", "myhostname"])
            .trim(),
        "mail1.i"
    );

    // From c1: the server greets, and relays to an outside address.
    let began = Instant::now();
    let conversation = [
        "EHLO c1.i",
        "MAIL FROM:<shop@c1.i>",
        "RCPT TO:<customer@example.com>",
        "DATA",
        "Subject: order 1",
        "",
        "thanks",
        ".",
        "QUIT",
    ];
    let said = smtp_from_node(&host, "c1", &mail1, &conversation);
    eprintln!("timing: SMTP conversation from c1: {:.2?}", began.elapsed());
    let lines: Vec<&str> = said.lines().map(str::trim_end).collect();
    assert!(
        lines
            .first()
            .is_some_and(|l| l.starts_with("220 mail1.i ESMTP")),
        "{said}"
    );
    let ends: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .collect();
    assert_eq!(
        ends.len(),
        7,
        "one reply per command after the greeting: {said}"
    );
    assert!(ends[1].starts_with("250 "), "EHLO: {said}");
    assert!(ends[2].starts_with("250 2.1.0"), "MAIL FROM: {said}");
    assert!(
        ends[3].starts_with("250 2.1.5"),
        "a node may relay to an outside address: {said}"
    );
    assert!(ends[4].starts_with("354 "), "DATA: {said}");
    assert!(ends[5].starts_with("250 2.0.0 Ok: queued as"), "{said}");
    assert!(ends[6].starts_with("221 "), "QUIT: {said}");
    let queue_id = ends[5].rsplit(' ').next().unwrap().to_string();
    // The message waits in the queue (no DNS for example.com from the node): deferred, not lost.
    wait_for(
        "the message in mail1's queue",
        Duration::from_secs(10),
        || {
            host.exec_stdout("mail1", &["postqueue", "-p"])
                .contains(&queue_id)
        },
    );
    let logs = host.cli(&["logs", "mail1", "postfix", "-n", "200"]);
    assert!(
        logs.contains(&format!("{queue_id}: client=c1.i[{c1}]")),
        "postfix logs to the node's log, naming c1 by its .i name: {logs}"
    );

    // From the host (on the bridge, but not a node): no relaying, no local delivery either.
    let began = Instant::now();
    let (greeting, replies) = smtp_from_host(
        &format!("{mail1}:25"),
        &[
            "EHLO host.example",
            "MAIL FROM:<someone@host.example>",
            "RCPT TO:<customer@example.com>",
            "RCPT TO:<root@mail1.i>",
            "QUIT",
        ],
    );
    eprintln!(
        "timing: SMTP conversation from the host: {:.2?}",
        began.elapsed()
    );
    assert!(greeting.starts_with("220 mail1.i ESMTP"), "{greeting}");
    assert!(replies[0].starts_with("250 "), "{replies:?}");
    assert!(replies[1].starts_with("250 2.1.0"), "{replies:?}");
    assert!(
        replies[2].starts_with("554 5.7.1") && replies[2].contains("Relay access denied"),
        "the host ({host_ip}) may not relay: {replies:?}"
    );
    assert!(
        replies[3].starts_with("554 5.7.1") && replies[3].contains("Relay access denied"),
        "nothing is delivered locally: {replies:?}"
    );
    assert!(replies[4].starts_with("221 "), "{replies:?}");

    // A node added by a reload may relay too: main.cf is rendered again and master re-reads it
    // on SIGHUP, without a restart.
    let master = host.node_pid("mail1");
    let postfix_pid = host.exec_stdout("mail1", &["pgrep", "-x", "master"]);
    let body = format!(
        "[nodes.mail1]\nrole = \"mail\"\n[nodes.c1]\nrole = \"sleeper\"\n[nodes.c2]\nrole = \"sleeper\"\n{SLEEPER_ROLE}"
    );
    host.write_config(&body);
    let began = Instant::now();
    let report = host.cli(&["reload"]);
    assert!(report.contains("started: c2"), "{report}");
    wait_running(&host, "c2", Duration::from_secs(20));
    let c2 = ip(&host, "c2");
    wait_for("postfix to take c2 in", Duration::from_secs(10), || {
        host.cli(&["logs", "mail1", "postfix", "-n", "50"])
            .contains("reload -- version")
    });
    eprintln!(
        "timing: reload adding c2 until master re-read main.cf: {:.2?}",
        began.elapsed()
    );
    assert!(host
        .exec_stdout("mail1", &["postconf", "-h", "mynetworks"])
        .contains(&format!("{c2}/32")),);
    assert_eq!(host.node_pid("mail1"), master, "mail1 was restarted");
    assert_eq!(
        host.exec_stdout("mail1", &["pgrep", "-x", "master"]),
        postfix_pid,
        "master was restarted"
    );
    // The reload is graceful: an smtpd already running finishes with the old settings, so
    // the first connection may still meet one; a new one follows within seconds.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let said = smtp_from_node(
            &host,
            "c2",
            &mail1,
            &[
                "EHLO c2.i",
                "MAIL FROM:<shop@c2.i>",
                "RCPT TO:<customer@example.com>",
                "QUIT",
            ],
        );
        if said.contains("250 2.1.5") {
            break;
        }
        assert!(
            said.contains("554 5.7.1") && Instant::now() < deadline,
            "c2 may relay: {said}"
        );
    }
    eprintln!(
        "timing: c2 relays {:.2?} after the reload began",
        began.elapsed()
    );

    // The health check (tcp 25) passes.
    let began = Instant::now();
    wait_for("mail1 healthy", Duration::from_secs(40), || {
        host.node("mail1")["health"] == "healthy"
    });
    eprintln!("timing: mail1 healthy {:.1?} later", began.elapsed());

    // master stops its services on the agent's SIGTERM: a clean stop, well within the timeout.
    let began = Instant::now();
    host.cli(&["stop", "mail1"]);
    eprintln!("timing: stop mail1: {:.2?}", began.elapsed());
    // (Its last words go to postlogd, which stops with it: the stop's speed is the evidence.)
    let stopped = began.elapsed();
    assert!(
        stopped < Duration::from_millis(1500),
        "master did not stop on SIGTERM within the 2 s stop timeout: {stopped:?}"
    );
    host.cli(&["stop", "c1", "c2"]);
    host.assert_nothing_left();
    eprintln!("timing: whole test {:.1?}", test_began.elapsed());
}
