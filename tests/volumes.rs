//! Volumes: a btrfs subvolume when the state dir is on btrfs, else a directory; kept across
//! restarts, removal and re-creation of the node; removed only by `volume rm`, which is refused
//! while the node mounts the volume or the configuration declares it. Needs btrfs-progs
//! (`scripts/setup.sh` installs it). A volume declared `shared` is one for every node of its
//! role, each node seeing its files as owned by its own ids.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::btrfs::{is_btrfs, run, Btrfs};
use common::TestHost;
use serde_json::Value;

const KEEPER: &str = r#"
[roles.keeper]
image = "busybox"
[[roles.keeper.volume]]
name = "data"
path = "/srv/data"
[[roles.keeper.process]]
name = "sleep"
command = ["sleep", "1000000"]
"#;

fn with_node(node: &str) -> String {
    format!("{KEEPER}\n[nodes.{node}]\nrole = \"keeper\"\n")
}

/// No node at all (without `[nodes]` the default node set would be configured).
fn without_nodes() -> String {
    format!("{KEEPER}\n[nodes]\n")
}

fn volumes(host: &TestHost) -> Vec<Value> {
    let listed: Value = serde_json::from_str(&host.cli(&["volume", "list", "--json"])).unwrap();
    listed.as_array().unwrap().clone()
}

/// `volume rm` refused, with an error naming the node and the volume.
fn assert_rm_refused(host: &TestHost, node: &str, because: &str) {
    let refused = host.try_cli(&["volume", "rm", node, "data"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "volume rm was not refused");
    assert!(
        stderr.contains(&format!("volume data of node {node}")) && stderr.contains(because),
        "{stderr}"
    );
}

#[test]
fn on_btrfs_a_volume_is_a_subvolume_kept_until_volume_rm() {
    // Declared first, dropped last: after the host has stopped its daemon and nodes.
    let fs = Btrfs::new("vol");
    let mut host =
        TestHost::with_state_dir("volbtrfs", &with_node("keep1"), &fs.mount.join("state"));
    host.start_daemon();
    host.wait_node_state("keep1", "running");

    let volume = host.state_dir().join("volumes/keep1/data");
    assert_eq!(std::fs::metadata(&volume).unwrap().ino(), 256);
    run("btrfs", &["subvolume", "show", volume.to_str().unwrap()]);
    assert!(
        std::fs::metadata(&volume).unwrap().uid() >= host.net.id_base(),
        "the volume belongs to the node's shifted root"
    );
    let listed = volumes(&host);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["node"], "keep1");
    assert_eq!(listed[0]["name"], "data");
    assert_eq!(listed[0]["kind"], "subvolume");
    assert_eq!(listed[0]["in_use"], "running");
    assert_eq!(listed[0]["path"], volume.to_str().unwrap());

    host.exec_stdout("keep1", &["sh", "-c", "echo kept > /srv/data/file"]);
    host.cli(&["restart", "keep1"]);
    assert_eq!(
        host.exec_stdout("keep1", &["cat", "/srv/data/file"]),
        "kept\n"
    );
    assert_rm_refused(&host, "keep1", "a running node mounts it");

    // Removed from the configuration, then added again: the same data.
    host.write_config(&without_nodes());
    host.cli(&["reload"]);
    wait_gone(&host, "keep1");
    host.write_config(&with_node("keep1"));
    host.cli(&["reload"]);
    host.wait_node_state("keep1", "running");
    assert_eq!(
        host.exec_stdout("keep1", &["cat", "/srv/data/file"]),
        "kept\n"
    );

    // Stopped but still configured: kept.
    host.cli(&["stop", "keep1"]);
    assert_rm_refused(&host, "keep1", "the configuration declares it");

    host.write_config(&without_nodes());
    host.cli(&["reload"]);
    wait_gone(&host, "keep1");
    assert_eq!(volumes(&host)[0]["in_use"], Value::Null);
    // Subvolumes made inside a volume go with it.
    let inner = volume.join("inner");
    run("btrfs", &["subvolume", "create", inner.to_str().unwrap()]);
    std::fs::create_dir(inner.join("deeper")).unwrap();
    run(
        "btrfs",
        &[
            "subvolume",
            "create",
            inner.join("deeper/sub").to_str().unwrap(),
        ],
    );
    let removed = host.cli(&["volume", "rm", "keep1", "data"]);
    assert!(removed.contains("subvolume removed"), "{removed}");
    assert!(!volume.exists());
    let subvolumes = run("btrfs", &["subvolume", "list", fs.mount.to_str().unwrap()]);
    let subvolumes = String::from_utf8_lossy(&subvolumes.stdout);
    assert!(!subvolumes.contains("volumes/keep1"), "{subvolumes}");
    assert!(volumes(&host).is_empty());

    let missing = host.try_cli(&["volume", "rm", "keep1", "data"]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && stderr.contains("volume data of node keep1"),
        "{stderr}"
    );
}

#[test]
fn elsewhere_a_volume_is_a_directory() {
    let mut host = TestHost::new("voldir", &with_node("plain1"));
    assert!(
        !is_btrfs(&host.dir),
        "this test wants a state dir that is not on btrfs: {}",
        host.dir.display()
    );
    host.start_daemon();
    host.wait_node_state("plain1", "running");
    host.exec_stdout("plain1", &["sh", "-c", "echo kept > /srv/data/file"]);

    let volume = host.state_dir().join("volumes/plain1/data");
    assert!(std::fs::symlink_metadata(&volume).unwrap().is_dir());
    let listed = volumes(&host);
    assert_eq!(listed[0]["kind"], "dir", "{listed:?}");
    assert!(listed[0]["size_bytes"].as_u64().unwrap() > 0, "{listed:?}");
    assert_rm_refused(&host, "plain1", "a running node mounts it");

    host.write_config(&without_nodes());
    host.cli(&["reload"]);
    wait_gone(&host, "plain1");
    let removed = host.cli(&["volume", "rm", "plain1", "data"]);
    assert!(removed.contains("dir removed"), "{removed}");
    assert!(!volume.exists());
}

const SHARERS: &str = r#"
[roles.sharer]
image = "busybox"
[[roles.sharer.volume]]
name = "media"
path = "/srv/media"
shared = true
[[roles.sharer.volume]]
name = "data"
path = "/srv/data"
[[roles.sharer.process]]
name = "sleep"
command = ["sleep", "1000000"]

[roles.other]
image = "busybox"
[[roles.other.volume]]
name = "media"
path = "/srv/media"
[[roles.other.process]]
name = "sleep"
command = ["sleep", "1000000"]
"#;

fn sharers(nodes: &[(&str, &str)]) -> String {
    let mut config = format!("{SHARERS}\n[nodes]\n");
    for (node, role) in nodes {
        config.push_str(&format!("{node} = {{ role = \"{role}\" }}\n"));
    }
    config
}

/// The first host id of a range recorded in `state_dir/idmaps.json` (`id_base + slot * 65536`).
fn range_base(host: &TestHost, owner: &str) -> u32 {
    let recorded: Value =
        serde_json::from_slice(&std::fs::read(host.state_dir().join("idmaps.json")).unwrap())
            .unwrap();
    let slot = recorded["slots"][owner]
        .as_u64()
        .unwrap_or_else(|| panic!("no range for {owner}: {recorded}"));
    host.net.id_base() + slot as u32 * 65536
}

fn owner_ids(path: &Path) -> (u32, u32) {
    let metadata = std::fs::symlink_metadata(path).unwrap();
    (metadata.uid(), metadata.gid())
}

#[test]
fn a_shared_volume_is_one_for_every_node_of_the_role_each_seeing_its_own_ids() {
    let mut host = TestHost::new(
        "volshare",
        &sharers(&[
            ("share1", "sharer"),
            ("share2", "sharer"),
            ("other1", "other"),
        ]),
    );
    host.start_daemon();
    for node in ["share1", "share2", "other1"] {
        host.wait_node_state(node, "running");
    }
    // A user 33 in both nodes, as a web image has www-data.
    for node in ["share1", "share2"] {
        host.exec_stdout(
            node,
            &[
                "sh",
                "-c",
                "echo 'www:x:33:33:www:/tmp:/bin/sh' >> /etc/passwd",
            ],
        );
    }
    host.exec_stdout(
        "share1",
        &[
            "sh",
            "-c",
            "echo by-root > /srv/media/root-file && mkdir /srv/media/www && chown 33:33 /srv/media/www && echo only-share1 > /srv/data/file",
        ],
    );
    let as_www = |node: &str, script: &str| {
        let output = host.try_cli(&["exec", "--user", "www", node, "--", "sh", "-c", script]);
        assert!(
            output.status.success(),
            "{node} as www: {script}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    as_www("share1", "echo from-share1 > /srv/media/www/upload");
    // The other node's user 33 owns what the first one's made, and may change it.
    assert_eq!(
        as_www(
            "share2",
            "echo from-share2 >> /srv/media/www/upload && cat /srv/media/www/upload && stat -c %u:%g /srv/media/www/upload /srv/media/root-file"
        ),
        "from-share1\nfrom-share2\n33:33\n0:0\n"
    );
    // Per-node volumes stay per node, and another role's volume of the same name is its own.
    assert_eq!(
        host.exec_stdout("share2", &["sh", "-c", "ls -A /srv/data"]),
        ""
    );
    host.exec_stdout("other1", &["sh", "-c", "echo other > /srv/media/own"]);
    assert_eq!(
        host.exec_stdout("other1", &["ls", "-A", "/srv/media"]),
        "own\n"
    );
    assert!(!host
        .exec("share1", &["test", "-e", "/srv/media/own"])
        .status
        .success());

    // On the host the files belong to the role's own range, not to either node's.
    let shared = range_base(&host, "@sharer");
    let media = host.state_dir().join("volumes/@sharer/media");
    for node in ["share1", "share2"] {
        assert_ne!(
            range_base(&host, node),
            shared,
            "{node} shares the volume's range"
        );
    }
    assert_eq!(owner_ids(&media), (shared, shared));
    assert_eq!(owner_ids(&media.join("root-file")), (shared, shared));
    assert_eq!(
        owner_ids(&media.join("www/upload")),
        (shared + 33, shared + 33)
    );
    let mode = std::fs::metadata(media.parent().unwrap()).unwrap().mode() & 0o777;
    assert_eq!(
        mode, 0o700,
        "only host root enters the shared volumes' directory"
    );
    // Inside: an idmapped mount without set-id programs or devices; nothing of it on the host.
    let mountinfo =
        std::fs::read_to_string(format!("/proc/{}/mountinfo", host.node_pid("share2"))).unwrap();
    let line = mountinfo
        .lines()
        .find(|line| line.split(' ').nth(4) == Some("/srv/media"))
        .unwrap_or_else(|| panic!("no /srv/media in share2:\n{mountinfo}"));
    for option in ["idmapped", "nosuid", "nodev"] {
        assert!(line.contains(option), "{option} missing: {line}");
    }
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host_mounts.contains("@sharer"), "{host_mounts}");

    // Kept across a restart; listed under the role; removed only when no node declares it.
    host.cli(&["restart", "share1"]);
    host.wait_node_state("share1", "running");
    assert_eq!(
        host.exec_stdout("share1", &["cat", "/srv/media/www/upload"]),
        "from-share1\nfrom-share2\n"
    );
    let listed = volumes(&host);
    assert!(
        listed
            .iter()
            .any(|v| v["node"] == "@sharer" && v["name"] == "media"),
        "{listed:?}"
    );
    let refused = host.try_cli(&["volume", "rm", "@sharer", "media"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && stderr
                .contains("volume media of the sharer nodes (shared): a running node mounts it"),
        "{stderr}"
    );
    host.write_config(&sharers(&[("other1", "other")]));
    host.cli(&["reload"]);
    wait_gone(&host, "share1");
    wait_gone(&host, "share2");
    let removed = host.cli(&["volume", "rm", "@sharer", "media"]);
    assert!(removed.contains("dir removed"), "{removed}");
    assert!(!media.exists());
}

/// On btrfs, with nodes that have no user namespace: the nodes of the role start at once on a
/// fresh state dir (one makes the subvolume, the other finds it), and root in either sees the
/// files as root's while they are stored with the role's range.
#[test]
fn a_shared_subvolume_made_by_nodes_starting_at_once_serves_privileged_nodes_too() {
    let fs = Btrfs::new("volshare");
    let config = sharers(&[("share1", "sharer"), ("share2", "sharer")]).replace(
        "[roles.sharer]\nimage = \"busybox\"\n",
        "[roles.sharer]\nimage = \"busybox\"\nprivileged = true\nprivileged_reason = \"test: shared volume without user namespaces\"\n",
    );
    let mut host = TestHost::with_state_dir("volshbt", &config, &fs.mount.join("state"));
    host.start_daemon();
    host.wait_node_state("share1", "running");
    host.wait_node_state("share2", "running");
    let uid_map =
        std::fs::read_to_string(format!("/proc/{}/uid_map", host.node_pid("share1"))).unwrap();
    assert_eq!(
        uid_map.split_whitespace().collect::<Vec<_>>(),
        ["0", "0", "4294967295"],
        "share1 has a user namespace"
    );
    let media = host.state_dir().join("volumes/@sharer/media");
    assert_eq!(std::fs::metadata(&media).unwrap().ino(), 256, "a subvolume");
    let left: Vec<_> = std::fs::read_dir(media.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        left,
        [std::ffi::OsString::from("media")],
        "no unfinished volume left"
    );

    host.exec_stdout("share1", &["sh", "-c", "echo one > /srv/media/file"]);
    assert_eq!(
        host.exec_stdout("share2", &["stat", "-c", "%u:%g %n", "/srv/media/file"]),
        "0:0 /srv/media/file\n"
    );
    let shared = range_base(&host, "@sharer");
    assert_eq!(owner_ids(&media.join("file")), (shared, shared));
}

/// Waits until the daemon has stopped and forgotten a node removed from the configuration.
fn wait_gone(host: &TestHost, node: &str) {
    common::wait_for(
        &format!("{node} to be gone"),
        Duration::from_secs(20),
        || {
            host.status()["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["name"] != node)
        },
    );
}
