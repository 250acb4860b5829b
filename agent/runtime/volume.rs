//! Volumes: a node's persistent data at `state_dir/volumes/<node>/<name>`.
//!
//! A volume is a btrfs subvolume when its node's volume directory is on btrfs (so it can be
//! snapshotted and sent on its own), else a plain directory. It is made on the first start of a
//! node that declares it, kept across restarts, removal and re-creation of the node, and removed
//! only by [`remove`] (`magestack-agent volume rm`).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::statfs::{statfs, FsType, BTRFS_SUPER_MAGIC};
use serde::Serialize;

use super::paths::{self, HostDirs};
use super::record::NodeRecord;
use crate::config::NodeSpec;

/// The inode number of every btrfs subvolume's root directory (`BTRFS_FIRST_FREE_OBJECTID`).
const BTRFS_SUBVOLUME_ROOT_INODE: u64 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    Subvolume,
    Dir,
}

impl std::fmt::Display for VolumeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VolumeKind::Subvolume => "subvolume",
            VolumeKind::Dir => "dir",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {name} of node {node}: {what} {}: {source}", path.display())]
    Io {
        node: String,
        name: String,
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("volume {name} of node {node}: not a name (one path component, not `.` or `..`)")]
    BadName { node: String, name: String },
    #[error("node {node}: not a name (one path component, not `.` or `..`)")]
    BadNode { node: String },
    #[error("volume {name} of node {node}: there is no {}", path.display())]
    NotFound {
        node: String,
        name: String,
        path: PathBuf,
    },
    #[error("volume {name} of node {node}: {} is not a directory; the agent did not make it, remove it by hand", path.display())]
    NotADirectory {
        node: String,
        name: String,
        path: PathBuf,
    },
    #[error("volume {name} of node {node}: `btrfs subvolume delete {}` failed: {message}", path.display())]
    SubvolumeDelete {
        node: String,
        name: String,
        path: PathBuf,
        message: String,
    },
    #[error("volume {name} of node {node}: {}", match by {
        VolumeUse::Running => format!("{node} is running with it; remove the volume (or the node) from the configuration and reload first"),
        VolumeUse::Configured => format!("the configuration declares it for {node}; remove the volume (or the node) from the configuration and reload first"),
    })]
    InUse {
        node: String,
        name: String,
        by: VolumeUse,
    },
    #[error("listing volumes in {}: {source}", path.display())]
    List {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One volume found on the host.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeInfo {
    pub node: String,
    pub name: String,
    pub kind: VolumeKind,
    pub path: PathBuf,
    /// Disk space its files take (like `du -s`, not crossing into nested subvolumes or mounts).
    pub size_bytes: u64,
}

/// Why a volume must stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeUse {
    /// A live node mounts it (its record says so).
    Running,
    /// The configuration declares it for its node, which would mount it at its next start.
    Configured,
}

impl std::fmt::Display for VolumeUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VolumeUse::Running => "running",
            VolumeUse::Configured => "configured",
        })
    }
}

/// Whether volume `name` of `node` is in use: mounted by the node's live init (`live`, the
/// records of the nodes that run), or declared for the node by the configuration.
pub fn volume_use(
    node: &str,
    name: &str,
    configured: &BTreeMap<String, NodeSpec>,
    live: &[NodeRecord],
) -> Option<VolumeUse> {
    let declares = |spec: &NodeSpec| spec.volumes.iter().any(|volume| volume.name == name);
    if live
        .iter()
        .any(|record| record.name == node && declares(&record.spec))
    {
        Some(VolumeUse::Running)
    } else if configured.get(node).is_some_and(declares) {
        Some(VolumeUse::Configured)
    } else {
        None
    }
}

/// Whether `path` lies on a btrfs filesystem.
pub fn on_btrfs(path: &Path) -> std::io::Result<bool> {
    Ok(is_btrfs(statfs(path)?.filesystem_type()))
}

fn is_btrfs(fs: FsType) -> bool {
    fs == BTRFS_SUPER_MAGIC
}

/// What an existing volume directory is: a subvolume's root has inode 256 on btrfs (a plain
/// directory never does: btrfs numbers other inodes from 257 within each subvolume).
fn kind_of(fs: FsType, inode: u64) -> VolumeKind {
    if is_btrfs(fs) && inode == BTRFS_SUBVOLUME_ROOT_INODE {
        VolumeKind::Subvolume
    } else {
        VolumeKind::Dir
    }
}

pub fn kind(path: &Path) -> std::io::Result<VolumeKind> {
    let inode = std::fs::symlink_metadata(path)?.ino();
    Ok(kind_of(statfs(path)?.filesystem_type(), inode))
}

/// Makes volume `name` of `node` unless it exists: a subvolume where the node's volume directory
/// is on btrfs, else a directory, mode 0755 and owned by host root (the caller gives it to the
/// node). Returns its path and whether it was made now.
pub fn create(dirs: &HostDirs, node: &str, name: &str) -> Result<(PathBuf, bool), VolumeError> {
    let path = checked_path(dirs, node, name)?;
    if path.is_dir() {
        return Ok((path, false));
    }
    let io = |what, path: &Path| {
        let (node, name, path) = (node.to_string(), name.to_string(), path.to_path_buf());
        move |source| VolumeError::Io {
            node,
            name,
            what,
            path,
            source,
        }
    };
    let parent = dirs.node(node).volumes;
    paths::create_dir(&parent, 0o755).map_err(io("creating", &parent))?;
    let btrfs = on_btrfs(&parent).map_err(io("checking the filesystem of", &parent))?;
    if btrfs {
        create_subvolume(&parent, OsStr::new(name))
            .map_err(io("creating the btrfs subvolume", &path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(io("setting the mode of", &path))?;
    } else {
        paths::create_dir(&path, 0o755).map_err(io("creating", &path))?;
    }
    Ok((path, true))
}

/// `struct btrfs_ioctl_vol_args` of linux/btrfs.h.
#[repr(C)]
struct BtrfsVolArgs {
    fd: i64,
    name: [u8; 4088],
}

nix::ioctl_write_ptr!(btrfs_ioc_subvol_create, 0x94, 14, BtrfsVolArgs);

/// `BTRFS_IOC_SUBVOL_CREATE` on `parent`: what `btrfs subvolume create` does, without needing
/// btrfs-progs on the host or a child process to start a node.
fn create_subvolume(parent: &Path, name: &OsStr) -> std::io::Result<()> {
    let mut args = BtrfsVolArgs {
        fd: 0,
        name: [0; 4088],
    };
    let bytes = name.as_encoded_bytes();
    if bytes.is_empty() || bytes.len() >= args.name.len() || bytes.contains(&0) {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    args.name[..bytes.len()].copy_from_slice(bytes);
    let dir = std::fs::File::open(parent)?;
    // SAFETY: `dir` is an open directory for the duration of the call, and `args` is a
    // properly laid out, NUL-terminated `btrfs_ioctl_vol_args` the kernel only reads.
    unsafe { btrfs_ioc_subvol_create(dir.as_raw_fd(), &args) }?;
    Ok(())
}

/// Every volume on the host, or those of one node, sorted by node and name.
pub fn list(dirs: &HostDirs, node: Option<&str>) -> Result<Vec<VolumeInfo>, VolumeError> {
    let root = dirs.state_dir.join("volumes");
    let nodes: Vec<String> = match node {
        Some(node) if !is_component(node) => {
            return Err(VolumeError::BadNode { node: node.into() })
        }
        Some(node) => vec![node.to_string()],
        None => match std::fs::read_dir(&root) {
            Ok(entries) => entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(VolumeError::List { path: root, source }),
        },
    };
    let mut found = Vec::new();
    for node in nodes {
        let dir = dirs.node(&node).volumes;
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(VolumeError::List { path: dir, source }),
        };
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let path = entry.path();
            let Ok(metadata) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if !metadata.is_dir() {
                continue;
            }
            let kind = kind(&path).map_err(|source| VolumeError::Io {
                node: node.clone(),
                name: name.clone(),
                what: "checking the filesystem of",
                path: path.clone(),
                source,
            })?;
            found.push(VolumeInfo {
                size_bytes: disk_usage(&path, metadata.dev()),
                node: node.clone(),
                name,
                kind,
                path,
            });
        }
    }
    found.sort_by(|a, b| (&a.node, &a.name).cmp(&(&b.node, &b.name)));
    Ok(found)
}

/// Space taken by the files under `dir` that are on device `dev`; unreadable entries count 0.
fn disk_usage(dir: &Path, dev: u64) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.dev() != dev {
                continue;
            }
            total += metadata.blocks() * 512;
            if metadata.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    total
}

/// Removes volume `name` of `node` and everything in it: a subvolume with `btrfs subvolume
/// delete` (after the subvolumes the node made inside it, which would block it), a directory
/// without following symbolic links. Whether a node still uses it is the
/// caller's to check. Returns what it was.
pub fn remove(dirs: &HostDirs, node: &str, name: &str) -> Result<VolumeKind, VolumeError> {
    let path = checked_path(dirs, node, name)?;
    let io = |what| {
        let (node, name, path) = (node.to_string(), name.to_string(), path.clone());
        move |source| VolumeError::Io {
            node,
            name,
            what,
            path,
            source,
        }
    };
    let metadata = match std::fs::symlink_metadata(&path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(VolumeError::NotFound {
                node: node.into(),
                name: name.into(),
                path,
            })
        }
        Err(error) => return Err(io("reading")(error)),
    };
    if !metadata.is_dir() {
        return Err(VolumeError::NotADirectory {
            node: node.into(),
            name: name.into(),
            path,
        });
    }
    let kind = kind(&path).map_err(io("checking the filesystem of"))?;
    match kind {
        VolumeKind::Subvolume => {
            let mut subvolumes = nested_subvolumes(&path);
            subvolumes.push(path.clone());
            delete_subvolumes(&subvolumes).map_err(|message| VolumeError::SubvolumeDelete {
                node: node.into(),
                name: name.into(),
                path: path.clone(),
                message,
            })?
        }
        VolumeKind::Dir => std::fs::remove_dir_all(&path).map_err(io("removing"))?,
    }
    // The node's volume directory goes with its last volume.
    let _ = std::fs::remove_dir(dirs.node(node).volumes);
    Ok(kind)
}

/// The subvolumes below `root`, each listed before the subvolume that holds it. A subvolume's
/// root is inode 256 on a device number of its own; symbolic links are not followed.
fn nested_subvolumes(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(dev) = std::fs::symlink_metadata(&dir).map(|m| m.dev()) else {
            continue;
        };
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if !metadata.is_dir() {
                continue;
            }
            if metadata.ino() == BTRFS_SUBVOLUME_ROOT_INODE && metadata.dev() != dev {
                found.push(entry.path());
            }
            pending.push(entry.path());
        }
    }
    // Found from the top down: a subvolume always comes after the one holding it.
    found.reverse();
    found
}

/// `btrfs subvolume delete PATH...`, in that order; the error is the tool's own message.
fn delete_subvolumes(paths: &[PathBuf]) -> Result<(), String> {
    let output = Command::new("btrfs")
        .args(["subvolume", "delete"])
        .args(paths)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("{error} (is btrfs-progs installed?)"))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!("{}: {}", output.status, stderr.trim()))
    }
}

/// `state_dir/volumes/<node>/<name>`, once both are single plain path components.
fn checked_path(dirs: &HostDirs, node: &str, name: &str) -> Result<PathBuf, VolumeError> {
    if !is_component(node) || !is_component(name) {
        return Err(VolumeError::BadName {
            node: node.into(),
            name: name.into(),
        });
    }
    Ok(dirs.node(node).volume(name))
}

/// Whether `text` names one entry of a directory (no `/`, not `.`, `..` or empty).
fn is_component(text: &str) -> bool {
    let mut components = Path::new(text).components();
    matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(one)), None) if one == OsStr::new(text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_inode_256_on_btrfs_is_a_subvolume() {
        let ext4 = FsType(0xEF53);
        assert_eq!(kind_of(BTRFS_SUPER_MAGIC, 256), VolumeKind::Subvolume);
        assert_eq!(kind_of(BTRFS_SUPER_MAGIC, 257), VolumeKind::Dir);
        assert_eq!(kind_of(ext4, 256), VolumeKind::Dir);
        assert!(is_btrfs(FsType(0x9123_683E_u32 as _)));
    }

    #[test]
    fn pseudo_filesystems_are_not_btrfs() {
        assert!(!on_btrfs(Path::new("/proc")).unwrap());
        assert!(!on_btrfs(Path::new("/dev")).unwrap());
        assert!(on_btrfs(Path::new("/proc/no-such-thing")).is_err());
    }

    #[test]
    fn a_volume_is_in_use_while_a_live_node_mounts_it_or_the_configuration_declares_it() {
        let mut spec = crate::config::load(None).unwrap().nodes["web1"].clone();
        spec.volumes = vec![crate::config::VolumeSpec {
            name: "media".into(),
            path: "/srv/media".into(),
        }];
        let running = NodeRecord {
            name: "web1".into(),
            pid: 1,
            start_ticks: 0,
            started_at: 0,
            spec: spec.clone(),
            restarts: 0,
            id_base: None,
        };
        let configured = BTreeMap::from([("web1".to_string(), spec)]);
        let nothing = BTreeMap::new();
        let live = [running];
        assert_eq!(
            volume_use("web1", "media", &configured, &live),
            Some(VolumeUse::Running)
        );
        assert_eq!(
            volume_use("web1", "media", &nothing, &live),
            Some(VolumeUse::Running)
        );
        assert_eq!(
            volume_use("web1", "media", &configured, &[]),
            Some(VolumeUse::Configured)
        );
        assert_eq!(volume_use("web1", "media", &nothing, &[]), None);
        assert_eq!(volume_use("web1", "other", &configured, &live), None);
        assert_eq!(volume_use("web2", "media", &configured, &live), None);
        let refused = VolumeError::InUse {
            node: "web1".into(),
            name: "media".into(),
            by: VolumeUse::Running,
        }
        .to_string();
        assert!(
            refused.starts_with("volume media of node web1: web1 is running"),
            "{refused}"
        );
    }

    #[test]
    fn names_are_one_plain_component() {
        let dirs = HostDirs {
            state_dir: "/s".into(),
            run_dir: "/r".into(),
            log_dir: "/l".into(),
        };
        assert_eq!(
            checked_path(&dirs, "db1", "mysql").unwrap(),
            Path::new("/s/volumes/db1/mysql")
        );
        for (node, name) in [
            ("db1", ".."),
            ("db1", "."),
            ("db1", "a/b"),
            ("..", "x"),
            ("db1", ""),
            ("db1", "/etc"),
            ("db1", "x/"),
        ] {
            let error = checked_path(&dirs, node, name).unwrap_err();
            assert!(
                matches!(error, VolumeError::BadName { .. }),
                "{node}/{name}"
            );
        }
        assert!(matches!(
            list(&dirs, Some("..")),
            Err(VolumeError::BadNode { .. })
        ));
    }

    #[test]
    fn a_volume_is_made_once_listed_and_removed_without_following_links() {
        let base = tempfile::tempdir().unwrap();
        let expected = if on_btrfs(base.path()).unwrap() {
            VolumeKind::Subvolume
        } else {
            VolumeKind::Dir
        };
        let outside = base.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("precious"), "x").unwrap();
        let dirs = HostDirs {
            state_dir: base.path().join("state"),
            run_dir: base.path().join("run"),
            log_dir: base.path().join("log"),
        };
        let (path, made) = create(&dirs, "web1", "media").unwrap();
        assert!(made);
        assert_eq!(kind(&path).unwrap(), expected);
        std::fs::write(path.join("file"), "kept").unwrap();
        std::os::unix::fs::symlink(&outside, path.join("link")).unwrap();
        assert!(!create(&dirs, "web1", "media").unwrap().1);
        let listed = list(&dirs, None).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].node.as_str(), listed[0].name.as_str()),
            ("web1", "media")
        );
        assert!(listed[0].size_bytes > 0);
        assert_eq!(remove(&dirs, "web1", "media").unwrap(), expected);
        assert!(!path.exists() && !dirs.node("web1").volumes.exists());
        assert!(outside.join("precious").exists());
        let error = remove(&dirs, "web1", "media").unwrap_err().to_string();
        assert!(error.contains("web1") && error.contains("media"), "{error}");
    }
}
