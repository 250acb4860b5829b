//! The shipped lb role for real (as root): haproxy from the `lb` image, built once into an image
//! cache under the target dir that survives between runs, in front of web nodes played by
//! busybox httpd. From the host: requests to lb1 reach every web node; a web node added by
//! reload and one stopped each re-render haproxy.cfg and reload haproxy gracefully (same master,
//! a new worker), a request in flight across a reload completes, 30 requests in a row succeed
//! after a stop; a web node's health reaches the templates without reloading haproxy; the stats
//! page answers on lb1:8404. Timings are printed.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{wait_for, TestHost, AGENT};

/// Real builds are kept here between runs (`cargo clean` removes them).
const IMAGE_CACHE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/image-cache");

/// A cold build of `lb` took 43 s here; the mirror may be slower elsewhere.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// Web nodes as busybox httpd: a page naming the node, a /health_check.php that answers 200
/// while the file exists, and a CGI that answers after 3 s (a request in flight across a
/// reload). The shipped web role's templates and processes are replaced; its health check,
/// tightened, reads the same URL haproxy checks.
const WEB_STAND_IN: &str = r#"
[roles.web]
image = "busybox"
template = []
[[roles.web.process]]
name = "httpd"
command = ["sh", "-c", '''
mkdir -p /var/www/cgi-bin
hostname > /var/www/index.html
echo ok > /var/www/health_check.php
printf '#!/bin/sh\nsleep 3\necho Content-Type: text/plain\necho\necho slow from $(hostname)\n' > /var/www/cgi-bin/slow
chmod +x /var/www/cgi-bin/slow
exec httpd -f -p 80 -h /var/www
''']
[roles.web.health]
http = "http://127.0.0.1:80/health_check.php"
interval = "500ms"
timeout = "1s"
healthy_after = 1
unhealthy_after = 2
"#;

/// lb's shipped haproxy.cfg plus a file listing the running nodes with their health (no reload
/// process: it shows what the templates see).
const LB_EXTRA_TEMPLATE: &str = r#"
[[roles.lb.template]]
source = "lb/haproxy.cfg"
dest = "/etc/haproxy/haproxy.cfg"
reload_process = "haproxy"
reload_signal = "USR2"
[[roles.lb.template]]
source = "health.txt"
dest = "/etc/magestack/health.txt"
"#;

const HEALTH_TXT: &str = "{% for n in nodes %}\n{{ n.name }} {{ n.health }}\n{% endfor %}\n";

fn config(web_nodes: &[&str]) -> String {
    let mut text = String::from("[nodes.lb1]\nrole = \"lb\"\n");
    for web in web_nodes {
        text.push_str(&format!("[nodes.{web}]\nrole = \"web\"\n"));
    }
    text + WEB_STAND_IN + LB_EXTRA_TEMPLATE
}

/// One HTTP/1.0 GET: status code and body, or an error saying what failed.
fn get(address: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .map_err(|e| format!("connect {address}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: lb\r\n\r\n")
        .map_err(|e| format!("send to {address}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read from {address}: {e}"))?;
    parse_response(&response)
}

fn parse_response(response: &str) -> Result<(u16, String), String> {
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_string();
    Ok((code, body))
}

/// The web node that answered `/`: its page is its name.
fn served_by(address: SocketAddr) -> Result<String, String> {
    match get(address, "/")? {
        (200, body) => Ok(body.trim().to_string()),
        (code, body) => Err(format!("status {code}: {body}")),
    }
}

/// haproxy's master (the role process, in-node pid) and its workers (in-node pids).
fn haproxy_pids(host: &TestHost) -> (i64, BTreeSet<i64>) {
    let lb1 = host.node("lb1");
    let master = lb1["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "haproxy")
        .and_then(|p| p["pid"].as_i64())
        .unwrap_or_else(|| panic!("haproxy not running: {lb1:#}"));
    let listing = host.exec_stdout(
        "lb1",
        &[
            "sh",
            "-c",
            "cd /proc && for p in [0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = haproxy ] && echo \"$p $(cut -d' ' -f4 $p/stat)\"; done; true",
        ],
    );
    let workers = listing
        .lines()
        .filter_map(|line| {
            let (pid, ppid) = line.split_once(' ')?;
            (ppid.parse::<i64>().ok()? == master).then(|| pid.parse().ok())?
        })
        .collect();
    (master, workers)
}

fn rendered(host: &TestHost, dest: &str) -> String {
    let path = host
        .run_dir()
        .join("nodes/lb1/templates")
        .join(dest.trim_start_matches('/'));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Waits for haproxy's master to have a worker it did not have in `before` (the reload), and
/// returns the new workers; the master must stay the same process.
fn wait_new_worker(host: &TestHost, master: i64, before: &BTreeSet<i64>) -> BTreeSet<i64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (now_master, workers) = haproxy_pids(host);
        assert_eq!(now_master, master, "haproxy's master was replaced");
        let new: BTreeSet<i64> = workers.difference(before).copied().collect();
        if !new.is_empty() {
            return new;
        }
        assert!(
            Instant::now() < deadline,
            "no new haproxy worker (workers {workers:?}, before {before:?})\n{}",
            haproxy_log(host)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn haproxy_log(host: &TestHost) -> String {
    std::fs::read_to_string(host.log_dir().join("lb1/haproxy.log")).unwrap_or_default()
}

/// Asks `lb` until every node of `expected` has answered (and no other), at most `limit`.
fn wait_served_by(lb: SocketAddr, expected: &[&str], limit: Duration) {
    let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + limit;
    while seen != expected {
        assert!(
            Instant::now() < deadline,
            "requests to lb1 reached {seen:?}, not {expected:?}"
        );
        match served_by(lb) {
            Ok(node) => {
                if expected.contains(&node) {
                    seen.insert(node);
                } else {
                    // Until haproxy's checks pass, a node may still be missing; another is not.
                    panic!("served by {node}, expected only {expected:?}");
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn haproxy_balances_the_running_web_nodes_and_reloads_gracefully() {
    let test_began = Instant::now();
    let image_cache = PathBuf::from(IMAGE_CACHE);
    std::fs::create_dir_all(&image_cache).unwrap();
    let mut host = TestHost::with_image_dir("rolelb", &config(&["web1", "web2"]), &image_cache);
    let templates = host.dir.join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(templates.join("health.txt"), HEALTH_TXT).unwrap();
    assert!(host.cli(&["config", "check"]).contains("ok, 3 nodes"));

    // The image: built once, then found in the cache.
    let began = Instant::now();
    let mut build = Command::new(AGENT)
        .args(["image", "build", "lb", "--config"])
        .arg(&host.config)
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = build.try_wait().unwrap() {
            break status;
        }
        if began.elapsed() > BUILD_TIMEOUT {
            let _ = build.kill();
            let _ = build.wait();
            panic!("image build lb took more than {BUILD_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "image build lb: {status}");
    eprintln!(
        "timing: image build lb (cached in {}): {:.1?}",
        image_cache.display(),
        began.elapsed()
    );

    let began = Instant::now();
    host.start_daemon();
    for node in ["lb1", "web1", "web2"] {
        host.wait_node_state(node, "running");
    }
    eprintln!(
        "timing: daemon start to lb1, web1, web2 running: {:.1?}",
        began.elapsed()
    );
    let version = host.exec_stdout("lb1", &["haproxy", "-v"]);
    assert!(version.contains("HAProxy version 2."), "{version}");
    let lb_ip = host.node("lb1")["ip"].as_str().unwrap().to_string();
    let lb: SocketAddr = format!("{lb_ip}:80").parse().unwrap();

    // Both web nodes serve through lb1.
    let began = Instant::now();
    wait_served_by(lb, &["web1", "web2"], Duration::from_secs(20));
    eprintln!(
        "timing: first answers from web1 and web2 through lb1: {:.1?}",
        began.elapsed()
    );
    let cfg = rendered(&host, "/etc/haproxy/haproxy.cfg");
    for web in ["web1", "web2"] {
        let ip = host.node(web)["ip"].as_str().unwrap().to_string();
        assert!(
            cfg.contains(&format!("    server {web} {ip}:80\n")),
            "{web} not in haproxy.cfg:\n{cfg}"
        );
    }
    assert!(
        cfg.contains("option httpchk GET /health_check.php"),
        "{cfg}"
    );
    assert!(cfg.contains(&format!("bind {lb_ip}:8404")), "{cfg}");
    let in_node = host.exec_stdout("lb1", &["cat", "/etc/haproxy/haproxy.cfg"]);
    assert_eq!(in_node, cfg, "haproxy reads what the agent rendered");
    let (master, workers) = haproxy_pids(&host);
    assert_eq!(workers.len(), 1, "one worker at first: {workers:?}");

    // The stats page, on lb1's own address.
    let (code, page) = get(format!("{lb_ip}:8404").parse().unwrap(), "/").unwrap();
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains("web1") && page.contains("web2") && page.contains("lb1"),
        "stats page: {page}"
    );
    let (code, _) = get(lb, "/haproxy_health").unwrap();
    assert_eq!(code, 200);
    wait_for("lb1 healthy", Duration::from_secs(15), || {
        host.node("lb1")["health"] == "healthy"
    });

    // A request in flight while a web node is added by reload: it completes, answered by the
    // old worker, while a new worker takes over; the master stays.
    let in_flight = std::thread::spawn(move || {
        let began = Instant::now();
        (get(lb, "/cgi-bin/slow"), began.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    host.write_config(&config(&["web1", "web2", "web3"]));
    let began = Instant::now();
    let report = host.cli(&["reload"]);
    assert!(report.contains("started: web3"), "{report}");
    wait_for("haproxy.cfg to list web3", Duration::from_secs(10), || {
        rendered(&host, "/etc/haproxy/haproxy.cfg").contains("server web3 ")
    });
    wait_new_worker(&host, master, &workers);
    eprintln!(
        "timing: reload adding web3 to a new haproxy worker: {:.1?}",
        began.elapsed()
    );
    let (answer, took) = in_flight.join().unwrap();
    let (code, body) = answer.unwrap_or_else(|error| {
        panic!(
            "the request in flight across the reload: {error}\n{}",
            haproxy_log(&host)
        )
    });
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("slow from web"), "{body}");
    assert!(took >= Duration::from_secs(3), "{took:?}");
    eprintln!("timing: request in flight across the reload answered after {took:.1?}");
    let began = Instant::now();
    wait_served_by(lb, &["web1", "web2", "web3"], Duration::from_secs(20));
    eprintln!(
        "timing: web3 in rotation after the reload: {:.1?}",
        began.elapsed()
    );
    // The old worker leaves once its connections are done.
    wait_for(
        "the old haproxy worker to exit",
        Duration::from_secs(10),
        || {
            let (_, now) = haproxy_pids(&host);
            now.is_disjoint(&workers)
        },
    );

    // A web node turning unhealthy reaches the templates (the core follows each init's health);
    // haproxy.cfg does not depend on it, so haproxy is not reloaded: its own checks take the
    // node out and bring it back.
    let health_file = "/etc/magestack/health.txt";
    wait_for("every web node healthy", Duration::from_secs(15), || {
        let text = rendered(&host, health_file);
        ["web1", "web2", "web3"]
            .iter()
            .all(|web| text.contains(&format!("{web} healthy\n")))
    });
    let cfg_before = rendered(&host, "/etc/haproxy/haproxy.cfg");
    let (_, workers_before) = haproxy_pids(&host);
    let began = Instant::now();
    host.exec_stdout("web2", &["rm", "/var/www/health_check.php"]);
    wait_for(
        "health.txt to show web2 unhealthy",
        Duration::from_secs(15),
        || rendered(&host, health_file).contains("web2 unhealthy\n"),
    );
    eprintln!(
        "timing: web2's failing check to the re-rendered template: {:.1?}",
        began.elapsed()
    );
    assert_eq!(host.node("web2")["health"], "unhealthy");
    // haproxy's own checks (inter 2s, fall 2) take it out: only web1 and web3 answer then.
    std::thread::sleep(Duration::from_secs(5));
    for _ in 0..12 {
        let node = served_by(lb).unwrap();
        assert_ne!(node, "web2", "an unhealthy web node still served");
    }
    host.exec_stdout("web2", &["sh", "-c", "echo ok > /var/www/health_check.php"]);
    wait_for(
        "health.txt to show web2 healthy",
        Duration::from_secs(15),
        || rendered(&host, health_file).contains("web2 healthy\n"),
    );
    assert_eq!(rendered(&host, "/etc/haproxy/haproxy.cfg"), cfg_before);
    assert_eq!(
        haproxy_pids(&host),
        (master, workers_before.clone()),
        "a health change reloaded haproxy"
    );
    wait_served_by(lb, &["web1", "web2", "web3"], Duration::from_secs(20));

    // `stop web1`: dropped from haproxy.cfg at once, haproxy reloaded, and every request after
    // that succeeds, from the others.
    let began = Instant::now();
    host.cli(&["stop", "web1"]);
    let stopped = began.elapsed();
    let cfg = rendered(&host, "/etc/haproxy/haproxy.cfg");
    assert!(!cfg.contains("web1"), "web1 still in haproxy.cfg:\n{cfg}");
    assert!(cfg.contains("server web2 ") && cfg.contains("server web3 "));
    wait_new_worker(&host, master, &workers_before);
    eprintln!(
        "timing: stop web1 {stopped:.1?}; haproxy reloaded {:.1?} after the stop began",
        began.elapsed()
    );
    let began = Instant::now();
    for i in 0..30 {
        match served_by(lb) {
            Ok(node) => assert!(node == "web2" || node == "web3", "request {i}: {node}"),
            Err(error) => panic!("request {i} after stop web1 failed: {error}"),
        }
    }
    eprintln!(
        "timing: 30 requests after stop web1: {:.1?}",
        began.elapsed()
    );
    assert!(
        host.node("lb1")["error"].is_null(),
        "{:#}",
        host.node("lb1")
    );

    // Each reload loaded, and each former worker left on its own once its connections ended.
    let log = haproxy_log(&host);
    assert!(!log.contains("[ALERT]"), "{log}");
    // One load at the start and one per reload; how many reloads there were depends on whether
    // web1 and web2 were already running when lb1 first rendered its configuration.
    let reloads = log.matches("Reloading HAProxy").count();
    assert!(reloads >= 2, "{log}");
    assert_eq!(
        log.matches("Loading success.").count(),
        reloads + 1,
        "{log}"
    );
    // A former worker leaves once its last connection ends; one to web1 as it vanished may
    // wait for haproxy's `timeout server` (60 s) before it gives up.
    wait_for(
        "every former worker to exit",
        Duration::from_secs(70),
        || {
            haproxy_log(&host)
                .matches("exited with code 0 (Exit)")
                .count()
                == reloads
        },
    );
    eprintln!("timing: whole test {:.1?}", test_began.elapsed());
}
