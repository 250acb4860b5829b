//! cgroup v1: one hierarchy per mount, each carrying one or more controllers (`cpu,cpuacct`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::mountinfo::Mount;
use super::{
    devices, read_number, CgroupError, CgroupStats, ControlWrite, Limits, NodeCgroup, CGROUP_ROOT,
    CPU_PERIOD_USEC, MOUNTINFO, POLL,
};

/// How long a freeze may take before the kill round signals anyway (a task in uninterruptible
/// sleep keeps the cgroup FREEZING).
const FREEZE_WAIT: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Controller {
    Memory,
    Pids,
    Cpu,
    Cpuacct,
    Freezer,
    Devices,
    /// Never used itself, but a hierarchy it shares needs its cpus and mems set up.
    Cpuset,
}

impl Controller {
    fn from_option(option: &str) -> Option<Self> {
        Some(match option {
            "memory" => Controller::Memory,
            "pids" => Controller::Pids,
            "cpu" => Controller::Cpu,
            "cpuacct" => Controller::Cpuacct,
            "freezer" => Controller::Freezer,
            "devices" => Controller::Devices,
            "cpuset" => Controller::Cpuset,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
            Controller::Cpuacct => "cpuacct",
            Controller::Freezer => "freezer",
            Controller::Devices => "devices",
            Controller::Cpuset => "cpuset",
        }
    }

    fn is_used(self) -> bool {
        self != Controller::Cpuset
    }
}

/// One mounted v1 hierarchy the agent places nodes in.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Hierarchy {
    pub(super) mount: PathBuf,
    pub(super) controllers: Vec<Controller>,
}

impl Hierarchy {
    fn has(&self, controller: Controller) -> bool {
        self.controllers.contains(&controller)
    }
}

/// The hierarchies carrying a used controller, one per controller; mounts under
/// `/sys/fs/cgroup` win over the same hierarchy mounted elsewhere.
pub(super) fn hierarchies(mounts: &[Mount]) -> Vec<Hierarchy> {
    let mut candidates: Vec<&Mount> = mounts
        .iter()
        .filter(|mount| mount.fs_type == "cgroup")
        .collect();
    candidates.sort_by_key(|mount| !mount.mount_point.starts_with(CGROUP_ROOT));
    let mut hierarchies: Vec<Hierarchy> = Vec::new();
    for mount in candidates {
        let controllers: Vec<Controller> = mount
            .super_options
            .iter()
            .filter_map(|option| Controller::from_option(option))
            .collect();
        let used = controllers.iter().any(|c| c.is_used());
        let seen = controllers
            .iter()
            .any(|c| hierarchies.iter().any(|h| h.has(*c)));
        if used && !seen {
            hierarchies.push(Hierarchy {
                mount: mount.mount_point.clone(),
                controllers,
            });
        }
    }
    hierarchies
}

/// Whether the kernel accounts swap in the memory hierarchy, so a node's memory limit can hold
/// its swap too (`memory.memsw.*`, absent without swap accounting).
pub(super) fn limits_swap(hierarchies: &[Hierarchy]) -> bool {
    hierarchies
        .iter()
        .find(|h| h.has(Controller::Memory))
        .is_some_and(|h| h.mount.join("memory.memsw.limit_in_bytes").exists())
}

/// The node's directory in the hierarchy carrying `controller`, if one is mounted.
pub(super) fn dir_of(
    node: &NodeCgroup,
    hierarchies: &[Hierarchy],
    controller: Controller,
) -> Option<PathBuf> {
    hierarchies
        .iter()
        .find(|h| h.has(controller))
        .map(|h| node.dir_in(&h.mount))
}

pub(super) fn limit_writes(
    node: &NodeCgroup,
    hierarchies: &[Hierarchy],
    limits: &Limits,
) -> Result<Vec<ControlWrite>, CgroupError> {
    let required = |controller: Controller| {
        dir_of(node, hierarchies, controller).ok_or_else(|| CgroupError::ControllerMissing {
            node: node.name.clone(),
            controller: controller.name(),
            path: MOUNTINFO.into(),
        })
    };
    let devices_dir = required(Controller::Devices)?;
    let mut writes = Vec::new();
    if let Some(bytes) = limits.memory_bytes {
        let dir = required(Controller::Memory)?;
        writes.push(ControlWrite::new(dir.join("memory.limit_in_bytes"), bytes));
        // Memory and swap together, so swap is no way past the limit (after the memory limit:
        // the kernel refuses a memsw limit below it). Only with swap accounting in the kernel.
        writes.push(ControlWrite::if_present(
            dir.join("memory.memsw.limit_in_bytes"),
            bytes,
        ));
    }
    if let Some(cpus) = limits.cpus {
        let quota = node.cpu_quota_usec(cpus)?;
        let dir = required(Controller::Cpu)?;
        writes.push(ControlWrite::new(
            dir.join("cpu.cfs_period_us"),
            CPU_PERIOD_USEC,
        ));
        writes.push(ControlWrite::new(dir.join("cpu.cfs_quota_us"), quota));
    }
    if let Some(pids) = limits.pids {
        let dir = required(Controller::Pids)?;
        writes.push(ControlWrite::new(dir.join("pids.max"), pids));
    }
    writes.extend(devices::v1_writes(&devices_dir));
    Ok(writes)
}

/// Makes `<parent>` (as needed) and `<node>` in every hierarchy; the node directory must be new.
pub(super) fn make_dirs(
    node: &NodeCgroup,
    hierarchies: &[Hierarchy],
    created: &mut Vec<PathBuf>,
) -> Result<(), CgroupError> {
    for hierarchy in hierarchies {
        let mut dir = hierarchy.mount.clone();
        for component in node.parent.split('/') {
            dir.push(component);
            if node.make_dir(&dir, created)? && hierarchy.has(Controller::Cpuset) {
                copy_cpuset(node, &dir)?;
            }
        }
        let dir = node.dir_in(&hierarchy.mount);
        if !node.make_dir(&dir, created)? {
            return Err(CgroupError::AlreadyExists {
                node: node.name.clone(),
                path: dir,
            });
        }
        if hierarchy.has(Controller::Cpuset) {
            copy_cpuset(node, &dir)?;
        }
    }
    Ok(())
}

/// Gives a new cpuset cgroup its parent's cpus and mems, which start empty on v1.
fn copy_cpuset(node: &NodeCgroup, dir: &Path) -> Result<(), CgroupError> {
    let parent = dir.parent().unwrap_or(dir);
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let value = node.read_control(&parent.join(file))?;
        node.write_control(&dir.join(file), value.trim())?;
    }
    Ok(())
}

pub(super) fn kill_all(node: &NodeCgroup, hierarchies: &[Hierarchy]) -> Result<(), CgroupError> {
    let freezer = dir_of(node, hierarchies, Controller::Freezer).filter(|dir| dir.exists());
    node.kill_until_empty(|pids| match &freezer {
        Some(dir) => freeze_and_kill(node, dir),
        None => node.kill_pids(pids),
    })
}

/// Freezes the node, SIGKILLs what is frozen (no pid can exit and be reused meanwhile) and thaws
/// it so the signals are delivered; thawing happens even when killing failed.
fn freeze_and_kill(node: &NodeCgroup, freezer_dir: &Path) -> Result<(), CgroupError> {
    let state = freezer_dir.join("freezer.state");
    node.write_control(&state, "FROZEN")?;
    let deadline = Instant::now() + FREEZE_WAIT;
    while Instant::now() < deadline
        && node
            .read_control(&state)
            .is_ok_and(|text| text.trim() != "FROZEN")
    {
        std::thread::sleep(POLL);
    }
    let killed = node.procs().and_then(|pids| node.kill_pids(&pids));
    let thawed = node.write_control(&state, "THAWED");
    killed.and(thawed)
}

pub(super) fn stats(node: &NodeCgroup, hierarchies: &[Hierarchy]) -> CgroupStats {
    let read = |controller, file| {
        dir_of(node, hierarchies, controller).and_then(|dir| read_number(&dir.join(file)))
    };
    CgroupStats {
        memory_bytes: read(Controller::Memory, "memory.usage_in_bytes").unwrap_or(0),
        cpu_usec: read(Controller::Cpuacct, "cpuacct.usage").unwrap_or(0) / 1_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::cgroup::tests::HYBRID;
    use crate::runtime::cgroup::{mountinfo, Cgroups, Layout};

    fn hierarchies_of(text: &str) -> Vec<(String, Vec<Controller>)> {
        hierarchies(&mountinfo::parse(text).unwrap())
            .into_iter()
            .map(|h| (h.mount.display().to_string(), h.controllers))
            .collect()
    }

    fn v1_node(text: &str) -> (NodeCgroup, Vec<Hierarchy>) {
        let cgroups = Cgroups::from_mountinfo(text).unwrap();
        let Layout::V1(hierarchies) = cgroups.layout.clone() else {
            panic!("expected cgroup v1");
        };
        (cgroups.node("magestack", "web1"), hierarchies)
    }

    #[test]
    fn hybrid_host_uses_one_hierarchy_per_used_controller() {
        use Controller::*;
        assert_eq!(
            hierarchies_of(HYBRID),
            [
                ("/sys/fs/cgroup/cpu".to_string(), vec![Cpu]),
                ("/sys/fs/cgroup/cpuacct".to_string(), vec![Cpuacct]),
                ("/sys/fs/cgroup/memory".to_string(), vec![Memory]),
                ("/sys/fs/cgroup/devices".to_string(), vec![Devices]),
                ("/sys/fs/cgroup/freezer".to_string(), vec![Freezer]),
                ("/sys/fs/cgroup/pids".to_string(), vec![Pids]),
            ]
        );
    }

    #[test]
    fn combined_mounts_are_one_hierarchy_and_duplicates_are_skipped() {
        use Controller::*;
        let text = "\
50 1 0:40 / /mnt/elsewhere rw - cgroup cgroup rw,memory
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
33 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset,memory rw - cgroup cgroup rw,cpuset,memory,clone_children
";
        assert_eq!(
            hierarchies_of(text),
            [
                ("/sys/fs/cgroup/cpu,cpuacct".to_string(), vec![Cpu, Cpuacct]),
                (
                    "/sys/fs/cgroup/cpuset,memory".to_string(),
                    vec![Cpuset, Memory]
                ),
            ]
        );
    }

    #[test]
    fn limits_become_v1_control_writes() {
        let (node, hierarchies) = v1_node(HYBRID);
        let limits = Limits {
            memory_bytes: Some(64 << 20),
            cpus: Some(1.5),
            pids: Some(32),
        };
        let writes = limit_writes(&node, &hierarchies, &limits).unwrap();
        let base = Path::new("/sys/fs/cgroup");
        assert_eq!(
            writes[..5],
            [
                ControlWrite::new(
                    base.join("memory/magestack/web1/memory.limit_in_bytes"),
                    "67108864"
                ),
                ControlWrite::if_present(
                    base.join("memory/magestack/web1/memory.memsw.limit_in_bytes"),
                    "67108864"
                ),
                ControlWrite::new(base.join("cpu/magestack/web1/cpu.cfs_period_us"), "100000"),
                ControlWrite::new(base.join("cpu/magestack/web1/cpu.cfs_quota_us"), "150000"),
                ControlWrite::new(base.join("pids/magestack/web1/pids.max"), "32"),
            ]
        );
        let device_writes = devices::v1_writes(&base.join("devices/magestack/web1"));
        assert_eq!(writes[5..], device_writes);
        assert_eq!(
            limit_writes(&node, &hierarchies, &Limits::default()).unwrap(),
            device_writes
        );
    }

    #[test]
    fn a_limit_without_its_controller_is_refused() {
        let without_pids: String = HYBRID
            .lines()
            .filter(|l| !l.ends_with(",pids"))
            .map(|l| format!("{l}\n"))
            .collect();
        let (node, hierarchies) = v1_node(&without_pids);
        let limits = Limits {
            pids: Some(32),
            ..Limits::default()
        };
        let error = limit_writes(&node, &hierarchies, &limits).unwrap_err();
        assert!(
            matches!(
                error,
                CgroupError::ControllerMissing {
                    controller: "pids",
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("web1"), "{error}");
    }

    #[test]
    fn a_host_without_the_devices_controller_runs_no_node() {
        let without_devices: String = HYBRID
            .lines()
            .filter(|l| !l.ends_with(",devices"))
            .map(|l| format!("{l}\n"))
            .collect();
        let (node, hierarchies) = v1_node(&without_devices);
        let error = limit_writes(&node, &hierarchies, &Limits::default()).unwrap_err();
        assert!(
            matches!(
                error,
                CgroupError::ControllerMissing {
                    controller: "devices",
                    ..
                }
            ),
            "{error}"
        );
    }
}
