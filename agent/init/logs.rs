//! Process output, appended to `log_dir/<node>/<process>.log` and rotated by size.
//!
//! The init holds the node's log directory open (inherited fd) so it can keep writing after
//! pivot_root has taken the host's filesystem out of its sight.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::Mode;

/// A log file is rotated to `<name>.log.1` once it grows past this size.
pub const ROTATE_AT: u64 = 10 << 20;

pub struct LogFile {
    dir: OwnedFd,
    name: String,
    file: Option<File>,
    size: u64,
    rotate_at: u64,
}

impl LogFile {
    pub fn new(dir: OwnedFd, name: &str, rotate_at: u64) -> Self {
        LogFile {
            dir,
            name: format!("{name}.log"),
            file: None,
            size: 0,
            rotate_at,
        }
    }

    /// Appends `data`; a write error is swallowed, since losing log lines must never stop the node.
    pub fn append(&mut self, data: &[u8]) {
        if self.size >= self.rotate_at {
            self.rotate();
        }
        if self.file.is_none() {
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
            Some(self.dir.as_raw_fd()),
            self.name.as_str(),
            OFlag::O_WRONLY
                | OFlag::O_APPEND
                | OFlag::O_CREAT
                | OFlag::O_CLOEXEC
                | OFlag::O_NOFOLLOW,
            Mode::from_bits_truncate(0o640),
        )
        .ok()?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Some(file)
    }

    fn rotate(&mut self) {
        self.file = None;
        let dir = self.dir.as_raw_fd();
        let rotated = format!("{}.1", self.name);
        let _ = renameat(Some(dir), self.name.as_str(), Some(dir), rotated.as_str());
        self.size = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn appends_and_rotates_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let handle = File::open(dir.path()).unwrap();
        let mut log = LogFile::new(handle.as_fd().try_clone_to_owned().unwrap(), "httpd", 10);
        log.append(b"0123456789");
        log.append(b"abc");
        let current = std::fs::read(dir.path().join("httpd.log")).unwrap();
        let rotated = std::fs::read(dir.path().join("httpd.log.1")).unwrap();
        assert_eq!(current, b"abc");
        assert_eq!(rotated, b"0123456789");
    }
}
