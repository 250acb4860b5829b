//! Disk limits (`[resources] disk`): one btrfs quota group per node over its writable layer and
//! its own volumes.
//!
//! A node's layer `state_dir/nodes/<node>` is a subvolume (upper and work in it: overlay needs
//! them on one filesystem), and so is each of its volumes; each subvolume has its level-0 group
//! `0/<subvolume id>`. The node's group is `1/<id of its layer subvolume>`: unique on the
//! filesystem while the layer exists, found again from the layer alone, never recorded apart.
//! Its members are the layer's and the volumes' level-0 groups, and its referenced limit is
//! the node's `disk`. A role's shared volumes (`@<role>`) are in no node's group.
//!
//! Changes go through the btrfs ioctls (what `btrfs quota enable`, `btrfs qgroup create`,
//! `assign`, `limit` and `destroy` call), so a node start needs neither btrfs-progs nor a child
//! process. Usage is read from sysfs (`/sys/fs/btrfs/<fsid>/qgroups/1_<id>/`, kernel 5.9 and
//! later): a few small reads per node for `status`.
//!
//! What is done at a start is first planned from what the host has ([`Survey`] in, [`Plan`]
//! out, no system call), then applied with each change's mirror registered for undo.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::paths::HostDirs;
use super::undo::Undo;
use super::volume::{self, VolumeKind};
use crate::config::{format_size, Config, NodeSpec};

/// Where btrfs shows each mounted filesystem, by its fsid.
const SYSFS: &str = "/sys/fs/btrfs";
/// `BTRFS_QGROUP_LIMIT_MAX_RFER`: the group's referenced bytes are limited.
const LIMIT_MAX_REFERENCED: u64 = 1;
/// The limit value that removes a limit (`CLEAR_VALUE` in the kernel).
const NO_LIMIT: u64 = u64::MAX;
/// The inode number of a subvolume's root (`BTRFS_FIRST_FREE_OBJECTID`).
const SUBVOLUME_ROOT: u64 = 256;

/// A btrfs quota group, written `<level>/<id>` as btrfs-progs does: level 0 is a subvolume's
/// own group (`id` is the subvolume's), level 1 gathers several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QgroupId {
    pub level: u16,
    pub id: u64,
}

impl QgroupId {
    /// The level-0 group of subvolume `id`.
    pub fn subvolume(id: u64) -> QgroupId {
        QgroupId { level: 0, id }
    }

    /// The group of the node whose layer is subvolume `layer`.
    pub fn node(layer: u64) -> QgroupId {
        QgroupId {
            level: 1,
            id: layer,
        }
    }

    /// The kernel's form: the level in the top 16 bits.
    fn packed(self) -> u64 {
        (u64::from(self.level) << 48) | self.id
    }

    pub fn parse(text: &str) -> Result<QgroupId, String> {
        let error = || format!("`{text}` is not a quota group like 1/258");
        let (level, id) = text.split_once('/').ok_or_else(error)?;
        let level: u16 = level.parse().map_err(|_| error())?;
        let id: u64 = id.parse().map_err(|_| error())?;
        if id >= 1 << 48 {
            return Err(error());
        }
        Ok(QgroupId { level, id })
    }

    /// Its directory under `/sys/fs/btrfs/<fsid>/qgroups`: `1_258`.
    fn sysfs_name(self) -> String {
        format!("{}_{}", self.level, self.id)
    }
}

impl std::fmt::Display for QgroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.level, self.id)
    }
}

impl TryFrom<String> for QgroupId {
    type Error = String;
    fn try_from(text: String) -> Result<QgroupId, String> {
        QgroupId::parse(&text)
    }
}

impl From<QgroupId> for String {
    fn from(id: QgroupId) -> String {
        id.to_string()
    }
}

/// A node's quota group as its record keeps it, for `status` to read its usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeQuota {
    /// The filesystem's fsid, naming its directory in sysfs.
    pub fsid: String,
    pub group: QgroupId,
}

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("node {node}: disk limit: {what} ({}): {source}", path.display())]
    Io {
        node: String,
        what: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One part of a node's disk as it is on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// A btrfs subvolume, by id.
    Subvolume(u64),
    /// A plain directory (made before the state dir was on btrfs, or before disk limits).
    Directory,
    /// Not made yet: it will be a subvolume (`config check` before a node's first start).
    Missing,
}

/// What the host has of one node's disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Survey {
    /// Whether the state dir is on btrfs.
    pub btrfs: bool,
    pub quotas_enabled: bool,
    pub layer: (PathBuf, Part),
    /// The node's own volumes (not its role's shared ones).
    pub volumes: Vec<(PathBuf, Part)>,
    /// The node's group, when it exists: its current limit.
    pub group: Option<Option<u64>>,
}

/// What a start changes on the host for a node's disk limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    EnableQuotas,
    CreateGroup(QgroupId),
    /// A level-0 group joins the node's.
    Assign {
        member: QgroupId,
        group: QgroupId,
    },
    /// The node's limit (`None` lifts it).
    Limit(QgroupId, Option<u64>),
}

/// Whether the node's `disk` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No `disk` configured.
    Unlimited,
    Enforced,
    /// Configured but not enforced, and why.
    NotEnforced(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub outcome: Outcome,
}

/// Decides what a start does for a node with `limit` on a host as `survey` found it.
pub fn plan(limit: Option<u64>, survey: &Survey) -> Plan {
    let group = match survey.layer.1 {
        Part::Subvolume(id) => Some(QgroupId::node(id)),
        Part::Directory | Part::Missing => None,
    };
    let Some(limit) = limit else {
        // A limit dropped from the configuration is lifted; the group stays for its usage.
        let steps = match (group, survey.group) {
            (Some(group), Some(Some(_))) => vec![Step::Limit(group, None)],
            _ => Vec::new(),
        };
        return Plan {
            steps,
            outcome: Outcome::Unlimited,
        };
    };
    let not_enforced = |reason: String| Plan {
        steps: Vec::new(),
        outcome: Outcome::NotEnforced(reason),
    };
    if !survey.btrfs {
        return not_enforced(format!(
            "{} is not on btrfs (disk limits are btrfs quota groups)",
            survey.layer.0.display()
        ));
    }
    let directories: Vec<String> = std::iter::once(&survey.layer)
        .chain(&survey.volumes)
        .filter(|(_, part)| *part == Part::Directory)
        .map(|(path, _)| path.display().to_string())
        .collect();
    if !directories.is_empty() {
        return not_enforced(format!(
            "{} made before disk limits, not a btrfs subvolume (only subvolumes are counted)",
            directories.join(", ")
        ));
    }
    let Some(group) = group else {
        // Nothing made yet: the next start makes subvolumes and the group.
        return Plan {
            steps: Vec::new(),
            outcome: Outcome::Enforced,
        };
    };
    let mut steps = Vec::new();
    if !survey.quotas_enabled {
        steps.push(Step::EnableQuotas);
    }
    if survey.group.is_none() {
        steps.push(Step::CreateGroup(group));
    }
    for (_, part) in std::iter::once(&survey.layer).chain(&survey.volumes) {
        if let Part::Subvolume(id) = part {
            steps.push(Step::Assign {
                member: QgroupId::subvolume(*id),
                group,
            });
        }
    }
    if survey.group != Some(Some(limit)) {
        steps.push(Step::Limit(group, Some(limit)));
    }
    Plan {
        steps,
        outcome: Outcome::Enforced,
    }
}

/// The paths of `spec`'s own volumes, the ones its group counts (not its role's shared ones).
pub fn own_volumes(dirs: &HostDirs, spec: &NodeSpec) -> Vec<PathBuf> {
    let paths = dirs.node(&spec.name);
    spec.definition
        .volumes
        .iter()
        .filter(|volume| !volume.shared)
        .map(|volume| paths.volume(&volume.name))
        .collect()
}

/// One line for each node of `config` whose `disk` would not be enforced, naming the node, the
/// field and why: for `config check`, which warns and still succeeds.
pub fn unenforced(config: &Config) -> Vec<String> {
    let dirs = HostDirs {
        state_dir: config.host.state_dir.clone(),
        run_dir: config.host.run_dir.clone(),
        log_dir: config.host.log_dir.clone(),
    };
    config
        .nodes
        .values()
        .filter_map(|spec| {
            let limit = spec.definition.resources.disk_bytes?;
            let reason = match survey(&dirs.node(&spec.name).layer, &own_volumes(&dirs, spec)) {
                Ok(survey) => match plan(Some(limit), &survey).outcome {
                    Outcome::NotEnforced(reason) => reason,
                    Outcome::Enforced | Outcome::Unlimited => return None,
                },
                Err(error) => format!("cannot look at the state dir: {error}"),
            };
            Some(not_enforced_text(&spec.name, limit, &reason))
        })
        .collect()
}

/// `node web1: resources.disk = 10G is not enforced: <reason>`.
pub fn not_enforced_text(node: &str, limit: u64, reason: &str) -> String {
    format!(
        "node {node}: resources.disk = {} is not enforced: {reason}",
        format_size(limit)
    )
}

/// Looks at a node's layer and own volumes (`volumes`), changing nothing. Paths not made yet
/// are judged by the nearest directory above them that exists.
pub fn survey(layer: &Path, volumes: &[PathBuf]) -> std::io::Result<Survey> {
    let existing = layer
        .ancestors()
        .find(|dir| dir.exists())
        .unwrap_or(Path::new("/"));
    let btrfs = volume::on_btrfs(existing)?;
    let part = |path: &Path| -> std::io::Result<Part> {
        if !btrfs || std::fs::symlink_metadata(path).is_err() {
            return Ok(if path.exists() {
                Part::Directory
            } else {
                Part::Missing
            });
        }
        Ok(match volume::kind(path)? {
            VolumeKind::Subvolume => Part::Subvolume(subvolume_id(path)?),
            VolumeKind::Dir => Part::Directory,
        })
    };
    let layer_part = part(layer)?;
    let volume_parts = volumes
        .iter()
        .map(|path| Ok((path.clone(), part(path)?)))
        .collect::<std::io::Result<Vec<_>>>()?;
    let (quotas_enabled, group) = match (&layer_part, btrfs) {
        (Part::Subvolume(id), true) => {
            let fsid = fsid(layer)?;
            let group = read_group(&fsid, QgroupId::node(*id)).map(|usage| usage.limit);
            (quotas_enabled(&fsid), group)
        }
        _ => (false, None),
    };
    Ok(Survey {
        btrfs,
        quotas_enabled,
        layer: (layer.to_path_buf(), layer_part),
        volumes: volume_parts,
        group,
    })
}

/// Applies `plan` for `node`, registering in `undo` the mirror of each change it makes; an
/// existing membership is left as it is. Returns the node's group when it has one.
/// Enabling quotas on the filesystem is not undone: it is a setting of the host's filesystem.
pub fn apply(
    node: &str,
    layer: &Path,
    survey: &Survey,
    plan: &Plan,
    undo: &mut Undo,
) -> Result<Option<NodeQuota>, QuotaError> {
    let Part::Subvolume(layer_id) = survey.layer.1 else {
        return Ok(None);
    };
    let error = |what: String| {
        let (node, path) = (node.to_string(), layer.to_path_buf());
        move |source| QuotaError::Io {
            node,
            what,
            path,
            source,
        }
    };
    let fs = outside_group(layer).map_err(error("opening the layer's parent".into()))?;
    let mut rescan = false;
    for step in &plan.steps {
        match *step {
            Step::EnableQuotas => {
                enable_quotas(&fs).map_err(error("enabling btrfs quotas".into()))?;
                tracing::info!(node, path = %layer.display(), "btrfs quotas enabled on the state dir's filesystem");
            }
            Step::CreateGroup(group) => {
                create_group(&fs, group, true)
                    .map_err(error(format!("creating quota group {group}")))?;
                let path = layer.to_path_buf();
                undo.push(format!("destroy quota group {group}"), move || {
                    if let Ok(fs) = outside_group(&path) {
                        let _ = create_group(&fs, group, false);
                    }
                });
            }
            Step::Assign { member, group } => match assign(&fs, member, group, true) {
                Ok(inconsistent) => {
                    rescan |= inconsistent;
                    let path = layer.to_path_buf();
                    undo.push(format!("take {member} out of {group}"), move || {
                        if let Ok(fs) = outside_group(&path) {
                            if let Ok(true) = assign(&fs, member, group, false) {
                                let _ = start_rescan(&fs);
                            }
                        }
                    });
                }
                Err(already) if already.raw_os_error() == Some(libc::EEXIST) => {}
                Err(source) => {
                    return Err(error(format!("putting {member} in quota group {group}"))(
                        source,
                    ))
                }
            },
            Step::Limit(group, limit) => {
                set_limit(&fs, group, limit)
                    .map_err(error(format!("limiting quota group {group}")))?;
                let (path, before) = (layer.to_path_buf(), survey.group.flatten());
                undo.push(format!("restore the limit of {group}"), move || {
                    if let Ok(fs) = outside_group(&path) {
                        let _ = set_limit(&fs, group, before);
                    }
                });
            }
        }
    }
    if rescan {
        // A member that shares extents with others cannot be added by arithmetic: the kernel
        // marked the numbers inconsistent until a rescan.
        start_rescan(&fs).map_err(error("starting a quota rescan".into()))?;
    }
    let group = QgroupId::node(layer_id);
    let made = plan
        .steps
        .iter()
        .any(|step| matches!(step, Step::CreateGroup(_)));
    if survey.group.is_none() && !made {
        return Ok(None);
    }
    Ok(Some(NodeQuota {
        fsid: fsid(layer).map_err(error("reading the filesystem's fsid".into()))?,
        group,
    }))
}

/// Before the layer of a node that is no longer configured is removed: takes the layer and the
/// node's own volumes (`volumes`) out of its group and destroys the group. The volumes stay
/// (data), unlimited. Nothing to do where the layer is no subvolume or has no group.
pub fn remove_node_group(layer: &Path, volumes: &[PathBuf]) -> std::io::Result<()> {
    let Some(group) = existing_group(layer)? else {
        return Ok(());
    };
    let fs = outside_group(layer)?;
    let mut members = vec![layer.to_path_buf()];
    members.extend_from_slice(volumes);
    take_out(&fs, group, &subvolume_ids(&members))?;
    create_group(&fs, group, false).map_err(|error| {
        std::io::Error::new(
            error.kind(),
            format!("destroying quota group {group}: {error}"),
        )
    })
}

/// Before a volume of the node with `layer` is deleted (`volume rm`): takes it out of the
/// node's group, which could not be destroyed while a deleted subvolume's group is still in it
/// (the kernel drops that one only once the subvolume is cleaned).
pub fn leave_node_group(layer: &Path, volume: &Path) -> std::io::Result<()> {
    match existing_group(layer)? {
        Some(group) => take_out(
            &outside_group(layer)?,
            group,
            &subvolume_ids(&[volume.to_path_buf()]),
        ),
        None => Ok(()),
    }
}

/// The group of the node with `layer`, when the layer is a subvolume and its group exists.
fn existing_group(layer: &Path) -> std::io::Result<Option<QgroupId>> {
    if !layer.exists() || !volume::on_btrfs(layer)? || volume::kind(layer)? != VolumeKind::Subvolume
    {
        return Ok(None);
    }
    let group = QgroupId::node(subvolume_id(layer)?);
    Ok(read_group(&fsid(layer)?, group).map(|_| group))
}

/// Takes the level-0 groups of subvolumes `ids` out of `group` (those not in it are skipped),
/// then has the numbers rescanned if the kernel could not update them by arithmetic.
fn take_out(fs: &File, group: QgroupId, ids: &[u64]) -> std::io::Result<()> {
    let mut rescan = false;
    for &id in ids {
        match assign(fs, QgroupId::subvolume(id), group, false) {
            Ok(inconsistent) => rescan |= inconsistent,
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(error) => return Err(error),
        }
    }
    if rescan {
        start_rescan(fs)?;
    }
    Ok(())
}

/// The ids of those of `paths` that are subvolumes, read before they are deleted for
/// [`forget_subvolumes`].
pub fn subvolume_ids(paths: &[PathBuf]) -> Vec<u64> {
    paths
        .iter()
        .filter(|path| matches!(volume::kind(path), Ok(VolumeKind::Subvolume)))
        .filter_map(|path| subvolume_id(path).ok())
        .collect()
}

/// After subvolumes were deleted: destroys their level-0 groups, which kernels before 6.7
/// keep for good. Newer kernels remove them themselves once the subvolume is cleaned, and
/// refuse this before (EBUSY): every failure is left to the kernel. `dir` is any path on the
/// filesystem.
pub fn forget_subvolumes(dir: &Path, ids: &[u64]) {
    let Ok(fs) = File::open(dir) else {
        return;
    };
    for &id in ids {
        let _ = create_group(&fs, QgroupId::subvolume(id), false);
    }
}

/// A quota group's figures as sysfs shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of the extents its members reference (what the limit counts).
    pub referenced: u64,
    pub limit: Option<u64>,
}

/// The usage and limit of a node's group; `None` when sysfs does not show it (quotas
/// disabled since, the group destroyed, or a kernel before 5.9).
pub fn usage(quota: &NodeQuota) -> Option<Usage> {
    read_group(&quota.fsid, quota.group)
}

fn read_group(fsid: &str, group: QgroupId) -> Option<Usage> {
    let dir = Path::new(SYSFS)
        .join(fsid)
        .join("qgroups")
        .join(group.sysfs_name());
    let read = |name: &str| parse_sysfs_number(&std::fs::read_to_string(dir.join(name)).ok()?);
    Some(Usage {
        referenced: read("referenced")?,
        limit: limit_of(read("limit_flags")?, read("max_referenced")?),
    })
}

/// One number as a sysfs file holds it, with its newline.
fn parse_sysfs_number(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// The referenced limit from a group's `limit_flags` and `max_referenced`.
fn limit_of(flags: u64, max_referenced: u64) -> Option<u64> {
    (flags & LIMIT_MAX_REFERENCED != 0).then_some(max_referenced)
}

fn quotas_enabled(fsid: &str) -> bool {
    let enabled = Path::new(SYSFS).join(fsid).join("qgroups/enabled");
    std::fs::read_to_string(enabled)
        .ok()
        .and_then(|text| parse_sysfs_number(&text))
        == Some(1)
}

/// `struct btrfs_ioctl_fs_info_args` of linux/btrfs.h.
#[repr(C)]
struct FsInfoArgs {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; 16],
    nodesize: u32,
    sectorsize: u32,
    clone_alignment: u32,
    csum_type: u16,
    csum_size: u16,
    flags: u64,
    generation: u64,
    metadata_uuid: [u8; 16],
    reserved: [u8; 944],
}

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

/// `struct btrfs_ioctl_quota_ctl_args`.
#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

/// `struct btrfs_ioctl_qgroup_assign_args`.
#[repr(C)]
struct QgroupAssignArgs {
    assign: u64,
    src: u64,
    dst: u64,
}

/// `struct btrfs_ioctl_qgroup_create_args`.
#[repr(C)]
struct QgroupCreateArgs {
    create: u64,
    qgroupid: u64,
}

/// `struct btrfs_ioctl_qgroup_limit_args` with its `struct btrfs_qgroup_limit`.
#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

/// `struct btrfs_ioctl_quota_rescan_args`.
#[repr(C)]
struct QuotaRescanArgs {
    flags: u64,
    progress: u64,
    reserved: [u64; 6],
}

nix::ioctl_read!(btrfs_ioc_fs_info, 0x94, 31, FsInfoArgs);
nix::ioctl_readwrite!(btrfs_ioc_ino_lookup, 0x94, 18, InoLookupArgs);
nix::ioctl_readwrite!(btrfs_ioc_quota_ctl, 0x94, 40, QuotaCtlArgs);
nix::ioctl_write_ptr!(btrfs_ioc_qgroup_assign, 0x94, 41, QgroupAssignArgs);
nix::ioctl_write_ptr!(btrfs_ioc_qgroup_create, 0x94, 42, QgroupCreateArgs);
nix::ioctl_read!(btrfs_ioc_qgroup_limit, 0x94, 43, QgroupLimitArgs);
nix::ioctl_write_ptr!(btrfs_ioc_quota_rescan, 0x94, 44, QuotaRescanArgs);

/// `BTRFS_QUOTA_CTL_ENABLE`: full quota groups (what `btrfs quota enable` does); a no-op when
/// they are on.
const QUOTA_CTL_ENABLE: u64 = 1;

/// The directory the quota ioctls of the node with `layer` go through: the layer's parent.
/// The kernel charges each ioctl's transaction to the subvolume of its file, and through the
/// layer itself a node at its limit could never have its group changed (EDQUOT).
fn outside_group(layer: &Path) -> std::io::Result<File> {
    File::open(layer.parent().unwrap_or(Path::new("/")))
}

/// The fsid of the btrfs filesystem holding `path`, as sysfs names it.
fn fsid(path: &Path) -> std::io::Result<String> {
    let dir = File::open(path)?;
    // SAFETY: all-zero bytes are a valid value of this plain C struct of integers and arrays.
    let mut args: FsInfoArgs = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is open for the call and `args` is a `btrfs_ioctl_fs_info_args` the kernel
    // fills in.
    unsafe { btrfs_ioc_fs_info(dir.as_raw_fd(), &mut args) }?;
    Ok(uuid_text(&args.fsid))
}

/// 16 bytes as a lower-case UUID, `8-4-4-4-12` hex digits.
fn uuid_text(bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The id of the subvolume `path` is in (what `btrfs inspect-internal rootid` prints).
fn subvolume_id(path: &Path) -> std::io::Result<u64> {
    let dir = File::open(path)?;
    let mut args = InoLookupArgs {
        treeid: 0,
        objectid: SUBVOLUME_ROOT,
        name: [0; 4080],
    };
    // SAFETY: `dir` is open for the call; `args` is a `btrfs_ioctl_ino_lookup_args` whose tree
    // id 0 asks for the subvolume of `dir` and which the kernel fills in.
    unsafe { btrfs_ioc_ino_lookup(dir.as_raw_fd(), &mut args) }?;
    Ok(args.treeid)
}

fn enable_quotas(fs: &File) -> std::io::Result<()> {
    let mut args = QuotaCtlArgs {
        cmd: QUOTA_CTL_ENABLE,
        status: 0,
    };
    // SAFETY: `fs` is open for the call and `args` is a `btrfs_ioctl_quota_ctl_args`.
    unsafe { btrfs_ioc_quota_ctl(fs.as_raw_fd(), &mut args) }?;
    Ok(())
}

/// Creates (`create`) or destroys a quota group on the filesystem of `fs`.
fn create_group(fs: &File, group: QgroupId, create: bool) -> std::io::Result<()> {
    let args = QgroupCreateArgs {
        create: u64::from(create),
        qgroupid: group.packed(),
    };
    // SAFETY: `fs` is open for the call and `args` is a `btrfs_ioctl_qgroup_create_args` the
    // kernel only reads.
    unsafe { btrfs_ioc_qgroup_create(fs.as_raw_fd(), &args) }?;
    Ok(())
}

/// Makes `member` a member of `group` (`assign`) or takes it out. Returns whether the kernel
/// could not update the numbers by arithmetic and marked them inconsistent (a rescan is due).
fn assign(fs: &File, member: QgroupId, group: QgroupId, assign: bool) -> std::io::Result<bool> {
    let args = QgroupAssignArgs {
        assign: u64::from(assign),
        src: member.packed(),
        dst: group.packed(),
    };
    // SAFETY: `fs` is open for the call and `args` is a `btrfs_ioctl_qgroup_assign_args` the
    // kernel only reads.
    let inconsistent = unsafe { btrfs_ioc_qgroup_assign(fs.as_raw_fd(), &args) }?;
    Ok(inconsistent > 0)
}

/// Sets the referenced limit of `group`, or lifts it (`None`).
fn set_limit(fs: &File, group: QgroupId, limit: Option<u64>) -> std::io::Result<()> {
    let mut args = QgroupLimitArgs {
        qgroupid: group.packed(),
        flags: LIMIT_MAX_REFERENCED,
        max_rfer: limit.unwrap_or(NO_LIMIT),
        max_excl: 0,
        rsv_rfer: 0,
        rsv_excl: 0,
    };
    // SAFETY: `fs` is open for the call and `args` is a `btrfs_ioctl_qgroup_limit_args`.
    unsafe { btrfs_ioc_qgroup_limit(fs.as_raw_fd(), &mut args) }?;
    Ok(())
}

/// Starts a rescan of the quota numbers; one already running is as good.
fn start_rescan(fs: &File) -> std::io::Result<()> {
    let args = QuotaRescanArgs {
        flags: 0,
        progress: 0,
        reserved: [0; 6],
    };
    // SAFETY: `fs` is open for the call and `args` is a `btrfs_ioctl_quota_rescan_args` the
    // kernel only reads.
    match unsafe { btrfs_ioc_quota_rescan(fs.as_raw_fd(), &args) } {
        Ok(_) | Err(nix::errno::Errno::EINPROGRESS) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quota_groups_read_and_pack_like_btrfs_progs() {
        let group = QgroupId::parse("1/258").unwrap();
        assert_eq!(group, QgroupId::node(258));
        assert_eq!(group.to_string(), "1/258");
        assert_eq!(group.sysfs_name(), "1_258");
        assert_eq!(group.packed(), (1 << 48) | 258);
        assert_eq!(QgroupId::subvolume(5).packed(), 5);
        for bad in [
            "",
            "1",
            "1/",
            "/2",
            "a/2",
            "1/-2",
            "70000/1",
            "0/281474976710656",
        ] {
            assert!(QgroupId::parse(bad).is_err(), "{bad} accepted");
        }
        let json = serde_json::to_string(&NodeQuota {
            fsid: "f".into(),
            group,
        })
        .unwrap();
        assert_eq!(json, r#"{"fsid":"f","group":"1/258"}"#);
        assert!(serde_json::from_str::<NodeQuota>(r#"{"fsid":"f","group":"x"}"#).is_err());
    }

    #[test]
    fn sysfs_numbers_and_limits() {
        assert_eq!(parse_sysfs_number("33538048\n"), Some(33_538_048));
        assert_eq!(parse_sysfs_number("\n"), None);
        assert_eq!(parse_sysfs_number("-1\n"), None);
        assert_eq!(limit_of(1, 64 << 20), Some(64 << 20));
        assert_eq!(limit_of(0, 0), None);
        assert_eq!(limit_of(2, 64 << 20), None, "only an exclusive limit");
        assert_eq!(
            uuid_text(&[
                0xb9, 0x46, 0xca, 0x5c, 0x06, 0xc3, 0x4d, 0x01, 0x9f, 0xaa, 0xbb, 0x45, 0x13, 0x8e,
                0x92, 0xa5
            ]),
            "b946ca5c-06c3-4d01-9faa-bb45138e92a5"
        );
    }

    fn btrfs_survey(layer: Part, volumes: Vec<Part>) -> Survey {
        Survey {
            btrfs: true,
            quotas_enabled: false,
            layer: ("/s/nodes/n1".into(), layer),
            volumes: volumes
                .into_iter()
                .enumerate()
                .map(|(i, part)| (PathBuf::from(format!("/s/volumes/n1/v{i}")), part))
                .collect(),
            group: None,
        }
    }

    #[test]
    fn a_first_limit_enables_quotas_and_makes_the_group_of_layer_and_volumes() {
        let survey = btrfs_survey(
            Part::Subvolume(258),
            vec![Part::Subvolume(259), Part::Subvolume(260)],
        );
        let group = QgroupId::node(258);
        assert_eq!(
            plan(Some(64 << 20), &survey),
            Plan {
                steps: vec![
                    Step::EnableQuotas,
                    Step::CreateGroup(group),
                    Step::Assign {
                        member: QgroupId::subvolume(258),
                        group
                    },
                    Step::Assign {
                        member: QgroupId::subvolume(259),
                        group
                    },
                    Step::Assign {
                        member: QgroupId::subvolume(260),
                        group
                    },
                    Step::Limit(group, Some(64 << 20)),
                ],
                outcome: Outcome::Enforced,
            }
        );
        // Again, as it was left: memberships are checked (the kernel says they exist), the
        // limit is not set twice.
        let again = Survey {
            quotas_enabled: true,
            group: Some(Some(64 << 20)),
            ..survey.clone()
        };
        let steps = plan(Some(64 << 20), &again).steps;
        assert_eq!(steps.len(), 3);
        assert!(steps.iter().all(|s| matches!(s, Step::Assign { .. })));
        // A changed limit is set.
        assert_eq!(
            plan(Some(1 << 30), &again).steps.last(),
            Some(&Step::Limit(group, Some(1 << 30)))
        );
    }

    #[test]
    fn without_a_limit_nothing_is_made_and_an_old_limit_is_lifted() {
        let survey = btrfs_survey(Part::Subvolume(258), vec![Part::Subvolume(259)]);
        assert_eq!(
            plan(None, &survey),
            Plan {
                steps: vec![],
                outcome: Outcome::Unlimited
            }
        );
        let limited = Survey {
            group: Some(Some(64 << 20)),
            ..survey.clone()
        };
        assert_eq!(
            plan(None, &limited).steps,
            vec![Step::Limit(QgroupId::node(258), None)]
        );
        let lifted = Survey {
            group: Some(None),
            ..survey
        };
        assert!(plan(None, &lifted).steps.is_empty());
    }

    #[test]
    fn a_limit_is_not_enforced_off_btrfs_or_over_plain_directories() {
        let off = Survey {
            btrfs: false,
            ..btrfs_survey(Part::Directory, vec![Part::Missing])
        };
        let Outcome::NotEnforced(reason) = plan(Some(1 << 30), &off).outcome else {
            panic!("enforced off btrfs");
        };
        assert_eq!(
            reason,
            "/s/nodes/n1 is not on btrfs (disk limits are btrfs quota groups)"
        );
        let old_layer = btrfs_survey(Part::Directory, vec![Part::Subvolume(259)]);
        let old_volume = btrfs_survey(Part::Subvolume(258), vec![Part::Directory]);
        for (survey, path) in [(old_layer, "/s/nodes/n1"), (old_volume, "/s/volumes/n1/v0")] {
            let plan = plan(Some(1 << 30), &survey);
            assert!(plan.steps.is_empty(), "{plan:?}");
            let Outcome::NotEnforced(reason) = plan.outcome else {
                panic!("enforced over {path}");
            };
            assert!(
                reason.starts_with(&format!("{path} made before disk limits")),
                "{reason}"
            );
        }
        // Before the first start, on btrfs: everything will be made as subvolumes.
        assert_eq!(
            plan(
                Some(1 << 30),
                &btrfs_survey(Part::Missing, vec![Part::Missing])
            ),
            Plan {
                steps: vec![],
                outcome: Outcome::Enforced
            }
        );
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_round_trips(level in 0u16.., id in 0u64..1 << 48, text in "\\PC{0,12}") {
            let _ = QgroupId::parse(&text);
            let group = QgroupId { level, id };
            prop_assert_eq!(QgroupId::parse(&group.to_string()), Ok(group));
        }
    }
}
