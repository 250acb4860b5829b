//! User namespaces: each node's range of 65536 host ids, allocated once and recorded, so a
//! node's files keep their owner across restarts; the uid and gid maps; and the idmapped mounts
//! through which a node sees the image (owned by host root) as its own root's, and its role's
//! shared volumes (owned by the role's own range, `@<role>` in the record) as its own ids'.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::record::write_atomic;

pub use crate::config::ID_RANGE as RANGE;

/// The recorded allocation, `state_dir/idmaps.json`: node name to slot.
pub struct IdMaps {
    path: PathBuf,
    /// The first host id of slot 0 (`[host] id_base`).
    base: u32,
    slots: Mutex<BTreeMap<String, u32>>,
    /// User namespaces made by [`mapping_namespace`], by (range stored, range seen): the
    /// mapping between two ranges never changes, so each is made once per daemon and kept for
    /// its life (one descriptor per role and node pair that ever shared a volume).
    mappings: Mutex<BTreeMap<(u32, u32), OwnedFd>>,
}

#[derive(Serialize, Deserialize)]
struct Recorded {
    slots: BTreeMap<String, u32>,
}

impl IdMaps {
    /// Reads the recorded ranges. A file that does not decode (a torn write, a bad edit) is
    /// reported and rebuilt from the owners of the nodes' writable layers and volumes, which
    /// carry each node's root id on the host.
    pub fn load(state_dir: &Path, base: u32) -> std::io::Result<IdMaps> {
        let ranges = Ranges { base };
        let path = state_dir.join("idmaps.json");
        let slots = match std::fs::read(&path) {
            Ok(data) => match decode(&data, ranges) {
                Ok(slots) => slots,
                Err(error) => {
                    let slots = recover_from_owners(state_dir, ranges);
                    tracing::error!(
                        file = %path.display(),
                        %error,
                        recovered = slots.len(),
                        "unreadable id ranges: rebuilt from the owners of node layers and volumes"
                    );
                    write_atomic(&path, &encode(&slots)?)?;
                    slots
                }
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => return Err(error),
        };
        Ok(IdMaps {
            path,
            base,
            slots: Mutex::new(slots),
            mappings: Mutex::new(BTreeMap::new()),
        })
    }

    /// The slots recorded here, by owner.
    pub fn recorded(&self) -> BTreeMap<String, u32> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes the shared stack's slots: each must agree with what is recorded here (a conflict
    /// names the node and changes nothing); the new ones are recorded, so ranges allocated
    /// later never take them.
    pub fn adopt(&self, stack: &BTreeMap<String, u32>) -> Result<(), AdoptError> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        crate::stack::slots::cross_check(stack, &slots)?;
        let mut merged = slots.clone();
        merged.extend(stack.iter().map(|(owner, slot)| (owner.clone(), *slot)));
        if merged != *slots {
            write_atomic(&self.path, &encode(&merged)?).map_err(|source| AdoptError::Write {
                path: self.path.clone(),
                source,
            })?;
            *slots = merged;
        }
        Ok(())
    }

    /// A user namespace mapping the range starting at `stored` onto the one at `seen` (see
    /// [`mapping_namespace`]), made on first use.
    pub fn mapping(&self, stored: u32, seen: u32) -> std::io::Result<OwnedFd> {
        let mut mappings = self.mappings.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(namespace) = mappings.get(&(stored, seen)) {
            return namespace.try_clone();
        }
        let namespace = mapping_namespace(stored, seen)?;
        let copy = namespace.try_clone()?;
        mappings.insert((stored, seen), namespace);
        Ok(copy)
    }

    /// The first host id of `node`'s range, allocating (lowest free slot) and recording it on
    /// first use. A range is never given to another node, even after this one is removed: its
    /// volumes keep files owned by it.
    pub fn base_of(&self, node: &str) -> std::io::Result<u32> {
        let ranges = Ranges { base: self.base };
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get(node) {
            return Ok(ranges.host_base(*slot));
        }
        let slot = first_free(slots.values().copied());
        if slot >= ranges.slots() {
            return Err(std::io::Error::other(format!(
                "all {} id ranges above {} are taken (see {})",
                ranges.slots(),
                self.base,
                self.path.display()
            )));
        }
        slots.insert(node.to_string(), slot);
        let data = encode(&slots)?;
        if let Err(error) = write_atomic(&self.path, &data) {
            slots.remove(node);
            return Err(error);
        }
        Ok(ranges.host_base(slot))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("{0}")]
    Conflict(#[from] crate::stack::slots::SlotError),
    #[error("recording the stack's id slots in {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Encode(#[from] std::io::Error),
}

/// The slots above one base: slot `n` is the range starting at `base + n * RANGE`.
#[derive(Clone, Copy)]
struct Ranges {
    base: u32,
}

impl Ranges {
    /// How many ranges fit above the base in 32-bit ids (the last id, -1, is not an id).
    fn slots(self) -> u32 {
        ((u32::MAX - self.base) / RANGE) - 1
    }

    /// The slot whose range holds host id `id`.
    fn slot_of(self, id: u32) -> Option<u32> {
        let slot = id.checked_sub(self.base)? / RANGE;
        (slot < self.slots()).then_some(slot)
    }

    fn host_base(self, slot: u32) -> u32 {
        self.base + slot * RANGE
    }
}

fn decode(data: &[u8], ranges: Ranges) -> Result<BTreeMap<String, u32>, String> {
    let recorded: Recorded = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    let mut seen = std::collections::BTreeSet::new();
    for (node, slot) in &recorded.slots {
        if *slot >= ranges.slots() || !seen.insert(*slot) {
            return Err(format!(
                "node {node}: slot {slot} is out of range or given twice"
            ));
        }
    }
    Ok(recorded.slots)
}

fn encode(slots: &BTreeMap<String, u32>) -> std::io::Result<Vec<u8>> {
    let recorded = Recorded {
        slots: slots.clone(),
    };
    serde_json::to_vec_pretty(&recorded).map_err(std::io::Error::other)
}

/// Each node's slot from the host owner of `state_dir/nodes/<node>/upper` or, for a node whose
/// layer is gone, of one of its volumes (a role's shared volumes under `@<role>`). Any id of a
/// range names its slot (a volume may belong to the node's www-data or mysql); an owner whose
/// uid and gid fall in different ranges, or below the first, is skipped.
fn recover_from_owners(state_dir: &Path, ranges: Ranges) -> BTreeMap<String, u32> {
    use std::os::unix::fs::MetadataExt;
    let mut slots = BTreeMap::new();
    let owners = |dir: PathBuf, inner: &'static str| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(move |entry| {
                let node = entry.file_name().to_str()?.to_string();
                let probes: Vec<PathBuf> = if inner.is_empty() {
                    // Its volumes, not one being made (`.<name>.unfinished`, maybe host root's).
                    std::fs::read_dir(entry.path())
                        .ok()?
                        .flatten()
                        .filter(|volume| !volume.file_name().to_string_lossy().starts_with('.'))
                        .map(|volume| volume.path())
                        .collect()
                } else {
                    vec![entry.path().join(inner)]
                };
                let slot = probes.iter().find_map(|probe| {
                    let metadata = std::fs::symlink_metadata(probe).ok()?;
                    let slot = ranges.slot_of(metadata.uid())?;
                    (ranges.slot_of(metadata.gid()) == Some(slot)).then_some(slot)
                })?;
                Some((node, slot))
            })
    };
    let found =
        owners(state_dir.join("nodes"), "upper").chain(owners(state_dir.join("volumes"), ""));
    for (node, slot) in found {
        if !slots.values().any(|taken| *taken == slot) {
            slots.entry(node).or_insert(slot);
        }
    }
    slots
}

fn first_free(taken: impl Iterator<Item = u32>) -> u32 {
    let taken: std::collections::BTreeSet<u32> = taken.collect();
    (0..)
        .find(|slot| !taken.contains(slot))
        .expect("a free slot")
}

/// Writes the uid and gid maps of a freshly cloned process: root inside is `base` outside.
pub fn write_maps(pid: i32, base: u32) -> std::io::Result<()> {
    let map = format!("0 {base} {RANGE}\n");
    std::fs::write(format!("/proc/{pid}/uid_map"), &map)?;
    std::fs::write(format!("/proc/{pid}/gid_map"), &map)
}

/// Gives a host path to the node's root (`base`) without following symlinks.
pub fn give_to_node(path: &Path, base: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(base), Some(base))
}

const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x0000_0004;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// One tree to mount idmapped into a node: `source` (a host path) at `target`, its owners
/// translated by the user namespace `userns`.
pub struct IdmappedMount<'a> {
    pub source: &'a Path,
    pub target: &'a Path,
    pub userns: BorrowedFd<'a>,
    pub what: Mounted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mounted {
    /// An image: read-only (the overlay's lower layer).
    Image,
    /// Data: writable, and no set-id programs or device files take effect from it.
    Volume,
}

/// Mounts each of `mounts` inside the mount namespace of process `pid`. Runs on a thread of its
/// own that joins that mount namespace (a thread must unshare its filesystem attributes first);
/// mounts there are made private first, so nothing propagates back to the host. Sources are
/// opened there too, as host root: a node needs no access to them by path.
pub fn mount_idmapped(pid: i32, mounts: &[IdmappedMount<'_>]) -> std::io::Result<()> {
    let mntns = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> std::io::Result<()> {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
                nix::sched::setns(&mntns, nix::sched::CloneFlags::CLONE_NEWNS)?;
                nix::mount::mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                    None::<&str>,
                )?;
                for mount in mounts {
                    attach_idmapped(mount).map_err(|error| {
                        std::io::Error::new(
                            error.kind(),
                            format!(
                                "{} at {}: {error}",
                                mount.source.display(),
                                mount.target.display()
                            ),
                        )
                    })?;
                }
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("idmapped mount thread panicked")))
    })
}

/// open_tree (a detached copy), mount_setattr (the idmap), move_mount (onto the target).
fn attach_idmapped(mount: &IdmappedMount<'_>) -> std::io::Result<()> {
    let source = path_cstring(mount.source)?;
    let target = path_cstring(mount.target)?;
    // SAFETY: open_tree with a NUL-terminated path; returns a new fd or -1.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and is owned by nobody else.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let attr_set = MOUNT_ATTR_IDMAP
        | match mount.what {
            Mounted::Image => MOUNT_ATTR_RDONLY,
            Mounted::Volume => MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        };
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: mount.userns.as_raw_fd() as u64,
    };
    let empty = c"";
    // SAFETY: mount_setattr on our detached tree with a valid mount_attr of the size passed.
    let set = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if set < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: move_mount of our detached tree onto a NUL-terminated target path.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if moved < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A user namespace in which ids `inside..inside + RANGE` are host ids `outside..`: a tree
/// mounted idmapped with it shows a file stored as owned by `inside + n` as owned by
/// `outside + n`, and stores what `outside + n` creates as `inside + n`. A role's shared
/// volume keeps its files in a range of its own and each node sees them as its own ids.
///
/// The namespace is made by a forked child that unshares it and waits; its maps are written
/// from here, and the namespace outlives the child (killed at once) through the returned
/// descriptor. The child is killed rather than released through a pipe: other forks of this
/// multi-threaded daemon may hold copies of such a pipe, so its closing proves nothing. It
/// closes every descriptor but its report pipe at once and dies with the daemon, so it can
/// never hold the daemon's lock, sockets or another start's pipes.
pub fn mapping_namespace(inside: u32, outside: u32) -> std::io::Result<OwnedFd> {
    let (ready_read, ready_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let parent = nix::unistd::getpid().as_raw();
    let report = ready_write.as_raw_fd();
    // SAFETY: the child only makes raw system calls (prctl, getppid, close_range, unshare,
    // write, pause, _exit), which are async-signal-safe, so forking a multi-threaded process is
    // sound here.
    let child = match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            // SAFETY: raw syscalls on a descriptor this child owns; no allocation, no locks.
            unsafe {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                    || libc::getppid() != parent
                {
                    libc::_exit(1);
                }
                // Never live on holding the daemon's descriptors: without close_range (Linux
                // 5.9, also required by the node clone) give up; the parent reports it.
                let report = report as libc::c_uint;
                if (report > 0 && libc::syscall(libc::SYS_close_range, 0, report - 1, 0) != 0)
                    || libc::syscall(libc::SYS_close_range, report + 1, libc::c_uint::MAX, 0) != 0
                {
                    libc::_exit(1);
                }
                let errno: i32 = if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                    0
                } else {
                    *libc::__errno_location()
                };
                libc::write(
                    report as i32,
                    (&errno as *const i32).cast(),
                    std::mem::size_of::<i32>(),
                );
                loop {
                    libc::pause();
                }
            }
        }
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop(ready_write);
    let made = (|| -> std::io::Result<OwnedFd> {
        let mut errno = [0u8; 4];
        let read = nix::unistd::read(&ready_read, &mut errno)?;
        if read != errno.len() {
            return Err(std::io::Error::other(
                "the helper process ended before making a user namespace",
            ));
        }
        match i32::from_ne_bytes(errno) {
            0 => {}
            errno => {
                let error = std::io::Error::from_raw_os_error(errno);
                return Err(std::io::Error::new(
                    error.kind(),
                    format!("unshare a user namespace: {error}"),
                ));
            }
        }
        let map = format!("{inside} {outside} {RANGE}\n");
        std::fs::write(format!("/proc/{child}/uid_map"), &map)?;
        std::fs::write(format!("/proc/{child}/gid_map"), &map)?;
        Ok(std::fs::File::open(format!("/proc/{child}/ns/user"))?.into())
    })();
    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(child, None);
    made
}

fn path_cstring(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_ID_BASE as FIRST_HOST_ID;

    const DEFAULT: Ranges = Ranges {
        base: FIRST_HOST_ID,
    };

    #[test]
    fn ranges_are_allocated_once_recorded_and_never_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let maps = IdMaps::load(dir.path(), FIRST_HOST_ID).unwrap();
        let web1 = maps.base_of("web1").unwrap();
        let db1 = maps.base_of("db1").unwrap();
        assert_eq!(web1, FIRST_HOST_ID);
        assert_eq!(db1, FIRST_HOST_ID + RANGE);
        assert_eq!(maps.base_of("web1").unwrap(), web1);
        let reloaded = IdMaps::load(dir.path(), FIRST_HOST_ID).unwrap();
        assert_eq!(reloaded.base_of("db1").unwrap(), db1);
        assert_eq!(reloaded.base_of("acc1").unwrap(), FIRST_HOST_ID + 2 * RANGE);
    }

    #[test]
    fn a_corrupt_record_is_rebuilt_from_the_owners_of_node_layers() {
        let dir = tempfile::tempdir().unwrap();
        let maps = IdMaps::load(dir.path(), FIRST_HOST_ID).unwrap();
        for node in ["web1", "db1", "acc1"] {
            let base = maps.base_of(node).unwrap();
            let upper = dir.path().join("nodes").join(node).join("upper");
            std::fs::create_dir_all(&upper).unwrap();
            give_to_node(&upper, base).unwrap();
        }
        std::fs::write(
            dir.path().join("idmaps.json"),
            b"{\"slots\": {\"web1\": 0, \"db",
        )
        .unwrap();
        let recovered = IdMaps::load(dir.path(), FIRST_HOST_ID).unwrap();
        assert_eq!(recovered.base_of("db1").unwrap(), FIRST_HOST_ID + RANGE);
        assert_eq!(
            recovered.base_of("acc1").unwrap(),
            FIRST_HOST_ID + 2 * RANGE
        );
        assert_eq!(
            recovered.base_of("mail1").unwrap(),
            FIRST_HOST_ID + 3 * RANGE
        );
        // The rebuilt record was written back.
        assert!(decode(
            &std::fs::read(dir.path().join("idmaps.json")).unwrap(),
            DEFAULT
        )
        .is_ok());
    }

    #[test]
    fn volumes_owned_by_any_id_of_a_range_recover_their_slot_shared_ones_too() {
        let dir = tempfile::tempdir().unwrap();
        let maps = IdMaps::load(dir.path(), FIRST_HOST_ID).unwrap();
        let web = maps.base_of("web1").unwrap();
        let shared = maps.base_of("@web").unwrap();
        let db = maps.base_of("db1").unwrap();
        // No layers left: only volumes, owned by www-data (33) and mysql (101) of their ranges.
        for (owner, name, base, id) in [
            ("web1", "cache", web, 33),
            ("@web", "media", shared, 33),
            ("db1", "mysql", db, 101),
        ] {
            let volume = dir.path().join("volumes").join(owner).join(name);
            std::fs::create_dir_all(&volume).unwrap();
            std::os::unix::fs::lchown(&volume, Some(base + id), Some(base + id)).unwrap();
        }
        // A volume being made (host root's) and one of another owner do not hide db1's slot.
        let unfinished = dir.path().join("volumes/db1/.cache.unfinished");
        std::fs::create_dir_all(&unfinished).unwrap();
        let unowned = dir.path().join("volumes/db1/aaa");
        std::fs::create_dir_all(&unowned).unwrap();
        // An owner whose uid and gid disagree names no slot.
        let odd = dir.path().join("volumes/odd1/data");
        std::fs::create_dir_all(&odd).unwrap();
        std::os::unix::fs::lchown(&odd, Some(web + 1), Some(db + 1)).unwrap();
        std::fs::write(dir.path().join("idmaps.json"), b"garbage").unwrap();

        let recovered = IdMaps::load(dir.path(), FIRST_HOST_ID).unwrap();
        assert_eq!(recovered.base_of("web1").unwrap(), web);
        assert_eq!(recovered.base_of("@web").unwrap(), shared);
        assert_eq!(recovered.base_of("db1").unwrap(), db);
        let odd = recovered.base_of("odd1").unwrap();
        assert!(![web, shared, db].contains(&odd), "odd1 got a taken range");
    }

    #[test]
    fn a_mapping_namespace_maps_one_range_onto_another_and_leaves_no_process() {
        let (stored, seen) = (FIRST_HOST_ID + RANGE, FIRST_HOST_ID);
        let namespace = mapping_namespace(stored, seen).unwrap();
        // A file stored with the first range, seen through an idmapped mount in a process's
        // own mount namespace (so nothing is mounted on the host).
        let dir = tempfile::tempdir().unwrap();
        let (source, target) = (dir.path().join("source"), dir.path().join("target"));
        std::fs::create_dir_all(&source).unwrap();
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(source.join("file"), "x").unwrap();
        std::os::unix::fs::lchown(source.join("file"), Some(stored + 33), Some(stored + 34))
            .unwrap();
        let mut holder = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sleep", "30"])
            .spawn()
            .unwrap();
        let pid = holder.id() as i32;
        let ours = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok() == Some(ours.clone()) {
            assert!(
                std::time::Instant::now() < deadline,
                "unshare did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mounted = mount_idmapped(
            pid,
            &[IdmappedMount {
                source: &source,
                target: &target,
                userns: std::os::fd::AsFd::as_fd(&namespace),
                what: Mounted::Volume,
            }],
        );
        let seen_owner = std::fs::metadata(format!("/proc/{pid}/root{}/file", target.display()))
            .map(|m| {
                (
                    std::os::unix::fs::MetadataExt::uid(&m),
                    std::os::unix::fs::MetadataExt::gid(&m),
                )
            });
        let _ = holder.kill();
        let _ = holder.wait();
        mounted.unwrap();
        assert_eq!(seen_owner.unwrap(), (seen + 33, seen + 34));
        assert!(!target.join("file").exists(), "the mount reached the host");

        // The helper is gone and reaped: no child of this process is left.
        let children = std::fs::read_to_string(format!(
            "/proc/self/task/{}/children",
            nix::unistd::gettid()
        ))
        .unwrap_or_default();
        assert_eq!(children.trim(), "");
    }

    #[test]
    fn slots_out_of_range_or_shared_are_refused() {
        assert!(decode(br#"{"slots": {"a": 4000000000}}"#, DEFAULT).is_err());
        assert!(decode(br#"{"slots": {"a": 1, "b": 1}}"#, DEFAULT).is_err());
        assert_eq!(decode(br#"{"slots": {"a": 1}}"#, DEFAULT).unwrap()["a"], 1);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_fail_without_panicking(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode(&data, DEFAULT);
        }
    }

    #[test]
    fn ranges_start_at_the_configured_base() {
        let dir = tempfile::tempdir().unwrap();
        let base = 1 << 24;
        let maps = IdMaps::load(dir.path(), base).unwrap();
        assert_eq!(maps.base_of("web1").unwrap(), base);
        assert_eq!(maps.base_of("db1").unwrap(), base + RANGE);
        let ranges = Ranges { base };
        assert_eq!(ranges.slot_of(base + RANGE + 33), Some(1));
        assert_eq!(ranges.slot_of(FIRST_HOST_ID), None, "below the base");
        assert_eq!(ranges.slots(), (u32::MAX - base) / RANGE - 1);
    }

    #[test]
    fn the_lowest_free_slot_is_taken() {
        assert_eq!(first_free([0, 1, 3].into_iter()), 2);
        assert_eq!(first_free(std::iter::empty()), 0);
    }
}
