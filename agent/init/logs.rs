//! Process output, appended to `log_dir/<node>/<process>.log` and rotated by size.
//!
//! The init holds the node's log directory open (inherited fd) so it can keep writing after
//! pivot_root has taken the host's filesystem out of its sight. A full file becomes
//! `<process>.log.1`, the older ones shift up by one, and any beyond `keep` are removed, so a
//! node's logs never take more than about `(keep + 1) * max_size` per process.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;

use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::config::LogRotation;

pub struct LogFile {
    dir: OwnedFd,
    name: String,
    file: Option<File>,
    size: u64,
    rotation: LogRotation,
}

/// One step of a rotation; generation 0 is the current file, `n` is `<name>.log.<n>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationStep {
    Remove(u32),
    Rename { from: u32, to: u32 },
}

/// The steps that rotate the current file away, given the rotated generations that exist: remove
/// those that would end beyond `keep` (the oldest first), then shift the rest up by one, oldest
/// first so nothing is overwritten.
pub fn plan_rotation(existing: &[u32], keep: u32) -> Vec<RotationStep> {
    let mut generations: Vec<u32> = existing.iter().copied().filter(|g| *g > 0).collect();
    generations.sort_unstable();
    generations.dedup();
    let mut steps: Vec<RotationStep> = generations
        .iter()
        .rev()
        .filter(|g| **g >= keep)
        .map(|g| RotationStep::Remove(*g))
        .collect();
    let shifted = generations.iter().rev().filter(|g| **g < keep);
    steps.extend(shifted.map(|g| RotationStep::Rename {
        from: *g,
        to: g + 1,
    }));
    steps.push(if keep == 0 {
        RotationStep::Remove(0)
    } else {
        RotationStep::Rename { from: 0, to: 1 }
    });
    steps
}

/// The rotated generation `file` is of `name` ("sh.log.3" of "sh.log" is 3).
fn generation_of(name: &str, file: &str) -> Option<u32> {
    let digits = file.strip_prefix(name)?.strip_prefix('.')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl LogFile {
    pub fn new(dir: OwnedFd, name: &str, rotation: LogRotation) -> Self {
        LogFile {
            dir,
            name: format!("{name}.log"),
            file: None,
            size: 0,
            rotation,
        }
    }

    /// The daemon's rotation settings, once the handshake brought them.
    pub fn set_rotation(&mut self, rotation: LogRotation) {
        self.rotation = rotation;
    }

    /// Appends `data`; a write error is swallowed, since losing log lines must never stop the node.
    pub fn append(&mut self, data: &[u8]) {
        if self.file.is_none() {
            self.file = self.open();
        }
        if self.size >= self.rotation.max_size {
            self.rotate();
            self.file = self.open();
        }
        if let Some(file) = &mut self.file {
            if file.write_all(data).is_ok() {
                self.size += data.len() as u64;
            }
        }
    }

    fn open(&mut self) -> Option<File> {
        let fd = openat(
            &self.dir,
            self.name.as_str(),
            OFlag::O_WRONLY
                | OFlag::O_APPEND
                | OFlag::O_CREAT
                | OFlag::O_CLOEXEC
                | OFlag::O_NOFOLLOW,
            Mode::from_bits_truncate(0o640),
        )
        .ok()?;
        let file = File::from(fd);
        self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Some(file)
    }

    fn rotate(&mut self) {
        self.file = None;
        self.size = 0;
        let dir = &self.dir;
        let path = |generation: u32| match generation {
            0 => self.name.clone(),
            n => format!("{}.{n}", self.name),
        };
        for step in plan_rotation(&self.rotated_generations(), self.rotation.keep) {
            let _ = match step {
                RotationStep::Remove(generation) => {
                    unlinkat(dir, path(generation).as_str(), UnlinkatFlags::NoRemoveDir)
                }
                RotationStep::Rename { from, to } => {
                    renameat(dir, path(from).as_str(), dir, path(to).as_str())
                }
            };
        }
    }

    /// The generations of this file's rotated copies in the log directory.
    fn rotated_generations(&self) -> Vec<u32> {
        // A directory stream of its own: Dir would take the shared descriptor and its offset.
        let Ok(mut dir) = nix::dir::Dir::openat(
            &self.dir,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) else {
            return Vec::new();
        };
        dir.iter()
            .flatten()
            .filter_map(|entry| generation_of(&self.name, entry.file_name().to_str().ok()?))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    use RotationStep::{Remove, Rename};

    fn rotation(max_size: u64, keep: u32) -> LogRotation {
        LogRotation { max_size, keep }
    }

    #[test]
    fn the_first_rotation_only_renames_the_current_file() {
        assert_eq!(plan_rotation(&[], 3), [Rename { from: 0, to: 1 }]);
    }

    #[test]
    fn rotated_files_shift_oldest_first_and_the_oldest_goes() {
        assert_eq!(
            plan_rotation(&[1, 2, 3], 3),
            [
                Remove(3),
                Rename { from: 2, to: 3 },
                Rename { from: 1, to: 2 },
                Rename { from: 0, to: 1 },
            ]
        );
    }

    #[test]
    fn files_beyond_a_lowered_keep_are_removed_and_gaps_are_kept() {
        assert_eq!(
            plan_rotation(&[5, 1, 4, 3], 2),
            [
                Remove(5),
                Remove(4),
                Remove(3),
                Rename { from: 1, to: 2 },
                Rename { from: 0, to: 1 },
            ]
        );
        assert_eq!(
            plan_rotation(&[2], 4),
            [Rename { from: 2, to: 3 }, Rename { from: 0, to: 1 }]
        );
    }

    #[test]
    fn keeping_none_removes_the_full_file() {
        assert_eq!(plan_rotation(&[1], 0), [Remove(1), Remove(0)]);
    }

    #[test]
    fn only_numbered_copies_of_the_same_file_are_generations() {
        assert_eq!(generation_of("sh.log", "sh.log.12"), Some(12));
        assert_eq!(generation_of("sh.log", "sh.log"), None);
        assert_eq!(generation_of("sh.log", "sh.log."), None);
        assert_eq!(generation_of("sh.log", "sh.log.1.gz"), None);
        assert_eq!(generation_of("sh.log", "bash.log.1"), None);
        assert_eq!(generation_of("sh.log", "sh.log.+1"), None);
    }

    #[test]
    fn appends_and_rotates_by_size_keeping_a_bounded_number() {
        let dir = tempfile::tempdir().unwrap();
        let handle = File::open(dir.path()).unwrap();
        let mut log = LogFile::new(
            handle.as_fd().try_clone_to_owned().unwrap(),
            "httpd",
            rotation(10, 2),
        );
        for chunk in [
            b"0123456789",
            b"abcdefghij",
            b"ABCDEFGHIJ",
            b"klm\n\n\n\n\n\n\n",
        ] {
            log.append(chunk);
        }
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(read("httpd.log"), "klm\n\n\n\n\n\n\n");
        assert_eq!(read("httpd.log.1"), "ABCDEFGHIJ");
        assert_eq!(read("httpd.log.2"), "abcdefghij");
        assert!(!dir.path().join("httpd.log.3").exists());
    }

    #[test]
    fn a_file_left_full_by_an_earlier_init_is_rotated_before_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sh.log"), "0123456789").unwrap();
        let handle = File::open(dir.path()).unwrap();
        let mut log = LogFile::new(
            handle.as_fd().try_clone_to_owned().unwrap(),
            "sh",
            rotation(10, 1),
        );
        log.append(b"new\n");
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(read("sh.log"), "new\n");
        assert_eq!(read("sh.log.1"), "0123456789");
    }
}
