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
    /// `state_dir/volumes/<node>`: persistent data, never removed by the agent.
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
