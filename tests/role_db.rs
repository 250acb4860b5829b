//! The shipped db role on its real image (as root): mariadbd and two separate redis-server
//! instances run in db1, each with its data on its own volume; the datadir is initialised at the
//! first start, the `magento` account reaches its database over TCP, both Redis instances answer,
//! the health check passes, data written before a `restart` is read back after it, and the
//! volumes on the host belong to the node's shifted ids.
//!
//! The image is built once into `target/tmp/image-cache` (kept between test runs, removed by
//! `cargo clean`): the test host's `state_dir/images` is a symbolic link to it, so the image
//! store finds earlier builds there and nothing else of the state dir is shared. A cold build
//! takes about a minute here; timings are printed.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::stack::{build_images, cached_host, wait_running};
use common::{wait_for, TestHost};

/// How long mariadbd and Redis get to come up (the first start initialises the datadir).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

const MAGENTO_PASSWORD: &str = "magento";

/// The test host's stop timeout (2 s) could cut a loaded mariadbd's clean shutdown short; this
/// test checks the restart is clean, so it gives the servers what a real host would.
fn lengthen_stop_timeout(host: &TestHost) {
    let text = std::fs::read_to_string(&host.config).unwrap();
    assert!(text.contains("stop_timeout = \"2s\""), "{text}");
    std::fs::write(
        &host.config,
        text.replace("stop_timeout = \"2s\"", "stop_timeout = \"30s\""),
    )
    .unwrap();
}

/// Waits until mariadbd answers on its socket and both Redis instances answer PING.
fn wait_servers(host: &TestHost, node: &str) {
    let deadline = Instant::now() + READY_TIMEOUT;
    for (command, answer) in [
        (&["mariadb-admin", "ping"][..], "mysqld is alive"),
        (&["redis-cli", "-p", "6379", "ping"], "PONG"),
        (&["redis-cli", "-p", "6380", "ping"], "PONG"),
    ] {
        loop {
            let output = host.exec(node, command);
            if output.status.success() && String::from_utf8_lossy(&output.stdout).contains(answer) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{command:?} never answered in {node}: {output:?}\n{}",
                String::from_utf8_lossy(&host.try_cli(&["logs", node, "-n", "40"]).stdout)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The output of one SQL statement through the client in the node, over TCP to `address` as
/// `magento` when given, else over the socket as the node's root.
fn sql(host: &TestHost, node: &str, address: Option<&str>, statement: &str) -> String {
    let password = format!("-p{MAGENTO_PASSWORD}");
    let mut command = vec!["mariadb", "--batch", "--skip-column-names"];
    if let Some(address) = address {
        command.extend(["-h", address, "-P", "3306", "-u", "magento", &password]);
    }
    command.extend(["magento", "-e", statement]);
    host.exec_stdout(node, &command)
}

fn redis(host: &TestHost, node: &str, port: &str, args: &[&str]) -> String {
    let mut command = vec!["redis-cli", "-p", port];
    command.extend_from_slice(args);
    host.exec_stdout(node, &command).trim().to_string()
}

/// The host id the node's root maps to (`0 <host> <count>` in its init's uid map).
fn node_root_on_host(pid: i32) -> u32 {
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    let fields: Vec<u32> = map.split_whitespace().map(|f| f.parse().unwrap()).collect();
    assert_eq!(fields[0], 0, "{map}");
    fields[1]
}

fn owner(path: &Path) -> (u32, u32) {
    let metadata = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (metadata.uid(), metadata.gid())
}

/// `id -u USER` and `id -g USER` in the node.
fn ids_in_node(host: &TestHost, node: &str, user: &str) -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        host.exec_stdout(node, &["id", flag, user])
            .trim()
            .parse()
            .unwrap()
    };
    (id("-u"), id("-g"))
}

/// The first bytes a server sends on a new TCP connection from the host.
fn greeting(address: &str, send: &[u8]) -> String {
    let mut stream =
        TcpStream::connect_timeout(&address.parse().unwrap(), Duration::from_secs(2)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    stream.write_all(send).unwrap();
    let mut buffer = [0u8; 256];
    let read = stream.read(&mut buffer).unwrap();
    String::from_utf8_lossy(&buffer[..read]).into_owned()
}

#[test]
fn db_role_runs_mariadb_and_two_redis_instances_with_data_on_volumes() {
    let test_began = Instant::now();
    let mut host = cached_host("roledb", "[nodes.db1]\nrole = \"db\"\n");
    lengthen_stop_timeout(&host);
    // The image: built once, then found in the cache.
    build_images(&host, &["db"]);

    // First start: an empty datadir is initialised, the servers come up.
    let began = Instant::now();
    host.start_daemon();
    wait_running(&host, "db1", Duration::from_secs(60));
    let running = began.elapsed();
    wait_servers(&host, "db1");
    let ready = began.elapsed();
    eprintln!(
        "timing: first start of db1: running after {running:.2?}, mariadbd (datadir initialised) and both Redis answering after {ready:.2?}"
    );
    let logs = host.cli(&["logs", "db1", "mariadb", "-n", "1000"]);
    assert!(
        logs.contains("initialising the empty datadir"),
        "the first start initialises the datadir: {logs}"
    );

    // The real daemons run in the node, as their own users.
    let ps = host.exec_stdout("db1", &["ps", "-e", "-o", "user=,comm=,args="]);
    let servers: Vec<&str> = ps
        .lines()
        .filter(|l| l.contains("mariadbd") || l.contains("redis-server"))
        .collect();
    assert!(
        servers
            .iter()
            .any(|l| l.starts_with("mysql ") && l.contains(" mariadbd ")),
        "{ps}"
    );
    for port in ["6379", "6380"] {
        assert!(
            servers.iter().any(|l| l.starts_with("redis ")
                && l.contains(" redis-server ")
                && l.contains(&format!(":{port}"))),
            "no redis-server on {port}: {ps}"
        );
    }
    assert_eq!(servers.len(), 3, "{ps}");

    // The node's root reaches the server over its socket; `magento` reaches its database over
    // TCP on the node's own address, as a web node would.
    let ip = host.node("db1")["ip"].as_str().unwrap().to_string();
    assert_eq!(
        host.exec_stdout(
            "db1",
            &[
                "mariadb",
                "--batch",
                "--skip-column-names",
                "-e",
                "select 1"
            ]
        ),
        "1\n"
    );
    let whoami = sql(
        &host,
        "db1",
        Some(&ip),
        "select current_user(), database(), @@port",
    );
    assert_eq!(whoami, "magento@%\tmagento\t3306\n");
    let refused = host.exec(
        "db1",
        &[
            "mariadb", "-h", &ip, "-u", "magento", "-pwrong", "magento", "-e", "select 1",
        ],
    );
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("Access denied"),
        "a wrong password is refused: {refused:?}"
    );
    // From the host, the servers answer on the node's address: MariaDB's greeting, Redis' PONG.
    let hello = greeting(&format!("{ip}:3306"), b"");
    assert!(hello.contains("MariaDB"), "{hello:?}");
    for port in [6379, 6380] {
        let pong = greeting(&format!("{ip}:{port}"), b"PING\r\n");
        assert_eq!(pong, "+PONG\r\n", "redis on {port}");
        assert_eq!(redis(&host, "db1", &port.to_string(), &["ping"]), "PONG");
    }
    // Two separate instances: a key set in one is not in the other.
    assert_eq!(
        redis(&host, "db1", "6379", &["set", "only-in", "cache"]),
        "OK"
    );
    assert_eq!(redis(&host, "db1", "6380", &["exists", "only-in"]), "0");
    assert_eq!(
        redis(&host, "db1", "6379", &["config", "get", "dir"]),
        "dir\n/var/lib/redis-cache"
    );
    assert_eq!(
        redis(&host, "db1", "6380", &["config", "get", "dir"]),
        "dir\n/var/lib/redis-sessions"
    );
    assert_eq!(
        redis(&host, "db1", "6380", &["config", "get", "appendonly"]),
        "appendonly\nyes"
    );

    // The volumes on the host belong to the node's shifted ids: the datadir to its mysql user,
    // the Redis dirs to its redis user.
    let root = node_root_on_host(host.node_pid("db1"));
    let volumes = host.state_dir().join("volumes/db1");
    let (mysql_uid, mysql_gid) = ids_in_node(&host, "db1", "mysql");
    let (redis_uid, redis_gid) = ids_in_node(&host, "db1", "redis");
    let mysql_on_host = (root + mysql_uid, root + mysql_gid);
    let redis_on_host = (root + redis_uid, root + redis_gid);
    assert!(
        root >= host.net.id_base(),
        "the node runs in a user namespace: {root}"
    );
    for path in ["mysql", "mysql/mysql", "mysql/ibdata1"] {
        assert_eq!(owner(&volumes.join(path)), mysql_on_host, "{path}");
    }
    for path in [
        "redis-cache",
        "redis-sessions",
        "redis-sessions/appendonlydir",
    ] {
        assert_eq!(owner(&volumes.join(path)), redis_on_host, "{path}");
    }

    // The health check (mariadb-admin ping, both Redis PINGs) passes.
    let began_health = Instant::now();
    wait_for("db1 healthy", Duration::from_secs(40), || {
        host.node("db1")["health"] == "healthy"
    });
    eprintln!(
        "timing: db1 healthy {:.1?} later (first check one 10 s interval after the start)",
        began_health.elapsed()
    );

    // Data written before a restart is there after it: a table in `magento`, a key in each
    // Redis instance; the restart is a clean shutdown, not a crash recovery.
    sql(
        &host,
        "db1",
        Some(&ip),
        "create table kept (v varchar(32)); insert into kept values ('before restart')",
    );
    assert_eq!(redis(&host, "db1", "6379", &["set", "cached", "c1"]), "OK");
    assert_eq!(redis(&host, "db1", "6380", &["set", "session", "s1"]), "OK");
    let pid = host.node_pid("db1");
    let began = Instant::now();
    host.cli(&["restart", "db1"]);
    let restarted = began.elapsed();
    assert_ne!(host.node_pid("db1"), pid, "db1 was not restarted");
    wait_servers(&host, "db1");
    eprintln!(
        "timing: restart db1: {restarted:.2?}, servers answering {:.2?} after it began",
        began.elapsed()
    );
    assert_eq!(
        sql(&host, "db1", Some(&ip), "select v from kept"),
        "before restart\n"
    );
    assert_eq!(sql(&host, "db1", None, "select count(*) from kept"), "1\n");
    assert_eq!(redis(&host, "db1", "6379", &["get", "cached"]), "c1");
    assert_eq!(redis(&host, "db1", "6380", &["get", "session"]), "s1");
    let logs = host.cli(&["logs", "db1", "mariadb", "-n", "1000"]);
    assert!(logs.contains("mariadbd: Shutdown complete"), "{logs}");
    assert_eq!(
        logs.matches("initialising the empty datadir").count(),
        1,
        "an initialised datadir is kept: {logs}"
    );

    host.cli(&["stop", "db1"]);
    host.assert_nothing_left();
    eprintln!("timing: whole test {:.1?}", test_began.elapsed());
}
