//! clone3 of the init straight into its new namespaces (and, on cgroup v2, its cgroup), then an
//! immediate exec. The daemon is multi-threaded, so between clone and exec the child does only
//! async-signal-safe work: dup2, close_range and execve on memory prepared before the clone.
//!
//! Until its exec the child holds a copy of every descriptor the daemon had, close-on-exec or
//! not. So it closes all but its own at once: a child waiting for its uid maps would otherwise
//! keep the daemon's lock, its listening socket and the other children's pipes open after a
//! crash of the daemon, and two such children would wait on each other for ever.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `struct clone_args` of linux/sched.h (version 2, with the cgroup field).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The namespaces every node is cloned into. The cgroup namespace is added at clone time only
/// when the init is born in its cgroup (v2); on v1 the init unshares it after joining. The user
/// namespace is added for every node that is not privileged.
pub const NODE_NAMESPACES: u64 = (libc::CLONE_NEWPID
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWNET) as u64;

pub const CLONE_NEWCGROUP: u64 = libc::CLONE_NEWCGROUP as u64;
pub const CLONE_NEWUSER: u64 = libc::CLONE_NEWUSER as u64;

/// What the child gets: `fds[i]` becomes descriptor `3 + i`; stdin, stdout and stderr are `null`.
pub struct ChildSetup<'a> {
    pub program: CString,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    pub null: BorrowedFd<'a>,
    pub fds: Vec<BorrowedFd<'a>>,
    pub cgroup: Option<BorrowedFd<'a>>,
    pub namespaces: u64,
    /// With a new user namespace: the child waits for a byte here (the parent has written its
    /// uid and gid maps), then becomes root of the namespace before exec, so the exec keeps
    /// the namespace's full capabilities.
    pub maps_written: Option<BorrowedFd<'a>>,
}

pub struct Child {
    pub pid: i32,
    pub pidfd: OwnedFd,
}

/// Clones and execs the child; returns its pid and a pidfd.
pub fn spawn(setup: &ChildSetup<'_>) -> std::io::Result<Child> {
    // Move every descriptor above the target range first, so a dup2 into 3..3+n can never
    // overwrite a source that has not been placed yet.
    let lifted: Vec<OwnedFd> = setup
        .fds
        .iter()
        .map(|fd| fd.try_clone_to_owned().and_then(|fd| lift(fd.as_raw_fd())))
        .collect::<Result<_, _>>()?;
    let lifted_raw: Vec<RawFd> = lifted.iter().map(AsRawFd::as_raw_fd).collect();
    let maps_lifted = setup
        .maps_written
        .map(|fd| fd.try_clone_to_owned().and_then(|fd| lift(fd.as_raw_fd())))
        .transpose()?;
    let maps_raw = maps_lifted.as_ref().map(AsRawFd::as_raw_fd);
    // The maps pipe goes right after the child's own descriptors; everything above is closed.
    let maps_fd = 3 + lifted_raw.len() as RawFd;
    let first_closed = maps_fd + RawFd::from(maps_raw.is_some());
    let argv: Vec<*const libc::c_char> = setup
        .argv
        .iter()
        .map(|arg| arg.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = setup
        .env
        .iter()
        .map(|var| var.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();

    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: setup.namespaces | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Some(cgroup) = setup.cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = cgroup.as_raw_fd() as u64;
    }
    // SAFETY: args is a valid clone_args of the size passed; with no stack given the child
    // continues on a copy of this stack like fork, and runs only async-signal-safe calls below.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: in the child: read, close, close_range, the raw set*id syscalls, dup2,
        // execve and _exit are async-signal-safe, and every pointer refers to memory prepared
        // before the clone.
        unsafe {
            if libc::dup2(setup.null.as_raw_fd(), 0) < 0
                || libc::dup2(setup.null.as_raw_fd(), 1) < 0
                || libc::dup2(setup.null.as_raw_fd(), 2) < 0
            {
                libc::_exit(126);
            }
            for (index, fd) in lifted_raw.iter().enumerate() {
                if libc::dup2(*fd, 3 + index as RawFd) < 0 {
                    libc::_exit(126);
                }
            }
            if let Some(maps) = maps_raw {
                if libc::dup2(maps, maps_fd) < 0 {
                    libc::_exit(126);
                }
            }
            if libc::syscall(libc::SYS_close_range, first_closed, u32::MAX, 0) != 0 {
                libc::_exit(126);
            }
            if maps_raw.is_some() {
                let mut byte = 0u8;
                if libc::read(maps_fd, (&mut byte as *mut u8).cast(), 1) != 1
                    // Raw syscalls: glibc's wrappers would wait on the parent's other
                    // threads, which do not exist in this copy of it.
                    || libc::syscall(libc::SYS_setresgid, 0, 0, 0) != 0
                    || libc::syscall(libc::SYS_setresuid, 0, 0, 0) != 0
                {
                    libc::_exit(125);
                }
                libc::close(maps_fd);
            }
            libc::execve(setup.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    drop((lifted, maps_lifted));
    // SAFETY: clone3 with CLONE_PIDFD stored a new descriptor that only we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Child {
        pid: pid as i32,
        pidfd,
    })
}

/// A close-on-exec copy of `fd` numbered 100 or above.
fn lift(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor or -1; no memory is involved.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Sends a signal through a pidfd, immune to pid reuse.
pub fn pidfd_signal(pidfd: BorrowedFd<'_>, signal: i32) -> std::io::Result<()> {
    // SAFETY: pidfd_send_signal with a null siginfo and no flags.
    let result = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A pidfd for an existing process (re-adoption).
pub fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Waits up to `timeout` for the process behind `pidfd` to exit; true if it has.
pub fn wait_exit(pidfd: BorrowedFd<'_>, timeout: std::time::Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(n) if n > 0 => {
                reap(pidfd);
                return true;
            }
            Ok(_) if left.is_zero() => return false,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
}

/// Collects the exit status if the process is our child; a no-op for adopted nodes.
pub fn reap(pidfd: BorrowedFd<'_>) {
    const P_PIDFD: libc::idtype_t = 3;
    // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid with a valid pidfd and a pointer to a siginfo_t we own.
    unsafe {
        libc::waitid(
            P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
}
