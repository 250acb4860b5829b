//! The operator's wishes that outlive the daemon: which nodes were stopped by hand. Kept in
//! `state_dir/desired.json` (not the run dir: a stopped node stays stopped across reboots too).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::runtime::write_atomic;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DesiredState {
    /// Nodes an operator stopped; every other configured node should run.
    pub stopped: BTreeSet<String>,
    #[serde(skip)]
    path: PathBuf,
}

impl DesiredState {
    pub fn load(state_dir: &Path) -> std::io::Result<DesiredState> {
        let path = state_dir.join("desired.json");
        let mut state = match std::fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => DesiredState::default(),
            Err(error) => return Err(error),
        };
        state.path = path;
        Ok(state)
    }

    pub fn wants_running(&self, node: &str) -> bool {
        !self.stopped.contains(node)
    }

    /// Records the wish for every named node and persists it, in one atomic write, before
    /// anything acts on it.
    pub fn set_running(&mut self, nodes: &[String], running: bool) -> std::io::Result<()> {
        let mut changed = false;
        for node in nodes {
            changed |= if running {
                self.stopped.remove(node)
            } else {
                self.stopped.insert(node.clone())
            };
        }
        if changed {
            let data = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
            write_atomic(&self.path, &data)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopped_nodes_persist() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = DesiredState::load(dir.path()).unwrap();
        assert!(state.wants_running("web1"));
        state.set_running(&["web1".into()], false).unwrap();
        let reloaded = DesiredState::load(dir.path()).unwrap();
        assert!(!reloaded.wants_running("web1"));
        state.set_running(&["web1".into()], true).unwrap();
        assert!(DesiredState::load(dir.path())
            .unwrap()
            .wants_running("web1"));
    }
}
