//! Where one node's pieces live on the host (see "State on disk" in the design).

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct HostDirs {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
}

/// The host paths of one node.
#[derive(Debug, Clone)]
pub struct NodePaths {
    /// `run_dir/nodes/<node>`: state.json, init.sock, hosts, the root mount point.
    pub run: PathBuf,
    /// `state_dir/nodes/<node>`: the writable layer, kept across restarts.
    pub layer: PathBuf,
    /// `state_dir/volumes/<node>`: persistent data, removed only by `volume rm` (`volume.rs`).
    pub volumes: PathBuf,
    /// `log_dir/<node>`: process output.
    pub logs: PathBuf,
}

impl HostDirs {
    pub fn nodes_run_dir(&self) -> PathBuf {
        self.run_dir.join("nodes")
    }

    pub fn node(&self, node: &str) -> NodePaths {
        NodePaths {
            run: self.nodes_run_dir().join(node),
            layer: self.state_dir.join("nodes").join(node),
            volumes: self.state_dir.join("volumes").join(node),
            logs: self.log_dir.join(node),
        }
    }
}

impl NodePaths {
    pub fn record(&self) -> PathBuf {
        self.run.join("state.json")
    }

    pub fn control_socket(&self) -> PathBuf {
        self.run.join("init.sock")
    }

    pub fn hosts_file(&self) -> PathBuf {
        self.run.join("hosts")
    }

    pub fn resolv_file(&self) -> PathBuf {
        self.run.join("resolv.conf")
    }

    pub fn root_mount(&self) -> PathBuf {
        self.run.join("root")
    }

    /// Where the node's init sees the image through an idmapped mount (user namespaces).
    pub fn lower(&self) -> PathBuf {
        self.layer.join("lower")
    }

    /// Where the node's init sees a volume shared by its role, through an idmapped mount.
    pub fn shared_volume(&self, name: &str) -> PathBuf {
        self.layer.join("shared").join(name)
    }

    pub fn upper(&self) -> PathBuf {
        self.layer.join("upper")
    }

    pub fn work(&self) -> PathBuf {
        self.layer.join("work")
    }

    pub fn volume(&self, name: &str) -> PathBuf {
        self.volumes.join(name)
    }
}

/// Creates a directory and its parents with the given mode for the last one.
pub fn create_dir(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// The first directory from `/` down to `path` (included, where it exists) that users other
/// than its owner cannot search: a node's init, an unprivileged id on the host, reaches its mount
/// point, layers and volumes by path and needs `o+x` on each of them.
pub fn first_unsearchable(path: &Path) -> Option<(PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    path.ancestors()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .filter_map(|dir| Some((dir, std::fs::metadata(dir).ok()?)))
        .find(|(_, metadata)| metadata.is_dir() && metadata.permissions().mode() & 0o001 == 0)
        .map(|(dir, metadata)| (dir.to_path_buf(), metadata.permissions().mode() & 0o7777))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_first_closed_directory_on_the_way_down_is_named() {
        let base = tempfile::tempdir().unwrap();
        let open = base.path().join("open");
        let closed = open.join("closed");
        let inner = closed.join("inner");
        std::fs::create_dir_all(&inner).unwrap();
        for dir in [base.path(), &open, &inner] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(first_unsearchable(&inner), Some((closed.clone(), 0o700)));
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(first_unsearchable(&inner.join("not-yet-made")), None);
    }
}
