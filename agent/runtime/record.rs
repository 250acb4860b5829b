//! `run_dir/nodes/<node>/state.json`: what re-adopting a running node needs. Written atomically
//! (temp file, fsync, rename) so a crash leaves the old record or the new one, never a torn one.

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
}

pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let temp = path.with_extension(format!("tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

impl NodeRecord {
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let data = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomic(path, &data)
    }

    pub fn load(path: &Path) -> std::io::Result<NodeRecord> {
        let data = std::fs::read(path)?;
        serde_json::from_slice(&data).map_err(std::io::Error::other)
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

    proptest! {
        #[test]
        fn parsing_arbitrary_stat_never_panics(text in "\\PC{0,200}") {
            let _ = parse_start_ticks(&text);
        }
    }
}
