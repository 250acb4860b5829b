//! cgroup v2: one unified hierarchy, where a controller works in a cgroup only once every
//! ancestor lists it in cgroup.subtree_control.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{
    devices, read_number, CgroupError, CgroupStats, ControlWrite, Limits, NodeCgroup,
    CPU_PERIOD_USEC,
};

/// Controllers enabled down to the node's parent: the limits' controllers plus memory for
/// `status`, whenever the kernel offers them.
const WANTED: [&str; 3] = ["memory", "pids", "cpu"];

pub(super) fn limit_writes(
    node: &NodeCgroup,
    root: &Path,
    limits: &Limits,
) -> Result<Vec<ControlWrite>, CgroupError> {
    let dir = node.dir_in(root);
    let mut writes = Vec::new();
    if let Some(bytes) = limits.memory_bytes {
        writes.push(ControlWrite::new(dir.join("memory.max"), bytes));
        writes.push(ControlWrite::if_present(dir.join("memory.swap.max"), 0));
    }
    if let Some(cpus) = limits.cpus {
        let quota = node.cpu_quota_usec(cpus)?;
        writes.push(ControlWrite::new(
            dir.join("cpu.max"),
            format!("{quota} {CPU_PERIOD_USEC}"),
        ));
    }
    if let Some(pids) = limits.pids {
        writes.push(ControlWrite::new(dir.join("pids.max"), pids));
    }
    Ok(writes)
}

/// Enables the controllers from the root down to `<parent>` (making it as needed), then makes the
/// node directory, which must be new.
pub(super) fn make_dirs(
    node: &NodeCgroup,
    root: &Path,
    limits: &Limits,
    created: &mut Vec<PathBuf>,
) -> Result<(), CgroupError> {
    let required: Vec<&'static str> = [
        (limits.memory_bytes.is_some(), "memory"),
        (limits.pids.is_some(), "pids"),
        (limits.cpus.is_some(), "cpu"),
    ]
    .into_iter()
    .filter_map(|(set, controller)| set.then_some(controller))
    .collect();
    let mut dir = root.to_path_buf();
    enable_controllers(node, &dir, &required)?;
    for component in node.parent.split('/') {
        dir.push(component);
        node.make_dir(&dir, created)?;
        enable_controllers(node, &dir, &required)?;
    }
    let dir = node.dir_in(root);
    if !node.make_dir(&dir, created)? {
        return Err(CgroupError::AlreadyExists {
            node: node.name.clone(),
            path: dir,
        });
    }
    Ok(())
}

/// Turns on, for the children of `dir`, each wanted controller `dir` offers and has not enabled
/// yet; a limit whose controller `dir` does not offer is an error naming that file.
fn enable_controllers(
    node: &NodeCgroup,
    dir: &Path,
    required: &[&'static str],
) -> Result<(), CgroupError> {
    let offered_file = dir.join("cgroup.controllers");
    let offered = node.read_control(&offered_file)?;
    let offered: Vec<&str> = offered.split_whitespace().collect();
    if let Some(controller) = required.iter().copied().find(|c| !offered.contains(c)) {
        return Err(CgroupError::ControllerMissing {
            node: node.name.clone(),
            controller,
            path: offered_file,
        });
    }
    let subtree_control = dir.join("cgroup.subtree_control");
    let enabled = node.read_control(&subtree_control)?;
    let enable: Vec<String> = WANTED
        .into_iter()
        .filter(|c| offered.contains(c) && !enabled.split_whitespace().any(|e| e == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if enable.is_empty() {
        return Ok(());
    }
    node.write_control(&subtree_control, &enable.join(" "))
}

/// Opens the node directory read-only with O_DIRECTORY (std adds O_CLOEXEC), as
/// `CLONE_INTO_CGROUP` wants.
/// Whether the kernel accounts swap (`memory.swap.max` exists in cgroups with the memory
/// controller; the root has none, so its children are looked at).
pub(super) fn limits_swap(root: &Path) -> bool {
    let has_swap_max = |dir: &Path| dir.join("memory.swap.max").exists();
    has_swap_max(root)
        || std::fs::read_dir(root).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|entry| entry.path().is_dir() && has_swap_max(&entry.path()))
        })
}

pub(super) fn open_dir(node: &NodeCgroup, root: &Path) -> Result<OwnedFd, CgroupError> {
    let dir = node.dir_in(root);
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(&dir)
        .map(OwnedFd::from)
        .map_err(|source| CgroupError::Open {
            node: node.name.clone(),
            path: dir,
            source,
        })
}

/// Attaches the device program to the node's new cgroup, before any process is in it.
pub(super) fn limit_devices(node: &NodeCgroup, root: &Path) -> Result<(), CgroupError> {
    let cgroup = open_dir(node, root)?;
    devices::attach_program(node, cgroup.as_fd(), &node.dir_in(root))
}

/// Writes cgroup.kill, which signals the whole subtree at once (Linux 5.14+); older kernels get
/// SIGKILL per pid.
pub(super) fn kill_all(node: &NodeCgroup, root: &Path) -> Result<(), CgroupError> {
    let kill_file = node.dir_in(root).join("cgroup.kill");
    node.kill_until_empty(|pids| {
        if kill_file.exists() {
            node.write_control(&kill_file, "1")
        } else {
            node.kill_pids(pids)
        }
    })
}

pub(super) fn stats(node: &NodeCgroup, root: &Path) -> CgroupStats {
    let dir = node.dir_in(root);
    let cpu_usec = std::fs::read_to_string(dir.join("cpu.stat"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("usage_usec "))
                .and_then(|value| value.trim().parse().ok())
        });
    CgroupStats {
        memory_bytes: read_number(&dir.join("memory.current")).unwrap_or(0),
        cpu_usec: cpu_usec.unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::cgroup::tests::V2;
    use crate::runtime::cgroup::Cgroups;

    #[test]
    fn limits_become_v2_control_writes() {
        let node = Cgroups::from_mountinfo(V2)
            .unwrap()
            .node("magestack", "db1");
        let root = Path::new("/sys/fs/cgroup");
        let limits = Limits {
            memory_bytes: Some(2 << 30),
            cpus: Some(0.5),
            pids: Some(512),
        };
        let dir = root.join("magestack/db1");
        assert_eq!(
            limit_writes(&node, root, &limits).unwrap(),
            [
                ControlWrite::new(dir.join("memory.max"), "2147483648"),
                ControlWrite::if_present(dir.join("memory.swap.max"), "0"),
                ControlWrite::new(dir.join("cpu.max"), "50000 100000"),
                ControlWrite::new(dir.join("pids.max"), "512"),
            ]
        );
    }
}
