//! A node's sandbox: its user namespace (none for a privileged node) and its network namespace,
//! with the links inside. They outlive one init: `restart` starts the next init in them, so the
//! kernel neither tears the old network namespace and its veth down nor builds new ones while
//! the new init waits on the same lock (pod sandboxes are kept the same way).
//!
//! Each namespace is pinned by a bind mount of its nsfs file (`/proc/<init>/ns/<kind>`) onto a
//! file `run_dir/nodes/<node>/ns/<kind>`: such a mount holds the namespace without a process,
//! and a restarted daemon finds it by path. The network namespace belongs to the user namespace
//! it was made in, and the node's root keeps CAP_NET_ADMIN over it only through that one, so
//! both are pinned; their uid and gid maps are written once, at the first start.
//!
//! The pins are made at a node's first start and by adoption (a daemon under systemd has a
//! mount namespace of its own per run, so the previous daemon's pins are gone with it), and
//! removed by every stop, failed start and clean-up. Unpinned, the namespaces go with the last
//! process in them.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::NodePaths;

/// The kinds pinned, as named under `/proc/<pid>/ns/`.
const USER: &str = "user";
const NET: &str = "net";

#[derive(Debug, thiserror::Error)]
#[error("node {node}: pin the {kind} namespace of pid {pid} at {}: {source}", path.display())]
pub struct PinError {
    node: String,
    kind: &'static str,
    pid: i32,
    path: PathBuf,
    source: std::io::Error,
}

/// Where one node's namespaces are pinned.
pub struct Sandbox {
    dir: PathBuf,
}

/// A node's pinned namespaces, open.
pub struct Kept {
    pub user: Option<File>,
    pub net: File,
}

impl Sandbox {
    /// The name of the sandbox's directory in the node's run dir.
    pub const DIR: &'static str = "ns";

    pub fn of(paths: &NodePaths) -> Sandbox {
        Sandbox {
            dir: paths.run.join(Self::DIR),
        }
    }

    fn path(&self, kind: &str) -> PathBuf {
        self.dir.join(kind)
    }

    fn kinds(user: bool) -> impl Iterator<Item = &'static str> {
        user.then_some(USER).into_iter().chain([NET])
    }

    /// Pins the network namespace of process `pid`, and its user namespace when `user`.
    /// Replaces any pin already there.
    pub fn pin(&self, node: &str, pid: i32, user: bool) -> Result<(), PinError> {
        for kind in Self::kinds(user) {
            let path = self.path(kind);
            let error = |source| PinError {
                node: node.to_string(),
                kind,
                pid,
                path: path.clone(),
                source,
            };
            super::paths::create_dir(&self.dir, 0o700).map_err(error)?;
            unpin(&path);
            File::options()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(error)?;
            nix::mount::mount(
                Some(format!("/proc/{pid}/ns/{kind}").as_str()),
                &path,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|errno| error(errno.into()))?;
        }
        Ok(())
    }

    /// The pinned namespaces (the user namespace too when `user`), or `None` if any is not
    /// pinned (never made, or its pin lost with a previous daemon's mount namespace).
    pub fn open(&self, user: bool) -> Option<Kept> {
        let user = match user {
            true => Some(open_pinned(&self.path(USER))?),
            false => None,
        };
        Some(Kept {
            user,
            net: open_pinned(&self.path(NET))?,
        })
    }

    /// Unpins both namespaces and removes the directory. Idempotent.
    pub fn release(&self, node: &str) {
        for kind in Self::kinds(true) {
            unpin(&self.path(kind));
        }
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(node, "removing {}: {error}", self.dir.display());
            }
        }
    }
}

/// Opens a pin; `None` unless a namespace is mounted there.
fn open_pinned(path: &Path) -> Option<File> {
    let file = File::open(path).ok()?;
    let fs = nix::sys::statfs::fstatfs(&file).ok()?;
    (fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC).then_some(file)
}

/// Detaches whatever is mounted at `path` (nothing there is fine).
fn unpin(path: &Path) {
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
}
