//! The operator's wishes that outlive the daemon: which nodes were stopped by hand. Kept in
//! `state_dir/desired.json` (not the run dir: a stopped node stays stopped across reboots too).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::runtime::{remove_stale_temps, write_atomic};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DesiredState {
    /// Nodes an operator stopped; every other configured node should run.
    pub stopped: BTreeSet<String>,
    #[serde(skip)]
    path: PathBuf,
}

impl DesiredState {
    /// Reads the operator's wishes. A corrupt file (a disk that lied about a write) does not
    /// keep the daemon down: it is reported, kept aside as `desired.json.corrupt` for the
    /// operator, and every configured node is wanted, as on a fresh host.
    pub fn load(state_dir: &Path) -> std::io::Result<DesiredState> {
        let path = state_dir.join("desired.json");
        remove_stale_temps(&path);
        let mut state = match std::fs::read(&path) {
            Ok(data) => match DesiredState::decode(&data) {
                Ok(state) => state,
                Err(error) => {
                    let aside = path.with_extension("json.corrupt");
                    tracing::error!(
                        "{}: corrupt desired state ({error}); moved to {}; every configured node will run",
                        path.display(),
                        aside.display()
                    );
                    std::fs::rename(&path, &aside).map_err(|e| {
                        std::io::Error::new(
                            e.kind(),
                            format!("moving corrupt {} aside: {e}", path.display()),
                        )
                    })?;
                    DesiredState::default()
                }
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => DesiredState::default(),
            Err(error) => {
                return Err(std::io::Error::new(
                    error.kind(),
                    format!("{}: {error}", path.display()),
                ))
            }
        };
        state.path = path;
        Ok(state)
    }

    fn decode(data: &[u8]) -> Result<DesiredState, serde_json::Error> {
        serde_json::from_slice(data)
    }

    /// Persists `stopped` as the nodes an operator stopped, in one atomic write, before
    /// anything acts on it. When the write fails (a full disk) nothing changes, in memory
    /// either, so the daemon never acts on a wish it could not keep.
    pub fn record(&mut self, stopped: BTreeSet<String>) -> std::io::Result<()> {
        if stopped == self.stopped {
            return Ok(());
        }
        let wished = DesiredState {
            stopped,
            path: self.path.clone(),
        };
        let data = serde_json::to_vec_pretty(&wished).map_err(std::io::Error::other)?;
        write_atomic(&self.path, &data)?;
        *self = wished;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stopped(nodes: &[&str]) -> BTreeSet<String> {
        nodes.iter().map(|node| node.to_string()).collect()
    }

    #[test]
    fn stopped_nodes_persist() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = DesiredState::load(dir.path()).unwrap();
        assert!(state.stopped.is_empty());
        state.record(stopped(&["web1"])).unwrap();
        let reloaded = DesiredState::load(dir.path()).unwrap();
        assert_eq!(reloaded.stopped, stopped(&["web1"]));
        state.record(stopped(&[])).unwrap();
        assert!(DesiredState::load(dir.path()).unwrap().stopped.is_empty());
    }

    #[test]
    fn a_wish_that_cannot_be_written_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = DesiredState::load(&dir.path().join("gone")).unwrap();
        let error = state.record(stopped(&["web1"])).unwrap_err();
        assert!(error.to_string().contains("desired.json"), "{error}");
        assert!(state.stopped.is_empty());
    }

    #[test]
    fn a_corrupt_file_is_set_aside_and_every_node_wanted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("desired.json");
        std::fs::write(&path, b"{\"stopped\": [\"web").unwrap();
        std::fs::write(dir.path().join("desired.tmp-4000000"), b"{").unwrap();
        let mut state = DesiredState::load(dir.path()).unwrap();
        assert!(state.stopped.is_empty());
        assert!(dir.path().join("desired.json.corrupt").exists());
        assert!(!dir.path().join("desired.tmp-4000000").exists());
        state.record(stopped(&["db1"])).unwrap();
        assert_eq!(
            DesiredState::load(dir.path()).unwrap().stopped,
            stopped(&["db1"])
        );
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = DesiredState::decode(&bytes);
        }

        #[test]
        fn a_torn_file_never_keeps_the_daemon_down(
            nodes in proptest::collection::btree_set("[a-z]{1,6}[0-9]", 0..6),
            cut in 0usize..200,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let whole = serde_json::to_vec_pretty(&DesiredState { stopped: nodes.clone(), path: PathBuf::new() }).unwrap();
            std::fs::write(dir.path().join("desired.json"), &whole[..cut.min(whole.len())]).unwrap();
            let state = DesiredState::load(dir.path()).unwrap();
            if cut >= whole.len() {
                prop_assert_eq!(state.stopped, nodes);
            }
        }
    }
}
