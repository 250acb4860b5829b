//! `run_dir/nodes/<node>/state.json`: what re-adopting a running node needs. Written atomically
//! (temp file, fsync, rename, fsync of the directory) so a crash or power cut leaves the old
//! record or the new one, never a torn one; a record torn anyway (a disk that lied) fails to
//! decode, and the daemon then cleans the node up and starts it again from its configuration.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::NodeSpec;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    /// Host pid of the node's init.
    pub pid: i32,
    /// The init's start time in clock ticks since boot (/proc/<pid>/stat field 22): tells a
    /// recycled pid from the init.
    pub start_ticks: u64,
    /// Unix time the node started.
    pub started_at: u64,
    /// The definition the node runs with, so `reload` can tell what changed.
    pub spec: NodeSpec,
    /// Times the agent restarted this node after its init died.
    pub restarts: u32,
    /// The first host id of the node's user namespace; `None` for a privileged node.
    #[serde(default)]
    pub id_base: Option<u32>,
    /// The node's btrfs quota group (its disk limit and usage), when it has one.
    #[serde(default)]
    pub disk_quota: Option<super::quota::NodeQuota>,
}

/// Replaces `path` with `data` so that a crash at any instant leaves the old or the new file:
/// a temp file beside it is written and fsynced, renamed over it, and the directory fsynced so
/// the rename itself survives a power cut. On failure (a full disk) the old file is untouched
/// and the temp file removed; the error names `path`.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_atomic_mode(path, data, 0o666)
}

/// [`write_atomic`] of a file made with `mode` (less the umask) from its first byte: a key
/// written 0600 is never readable by others, not even as the temp file.
pub fn write_atomic_mode(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let temp = temp_path(path, std::process::id());
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    result.map_err(|error: std::io::Error| {
        let _ = std::fs::remove_file(&temp);
        std::io::Error::new(error.kind(), format!("writing {}: {error}", path.display()))
    })
}

/// `<stem>.tmp-<pid>`: where [`write_atomic`] of process `pid` writes before the rename.
fn temp_path(path: &Path, pid: u32) -> std::path::PathBuf {
    path.with_extension(format!("tmp-{pid}"))
}

/// Removes the temp files a crashed [`write_atomic`] of `path` left beside it.
pub fn remove_stale_temps(path: &Path) {
    let (Some(dir), Some(stem)) = (path.parent(), path.file_stem()) else {
        return;
    };
    let prefix = format!("{}.tmp-", stem.to_string_lossy());
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let pid = name
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| pid != std::process::id()) {
            tracing::info!("removing {}, left by a crash", entry.path().display());
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl NodeRecord {
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let data = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomic(path, &data)
    }

    /// Reads a record; a missing file is `NotFound`, a torn or corrupt one `InvalidData`
    /// naming the file.
    pub fn load(path: &Path) -> std::io::Result<NodeRecord> {
        let data = std::fs::read(path)?;
        NodeRecord::decode(&data).map_err(|error| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: corrupt node state: {error}", path.display()),
            )
        })
    }

    pub fn decode(data: &[u8]) -> Result<NodeRecord, serde_json::Error> {
        serde_json::from_slice(data)
    }
}

/// Start time of a process in clock ticks since boot, or `None` if it does not exist.
pub fn process_start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

/// Field 22 of /proc/<pid>/stat; the command name (field 2) may contain spaces and parentheses,
/// so fields are counted after its closing parenthesis.
pub fn parse_start_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// The records under `nodes_run_dir` (`run_dir/nodes`) whose init is alive, sorted by node:
/// what runs on this host, known without asking the daemon.
pub fn live_records(nodes_run_dir: &Path) -> Vec<NodeRecord> {
    let mut records: Vec<NodeRecord> = std::fs::read_dir(nodes_run_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| NodeRecord::load(&entry.path().join("state.json")).ok())
        .filter(|record| process_start_ticks(record.pid) == Some(record.start_ticks))
        .collect();
    records.sort_by(|a, b| a.name.cmp(&b.name));
    records
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn start_ticks_survive_odd_command_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 10";
        assert_eq!(parse_start_ticks(stat), Some(123456));
    }

    #[test]
    fn own_start_ticks_are_readable() {
        assert!(process_start_ticks(std::process::id() as i32).is_some());
    }

    #[test]
    fn atomic_write_replaces_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    fn sample_record() -> NodeRecord {
        let config = crate::config::load(None).unwrap();
        NodeRecord {
            name: "web1".into(),
            pid: 4242,
            start_ticks: 123_456,
            started_at: 1_700_000_000,
            spec: config.nodes["web1"].clone(),
            restarts: 3,
            id_base: Some(1 << 20),
            disk_quota: None,
        }
    }

    #[test]
    fn a_torn_record_is_invalid_data_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let record = sample_record();
        record.save(&path).unwrap();
        assert_eq!(NodeRecord::load(&path).unwrap(), record);
        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
        let error = NodeRecord::load(&path).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        assert!(
            error.to_string().contains(path.to_str().unwrap()),
            "{error}"
        );
        let missing = NodeRecord::load(&dir.path().join("none.json")).unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn a_failed_atomic_write_keeps_the_old_file_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"old").unwrap();
        // A directory where the temp file would go makes the write fail like a full disk.
        std::fs::create_dir(temp_path(&path, std::process::id())).unwrap();
        let error = write_atomic(&path, b"new").unwrap_err();
        assert!(
            error.to_string().contains(path.to_str().unwrap()),
            "{error}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }

    #[test]
    fn stale_temps_of_other_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let stale = temp_path(&path, 4_000_000);
        let unrelated = dir.path().join("state.tmp-notapid");
        std::fs::write(&stale, b"{").unwrap();
        std::fs::write(&unrelated, b"").unwrap();
        remove_stale_temps(&path);
        assert!(!stale.exists());
        assert!(unrelated.exists());
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_stat_never_panics(text in "\\PC{0,200}") {
            let _ = parse_start_ticks(&text);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = NodeRecord::decode(&bytes);
        }

        /// A record cut short anywhere (a torn write) is refused, never read as another record.
        #[test]
        fn a_truncated_record_is_refused(cut in 0usize..4096) {
            let record = sample_record();
            let whole = serde_json::to_vec_pretty(&record).unwrap();
            match NodeRecord::decode(&whole[..cut.min(whole.len())]) {
                Ok(decoded) => prop_assert_eq!(decoded, record),
                Err(_) => prop_assert!(cut < whole.len()),
            }
        }

        /// One flipped byte either breaks the record or changes only what it says; never a panic.
        #[test]
        fn a_corrupted_record_never_panics(at in 0usize..4096, byte in any::<u8>()) {
            let mut whole = serde_json::to_vec_pretty(&sample_record()).unwrap();
            let at = at % whole.len();
            whole[at] = byte;
            let _ = NodeRecord::decode(&whole);
        }
    }
}
