//! What a node's processes hold open, read on the host from `/proc`: a descriptor that leads
//! out of the node (a file on a mount the node does not have, or one of its init's own
//! sockets) is a way to the host.

use std::collections::BTreeSet;
use std::path::Path;

use super::TestHost;

/// One open descriptor of a node process that the node must not have.
pub fn foreign_descriptors(host: &TestHost, node: &str) -> Vec<String> {
    let init = host.node_pid(node);
    let node_mounts = mount_ids(init);
    let init_sockets: BTreeSet<String> = descriptors(init)
        .into_iter()
        .map(|(_, target)| target)
        .filter(|target| target.starts_with("socket:"))
        .collect();
    let mut foreign = Vec::new();
    for pid in host
        .node_processes(node)
        .into_iter()
        .filter(|pid| *pid != init)
    {
        for (fd, target) in descriptors(pid) {
            let kind = target.split(':').next().unwrap_or_default();
            let verdict = match kind {
                "socket" if init_sockets.contains(&target) => Some("one of its init's sockets"),
                "socket" | "pipe" | "anon_inode" => None,
                _ => match fd_mount(pid, fd) {
                    Some(mount) if node_mounts.contains(&mount) => None,
                    Some(_) => Some("on a mount outside the node"),
                    None => None,
                },
            };
            if let Some(verdict) = verdict {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                foreign.push(format!(
                    "{} (pid {pid}) fd {fd} -> {target}: {verdict}",
                    comm.trim()
                ));
            }
        }
    }
    foreign
}

/// `(fd, link target)` of every descriptor of `pid` (none once it has exited).
pub fn descriptors(pid: i32) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let fd = entry.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .collect()
}

/// The ids of the mounts in `pid`'s mount namespace.
fn mount_ids(pid: i32) -> BTreeSet<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The mount an open file lives on (`mnt_id` of `/proc/<pid>/fdinfo/<fd>`).
fn fd_mount(pid: i32, fd: u32) -> Option<u64> {
    let info = std::fs::read_to_string(Path::new(&format!("/proc/{pid}/fdinfo/{fd}"))).ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("mnt_id:"))
        .and_then(|id| id.trim().parse().ok())
}
