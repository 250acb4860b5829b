//! The seccomp filter every node process runs under: what containers must not do is refused
//! with EPERM (a clear error rather than a kill). clone3 answers ENOSYS, so the C library falls
//! back to clone, whose flags the filter can inspect and refuse new user namespaces.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::ConfinementError;

/// Refused outright: kernel and module loading, keys, kernel memory and tracing interfaces,
/// time, swap, reboot, mounting and namespace changes (a node has its own already).
pub const DENIED: &[(&str, i64)] = &[
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("bpf", libc::SYS_bpf),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("acct", libc::SYS_acct),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("quotactl", libc::SYS_quotactl),
    ("syslog", libc::SYS_syslog),
    ("uselib", libc::SYS_uselib),
    ("vhangup", libc::SYS_vhangup),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    // A large kernel surface no role needs.
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
];

/// Socket families refused: vsock is not a network namespace's (it reaches the hypervisor and
/// the host's own vsock services).
pub const DENIED_SOCKET_FAMILIES: &[(&str, i32)] = &[("AF_VSOCK", libc::AF_VSOCK)];

/// `ioctl` requests refused: making btrfs subvolumes and snapshots. Any user may make one where
/// it may write, and a node's volumes are btrfs subvolumes on a btrfs state dir: a subvolume
/// made inside one would stand outside the node's quota group, and so outside its disk limit.
pub const DENIED_IOCTLS: &[(&str, u32)] = &[
    ("BTRFS_IOC_SNAP_CREATE", 0x5000_9401),
    ("BTRFS_IOC_SUBVOL_CREATE", 0x5000_940e),
    ("BTRFS_IOC_SNAP_CREATE_V2", 0x5000_9417),
    ("BTRFS_IOC_SUBVOL_CREATE_V2", 0x5000_9418),
];

pub fn filters() -> Result<Vec<BpfProgram>, ConfinementError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| ConfinementError::Seccomp(format!("architecture: {e}")))?;
    let error = |e: seccompiler::BackendError| ConfinementError::Seccomp(e.to_string());

    let mut denied: BTreeMap<i64, Vec<SeccompRule>> = DENIED
        .iter()
        .map(|(_, number)| (*number, Vec::new()))
        .collect();
    let new_user_namespace = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(libc::CLONE_NEWUSER as u64),
        libc::CLONE_NEWUSER as u64,
    )
    .map_err(error)?;
    denied.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![new_user_namespace]).map_err(error)?],
    );
    // The request is an int to the kernel: only its low 32 bits are compared.
    let ioctl_rules = DENIED_IOCTLS
        .iter()
        .map(|(_, request)| {
            let request = SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                u64::from(*request),
            )
            .map_err(error)?;
            SeccompRule::new(vec![request]).map_err(error)
        })
        .collect::<Result<Vec<_>, _>>()?;
    denied.insert(libc::SYS_ioctl, ioctl_rules);
    let socket_rules = DENIED_SOCKET_FAMILIES
        .iter()
        .map(|(_, family)| {
            let family =
                SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *family as u64)
                    .map_err(error)?;
            SeccompRule::new(vec![family]).map_err(error)
        })
        .collect::<Result<Vec<_>, _>>()?;
    denied.insert(libc::SYS_socket, socket_rules);
    let refuse = SeccompFilter::new(
        denied,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(error)?;
    let no_clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(error)?;
    [refuse, no_clone3]
        .into_iter()
        .map(|filter| {
            BpfProgram::try_from(filter).map_err(|e| ConfinementError::Seccomp(e.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile() {
        let filters = filters().unwrap();
        assert_eq!(filters.len(), 2);
        assert!(filters.iter().all(|f| !f.is_empty()));
    }

    #[test]
    fn refused_calls_apply_in_a_child_and_others_still_work() {
        let filters = filters().unwrap();
        // SAFETY: the child only calls async-signal-safe functions and _exit.
        match unsafe { libc::fork() } {
            0 => {
                let mut code = 0;
                // SAFETY: prctl takes plain integers.
                unsafe {
                    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                }
                for filter in &filters {
                    if seccompiler::apply_filter(filter).is_err() {
                        code |= 1;
                    }
                }
                // SAFETY: plain syscalls with invalid or harmless arguments.
                unsafe {
                    if libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) != -1
                        || *libc::__errno_location() != libc::EPERM
                    {
                        code |= 2;
                    }
                    if libc::unshare(libc::CLONE_NEWUSER) != -1 {
                        code |= 4;
                    }
                    if libc::getpid() <= 0 {
                        code |= 8;
                    }
                    // A btrfs subvolume: refused whatever the file (here not btrfs at all, which
                    // would answer ENOTTY).
                    let mut args = [0u8; 4096];
                    let root = libc::open(c"/".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
                    if libc::ioctl(root, 0x5000_940e, args.as_mut_ptr()) != -1
                        || *libc::__errno_location() != libc::EPERM
                    {
                        code |= 16;
                    }
                    if libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) != -1
                        || *libc::__errno_location() != libc::EPERM
                    {
                        code |= 64;
                    }
                    if libc::syscall(libc::SYS_io_uring_setup, 1, 0) != -1
                        || *libc::__errno_location() != libc::EPERM
                    {
                        code |= 128;
                    }
                    // Other ioctls still reach the kernel (a terminal request on a directory).
                    if libc::ioctl(root, libc::TIOCGWINSZ, args.as_mut_ptr()) != -1
                        || *libc::__errno_location() != libc::ENOTTY
                    {
                        code |= 32;
                    }
                    libc::_exit(code);
                }
            }
            pid => {
                let mut status = 0;
                // SAFETY: waiting for the child we just forked.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert!(libc::WIFEXITED(status));
                assert_eq!(libc::WEXITSTATUS(status), 0);
            }
        }
    }
}
