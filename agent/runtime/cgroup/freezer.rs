//! Freezing a node's whole cgroup: the v1 `freezer` controller (`freezer.state`: THAWED,
//! FREEZING, FROZEN) or v2's `cgroup.freeze` (1 or 0), whose outcome is the `frozen` line of
//! `cgroup.events`. Both are hierarchical (cgroups the node made below its own freeze with it).
//!
//! A write does not wait: the kernel marks every task of the cgroup and each one stops as it
//! next returns to user space (or, asleep, as it wakes), so the writer may be a task of the
//! frozen cgroup itself: it finishes its write and stops on the way back from it. A node's init
//! fences that way, as its last act (`init/fence.rs`). The state reads "freezing" until the
//! last task has stopped (one in uninterruptible sleep holds it there).

use std::path::{Path, PathBuf};

use super::v1::{self, Controller, Hierarchy};
use super::{CgroupError, Layout, NodeCgroup};

/// A node's cgroup as the kernel's freezer reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreezeState {
    Thawed,
    /// Asked to freeze; some task has not stopped yet.
    Freezing,
    Frozen,
}

/// The file that freezes a node's cgroup and the values that freeze and thaw it: what the init
/// is handed (as an open descriptor) to fence its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FreezeControl {
    pub path: PathBuf,
    pub freeze: &'static str,
    pub thaw: &'static str,
}

impl NodeCgroup {
    /// Where the node's cgroup is frozen; `None` on a v1 host without the freezer controller.
    pub fn freeze_control(&self) -> Option<FreezeControl> {
        self.check_names().ok()?;
        match &self.layout {
            Layout::V1(hierarchies) => v1_control(self, hierarchies),
            Layout::V2 { root } => Some(FreezeControl {
                path: self.dir_in(root).join("cgroup.freeze"),
                freeze: "1",
                thaw: "0",
            }),
        }
    }

    /// Asks the kernel to freeze every task of the node; does not wait for them to stop.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        let control = self.required_control()?;
        self.write_control(&control.path, control.freeze)
    }

    /// Lets every task of the node run again.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        let control = self.required_control()?;
        self.write_control(&control.path, control.thaw)
    }

    /// Whether the node's cgroup is frozen, freezing or thawed.
    pub fn freeze_state(&self) -> Result<FreezeState, CgroupError> {
        let control = self.required_control()?;
        match &self.layout {
            Layout::V1(_) => {
                let text = self.read_control(&control.path)?;
                parse_v1_state(&text).ok_or_else(|| self.unreadable(&control.path, &text))
            }
            Layout::V2 { .. } => {
                let asked = self.read_control(&control.path)?;
                let events = control.path.with_file_name("cgroup.events");
                let text = self.read_control(&events)?;
                let frozen =
                    parse_v2_frozen(&text).ok_or_else(|| self.unreadable(&events, &text))?;
                Ok(match (asked.trim() == "1", frozen) {
                    (_, true) => FreezeState::Frozen,
                    (true, false) => FreezeState::Freezing,
                    (false, false) => FreezeState::Thawed,
                })
            }
        }
    }

    fn required_control(&self) -> Result<FreezeControl, CgroupError> {
        self.check_names()?;
        self.freeze_control()
            .ok_or_else(|| CgroupError::ControllerMissing {
                node: self.name.clone(),
                controller: "freezer",
                path: super::MOUNTINFO.into(),
            })
    }

    fn unreadable(&self, path: &Path, text: &str) -> CgroupError {
        CgroupError::Read {
            node: self.name.clone(),
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not a freezer state: {text:?}"),
            ),
        }
    }
}

fn v1_control(node: &NodeCgroup, hierarchies: &[Hierarchy]) -> Option<FreezeControl> {
    let dir = v1::dir_of(node, hierarchies, Controller::Freezer)?;
    Some(FreezeControl {
        path: dir.join("freezer.state"),
        freeze: "FROZEN",
        thaw: "THAWED",
    })
}

fn parse_v1_state(text: &str) -> Option<FreezeState> {
    match text.trim() {
        "THAWED" => Some(FreezeState::Thawed),
        "FREEZING" => Some(FreezeState::Freezing),
        "FROZEN" => Some(FreezeState::Frozen),
        _ => None,
    }
}

/// The `frozen` line of `cgroup.events` (`populated 1\nfrozen 0\n`).
fn parse_v2_frozen(text: &str) -> Option<bool> {
    text.lines()
        .find_map(|line| line.strip_prefix("frozen "))
        .and_then(|value| match value.trim() {
            "1" => Some(true),
            "0" => Some(false),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::runtime::cgroup::tests::{fake_v1, fake_v2, real_v2, v1_dir};
    use crate::runtime::cgroup::Cgroups;

    #[test]
    fn v1_freezes_through_freezer_state() {
        let (temp, cgroups) = fake_v1();
        let web1 = cgroups.node("magestack", "web1");
        let state = v1_dir(&temp, "freezer/magestack/web1/freezer.state");
        fs::create_dir_all(state.parent().unwrap()).unwrap();
        fs::write(&state, "THAWED\n").unwrap();
        assert_eq!(web1.freeze_state().unwrap(), FreezeState::Thawed);
        web1.freeze().unwrap();
        assert_eq!(fs::read_to_string(&state).unwrap(), "FROZEN");
        assert_eq!(web1.freeze_state().unwrap(), FreezeState::Frozen);
        fs::write(&state, "FREEZING\n").unwrap();
        assert_eq!(web1.freeze_state().unwrap(), FreezeState::Freezing);
        web1.thaw().unwrap();
        assert_eq!(fs::read_to_string(&state).unwrap(), "THAWED");
        fs::write(&state, "SLEEPY\n").unwrap();
        let error = web1.freeze_state().unwrap_err().to_string();
        assert!(
            error.contains("web1") && error.contains("SLEEPY"),
            "{error}"
        );
    }

    #[test]
    fn v2_freezes_through_cgroup_freeze_and_reads_cgroup_events() {
        let (_temp, cgroups, root) = fake_v2("", "");
        let db1 = cgroups.node("magestack", "db1");
        let dir = root.join("magestack/db1");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup.freeze"), "0\n").unwrap();
        fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        assert_eq!(db1.freeze_state().unwrap(), FreezeState::Thawed);
        db1.freeze().unwrap();
        assert_eq!(fs::read_to_string(dir.join("cgroup.freeze")).unwrap(), "1");
        assert_eq!(db1.freeze_state().unwrap(), FreezeState::Freezing);
        fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        assert_eq!(db1.freeze_state().unwrap(), FreezeState::Frozen);
        db1.thaw().unwrap();
        assert_eq!(fs::read_to_string(dir.join("cgroup.freeze")).unwrap(), "0");
    }

    /// Needs root: a process that joins a real node cgroup and freezes it itself stops right
    /// after its write (what a node's init does when it fences), stays stopped, and goes on
    /// once thawed from outside.
    fn a_process_freezing_its_own_cgroup_stops_after_its_write(cgroups: Cgroups, name: &str) {
        use std::process::Command;
        use std::time::{Duration, Instant};

        let parent = format!("magestack-freezetest-{}", std::process::id());
        let node = cgroups.node(&parent, name);
        node.create(&crate::runtime::cgroup::Limits::default())
            .unwrap();
        let temp = tempfile::TempDir::new().unwrap();
        let marker = temp.path().join("after");
        let control = node.freeze_control().expect("a freezer");
        let joins: String = node
            .procs_files()
            .iter()
            .map(|file| format!("echo $$ > {} && ", file.display()))
            .collect();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{joins}printf {} > {} && echo done > {}",
                control.freeze,
                control.path.display(),
                marker.display()
            ))
            .spawn()
            .unwrap();
        let wait = |what: &str, check: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !check() {
                assert!(Instant::now() < deadline, "{what}");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait("the cgroup froze", &|| {
                node.freeze_state().unwrap() == FreezeState::Frozen
            });
            std::thread::sleep(Duration::from_millis(100));
            assert!(!marker.exists(), "ran on after freezing itself");
            node.thaw().unwrap();
            wait("the process went on once thawed", &|| marker.exists());
            assert!(child.wait().unwrap().success());
            assert_eq!(node.freeze_state().unwrap(), FreezeState::Thawed);
        }));
        let _ = node.thaw();
        let _ = child.kill();
        let _ = child.wait();
        node.remove().unwrap();
        cgroups.remove_parent_if_empty(&parent);
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    #[test]
    fn a_real_node_cgroup_freezes_with_its_writer_inside() {
        assert!(nix::unistd::geteuid().is_root(), "needs root");
        a_process_freezing_its_own_cgroup_stops_after_its_write(Cgroups::detect().unwrap(), "fz1");
    }

    /// The same on whatever cgroup2 mount this host has (the controller-less `unified` one of
    /// a hybrid host has `cgroup.freeze` too).
    #[test]
    fn a_real_v2_node_cgroup_freezes_with_its_writer_inside() {
        assert!(nix::unistd::geteuid().is_root(), "needs root");
        let cgroups = real_v2();
        a_process_freezing_its_own_cgroup_stops_after_its_write(cgroups, "fz2");
    }

    #[test]
    fn a_v1_host_without_the_freezer_cannot_freeze() {
        let text: String = crate::runtime::cgroup::tests::HYBRID
            .lines()
            .filter(|line| !line.ends_with(",freezer"))
            .map(|line| format!("{line}\n"))
            .collect();
        let node = Cgroups::from_mountinfo(&text)
            .unwrap()
            .node("magestack", "web1");
        assert_eq!(node.freeze_control(), None);
        let error = node.freeze().unwrap_err();
        assert!(
            matches!(
                error,
                CgroupError::ControllerMissing {
                    controller: "freezer",
                    ..
                }
            ),
            "{error}"
        );
    }
}
