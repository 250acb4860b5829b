//! `exec`: run a command inside a running node: its namespaces, its cgroup, its root, as its
//! root user or as a user of the node's /etc/passwd, with pipes relayed to the caller's stdio
//! (`exec_streams.rs`), or a pty from the node's own devpts when stdin is a terminal, so no host
//! descriptor is handed into the node.
//!
//! Must run in a single-threaded process: joining a mount namespace requires it.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::PathBuf;

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt, PtyMaster};
use nix::sched::{setns, CloneFlags};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{self, ForkResult};

use super::clone::pidfd_open;
use super::exec_streams::{self, CommandStreams};
use crate::confinement::Confinement;
use crate::init::{find_account, find_group, Account, DEFAULT_PATH};

#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    #[error("node {node}: {step}: {source}")]
    Sys {
        node: String,
        step: &'static str,
        source: std::io::Error,
    },
    #[error("node {node}: user `{user}` is not in the node's /etc/passwd")]
    UnknownUser { node: String, user: String },
}

pub struct ExecRequest {
    pub node: String,
    /// Host pid of the node's init.
    pub pid: i32,
    pub cgroup_join: Vec<PathBuf>,
    pub capabilities: Vec<String>,
    pub user_namespace: bool,
    /// A name or uid from the node's /etc/passwd; the node's root when `None`.
    pub user: Option<String>,
    pub command: Vec<String>,
    pub tty: bool,
}

/// Runs the command and returns its exit status (128 + signal when killed).
pub fn exec_in_node(request: &ExecRequest) -> Result<i32, EnterError> {
    let node = request.node.clone();
    let fail = move |step: &'static str| {
        let node = node.clone();
        move |source: std::io::Error| EnterError::Sys { node, step, source }
    };
    let command: Vec<CString> = request
        .command
        .iter()
        .map(|arg| CString::new(arg.as_str()).map_err(std::io::Error::other))
        .collect::<Result<_, _>>()
        .map_err(fail("command"))?;
    if command.is_empty() {
        return Err(fail("command")(std::io::Error::other("no command given")));
    }
    let confinement = Confinement::new(&request.capabilities)
        .map_err(|e| fail("prepare confinement")(std::io::Error::other(e)))?;
    let pidfd = pidfd_open(request.pid).map_err(fail("open the node's init"))?;
    // The node's cgroup files are host paths: open them before entering the node's mounts.
    let cgroup_join: Vec<File> = request
        .cgroup_join
        .iter()
        .map(|path| File::options().write(true).open(path))
        .collect::<Result<_, _>>()
        .map_err(fail("open the node's cgroup"))?;
    let mut namespaces = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWCGROUP
        | CloneFlags::CLONE_NEWPID;
    if request.user_namespace {
        namespaces |= CloneFlags::CLONE_NEWUSER;
    }
    setns(&pidfd, namespaces).map_err(|e| fail("enter the node's namespaces")(e.into()))?;
    // Our root is the node's now: its /etc/passwd names its users.
    let account = match &request.user {
        None => root_account(),
        Some(user) => {
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            find_account(&passwd, user).ok_or_else(|| EnterError::UnknownUser {
                node: request.node.clone(),
                user: user.clone(),
            })?
        }
    };
    let env = environment(
        request.user.as_deref().unwrap_or("root"),
        &account,
        std::env::var("TERM").ok(),
    );
    let home = CString::new(account.home.as_str()).unwrap_or_else(|_| c"/".into());
    let pty = if request.tty {
        Some(open_node_pty(&account).map_err(fail("open a pty in the node"))?)
    } else {
        None
    };
    // Without a terminal, streams the command's user owns: the caller's are host root's.
    let streams = if request.tty {
        None
    } else {
        let made =
            take_filesystem_ids(account.uid, account.gid).and_then(|()| exec_streams::open());
        Some(made.map_err(fail("make the command's streams"))?)
    };

    // SAFETY: this process is single-threaded (setns of a mount namespace just succeeded, which
    // the kernel allows only then), so the child may run ordinary code until exec.
    match unsafe { unistd::fork() }.map_err(|e| fail("fork")(e.into()))? {
        ForkResult::Child => {
            let error = become_command(
                &cgroup_join,
                request.user_namespace,
                pty.as_ref(),
                streams.as_ref().map(|(command, _)| command),
                &confinement,
                (&account, &home),
                (&command, &env),
            );
            let _ = writeln!(
                std::io::stderr(),
                "magestack-agent exec: {:?}: {error}",
                request.command[0]
            );
            // SAFETY: ends the child without unwinding into the parent's state.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            drop(cgroup_join);
            let child_exit = pidfd_open(child.as_raw()).map_err(fail("watch the command"))?;
            if let Some((master, _)) = &pty {
                relay_terminal(master, child_exit.as_fd());
            }
            if let Some((command_ends, caller)) = streams {
                // Only the command holds its ends now: their end of file reaches the relay.
                drop(command_ends);
                caller.relay(child_exit.as_fd());
            }
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                    Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
                    Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(error) => return Err(fail("wait for the command")(error.into())),
                }
            }
        }
    }
}

/// The node's root, also when its image has no /etc/passwd.
fn root_account() -> Account {
    Account {
        uid: 0,
        gid: 0,
        home: "/root".into(),
    }
}

/// The command's environment: the caller's TERM and nothing else of the caller's.
fn environment(user: &str, account: &Account, term: Option<String>) -> Vec<CString> {
    let mut env = vec![
        format!("PATH={DEFAULT_PATH}"),
        format!("HOME={}", account.home),
        format!("USER={user}"),
        "container=magestack".to_string(),
    ];
    env.extend(term.map(|term| format!("TERM={term}")));
    env.into_iter()
        .filter_map(|e| CString::new(e).ok())
        .collect()
}

/// In the child: join the cgroup, take the pty as controlling terminal, become the user, exec.
fn become_command(
    cgroup_join: &[File],
    user_namespace: bool,
    pty: Option<&(PtyMaster, String)>,
    streams: Option<&CommandStreams>,
    confinement: &Confinement,
    (account, home): (&Account, &CString),
    (command, env): (&[CString], &[CString]),
) -> nix::errno::Errno {
    let result = (|| -> nix::Result<std::convert::Infallible> {
        for mut procs in cgroup_join {
            procs
                .write_all(b"0")
                .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        }
        if let Some((_, slave_path)) = pty {
            unistd::setsid()?;
            let slave = nix::fcntl::open(
                slave_path.as_str(),
                OFlag::O_RDWR,
                nix::sys::stat::Mode::empty(),
            )?;
            // SAFETY: TIOCSCTTY on a terminal descriptor we just opened.
            if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
                return Err(nix::errno::Errno::last());
            }
            unistd::dup2_stdin(&slave)?;
            unistd::dup2_stdout(&slave)?;
            unistd::dup2_stderr(&slave)?;
            // Dropped, the slave closes unless it was one of 0, 1, 2 already.
            if slave.as_raw_fd() <= 2 {
                std::mem::forget(slave);
            }
        }
        if let Some(streams) = streams {
            streams.install()?;
        }
        if user_namespace {
            // Host root is no one inside the node's user namespace: become its root. After the
            // pty: its slave belongs to the host root that made it.
            unistd::setgroups(&[unistd::Gid::from_raw(0)])?;
            unistd::setresgid(0.into(), 0.into(), 0.into())?;
            unistd::setresuid(0.into(), 0.into(), 0.into())?;
        }
        let confined = |result: Result<(), crate::confinement::ConfinementError>| {
            result.map_err(|_| nix::errno::Errno::EPERM)
        };
        // Capabilities leave the bounding set while we are still root; then the user change.
        confined(confinement.narrow())?;
        if account.uid != 0 || account.gid != 0 {
            let gid = unistd::Gid::from_raw(account.gid);
            unistd::setgroups(&[gid])?;
            unistd::setresgid(gid, gid, gid)?;
            let uid = unistd::Uid::from_raw(account.uid);
            unistd::setresuid(uid, uid, uid)?;
        }
        if unistd::chdir(home.as_c_str()).is_err() {
            unistd::chdir("/")?;
        }
        crate::confinement::close_on_exec_beyond_stdio()?;
        confined(confinement.seal())?;
        unistd::execvpe(&command[0], command, env)
    })();
    result.err().unwrap_or(nix::errno::Errno::UnknownErrno)
}

/// A pty from the node's devpts (we are in its mount namespace), sized like the caller's
/// terminal, and owned like a login's: by the command's user and group `tty` of the node (else
/// the user's group), mode 0620 (the devpts mount's). devpts gives a new terminal the opener's
/// filesystem ids, so they are set to those first: made as host root, the terminal would show
/// as nobody's in the node and could not be given away from inside its user namespace.
fn open_node_pty(account: &Account) -> std::io::Result<(PtyMaster, String)> {
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let group = find_group(&groups, "tty").unwrap_or(account.gid);
    take_filesystem_ids(account.uid, group)?;
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let slave = ptsname_r(&master)?;
    let mut size: libc::winsize = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ/TIOCSWINSZ read and write a winsize we own.
    unsafe {
        if libc::ioctl(0, libc::TIOCGWINSZ, &mut size) == 0 {
            libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size);
        }
    }
    Ok((master, slave))
}

/// Makes what this process creates from now on belong to `uid` and `gid` of the node (we are in
/// its user namespace, with its capabilities).
fn take_filesystem_ids(uid: u32, gid: u32) -> std::io::Result<()> {
    unistd::setfsgid(unistd::Gid::from_raw(gid));
    unistd::setfsuid(unistd::Uid::from_raw(uid));
    // setfs[ug]id report no errors: asking again returns the ids in force.
    let in_force = (
        unistd::setfsuid(unistd::Uid::from_raw(uid)).as_raw(),
        unistd::setfsgid(unistd::Gid::from_raw(gid)).as_raw(),
    );
    if in_force != (uid, gid) {
        return Err(std::io::Error::other(format!(
            "could not take uid {uid} and gid {gid} to make the command's terminal or streams"
        )));
    }
    Ok(())
}

/// Copies between the caller's terminal (in raw mode) and the pty until the command's side closes.
fn relay_terminal(master: &PtyMaster, child_exit: BorrowedFd<'_>) {
    let stdin = std::io::stdin();
    let saved = tcgetattr(stdin.as_fd()).ok();
    if let Some(saved) = &saved {
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
    }
    // SAFETY: the master stays open for the whole loop.
    let master_fd = unsafe { BorrowedFd::borrow_raw(master.as_raw_fd()) };
    let mut stdin_open = true;
    let mut buffer = [0u8; 8192];
    loop {
        // The command's exit ends the relay even when it never opened the terminal (a failed
        // exec), which would leave the master without the hang-up that ends it otherwise.
        let mut fds = vec![
            PollFd::new(master_fd, PollFlags::POLLIN),
            PollFd::new(child_exit, PollFlags::POLLIN),
        ];
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        let events = |index: usize| {
            fds.get(index)
                .and_then(|fd| fd.revents())
                .unwrap_or(PollFlags::empty())
        };
        let (master_events, exited, stdin_events) = (events(0), events(1), events(2));
        if !master_events.is_empty() && !copy_master_to_stdout(master_fd, &mut buffer) {
            break;
        }
        if !exited.is_empty() {
            // Whatever the command wrote before it ended is still in the master.
            let _ = nix::fcntl::fcntl(master_fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
            while copy_master_to_stdout(master_fd, &mut buffer) {}
            break;
        }
        if !stdin_events.is_empty() {
            match unistd::read(std::io::stdin(), &mut buffer) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(count) => {
                    let _ = exec_streams::write_all(master_fd, &buffer[..count]);
                }
            }
        }
    }
    if let Some(saved) = &saved {
        let _ = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, saved);
    }
}

/// Copies one read of the master to stdout; false at the end of the command's output.
fn copy_master_to_stdout(master: BorrowedFd<'_>, buffer: &mut [u8]) -> bool {
    match unistd::read(master, buffer) {
        Ok(0) | Err(_) => false,
        Ok(count) => {
            let mut out = std::io::stdout();
            let _ = out.write_all(&buffer[..count]);
            let _ = out.flush();
            true
        }
    }
}
