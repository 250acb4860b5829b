//! The shipped web role with its real image (as root): nginx and php-fpm run in web1, every
//! response carries `MageStack-Web-Node: web1`, and `/health_check.php` answers 503 naming MariaDB
//! and both Redis instances while the db node serves none of them (the node stays running and
//! shows `unhealthy`), and 200 `ok` against a real db node. Requests go from the host to web1's
//! address on the test bridge.
//!
//! Images are built once into `target/tmp/image-cache` (the test state dir's `images` is a link
//! to it), so later runs start from the cached build. Timings are printed.

mod common;

use std::time::{Duration, Instant};

use common::stack::{
    build_images, cached_host as host, first_answer, get, ip, processes, wait_running,
    BUILD_TIMEOUT,
};
use common::{wait_for, TestHost};

fn assert_web_processes(host: &TestHost, node: &str) {
    // Masters as root, workers as www-data (php-fpm forks its pool just after it starts).
    let expected = [
        "root nginx",
        "www-data nginx",
        "root php-fpm8.2",
        "www-data php-fpm8.2",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ps = processes(host, node);
        let missing: Vec<_> = expected
            .iter()
            .filter(|e| !ps.iter().any(|l| l == *e))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing:?} not running in {node}: {ps:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = host.node(node);
    for name in ["nginx", "php-fpm"] {
        let process = status["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no process {name}: {status:#}"));
        assert_eq!(process["state"], "running", "{status:#}");
    }
}

/// A db1 that serves nothing: busybox sleeping, reachable (the db role's allow rules let web
/// through, so connections are refused at once instead of timing out). Health checks every
/// second so `unhealthy` shows quickly.
const NO_DB: &str = r#"
[nodes.web1]
role = "web"
[nodes.db1]
role = "db"

[roles.web.health]
interval = "1s"

[roles.db]
image = "busybox"
template = []
[[roles.db.process]]
name = "sleep"
command = ["sleep", "1000000"]
[roles.db.health]
tcp = 3306
"#;

#[test]
fn web_serves_its_name_and_reports_a_missing_database_as_503() {
    let test_began = Instant::now();
    let mut host = host("rweb", NO_DB);
    assert!(host.cli(&["config", "check"]).contains("ok, 2 nodes"));
    build_images(&host, &["web"]);

    let began = Instant::now();
    host.start_daemon();
    let running = wait_running(&host, "web1", BUILD_TIMEOUT);
    wait_running(&host, "db1", Duration::from_secs(20));
    let web1 = ip(&host, "web1");
    let index = first_answer(&web1, "/", Duration::from_secs(20));
    eprintln!(
        "timing: daemon start -> web1 running {running:.2?}, -> first answer of nginx {:.2?}",
        began.elapsed()
    );

    // Any answer names the node, the static index as well as a 404.
    assert_eq!(index.status, 200, "{}", index.body);
    assert_eq!(index.header("magestack-web-node"), Some("web1"));
    assert_eq!(index.body, "MageStack web node\n");
    let missing = get(&web1, "/no-such-page").unwrap();
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("magestack-web-node"), Some("web1"));

    assert_web_processes(&host, "web1");

    // PHP runs under /var/www; what lands in the media volume is only ever served as a file.
    host.exec_stdout(
        "web1",
        &[
            "sh",
            "-c",
            "echo '<?php echo 6 * 7, \"\\n\";' | tee /var/www/answer.php > /var/www/media/answer.php",
        ],
    );
    let php = get(&web1, "/answer.php").unwrap();
    assert_eq!((php.status, php.body.as_str()), (200, "42\n"));
    assert_eq!(php.header("magestack-web-node"), Some("web1"));
    let media = get(&web1, "/media/answer.php").unwrap();
    assert_eq!(media.status, 200);
    assert!(media.body.starts_with("<?php"), "{}", media.body);
    let mounts = host.exec_stdout("web1", &["cat", "/proc/self/mountinfo"]);
    assert!(
        mounts
            .lines()
            .any(|l| l.split(' ').nth(4) == Some("/var/www/media")),
        "the media volume is not mounted: {mounts}"
    );

    // A real tool that reopens /dev/stderr and /dev/stdout works through `exec` without a
    // terminal: `nginx -T` tests the configuration, then dumps it.
    let dump = host.exec("web1", &["nginx", "-T"]);
    let stderr = String::from_utf8_lossy(&dump.stderr);
    assert!(dump.status.success(), "nginx -T: {stderr}");
    assert!(stderr.contains("test is successful"), "{stderr}");
    let config = String::from_utf8_lossy(&dump.stdout);
    assert!(
        config.contains("# configuration file /etc/nginx/nginx.conf:"),
        "{config}"
    );

    // nginx logs its requests to its output, which the agent keeps.
    let log = host.cli(&["logs", "web1", "nginx"]);
    assert!(log.contains("\"GET /answer.php HTTP/1.0\" 200"), "{log}");

    // The rendered backends name the configured db node and the db role's credentials.
    let ini = host.exec_stdout("web1", &["cat", "/etc/magestack/web.ini"]);
    for line in [
        "host = \"db1.i\"",
        "user = \"magento\"",
        "password = \"magento\"",
        "database = \"magento\"",
        "port = 6379",
        "port = 6380",
    ] {
        assert!(ini.lines().any(|l| l == line), "`{line}` not in:\n{ini}");
    }

    // PHP runs the check: every backend refused, each named, 503.
    let began = Instant::now();
    let health = get(&web1, "/health_check.php").unwrap();
    eprintln!(
        "timing: /health_check.php with no backends: {:.0?}",
        began.elapsed()
    );
    assert_eq!(health.status, 503, "{}", health.body);
    assert_eq!(health.header("magestack-web-node"), Some("web1"));
    let mut lines = health.body.lines();
    assert_eq!(
        lines.next(),
        Some("fail: mysql redis-cache redis-session"),
        "{}",
        health.body
    );
    for (name, target) in [
        ("mysql", "magento@db1.i:3306/magento"),
        ("redis-cache", "db1.i:6379"),
        ("redis-session", "db1.i:6380"),
    ] {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("no {name} line: {}", health.body));
        assert!(
            line.starts_with(&format!("{name} {target}: ")) && !line.ends_with(": ok"),
            "{line}"
        );
        assert!(line.contains("refused"), "{line}");
    }

    // The node's own health check sees the 503: unhealthy, still running, processes untouched.
    let pid = host.node_pid("web1");
    wait_for("web1 to be unhealthy", Duration::from_secs(20), || {
        host.node("web1")["health"] == "unhealthy"
    });
    let status = host.node("web1");
    assert_eq!(status["state"], "running", "{status:#}");
    assert_eq!(host.node_pid("web1"), pid);
    assert!(
        status["error"].as_str().unwrap_or_default().contains("503"),
        "{status:#}"
    );
    assert_web_processes(&host, "web1");

    eprintln!("{}", host.cli(&["logs", "web1", "-n", "30"]));
    host.cli(&["stop", "web1", "db1"]);
    host.assert_nothing_left();
    eprintln!("timing: whole test {:.1?}", test_began.elapsed());
}

/// web1 and a real db1 (MariaDB and both Redis from the db image).
const WITH_DB: &str = r#"
[nodes.web1]
role = "web"
[nodes.db1]
role = "db"

[roles.web.health]
interval = "1s"
"#;

#[test]
fn web_health_check_is_ok_against_a_real_db_node() {
    let test_began = Instant::now();
    let mut host = host("rwebdb", WITH_DB);
    build_images(&host, &["web", "db"]);

    let began = Instant::now();
    host.start_daemon();
    wait_running(&host, "db1", BUILD_TIMEOUT);
    wait_running(&host, "web1", BUILD_TIMEOUT);
    let web1 = ip(&host, "web1");
    first_answer(&web1, "/", Duration::from_secs(20));
    eprintln!(
        "timing: daemon start -> web1 and db1 running, nginx answering: {:.2?}",
        began.elapsed()
    );

    // MariaDB initialises its datadir at the first start: wait for the check to pass.
    let began = Instant::now();
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let health = get(&web1, "/health_check.php").unwrap();
        if health.status == 200 {
            last = Some(health);
            break;
        }
        last = Some(health);
        std::thread::sleep(Duration::from_millis(500));
    }
    let health = last.unwrap();
    assert_eq!(
        health.status,
        200,
        "{}\n{}",
        health.body,
        host.cli(&["logs", "db1", "-n", "40"])
    );
    eprintln!(
        "timing: web1 running -> /health_check.php 200: {:.1?}",
        began.elapsed()
    );
    assert_eq!(health.header("magestack-web-node"), Some("web1"));
    assert_eq!(
        health.body,
        "ok\nmysql magento@db1.i:3306/magento: ok\nredis-cache db1.i:6379: ok\nredis-session db1.i:6380: ok\n"
    );
    wait_for("web1 to be healthy", Duration::from_secs(20), || {
        host.node("web1")["health"] == "healthy"
    });
    assert_web_processes(&host, "web1");

    // A db node that goes away: nothing answers at its address any more, and each check gives
    // up after its 1 s timeout, well inside the role's 5 s health timeout.
    host.cli(&["stop", "db1"]);
    let began = Instant::now();
    let health = get(&web1, "/health_check.php").unwrap();
    let took = began.elapsed();
    eprintln!("timing: /health_check.php with db1 stopped: {took:.1?}");
    assert_eq!(health.status, 503, "{}", health.body);
    assert!(
        health
            .body
            .starts_with("fail: mysql redis-cache redis-session\n"),
        "{}",
        health.body
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    wait_for("web1 to be unhealthy", Duration::from_secs(20), || {
        host.node("web1")["health"] == "unhealthy"
    });

    host.cli(&["stop", "web1"]);
    host.assert_nothing_left();
    eprintln!("timing: whole test {:.1?}", test_began.elapsed());
}
