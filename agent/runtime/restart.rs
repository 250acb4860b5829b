//! A running node's restart.
//!
//! When the node's network and id range stay the same, its sandbox (user and network
//! namespaces, the links in them, fw1's rules) is kept and the next init is started in it, in
//! the node's cgroup too when its limits stay the same. Then the next init is made while the
//! previous one stops: the clone, the exec, the idmapped lower layer and the links are ready
//! by the time the previous init has gone, and only then does the next one get its plan and
//! mount the node's layer (one overlay upper is never mounted twice). Otherwise, or when the
//! pins were lost, a restart is a stop and a start.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use super::launch::{Reused, Spawned};
use super::sandbox::Sandbox;
use super::undo::Undo;
use super::{
    init_request, limits_of, pidfd_signal, remove_path, wait_exit, NodeHandle, Runtime,
    RuntimeError,
};
use crate::api::init::InitRequest;
use crate::config::NodeSpec;

impl Runtime {
    /// Stops a running node's init and starts `spec` again; see the module's description.
    pub fn restart(
        &self,
        handle: &NodeHandle,
        spec: &NodeSpec,
        restarts: u32,
        templates: &[crate::template::Rendered],
    ) -> Result<NodeHandle, RuntimeError> {
        let node = spec.name.as_str();
        let same = &handle.record.spec;
        let sandbox_kept = same.network == spec.network
            && same.definition.privileged == spec.definition.privileged;
        let cgroup_kept = limits_of(same) == limits_of(spec) && handle.cgroup.exists();
        if sandbox_kept && cgroup_kept {
            if let Some(sandbox) = Sandbox::of(&handle.paths).open(!spec.definition.privileged) {
                let reused = Reused {
                    sandbox,
                    cgroup: true,
                };
                return self.restart_alongside(handle, spec, restarts, templates, reused);
            }
        }
        self.halt(handle);
        let reused = if sandbox_kept {
            self.remove_run_files(node);
            Sandbox::of(&handle.paths)
                .open(!spec.definition.privileged)
                .map(|sandbox| Reused {
                    sandbox,
                    cgroup: false,
                })
        } else {
            None
        };
        match reused {
            None => self.release(node),
            Some(_) => self.remove_cgroup(node),
        }
        self.launch_or_release(spec, restarts, templates, reused)
    }

    /// The restart in the kept sandbox and cgroup: the next init is spawned while the
    /// previous one stops, and handed its plan once that one has gone.
    fn restart_alongside(
        &self,
        handle: &NodeHandle,
        spec: &NodeSpec,
        restarts: u32,
        templates: &[crate::template::Rendered],
        reused: Reused,
    ) -> Result<NodeHandle, RuntimeError> {
        let node = spec.name.as_str();
        self.ask_to_stop(handle);
        let next_socket = next_control_socket(handle);
        let mut undo = Undo::new();
        let spawned = self.spawn_init(spec, Some(&reused), &next_socket, &mut undo);
        self.wait_stopped(handle);
        let spawned = match spawned {
            Ok(spawned) => spawned,
            Err(error) => {
                // Undone only now: the undo empties the cgroup, which held the previous
                // node's processes until they had stopped.
                drop(undo);
                let _ = std::fs::remove_file(&next_socket);
                tracing::warn!(
                    node,
                    "restart in the kept sandbox failed ({error}); starting the node afresh"
                );
                self.release(node);
                return self.launch_or_release(spec, restarts, templates, None);
            }
        };
        kill_strays(handle, &spawned);
        let paths = &handle.paths;
        let _ = std::fs::remove_file(paths.record());
        remove_path(node, &self.templates_dir(node));
        std::fs::rename(&next_socket, paths.control_socket()).map_err(|source| {
            RuntimeError::Io {
                node: node.into(),
                step: "put the init's control socket in place".into(),
                source,
            }
        })?;
        let started = self.hand_over(spawned, spec, restarts, templates, undo);
        if started.is_err() {
            self.release(node);
        }
        started
    }

    /// A start with what is `reused`; a failure releases what the undo does not own (the kept
    /// sandbox and cgroup).
    fn launch_or_release(
        &self,
        spec: &NodeSpec,
        restarts: u32,
        templates: &[crate::template::Rendered],
        reused: Option<Reused>,
    ) -> Result<NodeHandle, RuntimeError> {
        let started = self.launch(spec, restarts, templates, reused);
        if started.is_err() {
            self.release(&spec.name);
        }
        started
    }

    /// Asks a node's init to stop (its processes get their SIGTERM), else signals it.
    pub(super) fn ask_to_stop(&self, handle: &NodeHandle) {
        let asked = init_request(&handle.paths.control_socket(), &InitRequest::Stop).is_ok();
        if !asked {
            let _ = pidfd_signal(handle.pidfd.as_fd(), libc::SIGTERM);
        }
    }

    /// Waits for a node's init to exit within its stop timeout (and a margin), then kills it.
    /// Its pid namespace, and every process of the node in it, is gone when this returns.
    pub(super) fn wait_stopped(&self, handle: &NodeHandle) {
        let grace = self.stop_timeout + Duration::from_secs(5);
        if !wait_exit(handle.pidfd.as_fd(), grace) {
            tracing::warn!(node = %handle.record.name, "init did not stop in {grace:?}; killing it");
            let _ = pidfd_signal(handle.pidfd.as_fd(), libc::SIGKILL);
            wait_exit(handle.pidfd.as_fd(), Duration::from_secs(5));
        }
    }
}

/// Where the next init listens until the previous one has gone: beside the control socket.
fn next_control_socket(handle: &NodeHandle) -> PathBuf {
    handle.paths.run.join("init.sock.next")
}

/// Kills what is left in the node's cgroup of the previous life but the next init: nothing,
/// normally, since the previous pid namespace died with its init; a process that joined the
/// cgroup from outside that namespace would be.
fn kill_strays(handle: &NodeHandle, next: &Spawned) {
    let Ok(pids) = handle.cgroup.procs() else {
        return;
    };
    for pid in pids.into_iter().filter(|&pid| pid != next.pid()) {
        tracing::warn!(node = %handle.record.name, pid, "killing a process left from the previous life");
        // SAFETY: kill takes plain integers; the pid is in the node's cgroup.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}
