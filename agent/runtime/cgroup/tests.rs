use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command};

use tempfile::TempDir;

use super::*;

/// This machine's hybrid layout: separate cpu and cpuacct, a controller-less cgroup2.
pub(super) const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

/// A production host: systemd mounts cgroup2 on /sys/fs/cgroup.
pub(super) const V2: &str = "\
22 26 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

const V1_MOUNTS: [&str; 6] = ["cpu", "cpuacct", "memory", "devices", "freezer", "pids"];

/// A plain directory standing in for this machine's v1 cgroupfs.
pub(super) fn fake_v1() -> (TempDir, Cgroups) {
    let temp = TempDir::new().unwrap();
    for controller in V1_MOUNTS {
        fs::create_dir_all(temp.path().join("sys/fs/cgroup").join(controller)).unwrap();
    }
    let cgroups = Cgroups::from_mountinfo(HYBRID)
        .unwrap()
        .with_prefix(temp.path());
    (temp, cgroups)
}

/// A plain directory standing in for a v2 cgroupfs whose root offers `offered`.
pub(super) fn fake_v2(offered: &str, enabled: &str) -> (TempDir, Cgroups, PathBuf) {
    let temp = TempDir::new().unwrap();
    let root = temp.path().join("sys/fs/cgroup");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("cgroup.controllers"), offered).unwrap();
    fs::write(root.join("cgroup.subtree_control"), enabled).unwrap();
    let cgroups = Cgroups::from_mountinfo(V2)
        .unwrap()
        .with_prefix(temp.path());
    (temp, cgroups, root)
}

/// This host's own cgroup2 mount as a v2 layout (the controller-less `unified` one of a hybrid
/// host still freezes and runs device programs), for tests on real cgroups.
pub(super) fn real_v2() -> Cgroups {
    let text = fs::read_to_string(MOUNTINFO).unwrap();
    let root = mountinfo::parse(&text)
        .unwrap()
        .into_iter()
        .rev()
        .find(|mount| mount.fs_type == "cgroup2")
        .expect("this test needs a cgroup2 mount")
        .mount_point;
    Cgroups {
        layout: Layout::V2 { root },
        agent_leaf: None,
    }
}

pub(super) fn v1_dir(temp: &TempDir, relative: &str) -> PathBuf {
    temp.path().join("sys/fs/cgroup").join(relative)
}

const MEMORY_ONLY: Limits = Limits {
    memory_bytes: Some(64 << 20),
    cpus: None,
    pids: None,
};

#[test]
fn a_hybrid_host_is_v1_with_a_dir_per_hierarchy() {
    let cgroups = Cgroups::from_mountinfo(HYBRID).unwrap();
    assert_eq!(cgroups.version(), CgroupVersion::V1);
    let files = cgroups.node("magestack", "web1").procs_files();
    let expected: Vec<PathBuf> = V1_MOUNTS
        .iter()
        .map(|c| PathBuf::from(format!("/sys/fs/cgroup/{c}/magestack/web1/cgroup.procs")))
        .collect();
    assert_eq!(files, expected);
    let joins = cgroups.node("magestack", "web1").join_files();
    assert!(joins.iter().all(|f| f.ends_with("tasks")), "{joins:?}");
    assert_eq!(joins.len(), expected.len());
}

#[test]
fn cgroup2_on_sys_fs_cgroup_is_v2() {
    let cgroups = Cgroups::from_mountinfo(V2).unwrap();
    assert_eq!(cgroups.version(), CgroupVersion::V2);
    assert_eq!(
        cgroups.node("magestack", "db1").procs_files(),
        [PathBuf::from("/sys/fs/cgroup/magestack/db1/cgroup.procs")]
    );
    assert_eq!(
        cgroups.node("magestack", "db1").join_files(),
        cgroups.node("magestack", "db1").procs_files()
    );
    let over_tmpfs = format!("20 1 0:20 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n{V2}");
    assert_eq!(
        Cgroups::from_mountinfo(&over_tmpfs).unwrap().version(),
        CgroupVersion::V2
    );
}

#[test]
fn no_usable_hierarchy_is_an_error() {
    let hidden = format!("{V2}40 30 0:40 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n");
    for text in [
        "",
        "26 1 259:2 / / rw - ext4 /dev/sda1 rw\n",
        hidden.as_str(),
    ] {
        assert!(matches!(
            Cgroups::from_mountinfo(text),
            Err(CgroupError::NoHierarchy)
        ));
    }
}

#[test]
fn bad_names_are_refused_before_touching_anything() {
    let (temp, cgroups) = fake_v1();
    for (parent, node) in [
        ("magestack", ".."),
        ("magestack", "a/b"),
        ("magestack", ""),
        ("", "web1"),
        ("/magestack", "web1"),
        ("a/../b", "web1"),
    ] {
        let cgroup = cgroups.node(parent, node);
        let error = cgroup.create(&Limits::default()).unwrap_err();
        assert!(
            matches!(
                error,
                CgroupError::InvalidNode { .. } | CgroupError::InvalidParent { .. }
            ),
            "{parent:?}/{node:?}: {error}"
        );
        assert!(cgroup.kill_all().is_err());
        assert!(cgroup.remove().is_err());
        assert!(!cgroup.exists());
        assert!(cgroup.procs_files().is_empty());
    }
    assert!(cgroups.list_nodes("..").is_err());
    assert!(fs::read_dir(v1_dir(&temp, "memory"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn cpus_become_a_quota_per_100ms_period() {
    let node = Cgroups::from_mountinfo(V2)
        .unwrap()
        .node("magestack", "web1");
    assert_eq!(node.cpu_quota_usec(2.0).unwrap(), 200_000);
    assert_eq!(node.cpu_quota_usec(0.25).unwrap(), 25_000);
    assert_eq!(node.cpu_quota_usec(0.001).unwrap(), MIN_CPU_QUOTA_USEC);
    for cpus in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let error = node.cpu_quota_usec(cpus).unwrap_err();
        assert!(error.to_string().contains("web1"), "{error}");
    }
}

#[test]
fn v1_create_removes_every_dir_it_made_when_a_write_fails() {
    let (temp, cgroups) = fake_v1();
    fs::create_dir(v1_dir(&temp, "memory/magestack")).unwrap();
    // A plain directory has no memory.limit_in_bytes, so the first limit write fails.
    let error = cgroups
        .node("magestack", "web1")
        .create(&MEMORY_ONLY)
        .unwrap_err();
    match &error {
        CgroupError::Write { node, path, .. } => {
            assert_eq!(node, "web1");
            assert_eq!(
                path,
                &v1_dir(&temp, "memory/magestack/web1/memory.limit_in_bytes")
            );
        }
        other => panic!("expected a write error, got {other}"),
    }
    assert!(
        v1_dir(&temp, "memory/magestack").exists(),
        "not ours to remove"
    );
    assert!(!v1_dir(&temp, "memory/magestack/web1").exists());
    for controller in ["cpu", "cpuacct", "freezer", "pids"] {
        assert!(!v1_dir(&temp, &format!("{controller}/magestack")).exists());
    }
}

#[test]
fn v1_create_refuses_a_leftover_node_dir() {
    let (temp, cgroups) = fake_v1();
    fs::create_dir_all(v1_dir(&temp, "pids/magestack/web1")).unwrap();
    let error = cgroups
        .node("magestack", "web1")
        .create(&Limits::default())
        .unwrap_err();
    let CgroupError::AlreadyExists { path, .. } = &error else {
        panic!("expected AlreadyExists, got {error}");
    };
    assert_eq!(path, &v1_dir(&temp, "pids/magestack/web1"));
    assert!(v1_dir(&temp, "pids/magestack/web1").exists());
    assert!(!v1_dir(&temp, "memory/magestack").exists());
}

#[test]
fn v2_create_enables_controllers_down_to_the_parent() {
    let (_temp, cgroups, root) = fake_v2("cpuset cpu io memory pids", "cpu");
    let parent = root.join("magestack");
    fs::create_dir(&parent).unwrap();
    fs::write(parent.join("cgroup.controllers"), "cpu memory pids").unwrap();
    fs::write(parent.join("cgroup.subtree_control"), "").unwrap();
    // A plain directory has no memory.max, so the limit write fails after the enabling.
    let error = cgroups
        .node("magestack", "db1")
        .create(&MEMORY_ONLY)
        .unwrap_err();
    assert!(
        matches!(&error, CgroupError::Write { path, .. } if path.ends_with("db1/memory.max")),
        "{error}"
    );
    let read = |path: &Path| fs::read_to_string(path.join("cgroup.subtree_control")).unwrap();
    assert_eq!(read(&root), "+memory +pids");
    assert_eq!(read(&parent), "+memory +pids +cpu");
    assert!(!parent.join("db1").exists());
}

#[test]
fn v2_limit_without_its_controller_is_refused() {
    let (_temp, cgroups, root) = fake_v2("cpu memory", "cpu memory");
    let limits = Limits {
        pids: Some(32),
        ..Limits::default()
    };
    let error = cgroups
        .node("magestack", "db1")
        .create(&limits)
        .unwrap_err();
    let CgroupError::ControllerMissing {
        controller, path, ..
    } = &error
    else {
        panic!("expected ControllerMissing, got {error}");
    };
    assert_eq!(
        (*controller, path),
        ("pids", &root.join("cgroup.controllers"))
    );
    assert!(error.to_string().contains("db1"), "{error}");
    assert!(!root.join("magestack").exists());
}

#[test]
fn v2_create_removes_the_parent_it_made_when_it_fails() {
    let (_temp, cgroups, root) = fake_v2("cpu memory pids", "cpu memory pids");
    // A plain directory gets no cgroup.controllers on mkdir, so the parent's check fails.
    let error = cgroups
        .node("magestack", "db1")
        .create(&Limits::default())
        .unwrap_err();
    let CgroupError::Read { path, .. } = &error else {
        panic!("expected a read error, got {error}");
    };
    assert_eq!(path, &root.join("magestack/cgroup.controllers"));
    assert!(!root.join("magestack").exists());
}

#[test]
fn list_nodes_unions_hierarchies_and_ignores_a_missing_parent() {
    let (temp, cgroups) = fake_v1();
    for dir in [
        "memory/magestack/web1",
        "memory/magestack/db1",
        "pids/magestack/web1",
        "pids/magestack/acc1",
    ] {
        fs::create_dir_all(v1_dir(&temp, dir)).unwrap();
    }
    fs::write(v1_dir(&temp, "memory/magestack/tasks"), "").unwrap();
    assert_eq!(
        cgroups.list_nodes("magestack").unwrap(),
        ["acc1", "db1", "web1"]
    );
    assert!(cgroups.list_nodes("elsewhere").unwrap().is_empty());
}

#[test]
fn remove_takes_node_dirs_and_their_children_and_is_idempotent() {
    let (temp, cgroups) = fake_v1();
    for dir in [
        "memory/magestack/web1/child/grandchild",
        "pids/magestack/web1",
        "memory/magestack/db1",
    ] {
        fs::create_dir_all(v1_dir(&temp, dir)).unwrap();
    }
    let web1 = cgroups.node("magestack", "web1");
    assert!(web1.exists());
    web1.remove().unwrap();
    assert!(!web1.exists());
    web1.remove().unwrap();

    cgroups.remove_parent_if_empty("magestack");
    assert!(v1_dir(&temp, "memory/magestack/db1").exists());
    assert!(!v1_dir(&temp, "pids/magestack").exists());
}

#[test]
fn remove_parent_if_empty_removes_the_whole_chain() {
    let (_temp, cgroups, root) = fake_v2("", "");
    fs::create_dir_all(root.join("agent/nodes")).unwrap();
    cgroups.remove_parent_if_empty("agent/nodes");
    assert!(!root.join("agent").exists());
    assert!(root.exists());
}

#[test]
fn procs_reads_every_hierarchy_and_child_cgroup() {
    let (temp, cgroups) = fake_v1();
    for (dir, pids) in [
        ("memory/magestack/web1", "10\n11\n"),
        ("memory/magestack/web1/sub", "13\n"),
        ("pids/magestack/web1", "11\n12\n0\n"),
    ] {
        fs::create_dir_all(v1_dir(&temp, dir)).unwrap();
        fs::write(v1_dir(&temp, dir).join("cgroup.procs"), pids).unwrap();
    }
    let web1 = cgroups.node("magestack", "web1");
    assert_eq!(web1.procs().unwrap(), [10, 11, 12, 13]);
    assert!(cgroups
        .node("magestack", "gone")
        .procs()
        .unwrap()
        .is_empty());

    fs::write(v1_dir(&temp, "pids/magestack/web1/cgroup.procs"), "x\n").unwrap();
    let error = web1.procs().unwrap_err();
    assert!(error.to_string().contains("cgroup.procs"), "{error}");
}

#[test]
fn attach_writes_the_pid_into_every_hierarchy() {
    let (temp, cgroups) = fake_v1();
    let web1 = cgroups.node("magestack", "web1");
    for controller in V1_MOUNTS {
        let dir = v1_dir(&temp, &format!("{controller}/magestack/web1"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup.procs"), "").unwrap();
    }
    web1.attach(4242).unwrap();
    for file in web1.procs_files() {
        assert_eq!(
            fs::read_to_string(&file).unwrap(),
            "4242",
            "{}",
            file.display()
        );
    }
}

#[test]
fn stats_read_usage_and_default_to_zero() {
    let (temp, cgroups) = fake_v1();
    let web1 = cgroups.node("magestack", "web1");
    assert_eq!(web1.stats(), CgroupStats::default());
    for (file, value) in [
        ("memory/magestack/web1/memory.usage_in_bytes", "1048576\n"),
        ("cpuacct/magestack/web1/cpuacct.usage", "2500000\n"),
    ] {
        let path = v1_dir(&temp, file);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, value).unwrap();
    }
    let expected = CgroupStats {
        memory_bytes: 1 << 20,
        cpu_usec: 2_500,
    };
    assert_eq!(web1.stats(), expected);

    let (_temp, cgroups, root) = fake_v2("", "");
    let dir = root.join("magestack/db1");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("memory.current"), "4096\n").unwrap();
    fs::write(
        dir.join("cpu.stat"),
        "usage_usec 777\nuser_usec 700\nsystem_usec 77\n",
    )
    .unwrap();
    let expected = CgroupStats {
        memory_bytes: 4096,
        cpu_usec: 777,
    };
    assert_eq!(cgroups.node("magestack", "db1").stats(), expected);
}

#[test]
fn clone_into_fd_is_v2_only() {
    let (_temp, v1) = fake_v1();
    assert!(v1
        .node("magestack", "web1")
        .clone_into_fd()
        .unwrap()
        .is_none());

    let (_temp, v2, root) = fake_v2("", "");
    let db1 = v2.node("magestack", "db1");
    assert!(matches!(db1.clone_into_fd(), Err(CgroupError::Open { .. })));
    fs::create_dir_all(root.join("magestack/db1")).unwrap();
    assert!(db1.clone_into_fd().unwrap().is_some());
}

/// Removes the real cgroup and its parent and kills the child even when an assertion fails.
struct RealCgroupCleanup {
    cgroups: Cgroups,
    node: NodeCgroup,
    parent: String,
    child: Option<Child>,
}

impl Drop for RealCgroupCleanup {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Err(error) = self.node.remove() {
            eprintln!("cleanup: {error}");
        }
        self.cgroups.remove_parent_if_empty(&self.parent);
    }
}

/// Reads `file` from whichever of the node's directories has it.
fn read_limit(node: &NodeCgroup, file: &str) -> String {
    let path = node
        .dirs()
        .into_iter()
        .map(|dir| dir.join(file))
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("no {file} in {:?}", node.dirs()));
    fs::read_to_string(path).unwrap().trim().to_string()
}

/// Needs root: makes a real node cgroup on this host (v1 here), puts a process in it, and checks
/// the limits the kernel reports and that removal kills the process and deletes every directory.
#[test]
fn real_node_cgroup_limits_holds_and_removes_a_process() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test makes real cgroups: run it as root"
    );
    let cgroups = Cgroups::detect().unwrap();
    let parent = format!("magestack-cgtest-{}", std::process::id());
    let node = cgroups.node(&parent, "node1");
    let mut cleanup = RealCgroupCleanup {
        cgroups: cgroups.clone(),
        node: node.clone(),
        parent: parent.clone(),
        child: None,
    };
    let limits = Limits {
        memory_bytes: Some(64 << 20),
        cpus: Some(0.5),
        pids: Some(32),
    };
    node.create(&limits).unwrap();
    assert!(node.exists());
    assert_eq!(cgroups.list_nodes(&parent).unwrap(), ["node1"]);

    let child = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    cleanup.child = Some(child);
    node.attach(pid).unwrap();
    assert!(node.procs().unwrap().contains(&pid));

    match cgroups.version() {
        CgroupVersion::V1 => {
            assert_eq!(read_limit(&node, "memory.limit_in_bytes"), "67108864");
            assert_eq!(read_limit(&node, "cpu.cfs_quota_us"), "50000");
            assert_eq!(read_limit(&node, "cpu.cfs_period_us"), "100000");
        }
        CgroupVersion::V2 => {
            assert_eq!(read_limit(&node, "memory.max"), "67108864");
            assert_eq!(read_limit(&node, "cpu.max"), "50000 100000");
        }
    }
    assert_eq!(read_limit(&node, "pids.max"), "32");

    node.remove().unwrap();
    let status = cleanup.child.take().unwrap().wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(!node.exists());
    assert!(node.procs().unwrap().is_empty());

    cgroups.remove_parent_if_empty(&parent);
    for file in node.procs_files() {
        let parent_dir = file.parent().and_then(Path::parent).unwrap();
        assert!(!parent_dir.exists(), "{} is left", parent_dir.display());
    }
}

/// A fake v2 hierarchy in which systemd delegated `/system.slice/ms.service` to the agent.
fn fake_delegated_v2(own: &str) -> (TempDir, Cgroups, PathBuf) {
    let temp = TempDir::new().unwrap();
    let root = temp.path().join("sys/fs/cgroup");
    let service = root.join("system.slice/ms.service");
    fs::create_dir_all(&service).unwrap();
    fs::write(service.join("cgroup.controllers"), "cpu memory pids").unwrap();
    fs::write(service.join("cgroup.subtree_control"), "").unwrap();
    let delegated = Path::new("/sys/fs/cgroup/system.slice/ms.service");
    let cgroups = Cgroups::from_mountinfo(V2)
        .unwrap()
        .within_delegation(own, |dir| dir == delegated)
        .with_prefix(temp.path());
    (temp, cgroups, service)
}

#[test]
fn v2_delegated_agent_moves_into_its_leaf_and_nodes_go_beside_it() {
    let (_temp, cgroups, service) = fake_delegated_v2("0::/system.slice/ms.service\n");
    assert_eq!(cgroups.node_roots(), [service.as_path()]);
    let leaf = service.join("agent");
    assert_eq!(cgroups.enter_agent_leaf().unwrap(), Some(leaf.as_path()));
    assert_eq!(fs::read_to_string(leaf.join("cgroup.procs")).unwrap(), "0");

    let node = cgroups.node("magestack", "db1");
    assert_eq!(
        node.procs_files(),
        [service.join("magestack/db1/cgroup.procs")]
    );
    let parent = service.join("magestack");
    fs::create_dir(&parent).unwrap();
    fs::write(parent.join("cgroup.controllers"), "cpu memory pids").unwrap();
    fs::write(parent.join("cgroup.subtree_control"), "").unwrap();
    // The controllers are enabled from the delegated cgroup down, never above it.
    let error = node.create(&MEMORY_ONLY).unwrap_err();
    assert!(matches!(&error, CgroupError::Write { .. }), "{error}");
    let read = |path: &Path| fs::read_to_string(path.join("cgroup.subtree_control")).unwrap();
    assert_eq!(read(&service), "+memory +pids +cpu");
    assert_eq!(read(&parent), "+memory +pids +cpu");
    assert_eq!(
        cgroups.list_nodes("magestack").unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn v2_delegated_agent_already_in_its_leaf_stays() {
    let (_temp, cgroups, service) = fake_delegated_v2("0::/system.slice/ms.service/agent\n");
    assert_eq!(cgroups.node_roots(), [service.as_path()]);
    assert_eq!(cgroups.enter_agent_leaf().unwrap(), None);
    assert!(!service.join("agent").exists());
}

#[test]
fn undelegated_or_v1_cgroups_keep_the_hierarchy_root() {
    let (_temp, cgroups, _) = fake_delegated_v2("0::/user.slice/session-2.scope\n");
    assert!(cgroups.node_roots()[0].ends_with("sys/fs/cgroup"));
    assert_eq!(cgroups.enter_agent_leaf().unwrap(), None);
    let v1 = Cgroups::from_mountinfo(HYBRID)
        .unwrap()
        .within_delegation("0::/system.slice/ms.service\n", |_| true);
    assert_eq!(v1.node_roots().len(), V1_MOUNTS.len());
    assert!(v1
        .node_roots()
        .iter()
        .all(|r| r.starts_with("/sys/fs/cgroup") && !r.to_string_lossy().contains("ms.service")));
    assert_eq!(v1.enter_agent_leaf().unwrap(), None);
}
