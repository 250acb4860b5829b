//! The init's birth in two clones. The daemon clones an intermediate process into the node's
//! sandbox (a new user and network namespace at a node's first start; at a restart it joins
//! the ones kept from the previous init), and, on cgroup v2, straight into the node's cgroup.
//! The intermediate clones the init with the namespaces each life gets new (pid, mount, uts,
//! ipc, cgroup on v2), so they belong to the node's user namespace like the kept ones, reports
//! the init's pid on a pipe and exits. The init is cloned with `CLONE_PARENT`: it is the
//! daemon's child, as if the daemon had cloned it (its exit is reaped through a pidfd, and it
//! gets no parent-death signal). The init becomes root of the user namespace and execs.
//!
//! A process cannot join a user namespace while it has other threads, and the daemon has them:
//! hence the intermediate. The daemon is multi-threaded, so between clone and exec both children
//! do only async-signal-safe work: dup, close_range, setns, clone3 and execve on memory prepared
//! before the first clone.
//!
//! Until its exit the intermediate holds a copy of every descriptor the daemon had, close-on-exec
//! or not. So it closes all but its own at once: one waiting for its uid maps would otherwise
//! keep the daemon's lock, its listening socket and the other children's pipes open after a
//! crash of the daemon, and two such children would wait on each other for ever.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

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

/// The namespaces every life of a node gets new. The cgroup namespace is added at clone time
/// only when the init is born in its cgroup (v2); on v1 the init unshares it after joining.
const INIT_NAMESPACES: u64 =
    (libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC) as u64;

/// How long the intermediate may take to report the init's pid (it runs a few system calls).
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The namespaces the init lives in beyond its own life: its user namespace (absent for a
/// privileged node) and its network namespace.
pub enum Sandbox<'a> {
    /// Made by this start. With a user namespace the intermediate waits for a byte on
    /// `maps_written` (the daemon has written the uid and gid maps of [`Spawning::pid`]).
    New {
        maps_written: Option<BorrowedFd<'a>>,
    },
    /// Kept from the node's previous init (their uid and gid maps are written): joined.
    Join {
        user: Option<BorrowedFd<'a>>,
        net: BorrowedFd<'a>,
    },
}

/// What the init gets: `fds[i]` becomes descriptor `3 + i`; stdin, stdout and stderr are `null`.
pub struct ChildSetup<'a> {
    pub program: CString,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    pub null: BorrowedFd<'a>,
    pub fds: Vec<BorrowedFd<'a>>,
    pub cgroup: Option<BorrowedFd<'a>>,
    pub sandbox: Sandbox<'a>,
}

pub struct Child {
    pub pid: i32,
    pub pidfd: OwnedFd,
}

/// The intermediate process between the daemon's clone and the init's; killed and reaped when
/// dropped (it has exited by then unless the start was abandoned).
pub struct Spawning {
    pid: i32,
    pidfd: OwnedFd,
    report: OwnedFd,
}

/// The intermediate's steps, as it reports a failure: (step, errno); step 0 is success with
/// the init's pid.
const STEP_MAPS: i32 = 1;
const STEP_NET: i32 = 2;
const STEP_USER: i32 = 3;
const STEP_CLONE: i32 = 4;

/// One of the intermediate's own descriptors: `source` (lifted, in the daemon) goes to
/// `target`, close-on-exec, so the init never inherits it across its exec.
#[derive(Clone, Copy)]
struct Placed {
    source: RawFd,
    target: RawFd,
}

/// Clones the intermediate into the node's sandbox; see the module's description.
pub fn spawn(setup: &ChildSetup<'_>) -> std::io::Result<Spawning> {
    // Move every descriptor above the target range first, so a dup into 3..3+n can never
    // overwrite a source that has not been placed yet.
    let lifted: Vec<OwnedFd> = setup
        .fds
        .iter()
        .map(|fd| lift(*fd))
        .collect::<Result<_, _>>()?;
    let lifted_raw: Vec<RawFd> = lifted.iter().map(AsRawFd::as_raw_fd).collect();
    let (report_read, report_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (maps, user, net) = match setup.sandbox {
        Sandbox::New { maps_written } => (maps_written, None, None),
        Sandbox::Join { user, net } => (None, user, Some(net)),
    };
    // The intermediate's own descriptors follow the init's: report, maps, user, net.
    let own: Vec<Option<OwnedFd>> = [Some(report_write.as_fd()), maps, user, net]
        .into_iter()
        .map(|fd| fd.map(lift).transpose())
        .collect::<Result<_, _>>()?;
    let mut next = 3 + lifted_raw.len() as RawFd;
    let placed: Vec<Option<Placed>> = own
        .iter()
        .map(|fd| {
            fd.as_ref().map(|fd| {
                next += 1;
                Placed {
                    source: fd.as_raw_fd(),
                    target: next - 1,
                }
            })
        })
        .collect();
    let first_closed = next;
    let (report, maps, user, net) = (
        placed[0].expect("report pipe"),
        placed[1],
        placed[2],
        placed[3],
    );
    let become_root = maps.is_some() || user.is_some();
    let argv = null_terminated(&setup.argv);
    let envp = null_terminated(&setup.env);

    let mut init_args = CloneArgs {
        flags: INIT_NAMESPACES | libc::CLONE_PARENT as u64,
        ..Default::default()
    };
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Sandbox::New { maps_written } = setup.sandbox {
        args.flags |= libc::CLONE_NEWNET as u64;
        if maps_written.is_some() {
            args.flags |= libc::CLONE_NEWUSER as u64;
        }
    }
    if let Some(cgroup) = setup.cgroup {
        // The intermediate is born in the cgroup and the init stays there, rooting its own
        // cgroup namespace in it.
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = cgroup.as_raw_fd() as u64;
        init_args.flags |= libc::CLONE_NEWCGROUP as u64;
    }
    // SAFETY: args is a valid clone_args of the size passed; with no stack given the child
    // continues on a copy of this stack like fork, and runs only async-signal-safe calls below.
    let pid = unsafe { clone3(&mut args) };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: in the intermediate: dup2, dup3, close_range, read, setns, clone3, the raw
        // set*id syscalls, execve, write and _exit are async-signal-safe, and every pointer
        // refers to memory prepared before the clone.
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
            for own in [Some(report), maps, user, net].into_iter().flatten() {
                if libc::dup3(own.source, own.target, libc::O_CLOEXEC) < 0 {
                    libc::_exit(126);
                }
            }
            if libc::syscall(libc::SYS_close_range, first_closed, u32::MAX, 0) != 0 {
                libc::_exit(126);
            }
            if let Some(maps) = maps {
                let mut byte = 0u8;
                if libc::read(maps.target, (&mut byte as *mut u8).cast(), 1) != 1 {
                    intermediate_report(report.target, STEP_MAPS, libc::EPIPE);
                }
                libc::close(maps.target);
            }
            if let Some(net) = net {
                if libc::setns(net.target, libc::CLONE_NEWNET) != 0 {
                    intermediate_report(report.target, STEP_NET, errno());
                }
            }
            if let Some(user) = user {
                if libc::setns(user.target, libc::CLONE_NEWUSER) != 0 {
                    intermediate_report(report.target, STEP_USER, errno());
                }
            }
            let init = clone3(&mut init_args);
            if init < 0 {
                intermediate_report(report.target, STEP_CLONE, errno());
            }
            if init > 0 {
                intermediate_report(report.target, 0, init as i32);
            }
            // The init: root of its user namespace before exec, so the exec keeps the
            // namespace's full capabilities. Raw syscalls: glibc's wrappers would wait on the
            // daemon's other threads, which do not exist in this copy of it.
            if become_root
                && (libc::syscall(libc::SYS_setresgid, 0, 0, 0) != 0
                    || libc::syscall(libc::SYS_setresuid, 0, 0, 0) != 0)
            {
                libc::_exit(125);
            }
            libc::execve(setup.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    drop((lifted, own, report_write));
    // SAFETY: clone3 with CLONE_PIDFD stored a new descriptor that only we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Spawning {
        pid: pid as i32,
        pidfd,
        report: report_read,
    })
}

impl Spawning {
    /// The intermediate's pid: the uid and gid maps of a new user namespace are written here.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for the intermediate's report; the init's pid and a pidfd for it.
    pub fn finish(self) -> std::io::Result<Child> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let millis = u16::try_from(REPORT_TIMEOUT.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.report.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(millis))? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no report from the intermediate process {}", self.pid),
            ));
        }
        let mut bytes = [0u8; 8];
        let read = nix::unistd::read(&self.report, &mut bytes)?;
        if read != bytes.len() {
            return Err(std::io::Error::other(format!(
                "the intermediate process {} ended without a report",
                self.pid
            )));
        }
        let step = i32::from_ne_bytes(bytes[..4].try_into().expect("4 bytes"));
        let value = i32::from_ne_bytes(bytes[4..].try_into().expect("4 bytes"));
        let what = match step {
            0 => {
                // The init is our child and not reaped yet: its pid cannot be reused.
                let pidfd = pidfd_open(value)?;
                return Ok(Child { pid: value, pidfd });
            }
            STEP_MAPS => "wait for the uid and gid maps",
            STEP_NET => "join the node's network namespace",
            STEP_USER => "join the node's user namespace",
            _ => "clone the init into its namespaces",
        };
        let error = std::io::Error::from_raw_os_error(value);
        Err(std::io::Error::new(
            error.kind(),
            format!("{what}: {error}"),
        ))
    }
}

impl Drop for Spawning {
    fn drop(&mut self) {
        let _ = pidfd_signal(self.pidfd.as_fd(), libc::SIGKILL);
        wait_exit(self.pidfd.as_fd(), Duration::from_secs(5));
    }
}

/// clone3 with `args`; returns the child's pid, 0 in the child, or -1.
///
/// # Safety
/// As fork: the child runs on a copy of the caller's stack and may only make async-signal-safe
/// calls until it execs or exits.
unsafe fn clone3(args: &mut CloneArgs) -> libc::c_long {
    libc::syscall(
        libc::SYS_clone3,
        args as *mut CloneArgs,
        std::mem::size_of::<CloneArgs>(),
    )
}

/// The intermediate's last act: `(step, value)` on the report pipe, then exit.
///
/// # Safety
/// Only in the intermediate, with `fd` its report pipe.
unsafe fn intermediate_report(fd: RawFd, step: i32, value: i32) -> ! {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&step.to_ne_bytes());
    bytes[4..].copy_from_slice(&value.to_ne_bytes());
    libc::write(fd, bytes.as_ptr().cast(), bytes.len());
    libc::_exit(i32::from(step != 0))
}

/// The calling thread's errno.
fn errno() -> i32 {
    // SAFETY: __errno_location returns a valid pointer to the calling thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Pointers to `strings` and a final null, as execve takes them.
fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|string| string.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// A close-on-exec copy of `fd` numbered 100 or above.
fn lift(fd: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor or -1; no memory is involved.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
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
