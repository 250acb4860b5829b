//! The two bpf(2) commands a node's device program needs: load it, attach it to the cgroup.
//!
//! The attribute structs are the leading fields of the kernel's `union bpf_attr` for each
//! command; the kernel takes a shorter struct as long as the fields it knows beyond it are zero.

use std::ffi::CStr;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::program::Insn;

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 1 << 1;

/// The licence the kernel records for the program; only GPL-only helpers need a GPL one, and the
/// program calls no helper.
const LICENSE: &CStr = c"Apache-2.0";
/// The name `bpftool prog` shows (at most 15 bytes).
const PROGRAM_NAME: &[u8] = b"magestack_dev";
/// Room for the verifier's log: a load that succeeds logs one line of statistics, one that fails
/// the instructions it walked up to the refusal (the node program has about 60).
const LOG_SIZE: usize = 64 * 1024;
/// `log_level` 1: the verifier explains the instruction it refused.
const LOG_LEVEL: u32 = 1;

/// `union bpf_attr` as BPF_PROG_LOAD reads it, up to `prog_name`.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// `union bpf_attr` as BPF_PROG_ATTACH reads it.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Why the kernel refused to load a program, with what its verifier said.
#[derive(Debug)]
pub(super) struct LoadError {
    pub(super) source: io::Error,
    pub(super) verifier_log: String,
}

/// Loads `program` as a `BPF_PROG_TYPE_CGROUP_DEVICE` program.
pub(super) fn load_device_program(program: &[Insn]) -> Result<OwnedFd, LoadError> {
    let mut log = vec![0u8; LOG_SIZE];
    let mut prog_name = [0u8; 16];
    prog_name[..PROGRAM_NAME.len()].copy_from_slice(PROGRAM_NAME);
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(program.len()).expect("a device program is a few dozen insns"),
        insns: program.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        log_level: LOG_LEVEL,
        log_size: LOG_SIZE as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
        prog_name,
    };
    // SAFETY: `attr` is a valid BPF_PROG_LOAD attribute of the size passed; the instructions,
    // licence and log buffer it points to outlive the call, and the kernel writes at most
    // `log_size` bytes into the log.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            size_of::<ProgLoadAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        let source = io::Error::last_os_error();
        let end = log.iter().position(|&byte| byte == 0).unwrap_or(log.len());
        return Err(LoadError {
            source,
            verifier_log: String::from_utf8_lossy(&log[..end]).trim_end().to_string(),
        });
    }
    let fd = libc::c_int::try_from(fd).expect("bpf(2) returns an int fd");
    // SAFETY: BPF_PROG_LOAD returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches the loaded `program` to `cgroup` (a cgroup v2 directory) for every device access,
/// with `BPF_F_ALLOW_MULTI` (see `devices::attach_program` for why).
pub(super) fn attach_device_program(program: &OwnedFd, cgroup: BorrowedFd<'_>) -> io::Result<()> {
    let attr = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: program.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    // SAFETY: `attr` is a valid BPF_PROG_ATTACH attribute of the size passed, naming two open fds.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const ProgAttachAttr,
            size_of::<ProgAttachAttr>() as libc::c_uint,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
