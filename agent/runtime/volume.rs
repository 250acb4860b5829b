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
use crate::config::{NodeSpec, VolumeSpec};

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
    #[error("volume {name} of {}: {what} {}: {source}", owner_text(node), path.display())]
    Io {
        node: String,
        name: String,
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "volume {name} of {}: not a name (one path component, not `.` or `..`)",
        owner_text(node)
    )]
    BadName { node: String, name: String },
    #[error("node {node}: not a name (one path component, not `.` or `..`)")]
    BadNode { node: String },
    #[error("volume {name} of {}: there is no {}", owner_text(node), path.display())]
    NotFound {
        node: String,
        name: String,
        path: PathBuf,
    },
    #[error("volume {name} of {}: {} is not a directory; the agent did not make it, remove it by hand", owner_text(node), path.display())]
    NotADirectory {
        node: String,
        name: String,
        path: PathBuf,
    },
    #[error("volume {name} of {}: `btrfs subvolume delete {}` failed: {message}", owner_text(node), path.display())]
    SubvolumeDelete {
        node: String,
        name: String,
        path: PathBuf,
        message: String,
    },
    #[error("volume {name} of {}: {}", owner_text(node), match by {
        VolumeUse::Running => "a running node mounts it; remove the volume (or the node) from the configuration and reload first",
        VolumeUse::Configured => "the configuration declares it; remove the volume (or the node) from the configuration and reload first",
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

/// Marks the owner of a volume shared by every node of a role: `@<role>`, never a node name.
const SHARED_MARK: char = '@';

/// Who a volume of `spec`'s node belongs to: the node, or for a shared volume its role
/// (`@<role>`); also the volume's directory under `state_dir/volumes`.
pub fn owner(spec: &NodeSpec, volume: &VolumeSpec) -> String {
    if volume.shared {
        format!("{SHARED_MARK}{}", spec.role)
    } else {
        spec.name.clone()
    }
}

/// Whether `owner` is a role's shared volumes rather than a node's.
pub fn is_shared(owner: &str) -> bool {
    owner.starts_with(SHARED_MARK)
}

/// `node web1`, or `the web nodes (shared)` for `@web`.
pub fn owner_text(owner: &str) -> String {
    match owner.strip_prefix(SHARED_MARK) {
        Some(role) => format!("the {role} nodes (shared)"),
        None => format!("node {owner}"),
    }
}

/// Whether volume `name` of `owner` (a node, or `@<role>`) is in use: mounted by a live init
/// (`live`, the records of the nodes that run), or declared by the configuration.
pub fn volume_use(
    owner: &str,
    name: &str,
    configured: &BTreeMap<String, NodeSpec>,
    live: &[NodeRecord],
) -> Option<VolumeUse> {
    let declares = |spec: &NodeSpec| {
        spec.definition
            .volumes
            .iter()
            .any(|volume| volume.name == name && self::owner(spec, volume) == owner)
    };
    if live.iter().any(|record| declares(&record.spec)) {
        Some(VolumeUse::Running)
    } else if configured.values().any(declares) {
        Some(VolumeUse::Configured)
    } else {
        None
    }
}

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

/// Makes volume `name` of `node` (a node, or `@<role>`) unless it exists: a subvolume where the
/// volume directory is on btrfs, else a directory, which `prepare` gives its owner and mode
/// before it appears under its name. Returns its path and whether it was made now. The volume
/// is made as `.<name>.unfinished` and renamed into place: a start that dies half-way leaves no
/// volume with the wrong owner (the next daemon's start-up sweep removes the temporary, see
/// [`sweep_unfinished`]). Making volumes is serialised within the daemon (the only process
/// that makes them, under its run-dir lock), so two nodes of a role starting at once make their
/// shared volume once. A role's shared volumes sit in a directory only host root can enter:
/// nodes see them through idmapped mounts the agent makes, never by path.
pub fn create(
    dirs: &HostDirs,
    node: &str,
    name: &str,
    prepare: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<(PathBuf, bool), VolumeError> {
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let path = checked_path(dirs, node, name)?;
    if existing_volume(node, name, &path)? {
        return Ok((path, false));
    }
    let _making = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    if existing_volume(node, name, &path)? {
        return Ok((path, false));
    }
    let io = |what, path: &Path| io_error(node, name, what, path);
    let parent = dirs.node(node).volumes;
    if !parent.is_dir() {
        if is_shared(node) {
            // Made apart first: the parents a create_dir makes get its mode too.
            let all = dirs.state_dir.join("volumes");
            if !all.is_dir() {
                paths::create_dir(&all, 0o755).map_err(io("creating", &all))?;
            }
            paths::create_dir(&parent, 0o700).map_err(io("creating", &parent))?;
        } else {
            paths::create_dir(&parent, 0o755).map_err(io("creating", &parent))?;
        }
    }
    let temporary = parent.join(format!(".{name}{UNFINISHED}"));
    if std::fs::symlink_metadata(&temporary).is_ok() {
        // Left by a daemon that died before its start-up sweep ran; ours is made under the lock.
        std::fs::remove_dir_all(&temporary).map_err(io("removing", &temporary))?;
    }
    let btrfs = on_btrfs(&parent).map_err(io("checking the filesystem of", &parent))?;
    if btrfs {
        create_subvolume(&parent, temporary.file_name().expect("a file name"))
            .map_err(io("creating the btrfs subvolume", &temporary))?;
    } else {
        std::fs::create_dir(&temporary).map_err(io("creating", &temporary))?;
    }
    let placed = prepare(&temporary)
        .map_err(io("giving its owner and mode to", &temporary))
        .and_then(|()| std::fs::rename(&temporary, &path).map_err(io("moving into place", &path)));
    if placed.is_err() {
        // Our own, just made: emptied without following links; rmdir removes a directory and,
        // as root, an empty subvolume.
        let _ = std::fs::remove_dir_all(&temporary);
    }
    placed.map(|()| (path, true))
}

/// An I/O error `what`ing `path` for volume `name` of `node`.
fn io_error(
    node: &str,
    name: &str,
    what: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> VolumeError {
    let (node, name, path) = (node.to_string(), name.to_string(), path.to_path_buf());
    move |source| VolumeError::Io {
        node,
        name,
        what,
        path,
        source,
    }
}

/// What marks a volume being made: `.<name>.unfinished`.
const UNFINISHED: &str = ".unfinished";

/// Whether a volume is at `path`; something else there is an error (never taken for one).
fn existing_volume(node: &str, name: &str, path: &Path) -> Result<bool, VolumeError> {
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => Ok(true),
        Ok(_) => Err(VolumeError::NotADirectory {
            node: node.into(),
            name: name.into(),
            path: path.to_path_buf(),
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(io_error(node, name, "checking", path)(source)),
    }
}

/// Removes what a daemon that died while making volumes left of them: run at start-up, before
/// any node starts, under the daemon's lock, so no temporary on disk is still being made.
pub fn sweep_unfinished(dirs: &HostDirs) {
    let owners = std::fs::read_dir(dirs.state_dir.join("volumes"));
    for owner in owners.into_iter().flatten().flatten() {
        for entry in std::fs::read_dir(owner.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let file_name = entry.file_name();
            let file_name = file_name.to_string_lossy();
            if file_name.starts_with('.') && file_name.ends_with(UNFINISHED) {
                let path = entry.path();
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "removed an unfinished volume")
                    }
                    Err(error) => {
                        tracing::warn!(path = %path.display(), "unfinished volume left: {error}")
                    }
                }
            }
        }
    }
}

/// Gives a new volume the owner and mode its mount point has in the image (the image's ids
/// shifted to the range starting at `base`), as a volume made from an image directory would
/// have: /var/www/media owned by www-data in the image stays writable by www-data. Where the
/// image has no such directory, the range's root owns it, mode 0755.
/// A path through a symbolic link in the image is not followed (it would resolve on the host).
pub fn take_over_image_dir(
    volume: &Path,
    image_rootfs: &Path,
    path_in_node: &str,
    base: u32,
) -> std::io::Result<()> {
    let mut in_image = image_rootfs.to_path_buf();
    let mut found = None;
    for component in Path::new(path_in_node).components() {
        let Component::Normal(part) = component else {
            continue;
        };
        in_image.push(part);
        found = std::fs::symlink_metadata(&in_image)
            .ok()
            .filter(|metadata| metadata.is_dir());
        if found.is_none() {
            break;
        }
    }
    let (uid, gid, mode) = match found {
        Some(metadata) => (metadata.uid(), metadata.gid(), metadata.mode() & 0o7777),
        None => (0, 0, 0o755),
    };
    let shift = |id: u32| {
        base.checked_add(id)
            .filter(|_| id < super::idmap::RANGE)
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "{} is owned by id {id}, outside a node's {} ids",
                    in_image.display(),
                    super::idmap::RANGE
                ))
            })
    };
    std::os::unix::fs::lchown(volume, Some(shift(uid)?), Some(shift(gid)?))?;
    std::fs::set_permissions(volume, std::fs::Permissions::from_mode(mode))
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
pub(super) fn create_subvolume(parent: &Path, name: &OsStr) -> std::io::Result<()> {
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
            if name.starts_with('.') {
                continue; // one being made
            }
            let path = entry.path();
            let Ok(metadata) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if !metadata.is_dir() {
                continue;
            }
            let kind =
                kind(&path).map_err(io_error(&node, &name, "checking the filesystem of", &path))?;
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
/// delete` (after the subvolumes the node made inside it, which would block it) and with its
/// quota group (see [`super::quota::forget_subvolumes`]), a directory without following
/// symbolic links. Whether a node still uses it is the
/// caller's to check. Returns what it was.
pub fn remove(dirs: &HostDirs, node: &str, name: &str) -> Result<VolumeKind, VolumeError> {
    let path = checked_path(dirs, node, name)?;
    let io = |what| io_error(node, name, what, &path);
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
            let ids = super::quota::subvolume_ids(&subvolumes);
            super::quota::leave_node_group(&dirs.node(node).layer, &path)
                .map_err(io("taking out of its node's quota group"))?;
            delete_subvolumes(&subvolumes).map_err(|message| VolumeError::SubvolumeDelete {
                node: node.into(),
                name: name.into(),
                path: path.clone(),
                message,
            })?;
            super::quota::forget_subvolumes(&dirs.state_dir, &ids);
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
        spec.definition.volumes = vec![crate::config::VolumeSpec {
            shared: false,
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
            disk_quota: None,
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
            refused.starts_with("volume media of node web1: a running node mounts it"),
            "{refused}"
        );
    }

    #[test]
    fn a_shared_volume_belongs_to_the_role_and_is_used_by_any_node_of_it() {
        let config = crate::config::load(None).unwrap();
        let web1 = config.nodes["web1"].clone();
        let media = web1
            .definition
            .volumes
            .iter()
            .find(|volume| volume.name == "media")
            .expect("the web role's media volume");
        assert!(media.shared);
        assert_eq!(owner(&web1, media), "@web");
        assert!(is_shared("@web") && !is_shared("web1"));
        let running_web2 = NodeRecord {
            name: "web2".into(),
            pid: 1,
            start_ticks: 0,
            started_at: 0,
            spec: config.nodes["web2"].clone(),
            restarts: 0,
            id_base: None,
            disk_quota: None,
        };
        let nothing = BTreeMap::new();
        assert_eq!(
            volume_use("@web", "media", &nothing, &[running_web2]),
            Some(VolumeUse::Running)
        );
        assert_eq!(
            volume_use("@web", "media", &config.nodes, &[]),
            Some(VolumeUse::Configured)
        );
        assert_eq!(volume_use("web1", "media", &config.nodes, &[]), None);
        assert_eq!(volume_use("@db", "media", &config.nodes, &[]), None);
        let refused = VolumeError::InUse {
            node: "@web".into(),
            name: "media".into(),
            by: VolumeUse::Configured,
        }
        .to_string();
        assert!(
            refused.starts_with("volume media of the web nodes (shared): the configuration"),
            "{refused}"
        );
    }

    #[test]
    fn a_new_volume_takes_the_owner_and_mode_of_its_image_directory_shifted() {
        use std::os::unix::fs::{chown, symlink};
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        std::fs::create_dir_all(image.join("var/www/media")).unwrap();
        chown(image.join("var/www/media"), Some(33), Some(34)).unwrap();
        std::fs::set_permissions(
            image.join("var/www/media"),
            std::fs::Permissions::from_mode(0o2750),
        )
        .unwrap();
        symlink("/etc", image.join("var/link")).unwrap();
        let volume = dir.path().join("volume");
        std::fs::create_dir(&volume).unwrap();
        let owner_and_mode = || {
            let metadata = std::fs::metadata(&volume).unwrap();
            (metadata.uid(), metadata.gid(), metadata.mode() & 0o7777)
        };
        let base = 1 << 20;

        take_over_image_dir(&volume, &image, "/var/www/media", base).unwrap();
        assert_eq!(owner_and_mode(), (base + 33, base + 34, 0o2750));
        take_over_image_dir(&volume, &image, "/srv/missing", base).unwrap();
        assert_eq!(owner_and_mode(), (base, base, 0o755));
        // Through a link the image would resolve on the host: not followed.
        take_over_image_dir(&volume, &image, "/var/link/ssh", 0).unwrap();
        assert_eq!(owner_and_mode(), (0, 0, 0o755));
        chown(image.join("var/www/media"), Some(70000), None).unwrap();
        let error = take_over_image_dir(&volume, &image, "/var/www/media", base).unwrap_err();
        assert!(error.to_string().contains("owned by id 70000"), "{error}");
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
        let (path, made) = create(&dirs, "web1", "media", |_| Ok(())).unwrap();
        assert!(made);
        assert_eq!(kind(&path).unwrap(), expected);
        std::fs::write(path.join("file"), "kept").unwrap();
        std::os::unix::fs::symlink(&outside, path.join("link")).unwrap();
        assert!(!create(&dirs, "web1", "media", |_| Ok(())).unwrap().1);
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

    #[test]
    fn a_volume_appears_only_once_prepared_and_once_for_concurrent_makers() {
        let base = tempfile::tempdir().unwrap();
        let dirs = HostDirs {
            state_dir: base.path().join("state"),
            run_dir: base.path().join("run"),
            log_dir: base.path().join("log"),
        };
        // A failed preparation leaves neither the volume nor its temporary.
        let failed = create(&dirs, "@web", "media", |_| {
            Err(std::io::Error::other("no owner for you"))
        })
        .unwrap_err()
        .to_string();
        assert!(
            failed.contains("volume media of the web nodes (shared)")
                && failed.contains("no owner for you"),
            "{failed}"
        );
        let parent = dirs.node("@web").volumes;
        assert_eq!(std::fs::read_dir(&parent).unwrap().count(), 0);
        assert_eq!(
            std::fs::metadata(&parent).unwrap().mode() & 0o777,
            0o700,
            "only host root enters a role's shared volumes"
        );
        // What a daemon that died half-way left is never listed, and the start-up sweep
        // removes it with what it held.
        std::fs::create_dir(parent.join(".media.unfinished")).unwrap();
        std::fs::write(parent.join(".media.unfinished/half"), "").unwrap();
        assert!(list(&dirs, None).unwrap().is_empty());
        sweep_unfinished(&dirs);
        assert_eq!(std::fs::read_dir(&parent).unwrap().count(), 0);
        std::fs::create_dir(parent.join(".media.unfinished")).unwrap();
        // Makers racing: one makes it (prepared), the others find it.
        let made: Vec<bool> = std::thread::scope(|scope| {
            let makers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        create(&dirs, "@web", "media", |new| {
                            std::fs::write(new.join("prepared"), "")
                        })
                        .unwrap()
                        .1
                    })
                })
                .collect();
            makers.into_iter().map(|m| m.join().unwrap()).collect()
        });
        assert_eq!(made.iter().filter(|m| **m).count(), 1, "{made:?}");
        let volume = dirs.node("@web").volume("media");
        assert!(volume.join("prepared").exists());
        let left: Vec<_> = std::fs::read_dir(&parent)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, [std::ffi::OsString::from("media")]);
        // Something that is not a directory is never taken for the volume.
        std::fs::write(parent.join("notes"), "").unwrap();
        let error = create(&dirs, "@web", "notes", |_| Ok(())).unwrap_err();
        assert!(
            matches!(error, VolumeError::NotADirectory { .. }),
            "{error}"
        );
    }
}
