//! Disk limits (`[resources] disk`): on btrfs, one quota group per node over its writable layer
//! and its own volumes, so a node that fills it gets "Disk quota exceeded" while its neighbours
//! write on; elsewhere the limit is not enforced, and `config check`, the daemon and `status`
//! say so. Needs btrfs-progs (`scripts/setup.sh` installs it); the tests read the quota groups
//! with `btrfs qgroup show`, not through the agent's own code.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::btrfs::{is_btrfs, run, Btrfs};
use common::{sleeper_nodes, TestHost};
use serde_json::Value;

/// The sleeper role with a volume, fill1 limited to 64M at node level, free1 without a limit.
fn filler_config(nodes: &[&str]) -> String {
    let mut config = sleeper_nodes(nodes);
    config.push_str("[[roles.sleeper.volume]]\nname = \"data\"\npath = \"/srv/data\"\n");
    if nodes.contains(&"fill1") {
        config.push_str("[nodes.fill1.resources]\ndisk = \"64M\"\n");
    }
    config
}

/// `btrfs qgroup show` of the filesystem at `mount`, as (group, referenced, max referenced,
/// children) rows, in bytes.
fn qgroups(mount: &Path) -> Vec<(String, u64, Option<u64>, String)> {
    // Numbers settle at a transaction commit.
    run("btrfs", &["filesystem", "sync", mount.to_str().unwrap()]);
    let output = run(
        "btrfs",
        &["qgroup", "show", "-rc", "--raw", mount.to_str().unwrap()],
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.starts_with(|c: char| c.is_ascii_digit()))
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (
                fields[0].to_string(),
                fields[1].parse().unwrap(),
                fields[3].parse().ok(),
                fields[4].to_string(),
            )
        })
        .collect()
}

/// Level-0 quota groups whose subvolume is gone, and level-1 groups: what a removed node must
/// not leave (after the kernel's cleaner has dropped deleted subvolumes).
fn stale_and_node_groups(mount: &Path) -> Vec<String> {
    let mount_text = mount.to_str().unwrap();
    run("btrfs", &["subvolume", "sync", mount_text]);
    let listed = run("btrfs", &["subvolume", "list", mount_text]);
    let subvolumes: BTreeSet<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .map(|id| format!("0/{id}"))
        .chain(["0/5".to_string()])
        .collect();
    qgroups(mount)
        .into_iter()
        .map(|(group, ..)| group)
        .filter(|group| !subvolumes.contains(group))
        .collect()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// Size in bytes of a file in `node`, as `stat` sees it there.
fn file_size(host: &TestHost, node: &str, path: &str) -> u64 {
    host.exec_stdout(node, &["stat", "-c", "%s", path])
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn on_btrfs_a_node_over_its_disk_limit_gets_a_quota_error_and_its_neighbour_writes_on() {
    let fs = Btrfs::new("disk");
    let mut host = TestHost::with_state_dir(
        "diskbt",
        &filler_config(&["fill1", "free1"]),
        &fs.mount.join("state"),
    );
    let check = host.try_cli(&["config", "check"]);
    assert!(check.status.success());
    assert!(
        !String::from_utf8_lossy(&check.stderr).contains("not enforced"),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    host.start_daemon();
    host.wait_node_state("fill1", "running");
    host.wait_node_state("free1", "running");

    // The layer is one subvolume holding upper and work.
    let layer = host.state_dir().join("nodes/fill1");
    run("btrfs", &["subvolume", "show", layer.to_str().unwrap()]);
    let groups = qgroups(&fs.mount);
    let limited: Vec<_> = groups
        .iter()
        .filter(|(group, ..)| group.starts_with("1/"))
        .collect();
    assert_eq!(limited.len(), 1, "one node group, fill1's: {groups:?}");
    assert_eq!(limited[0].2, Some(64 << 20), "{groups:?}");
    assert_eq!(
        limited[0].3.split(',').count(),
        2,
        "the layer and the volume are its members: {groups:?}"
    );

    // 40M into the volume fit; the layer then gets what is left of the 64M, and no more.
    let volume = host.exec(
        "fill1",
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/srv/data/fill bs=1M count=40 2>&1",
        ],
    );
    assert!(
        volume.status.success(),
        "{}",
        String::from_utf8_lossy(&volume.stdout)
    );
    let layer_write = host.exec(
        "fill1",
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/var/fill bs=1M count=500 2>&1",
        ],
    );
    let said = String::from_utf8_lossy(&layer_write.stdout);
    eprintln!("fill1 writing its layer: {said}");
    assert!(!layer_write.status.success(), "500M fitted in 64M: {said}");
    assert!(said.contains("Disk quota exceeded"), "{said}");
    let more = host.exec(
        "fill1",
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/srv/data/more bs=1M count=8 2>&1",
        ],
    );
    assert!(!more.status.success(), "the volume still took 8M");
    assert!(
        String::from_utf8_lossy(&more.stdout).contains("Disk quota exceeded"),
        "{}",
        String::from_utf8_lossy(&more.stdout)
    );
    let written =
        file_size(&host, "fill1", "/srv/data/fill") + file_size(&host, "fill1", "/var/fill");
    eprintln!("fill1 wrote {:.1} MiB under a 64 MiB limit", mib(written));
    assert!(
        (52 << 20..=64 << 20).contains(&written),
        "{:.1} MiB written",
        mib(written)
    );

    // The neighbour on the same filesystem writes on, to its layer and its volume.
    host.exec_stdout(
        "free1",
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/var/fill bs=1M count=16 && dd if=/dev/zero of=/srv/data/fill bs=1M count=16",
        ],
    );

    // status: usage and limit, enforced; the neighbour has neither.
    let fill1 = host.node("fill1");
    assert_eq!(fill1["disk_limit_bytes"], 64 << 20, "{fill1:#}");
    assert_eq!(fill1["disk_limit_enforced"], true, "{fill1:#}");
    let used = fill1["disk_bytes"].as_u64().unwrap();
    assert!(
        (52 << 20..=65 << 20).contains(&used),
        "{:.1} MiB used",
        mib(used)
    );
    let free1 = host.node("free1");
    assert_eq!(free1["disk_limit_bytes"], Value::Null, "{free1:#}");
    assert_eq!(free1["disk_limit_enforced"], Value::Null, "{free1:#}");
    let table = host.cli(&["status"]);
    let row = table.lines().find(|l| l.contains("fill1")).unwrap();
    assert!(
        row.contains("/64M") && !row.contains("not enforced"),
        "{row}"
    );

    // A restart finds the group as it was: same group, still enforced.
    host.cli(&["restart", "fill1"]);
    host.wait_node_state("fill1", "running");
    assert_eq!(host.node("fill1")["disk_limit_enforced"], true);
    let again: Vec<_> = qgroups(&fs.mount)
        .into_iter()
        .filter(|(group, ..)| group.starts_with("1/"))
        .collect();
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].0, limited[0].0);

    // Removed: its volume by `volume rm`, its layer and group by the next start's sweep.
    host.write_config(&filler_config(&["free1"]));
    host.cli(&["reload"]);
    common::wait_for("fill1 to be gone", Duration::from_secs(20), || {
        host.status()["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["name"] != "fill1")
    });
    host.cli(&["volume", "rm", "fill1", "data"]);
    host.kill_daemon(libc::SIGTERM);
    host.start_daemon();
    host.wait_node_state("free1", "running");
    assert!(!layer.exists(), "fill1's layer is left");
    assert_eq!(
        stale_and_node_groups(&fs.mount),
        Vec::<String>::new(),
        "quota groups left: {:?}\n{}",
        qgroups(&fs.mount),
        host.daemon_log()
    );
    let log = host.daemon_log();
    assert!(!log.contains("not enforced"), "{log}");
}

#[test]
fn a_start_that_fails_leaves_no_quota_group() {
    let fs = Btrfs::new("diskfail");
    let config = "[nodes.bad1]\nrole = \"broken\"\n[roles.broken]\nimage = \"busybox\"\n[roles.broken.resources]\ndisk = \"64M\"\n[[roles.broken.process]]\nname = \"missing\"\ncommand = [\"/no/such/program\"]\n";
    let mut host = TestHost::with_state_dir("diskfail", config, &fs.mount.join("state"));
    host.start_daemon();
    common::wait_for("bad1's start to fail", Duration::from_secs(20), || {
        host.node("bad1")["error"]
            .as_str()
            .is_some_and(|error| error.contains("/no/such/program"))
    });
    // A failed start is not retried until asked.
    let log = host.daemon_log();
    assert!(log.contains("undo: destroy quota group 1/"), "{log}");
    let groups = qgroups(&fs.mount);
    assert!(
        groups.iter().all(|(group, ..)| !group.starts_with("1/")),
        "a node group is left: {groups:?}"
    );
}

#[test]
fn off_btrfs_a_disk_limit_is_not_enforced_and_everything_says_so() {
    let mut config = sleeper_nodes(&["plain1"]);
    config.push_str("[roles.sleeper.resources]\ndisk = \"64M\"\n");
    let mut host = TestHost::new("diskoff", &config);
    assert!(
        !is_btrfs(&host.dir),
        "this test wants a state dir that is not on btrfs: {}",
        host.dir.display()
    );
    let check = host.try_cli(&["config", "check"]);
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: node plain1: resources.disk = 64M is not enforced:")
            && stderr.contains("is not on btrfs"),
        "{stderr}"
    );

    host.start_daemon();
    let plain1 = host.wait_node_state("plain1", "running");
    assert_eq!(plain1["disk_limit_bytes"], 64 << 20, "{plain1:#}");
    assert_eq!(plain1["disk_limit_enforced"], false, "{plain1:#}");
    assert_eq!(plain1["disk_bytes"], Value::Null, "{plain1:#}");
    let table = host.cli(&["status"]);
    assert!(table.contains("64M (not enforced)"), "{table}");
    let log = host.daemon_log();
    assert!(
        log.contains("node plain1: resources.disk = 64M is not enforced"),
        "{log}"
    );
    // Not enforced means not enforced: more than the limit is written.
    host.exec_stdout(
        "plain1",
        &["sh", "-c", "dd if=/dev/zero of=/var/fill bs=1M count=80"],
    );
}
