//! The image store: read-only root filesystems that nodes use as their overlay lower layer.
//!
//! An image lives at `<state_dir>/images/<name>/<digest>/rootfs`, where the digest names the
//! recipe's inputs, so identical inputs are never rebuilt and changed ones never overwrite an
//! image a running node still uses. A build fills `<name>/.tmp-<digest>-<pid>` and renames it into
//! place only once complete, so a crash leaves a partial directory that
//! [`ImageStore::sweep_partial`] removes, never a half-made image.

mod busybox;
mod elf;

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

pub use busybox::HOST_BUSYBOX;
pub use elf::ElfError;

use busybox::{Fingerprint, Recipe};

/// Images the store can build by itself, without a recipe file.
pub const BUILT_IN: &[&str] = &[busybox::NAME];

/// The file written last into a build, holding the full digest; an image directory without it is
/// not an image.
const COMPLETE_MARKER: &str = "complete";
/// Prefix of the directories builds fill before renaming them into place.
const PARTIAL_PREFIX: &str = ".tmp-";
/// Hex digits of the digest used as the directory name: plenty to tell a host's images apart.
const SHORT_DIGEST: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image `{name}` does not exist; built-in images: {}", BUILT_IN.join(", "))]
    NotFound { name: String },
    #[error("image name `{name}` is not valid: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error(
        "image `busybox` needs a static busybox at {}: {source}; install it with \
         `apt-get install busybox-static`",
        .path.display()
    )]
    BusyboxUnreadable { path: PathBuf, source: io::Error },
    #[error(
        "image `busybox` needs a static busybox, but {} is dynamically linked (interpreter {}); \
         install a static one with `apt-get install busybox-static`",
        .path.display(),
        .interpreter.display()
    )]
    BusyboxDynamic { path: PathBuf, interpreter: PathBuf },
    #[error(
        "image `busybox` needs a static busybox, but {} is not a usable ELF binary: {source}; \
         install one with `apt-get install busybox-static`",
        .path.display()
    )]
    BusyboxNotElf { path: PathBuf, source: ElfError },
    #[error("image `busybox`: `{} --list-full` failed: {reason}", .path.display())]
    Applets { path: PathBuf, reason: String },
    #[error("image `{name}`: cannot {action} {}: {source}", .path.display())]
    Io {
        name: String,
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("image store: cannot read {}: {source}", .path.display())]
    Store { path: PathBuf, source: io::Error },
}

/// The host's image store; cheap to ask for a built image, and safe to share between threads.
pub struct ImageStore {
    root: PathBuf,
    busybox: PathBuf,
    /// The digest of the busybox recipe, with the binary's fingerprint it was computed for, so
    /// node starts do not rehash the binary.
    busybox_digest: Mutex<Option<(Fingerprint, String)>>,
    /// Held while building or sweeping, so this process never sweeps its own build in progress
    /// nor runs two builds into the same partial directory.
    build_lock: Mutex<()>,
}

impl ImageStore {
    pub fn new(state_dir: &Path) -> Self {
        Self::with_busybox(state_dir, Path::new(HOST_BUSYBOX))
    }

    /// A store whose built-in `busybox` image copies `busybox` instead of the host's
    /// `/bin/busybox`.
    pub fn with_busybox(state_dir: &Path, busybox: &Path) -> Self {
        Self {
            root: state_dir.join("images"),
            busybox: busybox.to_path_buf(),
            busybox_digest: Mutex::new(None),
            build_lock: Mutex::new(()),
        }
    }

    /// The rootfs of an image by name, building the built-in `busybox` on first use.
    pub fn rootfs(&self, name: &str) -> Result<PathBuf, ImageError> {
        check_name(name)?;
        if name == busybox::NAME {
            return self.busybox_rootfs();
        }
        self.newest_built(name)?
            .ok_or_else(|| ImageError::NotFound {
                name: name.to_owned(),
            })
    }

    /// Whether `name` is an image this store knows (built-in or already built) without building
    /// it, so config validation stays cheap and side-effect free.
    pub fn knows(&self, name: &str) -> bool {
        check_name(name).is_ok()
            && (BUILT_IN.contains(&name) || matches!(self.newest_built(name), Ok(Some(_))))
    }

    /// Removes the partial directories of builds that died, leaving those of live processes.
    pub fn sweep_partial(&self) -> Result<(), ImageError> {
        let _building = self
            .build_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let store_error = |source| ImageError::Store {
            path: self.root.clone(),
            source,
        };
        let images = match fs::read_dir(&self.root) {
            Ok(images) => images,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(store_error(e)),
        };
        for image in images {
            let image = image.map_err(store_error)?;
            let name = image.file_name().to_string_lossy().into_owned();
            if !image.file_type().map_err(store_error)?.is_dir() {
                continue;
            }
            let dir_error = |action, path: &Path| {
                let name = name.clone();
                let path = path.to_path_buf();
                move |source| ImageError::Io {
                    name,
                    action,
                    path,
                    source,
                }
            };
            let entries = fs::read_dir(image.path()).map_err(dir_error("read", &image.path()))?;
            for entry in entries {
                let entry = entry.map_err(dir_error("read", &image.path()))?;
                let Some(owner) = partial_owner(&entry.file_name()) else {
                    continue;
                };
                if owner.is_some_and(|pid| pid != std::process::id() && process_alive(pid)) {
                    continue;
                }
                let path = entry.path();
                tracing::info!(image = %name, path = %path.display(), "removing partial image build");
                fs::remove_dir_all(&path).map_err(dir_error("remove partial build", &path))?;
            }
        }
        Ok(())
    }

    /// The hot path of node start: one stat of the host binary and one of the completion marker
    /// once the digest is cached.
    fn busybox_rootfs(&self) -> Result<PathBuf, ImageError> {
        let fingerprint = Fingerprint::of(&self.busybox)?;
        if let Some(digest) = self.cached_busybox_digest(fingerprint) {
            if let Some(rootfs) = self.completed(busybox::NAME, &digest) {
                return Ok(rootfs);
            }
        }
        let _building = self
            .build_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let recipe = Recipe::load(&self.busybox)?;
        let digest = recipe.digest();
        *self
            .busybox_digest
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((fingerprint, digest.clone()));
        match self.completed(busybox::NAME, &digest) {
            Some(rootfs) => Ok(rootfs),
            None => self.build(busybox::NAME, &digest, |rootfs| recipe.assemble(rootfs)),
        }
    }

    fn cached_busybox_digest(&self, fingerprint: Fingerprint) -> Option<String> {
        let cached = self
            .busybox_digest
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        cached
            .as_ref()
            .filter(|(seen, _)| *seen == fingerprint)
            .map(|(_, digest)| digest.clone())
    }

    /// The rootfs of a finished build of `name` with `digest`, if there is one.
    fn completed(&self, name: &str, digest: &str) -> Option<PathBuf> {
        let dir = self.root.join(name).join(short(digest));
        dir.join(COMPLETE_MARKER)
            .exists()
            .then(|| dir.join("rootfs"))
    }

    /// The most recently finished build of `name`, for images the store did not build itself.
    fn newest_built(&self, name: &str) -> Result<Option<PathBuf>, ImageError> {
        let image_dir = self.root.join(name);
        let read_error = |source| ImageError::Io {
            name: name.to_owned(),
            action: "read",
            path: image_dir.clone(),
            source,
        };
        let entries = match fs::read_dir(&image_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_error(e)),
        };
        let mut newest = None;
        for entry in entries {
            let entry = entry.map_err(read_error)?;
            if entry.file_name().as_encoded_bytes().starts_with(b".") {
                continue;
            }
            let dir = entry.path();
            let Ok(finished) = fs::metadata(dir.join(COMPLETE_MARKER)).and_then(|m| m.modified())
            else {
                continue;
            };
            if newest.as_ref().is_none_or(|(time, _)| finished > *time) {
                newest = Some((finished, dir.join("rootfs")));
            }
        }
        Ok(newest.map(|(_, rootfs)| rootfs))
    }

    /// Runs `assemble` on an empty rootfs in a partial directory and renames it into place,
    /// removing the partial directory if anything fails. Callers hold `build_lock`.
    fn build(
        &self,
        name: &str,
        digest: &str,
        assemble: impl FnOnce(&Path) -> Result<(), ImageError>,
    ) -> Result<PathBuf, ImageError> {
        let image_dir = self.root.join(name);
        let partial = image_dir.join(format!(
            "{PARTIAL_PREFIX}{}-{}",
            short(digest),
            std::process::id()
        ));
        let outcome = self.fill_and_publish(name, digest, &image_dir, &partial, assemble);
        if outcome.is_err() {
            if let Err(e) = fs::remove_dir_all(&partial) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(image = name, path = %partial.display(), error = %e,
                        "cannot remove failed image build; sweep_partial will retry");
                }
            }
        }
        outcome
    }

    fn fill_and_publish(
        &self,
        name: &str,
        digest: &str,
        image_dir: &Path,
        partial: &Path,
        assemble: impl FnOnce(&Path) -> Result<(), ImageError>,
    ) -> Result<PathBuf, ImageError> {
        let io_error = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| ImageError::Io {
                name: name.to_owned(),
                action,
                path,
                source,
            }
        };
        fs::create_dir_all(image_dir).map_err(io_error("create", image_dir))?;
        // Left by an earlier build of this process that could not clean up; never in progress,
        // since the caller holds the build lock.
        match fs::remove_dir_all(partial) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_error("remove stale partial build", partial)(e))
            }
            _ => {}
        }
        fs::create_dir(partial).map_err(io_error("create", partial))?;
        let rootfs = partial.join("rootfs");
        fs::create_dir(&rootfs).map_err(io_error("create", &rootfs))?;
        assemble(&rootfs)?;
        let marker = partial.join(COMPLETE_MARKER);
        fs::write(&marker, format!("{digest}\n")).map_err(io_error("write", &marker))?;
        // One syncfs instead of an fsync per file: the image must be on disk before its name is.
        let partial_dir = File::open(partial).map_err(io_error("open", partial))?;
        nix::unistd::syncfs(partial_dir.as_raw_fd())
            .map_err(|e| io_error("sync", partial)(e.into()))?;
        let done = image_dir.join(short(digest));
        if let Err(e) = fs::rename(partial, &done) {
            // Another process finished the same image first; its copy is as good as ours.
            if done.join(COMPLETE_MARKER).exists() {
                fs::remove_dir_all(partial).map_err(io_error("remove", partial))?;
                return Ok(done.join("rootfs"));
            }
            return Err(io_error("rename into place", &done)(e));
        }
        File::open(image_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error("sync", image_dir))?;
        tracing::info!(image = name, path = %done.display(), "built image");
        Ok(done.join("rootfs"))
    }
}

/// Image names become directory names, so only plain lowercase names are allowed.
fn check_name(name: &str) -> Result<(), ImageError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        Some("it must start with a lowercase letter or a digit")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
    {
        Some("it may hold only lowercase letters, digits, `-`, `_` and `.`")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ImageError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn short(digest: &str) -> &str {
    &digest[..SHORT_DIGEST.min(digest.len())]
}

/// For a partial build's directory name, the pid that made it (`None` if unreadable); `None`
/// overall for anything that is not a partial build.
fn partial_owner(file_name: &OsStr) -> Option<Option<u32>> {
    let rest = file_name.to_str()?.strip_prefix(PARTIAL_PREFIX)?;
    Some(rest.rsplit_once('-').and_then(|(_, pid)| pid.parse().ok()))
}

fn process_alive(pid: u32) -> bool {
    match i32::try_from(pid) {
        Ok(pid) if pid > 0 => !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn partial_dirs(image_dir: &Path) -> Vec<PathBuf> {
        match fs::read_dir(image_dir) {
            Ok(entries) => entries
                .map(|e| e.unwrap())
                .filter(|e| partial_owner(&e.file_name()).is_some())
                .map(|e| e.path())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    #[test]
    fn builds_busybox_with_applets_and_accounts() {
        let state = tempfile::tempdir().unwrap();
        let store = ImageStore::new(state.path());
        let rootfs = store.rootfs("busybox").unwrap();

        let digest_dir = rootfs.parent().unwrap();
        assert_eq!(
            digest_dir.parent().unwrap(),
            state.path().join("images/busybox")
        );
        assert_eq!(digest_dir.file_name().unwrap().len(), SHORT_DIGEST);
        let marker = fs::read_to_string(digest_dir.join(COMPLETE_MARKER)).unwrap();
        assert!(marker.starts_with(digest_dir.file_name().unwrap().to_str().unwrap()));

        let binary = fs::metadata(rootfs.join("bin/busybox")).unwrap();
        assert_eq!(binary.mode() & 0o7777, 0o755);
        assert_eq!(binary.len(), fs::metadata(HOST_BUSYBOX).unwrap().len());
        for applet in [
            "bin/sh",
            "bin/ls",
            "usr/bin/wget",
            "sbin/ifconfig",
            "usr/sbin/httpd",
        ] {
            let target = fs::read_link(rootfs.join(applet)).unwrap();
            assert_eq!(target, Path::new("/bin/busybox"), "{applet}");
        }
        assert!(fs::symlink_metadata(rootfs.join("bin/busybox"))
            .unwrap()
            .is_file());

        for (dir, mode) in [
            ("proc", 0o555),
            ("sys", 0o555),
            ("dev", 0o755),
            ("tmp", 0o1777),
            ("run", 0o755),
            ("root", 0o700),
            ("var/log", 0o755),
            ("var/www", 0o755),
            ("home", 0o755),
            ("usr/sbin", 0o755),
        ] {
            let meta = fs::metadata(rootfs.join(dir)).unwrap();
            assert!(meta.is_dir(), "{dir}");
            assert_eq!(meta.mode() & 0o7777, mode, "{dir}");
        }

        let passwd = fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
        assert!(passwd.starts_with("root:x:0:0:root:/root:/bin/sh\n"));
        assert!(passwd.contains("\nwww-data:x:33:33:"));
        assert!(passwd.contains("\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"));
        let group = fs::read_to_string(rootfs.join("etc/group")).unwrap();
        assert_eq!(group, "root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n");
        let hosts = fs::read_to_string(rootfs.join("etc/hosts")).unwrap();
        assert_eq!(hosts, "127.0.0.1 localhost\n::1 localhost\n");
        assert_eq!(fs::read(rootfs.join("etc/hostname")).unwrap(), b"");
        let resolv = fs::read_to_string(rootfs.join("etc/resolv.conf")).unwrap();
        assert!(
            resolv.lines().all(|l| l.starts_with("nameserver ")),
            "{resolv}"
        );
        assert!(!fs::read_to_string(rootfs.join("var/www/index.html"))
            .unwrap()
            .is_empty());

        let owner = nix::unistd::geteuid().as_raw();
        for entry in ["bin/busybox", "bin/sh", "etc/passwd", "root", "tmp"] {
            let meta = fs::symlink_metadata(rootfs.join(entry)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (owner, owner), "{entry}");
        }
        assert!(partial_dirs(&state.path().join("images/busybox")).is_empty());
    }

    #[test]
    fn second_request_reuses_the_built_image() {
        let state = tempfile::tempdir().unwrap();
        let store = ImageStore::new(state.path());
        let first = store.rootfs("busybox").unwrap();
        let before = fs::metadata(first.parent().unwrap()).unwrap();
        let marker = fs::metadata(first.parent().unwrap().join(COMPLETE_MARKER)).unwrap();

        assert_eq!(store.rootfs("busybox").unwrap(), first);
        // A fresh store (a restarted daemon) hashes again but finds the same image.
        assert_eq!(
            ImageStore::new(state.path()).rootfs("busybox").unwrap(),
            first
        );

        let after = fs::metadata(first.parent().unwrap()).unwrap();
        assert_eq!(
            (after.ino(), after.mtime_nsec()),
            (before.ino(), before.mtime_nsec())
        );
        let marker_after = fs::metadata(first.parent().unwrap().join(COMPLETE_MARKER)).unwrap();
        assert_eq!(marker_after.ino(), marker.ino());
        let images: Vec<_> = fs::read_dir(state.path().join("images/busybox"))
            .unwrap()
            .collect();
        assert_eq!(images.len(), 1);
    }

    #[test]
    fn changed_busybox_gives_a_new_image() {
        let state = tempfile::tempdir().unwrap();
        let busybox = state.path().join("busybox");
        fs::copy(HOST_BUSYBOX, &busybox).unwrap();
        let store = ImageStore::with_busybox(state.path(), &busybox);
        let first = store.rootfs("busybox").unwrap();

        let mut bytes = fs::read(&busybox).unwrap();
        bytes.extend_from_slice(b"\0upgrade");
        fs::write(&busybox, bytes).unwrap();
        let second = store.rootfs("busybox").unwrap();

        assert_ne!(first, second);
        assert!(first.exists(), "a node may still run from the old image");
        assert_eq!(
            fs::read(second.join("bin/busybox")).unwrap(),
            fs::read(&busybox).unwrap()
        );
    }

    #[test]
    fn missing_busybox_names_the_path_and_the_package() {
        let state = tempfile::tempdir().unwrap();
        let missing = state.path().join("no-busybox");
        let store = ImageStore::with_busybox(state.path(), &missing);
        let message = store.rootfs("busybox").unwrap_err().to_string();
        assert!(message.contains(missing.to_str().unwrap()), "{message}");
        assert!(
            message.contains("apt-get install busybox-static"),
            "{message}"
        );
        assert!(partial_dirs(&state.path().join("images/busybox")).is_empty());
        assert!(store.knows("busybox"));
    }

    #[test]
    fn dynamic_busybox_is_refused() {
        let state = tempfile::tempdir().unwrap();
        let store = ImageStore::with_busybox(state.path(), Path::new("/bin/ls"));
        let err = store.rootfs("busybox").unwrap_err();
        assert!(matches!(err, ImageError::BusyboxDynamic { .. }), "{err}");
        assert!(err.to_string().contains("/bin/ls"));
    }

    #[test]
    fn failed_build_leaves_no_partial_directory() {
        let state = tempfile::tempdir().unwrap();
        let store = ImageStore::new(state.path());
        let digest = "0123456789abcdef0123456789abcdef";
        let err = store
            .build("broken", digest, |rootfs| {
                fs::create_dir(rootfs.join("etc")).unwrap();
                fs::write(rootfs.join("etc/half-written"), b"x").unwrap();
                Err(ImageError::Io {
                    name: "broken".to_owned(),
                    action: "write",
                    path: rootfs.join("etc/passwd"),
                    source: io::Error::from(io::ErrorKind::StorageFull),
                })
            })
            .unwrap_err();
        assert!(err.to_string().contains("etc/passwd"), "{err}");
        let image_dir = state.path().join("images/broken");
        assert_eq!(fs::read_dir(&image_dir).unwrap().count(), 0);
        assert!(!store.knows("broken"));
    }

    #[test]
    fn sweep_removes_partial_builds_of_dead_processes_only() {
        let state = tempfile::tempdir().unwrap();
        let store = ImageStore::new(state.path());
        let image_dir = state.path().join("images/busybox");
        let ours = image_dir.join(format!(".tmp-00-{}", std::process::id()));
        let dead = image_dir.join(format!(".tmp-00-{}", i32::MAX));
        let unreadable = image_dir.join(".tmp-garbage");
        let live = image_dir.join(".tmp-00-1");
        let image = image_dir.join("0123456789abcdef/rootfs");
        for dir in [&ours, &dead, &unreadable, &live, &image] {
            fs::create_dir_all(dir.join("etc")).unwrap();
        }

        store.sweep_partial().unwrap();

        assert!(!ours.exists() && !dead.exists() && !unreadable.exists());
        assert!(
            live.exists(),
            "pid 1 is alive, so its build may be in progress"
        );
        assert!(image.exists());
    }

    #[test]
    fn sweep_of_an_empty_store_is_fine() {
        let state = tempfile::tempdir().unwrap();
        ImageStore::new(state.path()).sweep_partial().unwrap();
    }

    #[test]
    fn unknown_and_invalid_names() {
        let state = tempfile::tempdir().unwrap();
        let store = ImageStore::new(state.path());
        assert!(store.knows("busybox"));
        assert!(!store.knows("debian"));
        assert_eq!(
            store.rootfs("debian").unwrap_err().to_string(),
            "image `debian` does not exist; built-in images: busybox"
        );
        for bad in ["", "../busybox", ".tmp-x", "Busybox", "a/b"] {
            assert!(!store.knows(bad), "{bad}");
            let err = store.rootfs(bad).unwrap_err();
            assert!(
                matches!(err, ImageError::InvalidName { .. }),
                "{bad}: {err}"
            );
        }
        assert!(
            !state.path().join("images").exists(),
            "asking builds nothing"
        );
    }

    #[test]
    fn images_built_elsewhere_are_known_by_their_newest_build() {
        let state = tempfile::tempdir().unwrap();
        let store = ImageStore::new(state.path());
        let older = store.build("web", &"a".repeat(64), |_| Ok(())).unwrap();
        let newer = store.build("web", &"b".repeat(64), |_| Ok(())).unwrap();
        let old_marker = older.parent().unwrap().join(COMPLETE_MARKER);
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        File::options()
            .write(true)
            .open(&old_marker)
            .unwrap()
            .set_modified(past)
            .unwrap();

        assert!(store.knows("web"));
        assert_eq!(store.rootfs("web").unwrap(), newer);
    }
}
