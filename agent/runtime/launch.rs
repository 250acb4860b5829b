//! A node's start, in two phases.
//!
//! `spawn_init` makes what the init needs and touches nothing a previous init of the node may
//! still use: the layer's directories, the cgroup (or the kept one), the init cloned into its
//! namespaces and waiting for its plan, the idmapped lower layer in its mount namespace, its
//! links. `hand_over` writes the node's run files (hosts, resolv.conf, templates), sends the
//! init its plan and waits until it reports its processes running. A start runs the two back
//! to back; a restart runs the first while the previous init stops (`restart.rs`).

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use super::cgroup::NodeCgroup;
use super::clone::{self, pidfd_signal, wait_exit, Child};
use super::sandbox::{Kept, Sandbox};
use super::undo::Undo;
use super::{
    idmap, io_error, limits_of, path_cstring, paths, process_start_ticks, quota, unix_now,
    NodeHandle, NodePaths, NodeRecord, Runtime, RuntimeError,
};
use crate::api::init::{Handshake, InitPlan, VolumeMount};
use crate::api::read_message;
use crate::config::NodeSpec;

/// What a restart reuses of a node's previous init: its sandbox, and its cgroup when `cgroup`
/// (the limits are the same).
pub(super) struct Reused {
    pub sandbox: Kept,
    pub cgroup: bool,
}

/// An init cloned into the node's namespaces, waiting for its plan.
pub(super) struct Spawned {
    paths: NodePaths,
    id_base: Option<u32>,
    volumes: Vec<VolumeMount>,
    disk_quota: Option<quota::NodeQuota>,
    cgroup: NodeCgroup,
    /// Whether the init was born in its cgroup (v2); on v1 it joins it itself.
    born_in_cgroup: bool,
    /// The daemon's end of the handshake socket pair.
    handshake: OwnedFd,
    child: Child,
    /// The image as the init mounts it as its overlay's lower layer.
    lower: PathBuf,
    /// Whether the node's links were kept configured (a restart in its sandbox).
    links_kept: bool,
}

impl Spawned {
    pub fn pid(&self) -> i32 {
        self.child.pid
    }
}

impl Runtime {
    /// A node start, in what is `reused` of its previous init or in a new sandbox and cgroup.
    pub(super) fn launch(
        &self,
        spec: &NodeSpec,
        restarts: u32,
        templates: &[crate::template::Rendered],
        reused: Option<Reused>,
    ) -> Result<NodeHandle, RuntimeError> {
        let mut undo = Undo::new();
        let control = self.dirs.node(&spec.name).control_socket();
        let spawned = self.spawn_init(spec, reused.as_ref(), &control, &mut undo)?;
        self.hand_over(spawned, spec, restarts, templates, undo)
    }

    /// The first phase: everything up to an init waiting for its plan, listening on
    /// `control_socket`. Each step it makes is pushed on `undo`.
    pub(super) fn spawn_init(
        &self,
        spec: &NodeSpec,
        reused: Option<&Reused>,
        control_socket: &Path,
        undo: &mut Undo,
    ) -> Result<Spawned, RuntimeError> {
        let kept = reused.map(|reused| &reused.sandbox);
        let cgroup_kept = reused.is_some_and(|reused| reused.cgroup);
        let node = spec.name.as_str();
        let paths = self.dirs.node(node);
        let image_rootfs = self
            .images
            .rootfs(&spec.definition.image)
            .map_err(|source| RuntimeError::Image {
                node: node.into(),
                source,
            })?;
        let id_base = if spec.definition.privileged {
            None
        } else {
            Some(
                self.idmaps
                    .base_of(node)
                    .map_err(io_error(node, "allocate the node's id range"))?,
            )
        };
        if id_base.is_some() {
            for dir in [&paths.run, &paths.layer, &paths.volumes] {
                if let Some((closed, mode)) = paths::first_unsearchable(dir) {
                    return Err(RuntimeError::Host {
                        what: format!(
                            "node {node}: {} has mode {mode:04o}: the node's user namespace needs search permission (o+x) on every directory down to {}",
                            closed.display(),
                            dir.display()
                        ),
                        source: std::io::ErrorKind::PermissionDenied.into(),
                    });
                }
            }
        }

        if kept.is_none() && paths.run.exists() {
            self.cleanup(node);
        }
        // 0711 down to here: the init, an unprivileged user on the host once in its user
        // namespace, must be able to reach its mount point and files by path.
        paths::create_dir(&paths.run, 0o711).map_err(io_error(node, "create run dir"))?;
        let run_dir = paths.run.clone();
        undo.push("remove run dir", move || {
            let _ = std::fs::remove_dir_all(&run_dir);
        });
        let sandbox = Sandbox::of(&paths);
        let release_sandbox = || {
            let (sandbox, node) = (Sandbox::of(&paths), node.to_string());
            move || sandbox.release(&node)
        };
        if kept.is_some() {
            undo.push("release the sandbox", release_sandbox());
        }
        let (volumes, shared) = self.prepare_dirs(spec, &paths, id_base, &image_rootfs)?;
        let disk_quota = self.limit_disk(spec, &paths, undo)?;

        let cgroup = self.node_cgroup(node);
        // A kept cgroup has the same limits and device rules (on v2 its device program stays
        // attached: attached again, it would run twice).
        if !cgroup_kept {
            cgroup
                .create(&limits_of(spec))
                .map_err(|source| RuntimeError::Cgroup {
                    node: node.into(),
                    source,
                })?;
        }
        let cgroup_for_undo = cgroup.clone();
        undo.push("remove cgroup", move || {
            let _ = cgroup_for_undo.remove();
        });

        let control = UnixListener::bind(control_socket)
            .map_err(io_error(node, "bind init control socket"))?;
        std::fs::set_permissions(control_socket, std::fs::Permissions::from_mode(0o600))
            .map_err(io_error(node, "chmod init control socket"))?;
        let (handshake, child_handshake) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| io_error(node, "socketpair")(e.into()))?;
        let log_dir = File::open(&paths.logs).map_err(io_error(node, "open log dir"))?;
        let null = File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(io_error(node, "open /dev/null"))?;
        let cgroup_fd = cgroup
            .clone_into_fd()
            .map_err(|source| RuntimeError::Cgroup {
                node: node.into(),
                source,
            })?;

        // On v2 the init is born in its cgroup and its own cgroup namespace. On v1 it joins the
        // cgroup itself (the cheap way, see `join_files`) and then unshares the namespace.
        let born_in_cgroup = cgroup_fd.is_some();
        if let Some(base) = id_base {
            for file in cgroup.join_files() {
                idmap::give_to_node(&file, base)
                    .map_err(io_error(node, format!("delegate {}", file.display())))?;
            }
        }
        let (maps_read, maps_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| io_error(node, "pipe")(e.into()))?;
        let spawning = clone::spawn(&clone::ChildSetup {
            program: path_cstring(&self.init_binary),
            argv: vec![
                CString::new("magestack-agent").expect("static"),
                CString::new("init").expect("static"),
                CString::new(node)
                    .map_err(|e| io_error(node, "node name")(std::io::Error::other(e)))?,
            ],
            env: vec![CString::new("MAGESTACK_NODE_INIT=1").expect("static")],
            null: null.as_fd(),
            fds: vec![child_handshake.as_fd(), control.as_fd(), log_dir.as_fd()],
            cgroup: cgroup_fd.as_ref().map(AsFd::as_fd),
            sandbox: match kept {
                Some(kept) => clone::Sandbox::Join {
                    user: kept.user.as_ref().map(AsFd::as_fd),
                    net: kept.net.as_fd(),
                },
                None => clone::Sandbox::New {
                    maps_written: id_base.map(|_| maps_read.as_fd()),
                },
            },
        })
        .map_err(io_error(node, "clone init into its namespaces"))?;
        drop((
            child_handshake,
            control,
            log_dir,
            null,
            cgroup_fd,
            maps_read,
        ));
        if let (Some(base), None) = (id_base, kept) {
            idmap::write_maps(spawning.pid(), base)
                .map_err(io_error(node, "write uid and gid maps"))?;
            nix::unistd::write(&maps_write, &[1])
                .map_err(|e| io_error(node, "release the init")(e.into()))?;
        }
        drop(maps_write);
        let child = spawning
            .finish()
            .map_err(io_error(node, "clone init into its namespaces"))?;
        let pidfd = child
            .pidfd
            .try_clone()
            .map_err(io_error(node, "dup pidfd"))?;
        undo.push("kill init", move || {
            let _ = pidfd_signal(pidfd.as_fd(), libc::SIGKILL);
            wait_exit(pidfd.as_fd(), Duration::from_secs(5));
        });
        if kept.is_none() {
            undo.push("release the sandbox", release_sandbox());
            sandbox
                .pin(node, child.pid, id_base.is_some())
                .map_err(RuntimeError::Sandbox)?;
        }

        let lower = self.mount_idmapped(spec, child.pid, id_base, &image_rootfs, &shared)?;
        let attached = match kept {
            Some(_) => self.network.reattach(spec, child.pid),
            None => self.network.attach(spec, child.pid).map(|()| false),
        };
        // A failed start needs no link removal: the links go with the init's namespace once
        // the sandbox is released.
        let links_kept = attached.map_err(|source| RuntimeError::Network {
            node: node.into(),
            source,
        })?;
        Ok(Spawned {
            paths,
            id_base,
            volumes,
            disk_quota,
            cgroup,
            born_in_cgroup,
            handshake,
            child,
            lower,
            links_kept,
        })
    }

    /// The second phase: the node's run files, the plan to the init, its report. Commits
    /// `undo` once the node runs.
    pub(super) fn hand_over(
        &self,
        spawned: Spawned,
        spec: &NodeSpec,
        restarts: u32,
        templates: &[crate::template::Rendered],
        undo: Undo,
    ) -> Result<NodeHandle, RuntimeError> {
        let node = spec.name.as_str();
        let paths = spawned.paths;
        std::fs::write(paths.hosts_file(), self.hosts_text())
            .map_err(io_error(node, "write hosts file"))?;
        std::fs::write(paths.resolv_file(), &self.resolv)
            .map_err(io_error(node, "write resolv.conf"))?;
        let templates_dir = if spec.definition.templates.is_empty() {
            None
        } else {
            let dir = self.templates_dir(node);
            crate::template::install(&dir, templates, spawned.id_base)
                .map_err(io_error(node, "write rendered templates"))?;
            Some(dir)
        };
        let plan = InitPlan {
            spec: spec.clone(),
            image_rootfs: spawned.lower,
            user_namespace: spawned.id_base.is_some(),
            upper_dir: paths.upper(),
            work_dir: paths.work(),
            root_mount: paths.root_mount(),
            volumes: spawned.volumes,
            hosts_file: paths.hosts_file(),
            resolv_file: paths.resolv_file(),
            templates_dir,
            stop_timeout: self.stop_timeout,
            log_rotation: self.log_rotation,
            join_cgroup: if spawned.born_in_cgroup {
                Vec::new()
            } else {
                spawned.cgroup.join_files()
            },
            // fw1 may change its own network: its init sets it up again.
            network_configured: spawned.links_kept && spec.network.public.is_none(),
        };
        let handshake = UnixStream::from(spawned.handshake);
        super::handshake_with_init(node, &handshake, plan)?;
        let processes = match read_message::<Handshake>(&handshake) {
            Ok(Handshake::Ready { processes }) => processes,
            Ok(Handshake::Failed { step, error }) => {
                return Err(RuntimeError::Init {
                    node: node.into(),
                    step,
                    error,
                })
            }
            Ok(other) => {
                return Err(RuntimeError::Init {
                    node: node.into(),
                    step: "handshake".into(),
                    error: format!("unexpected message {other:?}"),
                })
            }
            Err(error) => {
                return Err(RuntimeError::Init {
                    node: node.into(),
                    step: "handshake".into(),
                    error: format!(
                        "no ready message: {error} (see {}/init.log)",
                        paths.logs.display()
                    ),
                })
            }
        };
        if let Some(failed) = processes.iter().find(|p| p.state.is_failure()) {
            return Err(RuntimeError::Process {
                node: node.into(),
                process: failed.name.clone(),
                error: failed.last_error.clone().unwrap_or_default(),
            });
        }

        let child = spawned.child;
        let record = NodeRecord {
            name: node.into(),
            pid: child.pid,
            start_ticks: process_start_ticks(child.pid).unwrap_or(0),
            started_at: unix_now(),
            spec: spec.clone(),
            restarts,
            id_base: spawned.id_base,
            disk_quota: spawned.disk_quota,
        };
        record
            .save(&paths.record())
            .map_err(io_error(node, "write state.json"))?;
        undo.commit();
        Ok(NodeHandle {
            record,
            pidfd: child.pidfd,
            paths,
            cgroup: spawned.cgroup,
            processes,
        })
    }
}
