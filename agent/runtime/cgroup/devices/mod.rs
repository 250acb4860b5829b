//! Which devices a node may use: those of the minimal /dev its init builds (`init/rootfs.rs`),
//! and nothing else, whatever device nodes it can reach or make.
//!
//! The one list below is enforced two ways. On v1 the `devices` controller holds it: the node's
//! cgroup denies everything ("a"), then allows each device. On v2 a `BPF_PROG_TYPE_CGROUP_DEVICE`
//! program compiled from it (`program.rs`) is attached to the node's cgroup (`bpf.rs`). Both are in
//! place before the init joins the cgroup (v1) or is cloned into it (v2), like runc's and crun's
//! defaults.

mod bpf;
mod program;
#[cfg(test)]
mod tests;

use std::os::fd::BorrowedFd;
use std::path::Path;

use super::{CgroupError, ControlWrite, NodeCgroup};

/// A character device a node may read, write and mknod: one minor of `major`, or every minor
/// when `minor` is `None`. Block devices and narrower access have no rule, since no node needs
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct CharDevice {
    major: u32,
    minor: Option<u32>,
}

impl CharDevice {
    const fn one(major: u32, minor: u32) -> Self {
        CharDevice {
            major,
            minor: Some(minor),
        }
    }

    const fn every_minor(major: u32) -> Self {
        CharDevice { major, minor: None }
    }

    /// The rule as `devices.allow` and `devices.list` spell it: `c 1:3 rwm`, `c 136:* rwm`.
    fn v1_rule(self) -> String {
        match self.minor {
            Some(minor) => format!("c {}:{minor} rwm", self.major),
            None => format!("c {}:* rwm", self.major),
        }
    }
}

/// Every device a node may use: null, zero, full, random, urandom, tty and ptmx, then the pty
/// slaves of its own devpts (Unix98 pty majors 136 to 143).
pub(super) const ALLOWED: [CharDevice; 15] = [
    CharDevice::one(1, 3),
    CharDevice::one(1, 5),
    CharDevice::one(1, 7),
    CharDevice::one(1, 8),
    CharDevice::one(1, 9),
    CharDevice::one(5, 0),
    CharDevice::one(5, 2),
    CharDevice::every_minor(136),
    CharDevice::every_minor(137),
    CharDevice::every_minor(138),
    CharDevice::every_minor(139),
    CharDevice::every_minor(140),
    CharDevice::every_minor(141),
    CharDevice::every_minor(142),
    CharDevice::every_minor(143),
];

/// The v1 control writes that leave the node's devices cgroup `dir` with exactly [`ALLOWED`]: deny
/// all first (the kernel accepts "a" only while the cgroup has no children, as a new one has),
/// then one allow rule per write.
pub(super) fn v1_writes(dir: &Path) -> Vec<ControlWrite> {
    let deny = ControlWrite::new(dir.join("devices.deny"), "a");
    let allow = ALLOWED
        .iter()
        .map(|device| ControlWrite::new(dir.join("devices.allow"), device.v1_rule()));
    std::iter::once(deny).chain(allow).collect()
}

/// Loads the device program for [`ALLOWED`] and attaches it to the node's v2 cgroup `dir`, open
/// as `cgroup`.
///
/// It is attached with `BPF_F_ALLOW_MULTI`, as runc and crun do: programs that an ancestor
/// attached the same way (systemd's `DevicePolicy`) still run, and the kernel allows an access
/// only when every program allows it, so neither widens the other; a program attached below the
/// node's cgroup can only narrow it further. The attachment holds the program, which goes with
/// the cgroup, so neither fd is kept. Loading needs CAP_BPF and CAP_NET_ADMIN (or
/// CAP_SYS_ADMIN), and from Linux 5.11 on no RLIMIT_MEMLOCK headroom.
pub(super) fn attach_program(
    node: &NodeCgroup,
    cgroup: BorrowedFd<'_>,
    dir: &Path,
) -> Result<(), CgroupError> {
    let program = program::compile(&ALLOWED);
    let loaded =
        bpf::load_device_program(&program).map_err(|error| CgroupError::LoadDeviceProgram {
            node: node.name.clone(),
            path: dir.to_path_buf(),
            source: error.source,
            log: error.verifier_log,
        })?;
    bpf::attach_device_program(&loaded, cgroup).map_err(|source| CgroupError::AttachDeviceProgram {
        node: node.name.clone(),
        path: dir.to_path_buf(),
        source,
    })
}
