//! One node on the host side: cgroup, directories, the init's spawn, adoption, stop and clean-up.
//!
//! Every call here is blocking and short; the daemon runs them off its event loop.

pub mod cgroup;
mod clone;
pub mod enter;
mod exec_streams;
pub mod freezer;
mod idmap;
mod launch;
mod paths;
pub mod quota;
mod record;
mod restart;
mod sandbox;
mod undo;
pub mod volume;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::api::init::{Handshake, InitPlan, InitReply, InitRequest, ProcessStatus, VolumeMount};
use crate::api::{read_message, write_message};
use crate::config::{Config, LogRotation, NodeSpec};
use crate::image::ImageStore;
use crate::net::HostNetwork;
use cgroup::{Cgroups, Limits, NodeCgroup};
pub use clone::{pidfd_signal, reap, wait_exit};
use idmap::IdMaps;
pub use paths::{create_dir, HostDirs, NodePaths};
pub use record::{
    live_records, process_start_ticks, remove_stale_temps, write_atomic, write_atomic_mode,
    NodeRecord,
};
use sandbox::Sandbox;
use undo::Undo;

/// How long a node may take from clone to "ready".
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cgroups: {0}")]
    Cgroups(cgroup::CgroupError),
    #[error("{what}: {source}")]
    Host {
        what: String,
        source: std::io::Error,
    },
    #[error("node {node}: {step}: {source}")]
    Io {
        node: String,
        step: String,
        source: std::io::Error,
    },
    #[error("node {node}: {source}")]
    Image {
        node: String,
        #[source]
        source: crate::image::ImageError,
    },
    #[error("node {node}: cgroup: {source}")]
    Cgroup {
        node: String,
        source: cgroup::CgroupError,
    },
    #[error("node {node}: init failed at {step}: {error}")]
    Init {
        node: String,
        step: String,
        error: String,
    },
    #[error("node {node}: network: {source}")]
    Network {
        node: String,
        source: crate::net::NetError,
    },
    #[error("node {node}: process {process} failed: {error}")]
    Process {
        node: String,
        process: String,
        error: String,
    },
    #[error("{0}")]
    Volume(volume::VolumeError),
    #[error("{0}")]
    Quota(quota::QuotaError),
    #[error("{0}")]
    Sandbox(sandbox::PinError),
}

fn io_error(node: &str, step: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let node = node.to_string();
    let step = step.into();
    move |source| RuntimeError::Io { node, step, source }
}

/// The host-side runtime shared by every node.
pub struct Runtime {
    pub dirs: HostDirs,
    pub cgroups: Cgroups,
    pub cgroup_parent: String,
    pub images: ImageStore,
    pub stop_timeout: Duration,
    pub log_rotation: LogRotation,
    /// The binary re-executed as each node's init.
    pub init_binary: PathBuf,
    pub network: HostNetwork,
    /// Every node's /etc/hosts, as the current configuration lists the nodes.
    hosts: Mutex<String>,
    /// Every node's /etc/resolv.conf: the host's upstream resolvers.
    resolv: String,
    /// Which host ids each node's user namespace maps.
    idmaps: IdMaps,
}

/// A role's shared volume as one node mounts it: the volume, where the daemon mounts it
/// idmapped in the node's mount namespace for the init to bind, and the first host id of the
/// range its files are stored with.
struct SharedVolume {
    source: PathBuf,
    staging: PathBuf,
    base: u32,
}

/// A running node as the daemon holds it.
#[derive(Debug)]
pub struct NodeHandle {
    pub record: NodeRecord,
    pub pidfd: OwnedFd,
    pub paths: NodePaths,
    pub cgroup: NodeCgroup,
    /// What the init reported when the node became ready (or was adopted).
    pub processes: Vec<ProcessStatus>,
}

impl Runtime {
    pub fn new(config: &Config) -> Result<Runtime, RuntimeError> {
        let host = &config.host;
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        Ok(Runtime {
            network: HostNetwork::new(config.network.clone()),
            hosts: Mutex::new(crate::net::hosts_file(config)),
            resolv: crate::net::resolv_conf(&host_resolv),
            dirs: HostDirs {
                state_dir: host.state_dir.clone(),
                run_dir: host.run_dir.clone(),
                log_dir: host.log_dir.clone(),
            },
            cgroups: Cgroups::detect().map_err(RuntimeError::Cgroups)?,
            cgroup_parent: host.cgroup.clone(),
            images: ImageStore::for_config(config),
            stop_timeout: host.stop_timeout,
            log_rotation: config.logs,
            init_binary: PathBuf::from("/proc/self/exe"),
            idmaps: IdMaps::load(&host.state_dir, host.id_base).map_err(|source| {
                RuntimeError::Host {
                    what: "reading the node id ranges".into(),
                    source,
                }
            })?,
        })
    }

    pub fn node_cgroup(&self, node: &str) -> NodeCgroup {
        self.cgroups.node(&self.cgroup_parent, node)
    }

    /// Starts a node and returns once its processes run (or have failed to start, which is
    /// reported as an error after the node is taken down again, sandbox included).
    ///
    /// `templates` are the role's templates rendered for it (see [`crate::template`]).
    pub fn start(
        &self,
        spec: &NodeSpec,
        restarts: u32,
        templates: &[crate::template::Rendered],
    ) -> Result<NodeHandle, RuntimeError> {
        self.launch(spec, restarts, templates, None)
    }

    /// Directories a node needs: writable layer, volumes (created on first use, then kept),
    /// log dir, root mount point.
    fn prepare_dirs(
        &self,
        spec: &NodeSpec,
        paths: &NodePaths,
        id_base: Option<u32>,
        image_rootfs: &Path,
    ) -> Result<(Vec<VolumeMount>, Vec<SharedVolume>), RuntimeError> {
        let node = spec.name.as_str();
        self.make_layer(node, paths)?;
        for dir in [
            paths.upper(),
            paths.work(),
            paths.logs.clone(),
            paths.root_mount(),
            paths.lower(),
        ] {
            paths::create_dir(&dir, 0o755)
                .map_err(io_error(node, format!("create {}", dir.display())))?;
        }
        if let Some(base) = id_base {
            // The node's root owns its writable layer and log files on the host.
            for path in [paths.upper(), paths.work(), paths.logs.clone()] {
                idmap::give_to_node(&path, base)
                    .map_err(io_error(node, format!("chown {}", path.display())))?;
            }
            for entry in std::fs::read_dir(&paths.logs)
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = idmap::give_to_node(&entry.path(), base);
            }
        }
        let mut mounts = Vec::new();
        let mut shared = Vec::new();
        for volume in &spec.definition.volumes {
            let owner = volume::owner(spec, volume);
            // A shared volume's files are owned by its role's own id range.
            let owner_base = if volume.shared {
                Some(self.idmaps.base_of(&owner).map_err(io_error(
                    node,
                    format!("allocate the id range of {owner}'s volumes"),
                ))?)
            } else {
                id_base
            };
            let (source, made) = volume::create(&self.dirs, &owner, &volume.name, |new| {
                volume::take_over_image_dir(
                    new,
                    image_rootfs,
                    &volume.path,
                    owner_base.unwrap_or(0),
                )
            })
            .map_err(RuntimeError::Volume)?;
            if made {
                tracing::info!(node, volume = volume.name, path = %source.display(), "volume made");
            }
            if volume.shared {
                let own = self.dirs.node(node).volume(&volume.name);
                if own.is_dir() {
                    tracing::warn!(
                        node,
                        volume = volume.name,
                        "{} is no longer mounted: the role shares {} instead; copy what it holds there (the node sees it at {}), then `volume rm {node} {}`",
                        own.display(),
                        source.display(),
                        volume.path,
                        volume.name
                    );
                }
            }
            let source = if volume.shared {
                let staging = paths.shared_volume(&volume.name);
                paths::create_dir(&staging, 0o755)
                    .map_err(io_error(node, format!("create {}", staging.display())))?;
                shared.push(SharedVolume {
                    source,
                    staging: staging.clone(),
                    base: owner_base.unwrap_or(0),
                });
                staging
            } else {
                source
            };
            mounts.push(VolumeMount {
                source,
                target: volume.path.clone(),
            });
        }
        Ok((mounts, shared))
    }

    /// Makes the node's writable layer `state_dir/nodes/<node>` on its first start: a btrfs
    /// subvolume where the state dir is on btrfs, so its disk limit can count it (upper and
    /// work both in it: overlay needs them on one filesystem); elsewhere the directories that
    /// follow make it. A layer that exists is used as it is.
    fn make_layer(&self, node: &str, paths: &NodePaths) -> Result<(), RuntimeError> {
        if std::fs::symlink_metadata(&paths.layer).is_ok() {
            return Ok(());
        }
        let layers = self.dirs.state_dir.join("nodes");
        if !layers.is_dir() {
            paths::create_dir(&layers, 0o755)
                .map_err(io_error(node, format!("create {}", layers.display())))?;
        }
        let btrfs = volume::on_btrfs(&layers).map_err(io_error(
            node,
            format!("check the filesystem of {}", layers.display()),
        ))?;
        if btrfs {
            volume::create_subvolume(&layers, std::ffi::OsStr::new(node)).map_err(io_error(
                node,
                format!("create the btrfs subvolume {}", paths.layer.display()),
            ))?;
        }
        Ok(())
    }

    /// The node's disk limit (`quota.rs`): planned from what the host has, applied with undo.
    /// A limit that cannot be enforced (no btrfs, a layer or volume made as a plain directory)
    /// is logged and the node starts without it. Returns the node's quota group for its record.
    fn limit_disk(
        &self,
        spec: &NodeSpec,
        paths: &NodePaths,
        undo: &mut Undo,
    ) -> Result<Option<quota::NodeQuota>, RuntimeError> {
        let node = spec.name.as_str();
        let limit = spec.definition.resources.disk_bytes;
        let survey = quota::survey(&paths.layer, &quota::own_volumes(&self.dirs, spec))
            .map_err(io_error(node, "look at the writable layer and volumes"))?;
        let plan = quota::plan(limit, &survey);
        if let (quota::Outcome::NotEnforced(reason), Some(limit)) = (&plan.outcome, limit) {
            tracing::warn!(node, "{}", quota::not_enforced_text(node, limit, reason));
        }
        quota::apply(node, &paths.layer, &survey, &plan, undo).map_err(RuntimeError::Quota)
    }

    /// The idmapped mounts the daemon makes in a new init's mount namespace before the init
    /// builds its root: the image as the overlay's lower layer (in a user namespace), and the
    /// role's shared volumes. Returns the lower layer's path for the init.
    fn mount_idmapped(
        &self,
        spec: &NodeSpec,
        init_pid: i32,
        id_base: Option<u32>,
        image_rootfs: &Path,
        shared: &[SharedVolume],
    ) -> Result<PathBuf, RuntimeError> {
        let node = spec.name.as_str();
        let paths = self.dirs.node(node);
        let node_userns = match id_base {
            Some(_) => Some(
                File::open(format!("/proc/{init_pid}/ns/user"))
                    .map_err(io_error(node, "open the init's user namespace"))?,
            ),
            None => None,
        };
        let volume_userns = shared
            .iter()
            .map(|volume| {
                self.idmaps
                    .mapping(volume.base, id_base.unwrap_or(0))
                    .map_err(io_error(
                        node,
                        format!("make the id mapping for {}", volume.source.display()),
                    ))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let lower = paths.lower();
        let mut mounts = Vec::new();
        if let Some(userns) = &node_userns {
            mounts.push(idmap::IdmappedMount {
                source: image_rootfs,
                target: &lower,
                userns: userns.as_fd(),
                what: idmap::Mounted::Image,
            });
        }
        for (volume, userns) in shared.iter().zip(&volume_userns) {
            mounts.push(idmap::IdmappedMount {
                source: &volume.source,
                target: &volume.staging,
                userns: userns.as_fd(),
                what: idmap::Mounted::Volume,
            });
        }
        if !mounts.is_empty() {
            idmap::mount_idmapped(init_pid, &mounts).map_err(io_error(node, "idmapped mount"))?;
        }
        Ok(match node_userns {
            Some(_) => lower,
            None => image_rootfs.to_path_buf(),
        })
    }

    /// Re-attaches to a node that kept running while the daemon was away; `None` if its init
    /// is gone (the caller cleans up and restarts it).
    pub fn adopt(&self, node: &str) -> Option<NodeHandle> {
        let paths = self.dirs.node(node);
        let record = match NodeRecord::load(&paths.record()) {
            Ok(record) => record,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
            Err(error) => {
                tracing::error!(
                    node,
                    "{error}; the node is cleaned up and started again from its configuration"
                );
                return None;
            }
        };
        remove_stale_temps(&paths.record());
        if record.name != node || process_start_ticks(record.pid) != Some(record.start_ticks) {
            return None;
        }
        let pidfd = clone::pidfd_open(record.pid).ok()?;
        // The pid could have been recycled between the check and pidfd_open: check again.
        if process_start_ticks(record.pid) != Some(record.start_ticks) {
            return None;
        }
        // A fenced node's init is frozen and answers nothing: it is adopted as it is (the agent
        // alone may thaw it), its processes known once it runs again.
        let frozen = matches!(
            self.node_cgroup(node).freeze_state(),
            Ok(cgroup::FreezeState::Frozen | cgroup::FreezeState::Freezing)
        );
        let processes = if frozen {
            tracing::warn!(node, "adopted frozen: fenced while the agent was away");
            Vec::new()
        } else {
            match init_request(&paths.control_socket(), &InitRequest::Status) {
                Ok(InitReply::Status { processes, .. }) => processes,
                _ => return None,
            }
        };
        // Pins made in a previous daemon's own mount namespace went with it.
        let sandbox = Sandbox::of(&paths);
        let user = record.id_base.is_some();
        if sandbox.open(user).is_none() {
            if let Err(error) = sandbox.pin(node, record.pid, user) {
                tracing::warn!("{error}; its next restart makes a new sandbox");
            }
        }
        Some(NodeHandle {
            cgroup: self.node_cgroup(node),
            record,
            pidfd,
            paths,
            processes,
        })
    }

    /// Stops a node gracefully and removes everything it had on the host but its layer,
    /// volumes and logs.
    pub fn stop(&self, handle: &NodeHandle) {
        self.halt(handle);
        // The node's links go with its network namespace, which the kernel tears down on its
        // own once it is unpinned and the last process is gone; deleting them here would only
        // wait for that (a veth's unregistration waits out RCU grace periods, ~15-20 ms).
        self.release(&handle.record.name);
    }

    /// Stops a node's init: asked, then SIGTERM, then SIGKILL.
    fn halt(&self, handle: &NodeHandle) {
        self.ask_to_stop(handle);
        self.wait_stopped(handle);
    }

    fn hosts_text(&self) -> String {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes the node list of a new configuration and rewrites the hosts file of each running
    /// node in place (same inode: it is bind-mounted into the node).
    pub fn update_hosts(&self, config: &Config, running: &[String]) {
        let text = crate::net::hosts_file(config);
        *self.hosts.lock().unwrap_or_else(|e| e.into_inner()) = text.clone();
        for node in running {
            let path = self.dirs.node(node).hosts_file();
            let written = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path)
                .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()));
            if let Err(error) = written {
                tracing::warn!(node, "rewriting {}: {error}", path.display());
            }
        }
    }

    /// `run_dir/nodes/<node>/templates`: the node's rendered templates, removed with its run dir.
    /// This host's recorded id slots (`state_dir/idmaps.json`), by owner.
    pub fn id_slots(&self) -> BTreeMap<String, u32> {
        self.idmaps.recorded()
    }

    /// Takes the shared stack's id slots, checked against this host's record.
    pub fn adopt_id_slots(&self, stack: &BTreeMap<String, u32>) -> Result<(), idmap::AdoptError> {
        self.idmaps.adopt(stack)
    }

    pub fn templates_dir(&self, node: &str) -> PathBuf {
        self.dirs.node(node).run.join("templates")
    }

    /// Removes a node's cgroup (killing anything left in it), links and run files. Idempotent.
    pub fn cleanup(&self, node: &str) {
        if let Err(error) = self.network.detach(node) {
            tracing::warn!(node, "removing links: {error}");
        }
        self.release(node);
    }

    /// Removes a node's cgroup (killing anything left in it), sandbox and run files.
    /// Idempotent.
    fn release(&self, node: &str) {
        self.remove_cgroup(node);
        let paths = self.dirs.node(node);
        Sandbox::of(&paths).release(node);
        remove_path(node, &paths.run);
    }

    /// Removes a node's cgroup, killing anything left in it.
    fn remove_cgroup(&self, node: &str) {
        if let Err(error) = self.node_cgroup(node).remove() {
            tracing::warn!(node, "removing cgroup: {error}");
        }
    }

    /// Removes what one init of a node had in its run dir: all but the sandbox.
    fn remove_run_files(&self, node: &str) {
        let entries = std::fs::read_dir(self.dirs.node(node).run).into_iter();
        for entry in entries.flatten().flatten() {
            if entry.file_name() != Sandbox::DIR {
                remove_path(node, &entry.path());
            }
        }
    }

    /// Nodes this agent may have left something of on the host: those with a run dir. A node's
    /// run dir is made before its cgroup and links and removed after them (`start`, `release`),
    /// so it is this agent's record of what it made; names alone (a cgroup under the parent, a
    /// link with the prefix) prove nothing, as another agent or an operator may have made them.
    pub fn leftover_nodes(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.dirs.nodes_run_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }

    /// Start-up sweep: clean every leftover of this agent that is not an adopted node, and the
    /// writable layers of nodes no longer configured (volumes are data and are never removed
    /// here). Cgroups under the parent that no node of this agent made are left alone and named.
    pub fn sweep(&self, adopted: &BTreeSet<String>, configured: &BTreeSet<String>) {
        let ours = self.leftover_nodes();
        for node in ours.difference(adopted) {
            tracing::info!(node, "sweeping leftovers of a node that is not running");
            self.cleanup(node);
        }
        if let Ok(cgroups) = self.cgroups.list_nodes(&self.cgroup_parent) {
            for cgroup in cgroups.iter().filter(|name| !ours.contains(*name)) {
                tracing::warn!(
                    cgroup,
                    parent = self.cgroup_parent,
                    "left alone: this agent made no node of that name"
                );
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.dirs.state_dir.join("nodes")) {
            for entry in entries.flatten() {
                let Ok(node) = entry.file_name().into_string() else {
                    continue;
                };
                if !configured.contains(&node) && !adopted.contains(&node) {
                    tracing::info!(node, "removing the writable layer of an unconfigured node");
                    self.remove_layer(&node, &entry.path());
                }
            }
        }
        if let Err(error) = self.images.sweep_partial() {
            tracing::warn!("sweeping partial image builds: {error}");
        }
        volume::sweep_unfinished(&self.dirs);
    }

    /// Removes the writable layer of a node that is no longer configured, and its quota group
    /// (its volumes stay, no longer limited). Failures are logged.
    fn remove_layer(&self, node: &str, layer: &Path) {
        let volumes: Vec<PathBuf> = std::fs::read_dir(self.dirs.node(node).volumes)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .collect();
        if let Err(error) = quota::remove_node_group(layer, &volumes) {
            tracing::warn!(
                node,
                "removing the quota group of {}: {error}",
                layer.display()
            );
        }
        let ids = quota::subvolume_ids(&[layer.to_path_buf()]);
        // As root, rmdir also removes a subvolume once it is empty.
        if let Err(error) = std::fs::remove_dir_all(layer) {
            tracing::warn!(node, "removing {}: {error}", layer.display());
        }
        quota::forget_subvolumes(&self.dirs.state_dir, &ids);
    }
}

fn handshake_with_init(
    node: &str,
    handshake: &UnixStream,
    plan: InitPlan,
) -> Result<(), RuntimeError> {
    handshake
        .set_read_timeout(Some(READY_TIMEOUT))
        .map_err(io_error(node, "handshake timeout"))?;
    write_message(handshake, &Handshake::Go(Box::new(plan))).map_err(|error| RuntimeError::Init {
        node: node.into(),
        step: "handshake".into(),
        error: error.to_string(),
    })
}

/// One request to a node's init on its control socket.
pub fn init_request(
    socket: &Path,
    request: &InitRequest,
) -> Result<InitReply, crate::api::WireError> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    write_message(&stream, request)?;
    read_message(&stream)
}

/// Removes a file or a directory tree; one already gone is fine.
fn remove_path(node: &str, path: &Path) {
    let removed = match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(error) => Err(error),
    };
    if let Err(error) = removed {
        if error.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(node, "removing {}: {error}", path.display());
        }
    }
}

/// The cgroup limits a node's definition sets.
fn limits_of(spec: &NodeSpec) -> Limits {
    let resources = &spec.definition.resources;
    Limits {
        memory_bytes: resources.memory_bytes,
        cpus: resources.cpus,
        pids: resources.pids,
    }
}

fn path_cstring(path: &Path) -> CString {
    CString::new(path.as_os_str().as_encoded_bytes()).unwrap_or_default()
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
