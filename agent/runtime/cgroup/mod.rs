//! The cgroup of each node, behind one small surface that hides cgroup v1 (development and CI
//! machines: one hierarchy per controller) and cgroup v2 (production: one unified hierarchy).
//!
//! A node's cgroup is `<hierarchy>/<parent>/<node>` in every hierarchy the agent uses; the
//! start-up sweep cleans those of nodes the agent recorded and names the others under `<parent>`. On v2 inside a subtree systemd delegated
//! to the daemon, `<hierarchy>` is that subtree and the daemon runs in its `agent` leaf
//! (`delegation.rs`). Every call blocks (`kill_all` and `remove`
//! poll for up to seconds), so async callers run them on a blocking thread.
//!
//! `create` also limits which devices the node may use (`devices/`): through the v1 `devices`
//! controller, or a BPF device program attached to the node's cgroup on v2.

mod delegation;
mod devices;
mod freezer;
mod mountinfo;
mod v1;
mod v2;

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub use freezer::{FreezeControl, FreezeState};

/// Where the kernel describes this process's mounts.
const MOUNTINFO: &str = "/proc/self/mountinfo";
/// Where the kernel names this process's cgroups.
const PROC_SELF_CGROUP: &str = "/proc/self/cgroup";
/// Where cgroup hierarchies are mounted: cgroup2 itself on v2, a tmpfs of v1 mounts otherwise.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The CFS period every CPU limit is expressed in (the kernel's default, 100 ms).
const CPU_PERIOD_USEC: u64 = 100_000;
/// The smallest CFS quota the kernel accepts (1 ms).
const MIN_CPU_QUOTA_USEC: u64 = 1_000;
/// How long `kill_all` waits for a node's processes to die before giving up.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one kill round waits for the processes to go before signalling again.
const KILL_ROUND: Duration = Duration::from_millis(100);
/// How long `remove` retries an rmdir the kernel refuses with EBUSY (exiting tasks still linked).
const RMDIR_TIMEOUT: Duration = Duration::from_secs(1);
/// How often cgroup files are polled while waiting for the kernel.
const POLL: Duration = Duration::from_millis(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// Resource limits of one node; `None` leaves the kernel's default (no limit).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
}

/// What `status` shows of a node's resource use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupStats {
    pub memory_bytes: u64,
    pub cpu_usec: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {path}: {source}")]
    ReadMountinfo { path: PathBuf, source: io::Error },
    #[error("mountinfo line {line} is malformed: {text:?}")]
    Mountinfo { line: usize, text: String },
    #[error(
        "no usable cgroup hierarchy in the mountinfo: {CGROUP_ROOT} is not cgroup2 and no \
         cgroup v1 memory, pids, cpu, cpuacct, freezer or devices controller is mounted"
    )]
    NoHierarchy,
    #[error("cgroup parent {parent:?} is not a relative cgroup path: {reason}")]
    InvalidParent {
        parent: String,
        reason: &'static str,
    },
    #[error("node {node:?}: not a valid cgroup name under parent {parent:?}: {reason}")]
    InvalidNode {
        node: String,
        parent: String,
        reason: &'static str,
    },
    #[error("node {node}: {reason}")]
    InvalidLimit { node: String, reason: String },
    #[error(
        "node {node}: a {controller} limit needs the {controller} controller, not offered by {}",
        path.display()
    )]
    ControllerMissing {
        node: String,
        controller: &'static str,
        path: PathBuf,
    },
    #[error("node {node}: cgroup {} already exists (a leftover for the sweep)", path.display())]
    AlreadyExists { node: String, path: PathBuf },
    #[error("node {node}: cannot create cgroup {}: {source}", path.display())]
    Create {
        node: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("node {node}: cannot read {}: {source}", path.display())]
    Read {
        node: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("node {node}: cannot write {value:?} to {}: {source}", path.display())]
    Write {
        node: String,
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("node {node}: cannot remove cgroup {}: {source}", path.display())]
    Remove {
        node: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "node {node}: the kernel refused the device program for cgroup {}: {source}{}",
        path.display(),
        verifier_log(log)
    )]
    LoadDeviceProgram {
        node: String,
        path: PathBuf,
        source: io::Error,
        log: String,
    },
    #[error("node {node}: cannot attach the device program to cgroup {}: {source}", path.display())]
    AttachDeviceProgram {
        node: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("node {node}: cannot open cgroup {}: {source}", path.display())]
    Open {
        node: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("node {node}: cannot kill pid {pid} of cgroup {}: {source}", path.display())]
    Signal {
        node: String,
        pid: i32,
        path: PathBuf,
        source: Errno,
    },
    #[error("node {node}: pids {pids:?} still in cgroup {} after {waited:?}", path.display())]
    KillTimeout {
        node: String,
        path: PathBuf,
        pids: Vec<i32>,
        waited: Duration,
    },
    #[error("cannot list node cgroups in {}: {source}", path.display())]
    ListNodes { path: PathBuf, source: io::Error },
    #[error("cannot move the agent into its delegated cgroup leaf {}: {source}", path.display())]
    EnterLeaf { path: PathBuf, source: io::Error },
}

/// Which hierarchies nodes are placed in.
#[derive(Clone, Debug, PartialEq)]
enum Layout {
    /// One hierarchy per mount of the controllers the agent uses.
    V1(Vec<v1::Hierarchy>),
    /// The unified hierarchy mounted at `root`.
    V2 { root: PathBuf },
}

impl Layout {
    fn mounts(&self) -> Vec<&Path> {
        match self {
            Layout::V1(hierarchies) => hierarchies.iter().map(|h| h.mount.as_path()).collect(),
            Layout::V2 { root } => vec![root.as_path()],
        }
    }
}

/// The host's cgroup hierarchies, found once at start-up.
#[derive(Clone, Debug)]
pub struct Cgroups {
    layout: Layout,
    /// On v2 in a delegated subtree: the leaf the daemon runs in, beside the nodes' parent.
    agent_leaf: Option<AgentLeaf>,
}

#[derive(Clone, Debug, PartialEq)]
struct AgentLeaf {
    dir: PathBuf,
    /// Whether this process already runs in it.
    entered: bool,
}

impl Cgroups {
    /// Reads this process's mounts, because what `/sys/fs/cgroup` holds differs per machine, and
    /// its own cgroup, because on v2 systemd may have delegated a subtree to it.
    pub fn detect() -> Result<Self, CgroupError> {
        let text = fs::read_to_string(MOUNTINFO).map_err(|source| CgroupError::ReadMountinfo {
            path: MOUNTINFO.into(),
            source,
        })?;
        let own = fs::read_to_string(PROC_SELF_CGROUP).unwrap_or_default();
        Ok(Self::from_mountinfo(&text)?.within_delegation(&own, delegation::marked_delegated))
    }

    /// On v2, when `proc_self_cgroup` places this process in (or in the `agent` leaf of) a
    /// cgroup `delegated` says systemd delegated, roots the nodes there instead of at the top of
    /// the hierarchy; anything else is left as it is.
    pub fn within_delegation(
        self,
        proc_self_cgroup: &str,
        delegated: impl Fn(&Path) -> bool,
    ) -> Self {
        let Layout::V2 { root } = &self.layout else {
            return self;
        };
        let found = delegation::own_cgroup(proc_self_cgroup).and_then(|own| {
            delegation::find(own, |path| delegated(&delegation::dir_of(root, path)))
        });
        let Some(found) = found else {
            return self;
        };
        let base = delegation::dir_of(root, &found.base);
        Cgroups {
            agent_leaf: Some(AgentLeaf {
                dir: base.join(delegation::AGENT_LEAF),
                entered: found.in_leaf,
            }),
            layout: Layout::V2 { root: base },
        }
    }

    /// Moves this whole process into its delegated subtree's `agent` leaf, so the subtree's top
    /// holds no process and can enable controllers for the nodes beside it. Returns the leaf when
    /// it moved; nothing to do outside a delegated subtree or when already there.
    pub fn enter_agent_leaf(&self) -> Result<Option<&Path>, CgroupError> {
        let Some(leaf) = self.agent_leaf.as_ref().filter(|leaf| !leaf.entered) else {
            return Ok(None);
        };
        let failed = |source| CgroupError::EnterLeaf {
            path: leaf.dir.clone(),
            source,
        };
        match fs::create_dir(&leaf.dir) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(failed(source)),
        }
        // "0" is the writer itself; cgroup.procs moves every thread of the process.
        fs::write(leaf.dir.join("cgroup.procs"), "0").map_err(failed)?;
        Ok(Some(&leaf.dir))
    }

    /// Where node parents are made: the delegated subtree on v2 under systemd, else the root of
    /// each hierarchy.
    pub fn node_roots(&self) -> Vec<&Path> {
        self.layout.mounts()
    }

    /// Chooses v2 when the last mount on `/sys/fs/cgroup` is cgroup2, else the v1 controller
    /// mounts, so a hybrid host's controller-less `unified` mount is ignored.
    pub fn from_mountinfo(text: &str) -> Result<Self, CgroupError> {
        let mounts = mountinfo::parse(text)?;
        let on_root = mounts
            .iter()
            .rev()
            .find(|mount| mount.mount_point == Path::new(CGROUP_ROOT));
        if on_root.is_some_and(|mount| mount.fs_type == "cgroup2") {
            let root = PathBuf::from(CGROUP_ROOT);
            return Ok(Cgroups {
                layout: Layout::V2 { root },
                agent_leaf: None,
            });
        }
        let hierarchies = v1::hierarchies(&mounts);
        if hierarchies.is_empty() {
            return Err(CgroupError::NoHierarchy);
        }
        Ok(Cgroups {
            layout: Layout::V1(hierarchies),
            agent_leaf: None,
        })
    }

    /// Moves every hierarchy under `prefix`, so tests can stand a plain directory in for cgroupfs.
    pub fn with_prefix(self, prefix: &Path) -> Self {
        let reroot = |mount: &Path| prefix.join(mount.strip_prefix("/").unwrap_or(mount));
        let layout = match self.layout {
            Layout::V1(hierarchies) => Layout::V1(
                hierarchies
                    .into_iter()
                    .map(|h| v1::Hierarchy {
                        mount: reroot(&h.mount),
                        controllers: h.controllers,
                    })
                    .collect(),
            ),
            Layout::V2 { root } => Layout::V2 {
                root: reroot(&root),
            },
        };
        let agent_leaf = self.agent_leaf.map(|leaf| AgentLeaf {
            dir: reroot(&leaf.dir),
            ..leaf
        });
        Cgroups { layout, agent_leaf }
    }

    pub fn version(&self) -> CgroupVersion {
        match self.layout {
            Layout::V1(_) => CgroupVersion::V1,
            Layout::V2 { .. } => CgroupVersion::V2,
        }
    }

    /// Whether a node's memory limit also holds its swap: the kernel has swap accounting
    /// (`memory.memsw.limit_in_bytes` on v1, `memory.swap.max` on v2). Without it a node can
    /// swap past its limit on a host with swap, and `status` says so.
    pub fn limits_swap(&self) -> bool {
        match &self.layout {
            Layout::V1(hierarchies) => v1::limits_swap(hierarchies),
            Layout::V2 { root } => v2::limits_swap(root),
        }
    }

    /// The cgroup of one node: `<hierarchy>/<parent>/<node>` in every used hierarchy.
    ///
    /// Names are checked by the calls that touch the filesystem, so a bad name fails there.
    pub fn node(&self, parent: &str, node: &str) -> NodeCgroup {
        NodeCgroup {
            name: node.to_string(),
            parent: parent.to_string(),
            layout: self.layout.clone(),
        }
    }

    /// Names of node cgroups that exist under `parent` in any hierarchy, so the start-up sweep
    /// also finds a node that a crash left half-made.
    pub fn list_nodes(&self, parent: &str) -> Result<Vec<String>, CgroupError> {
        check_parent(parent)?;
        let mut names = BTreeSet::new();
        for mount in self.layout.mounts() {
            let dir = mount.join(parent);
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(CgroupError::ListNodes { path: dir, source }),
            };
            for entry in entries {
                let entry = entry.map_err(|source| CgroupError::ListNodes {
                    path: dir.clone(),
                    source,
                })?;
                if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                    names.extend(entry.file_name().to_str().map(str::to_string));
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Removes the `parent` chain that `create` made, deepest first, in every hierarchy; a
    /// directory still holding nodes or processes (EBUSY) stops it, so this is safe to call always.
    pub fn remove_parent_if_empty(&self, parent: &str) {
        if let Err(error) = check_parent(parent) {
            tracing::warn!("{error}");
            return;
        }
        let components: Vec<&str> = parent.split('/').collect();
        for mount in self.layout.mounts() {
            for depth in (1..=components.len()).rev() {
                let dir = mount.join(components[..depth].join("/"));
                match fs::remove_dir(&dir) {
                    Ok(()) => {}
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error)
                        if matches!(error.raw_os_error(), Some(libc::EBUSY | libc::ENOTEMPTY)) =>
                    {
                        break
                    }
                    Err(error) => {
                        tracing::warn!("cannot remove cgroup parent {}: {error}", dir.display());
                        break;
                    }
                }
            }
        }
    }
}

/// One write into a cgroup control file.
#[derive(Debug, PartialEq)]
struct ControlWrite {
    path: PathBuf,
    value: String,
    /// Skipped when the kernel does not offer the file (memory.swap.max without swap accounting).
    only_if_present: bool,
}

impl ControlWrite {
    fn new(path: PathBuf, value: impl ToString) -> Self {
        ControlWrite {
            path,
            value: value.to_string(),
            only_if_present: false,
        }
    }

    fn if_present(path: PathBuf, value: impl ToString) -> Self {
        ControlWrite {
            only_if_present: true,
            ..ControlWrite::new(path, value)
        }
    }
}

/// The cgroup of one node, in every hierarchy the agent uses.
#[derive(Clone, Debug)]
pub struct NodeCgroup {
    name: String,
    parent: String,
    layout: Layout,
}

impl NodeCgroup {
    /// Makes the node's cgroup with its limits and device rules, or nothing: on failure every
    /// directory this call made is removed again (and with it a device program attached to it).
    ///
    /// On v2 the memory, pids and cpu controllers are enabled from the root down to the parent,
    /// and the device program is attached last; on v1 the device rules are control writes among
    /// the limits. On v1 cpuset is not used, except that new directories of a hierarchy it shares
    /// get their parent's cpus and mems (the kernel refuses tasks in a cpuset without them).
    pub fn create(&self, limits: &Limits) -> Result<(), CgroupError> {
        self.check_names()?;
        let writes = self.limit_writes(limits)?;
        let mut created = Vec::new();
        let made = match &self.layout {
            Layout::V1(hierarchies) => v1::make_dirs(self, hierarchies, &mut created),
            Layout::V2 { root } => v2::make_dirs(self, root, limits, &mut created),
        };
        let result = made
            .and_then(|()| self.apply(&writes))
            .and_then(|()| match &self.layout {
                Layout::V1(_) => Ok(()),
                Layout::V2 { root } => v2::limit_devices(self, root),
            });
        if result.is_err() {
            for dir in created.iter().rev() {
                if let Err(error) = fs::remove_dir(dir) {
                    tracing::warn!(
                        "node {}: cannot remove half-made cgroup {}: {error}",
                        self.name,
                        dir.display()
                    );
                }
            }
        }
        result
    }

    /// An fd of the node's cgroup for `clone3(CLONE_INTO_CGROUP)`, which starts the init inside it
    /// without the RCU wait a cgroup.procs write costs; v1 has no such clone, hence `None`.
    pub fn clone_into_fd(&self) -> Result<Option<OwnedFd>, CgroupError> {
        self.check_names()?;
        match &self.layout {
            Layout::V1(_) => Ok(None),
            Layout::V2 { root } => v2::open_dir(self, root).map(Some),
        }
    }

    /// Moves process `pid` (all its threads) into the node's cgroup in every hierarchy.
    pub fn attach(&self, pid: i32) -> Result<(), CgroupError> {
        self.check_names()?;
        for path in self.procs_files() {
            self.write_control(&path, &pid.to_string())?;
        }
        Ok(())
    }

    /// Pids in the node's cgroup and any cgroups below it, in every hierarchy (so a process that a
    /// failed attach left in only some of them still counts); empty when the cgroup is gone.
    pub fn procs(&self) -> Result<Vec<i32>, CgroupError> {
        self.check_names()?;
        let mut pids = BTreeSet::new();
        for dir in self.dirs() {
            for cgroup in subtree(&dir) {
                pids.extend(self.read_pids(&cgroup.join("cgroup.procs"))?);
            }
        }
        Ok(pids.into_iter().collect())
    }

    /// Kills every process of the node and waits until none is left, so the directories can go.
    ///
    /// v2 writes cgroup.kill (race-free against forks); v1 freezes the node first when the freezer
    /// is mounted, so no pid can exit and be reused between reading and signalling it.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        self.check_names()?;
        match &self.layout {
            Layout::V1(hierarchies) => v1::kill_all(self, hierarchies),
            Layout::V2 { root } => v2::kill_all(self, root),
        }
    }

    /// Kills the node's processes and removes its cgroup directories (and any the node made below
    /// them); directories already gone are fine, so this is also the sweep's cleanup.
    pub fn remove(&self) -> Result<(), CgroupError> {
        self.kill_all()?;
        for dir in self.dirs() {
            for cgroup in subtree(&dir) {
                self.remove_dir(&cgroup)?;
            }
        }
        Ok(())
    }

    /// Whether any of the node's cgroup directories exists; never for a name `create` refuses.
    pub fn exists(&self) -> bool {
        self.check_names().is_ok() && self.dirs().iter().any(|dir| dir.exists())
    }

    /// Memory and CPU use for `status`; zero for what cannot be read, since a node that is going
    /// away should not fail a status query.
    pub fn stats(&self) -> CgroupStats {
        if self.check_names().is_err() {
            return CgroupStats::default();
        }
        match &self.layout {
            Layout::V1(hierarchies) => v1::stats(self, hierarchies),
            Layout::V2 { root } => v2::stats(self, root),
        }
    }

    /// The cgroup.procs files a process writes its own pid into to join the node (`exec`); empty
    /// for a name `create` refuses, which therefore never has a cgroup.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        if self.check_names().is_err() {
            return Vec::new();
        }
        self.dirs()
            .into_iter()
            .map(|dir| dir.join("cgroup.procs"))
            .collect()
    }

    /// The files a single-threaded process writes "0" into to move itself into the node. On v1
    /// these are the `tasks` files: moving one's own only thread skips the global threadgroup
    /// lock, whose RCU grace period makes every `cgroup.procs` write cost about 2 ms. On v2 the
    /// init is cloned straight into its cgroup, and `exec` uses `cgroup.procs`.
    pub fn join_files(&self) -> Vec<PathBuf> {
        let file = match self.layout {
            Layout::V1(_) => "tasks",
            Layout::V2 { .. } => "cgroup.procs",
        };
        if self.check_names().is_err() {
            return Vec::new();
        }
        self.dirs().into_iter().map(|dir| dir.join(file)).collect()
    }

    /// The node's directory in the hierarchy mounted at `mount`.
    fn dir_in(&self, mount: &Path) -> PathBuf {
        mount.join(&self.parent).join(&self.name)
    }

    fn dirs(&self) -> Vec<PathBuf> {
        self.layout
            .mounts()
            .into_iter()
            .map(|mount| self.dir_in(mount))
            .collect()
    }

    /// Refuses names that would leave `<parent>/<node>`, since `kill_all` on such a path would
    /// kill processes that are not the node's.
    fn check_names(&self) -> Result<(), CgroupError> {
        check_parent(&self.parent)?;
        check_component(&self.name).map_err(|reason| CgroupError::InvalidNode {
            node: self.name.clone(),
            parent: self.parent.clone(),
            reason,
        })
    }

    /// The control-file writes that set `limits` (and on v1 the device rules), planned before
    /// anything is made so a bad limit fails without side effects.
    fn limit_writes(&self, limits: &Limits) -> Result<Vec<ControlWrite>, CgroupError> {
        match &self.layout {
            Layout::V1(hierarchies) => v1::limit_writes(self, hierarchies, limits),
            Layout::V2 { root } => v2::limit_writes(self, root, limits),
        }
    }

    fn apply(&self, writes: &[ControlWrite]) -> Result<(), CgroupError> {
        for write in writes {
            if write.only_if_present && !write.path.exists() {
                continue;
            }
            self.write_control(&write.path, &write.value)?;
        }
        Ok(())
    }

    /// The CFS quota for `cpus` CPUs per [`CPU_PERIOD_USEC`].
    fn cpu_quota_usec(&self, cpus: f64) -> Result<u64, CgroupError> {
        if !(cpus.is_finite() && cpus > 0.0) {
            return Err(CgroupError::InvalidLimit {
                node: self.name.clone(),
                reason: format!("cpus must be a positive number, not {cpus}"),
            });
        }
        let quota = (cpus * CPU_PERIOD_USEC as f64).round() as u64;
        Ok(quota.max(MIN_CPU_QUOTA_USEC))
    }

    /// Makes `dir`, recording it in `created` for the rollback; false when it already existed.
    fn make_dir(&self, dir: &Path, created: &mut Vec<PathBuf>) -> Result<bool, CgroupError> {
        match fs::create_dir(dir) {
            Ok(()) => {
                created.push(dir.to_path_buf());
                Ok(true)
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(source) => Err(CgroupError::Create {
                node: self.name.clone(),
                path: dir.to_path_buf(),
                source,
            }),
        }
    }

    /// Removes one cgroup directory, retrying while the kernel still holds exiting tasks in it.
    fn remove_dir(&self, dir: &Path) -> Result<(), CgroupError> {
        let deadline = Instant::now() + RMDIR_TIMEOUT;
        loop {
            match fs::remove_dir(dir) {
                Ok(()) => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(error)
                    if error.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                {
                    sleep(POLL)
                }
                Err(source) => {
                    return Err(CgroupError::Remove {
                        node: self.name.clone(),
                        path: dir.to_path_buf(),
                        source,
                    })
                }
            }
        }
    }

    fn read_control(&self, path: &Path) -> Result<String, CgroupError> {
        fs::read_to_string(path).map_err(|source| CgroupError::Read {
            node: self.name.clone(),
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes `value` in one write(2), as cgroupfs takes one value per write.
    fn write_control(&self, path: &Path, value: &str) -> Result<(), CgroupError> {
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .and_then(|mut file| file.write_all(value.as_bytes()))
            .map_err(|source| CgroupError::Write {
                node: self.name.clone(),
                path: path.to_path_buf(),
                value: value.to_string(),
                source,
            })
    }

    /// Pids listed in one cgroup.procs file; none when the cgroup is gone. Pid 0 (a process
    /// outside our pid namespace) is dropped, since signalling pid 0 would hit our own group.
    fn read_pids(&self, procs: &Path) -> Result<Vec<i32>, CgroupError> {
        let text = match fs::read_to_string(procs) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(CgroupError::Read {
                    node: self.name.clone(),
                    path: procs.to_path_buf(),
                    source,
                })
            }
        };
        text.split_whitespace()
            .map(|word| {
                word.parse::<i32>().map_err(|_| CgroupError::Read {
                    node: self.name.clone(),
                    path: procs.to_path_buf(),
                    source: io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{word:?} is not a pid"),
                    ),
                })
            })
            .filter(|pid| !matches!(pid, Ok(pid) if *pid <= 0))
            .collect()
    }

    /// Sends SIGKILL to each pid; one that already exited is fine.
    fn kill_pids(&self, pids: &[i32]) -> Result<(), CgroupError> {
        for &pid in pids {
            match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(source) => {
                    return Err(CgroupError::Signal {
                        node: self.name.clone(),
                        pid,
                        path: self.dirs().swap_remove(0),
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Runs `kill_round` until the node has no process left, giving each round [`KILL_ROUND`] to
    /// take effect, and fails after [`KILL_TIMEOUT`].
    fn kill_until_empty(
        &self,
        mut kill_round: impl FnMut(&[i32]) -> Result<(), CgroupError>,
    ) -> Result<(), CgroupError> {
        let start = Instant::now();
        let deadline = start + KILL_TIMEOUT;
        loop {
            let pids = self.procs()?;
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::KillTimeout {
                    node: self.name.clone(),
                    path: self.dirs().swap_remove(0),
                    pids,
                    waited: start.elapsed(),
                });
            }
            kill_round(&pids)?;
            let round_end = (Instant::now() + KILL_ROUND).min(deadline);
            while Instant::now() < round_end && !self.procs()?.is_empty() {
                sleep(POLL);
            }
        }
    }
}

/// The verifier's log on lines of its own after an error, when there is one.
fn verifier_log(log: &str) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!("; verifier log:\n{log}")
    }
}

/// A number from a one-value control file such as memory.current; `None` when unreadable.
fn read_number(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `dir` and every cgroup below it, deepest first, so they can be removed in this order.
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                dirs.extend(subtree(&entry.path()));
            }
        }
    }
    dirs.push(dir.to_path_buf());
    dirs
}

fn check_parent(parent: &str) -> Result<(), CgroupError> {
    parent
        .split('/')
        .try_for_each(check_component)
        .map_err(|reason| CgroupError::InvalidParent {
            parent: parent.to_string(),
            reason,
        })
}

/// One path component that stays inside its directory.
fn check_component(name: &str) -> Result<(), &'static str> {
    match name {
        "" => Err("empty name or component"),
        "." | ".." => Err("`.` and `..` leave the cgroup"),
        _ if name.contains(['/', '\0']) => Err("a name holds no `/` or NUL"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
