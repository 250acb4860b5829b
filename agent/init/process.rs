//! Starting one role process: fork, put it in its own session with its output on the log pipe,
//! switch to its user, exec. The exec outcome comes back on a close-on-exec pipe, so a missing
//! program is reported as an error instead of an exit code.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{BorrowedFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::{self, ForkResult, Gid, Pid, Uid};

use crate::config::ProcessSpec;
use crate::confinement::{Confinement, ConfinementError};

/// PATH for role processes that do not set their own.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything the child needs, prepared before fork.
#[derive(Debug)]
pub struct Launch {
    argv: Vec<CString>,
    env: Vec<CString>,
    uid: Uid,
    gid: Gid,
    home: CString,
}

/// One line of /etc/passwd inside the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// Looks a user up in the node's passwd text, by name or numeric id.
pub fn find_account(passwd: &str, user: &str) -> Option<Account> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 7 {
            return None;
        }
        let account = Account {
            uid: fields[2].parse().ok()?,
            gid: fields[3].parse().ok()?,
            home: fields[5].to_string(),
        };
        (fields[0] == user || fields[2] == user).then_some(account)
    })
}

/// The id of a group in the node's /etc/group text, by name.
pub fn find_group(group: &str, name: &str) -> Option<u32> {
    group.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 3 && fields[0] == name)
            .then(|| fields[2].parse().ok())
            .flatten()
    })
}

pub fn prepare(spec: &ProcessSpec, passwd: &str) -> Result<Launch, String> {
    let user = spec.user.as_deref().unwrap_or("root");
    let account = find_account(passwd, user)
        .or_else(|| {
            (user == "root").then(|| Account {
                uid: 0,
                gid: 0,
                home: "/root".into(),
            })
        })
        .ok_or_else(|| format!("user `{user}` is not in the node's /etc/passwd"))?;
    let c_string = |text: &str| {
        CString::new(text).map_err(|_| format!("`{}` contains a NUL byte", text.escape_default()))
    };
    let argv = spec
        .command
        .iter()
        .map(|arg| c_string(arg))
        .collect::<Result<Vec<_>, _>>()?;
    let mut env = vec![
        format!("PATH={DEFAULT_PATH}"),
        format!("HOME={}", account.home),
        format!("USER={user}"),
        "container=magestack".to_string(),
    ];
    for (key, value) in &spec.env {
        env.retain(|entry| !entry.starts_with(&format!("{key}=")));
        env.push(format!("{key}={value}"));
    }
    Ok(Launch {
        argv,
        env: env.iter().map(|e| c_string(e)).collect::<Result<_, _>>()?,
        uid: Uid::from_raw(account.uid),
        gid: Gid::from_raw(account.gid),
        home: c_string(&account.home)?,
    })
}

/// Starts the process with stdout and stderr on `output`; returns once it has exec'd.
pub fn spawn(
    launch: &Launch,
    output: BorrowedFd<'_>,
    null: BorrowedFd<'_>,
    confinement: Option<&Confinement>,
) -> Result<Pid, String> {
    let (error_read, error_write) =
        unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the init is single-threaded, so the child may run ordinary code until exec.
    match unsafe { unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(error_read);
            let errno = become_process(launch, output, null, confinement);
            let bytes = (errno as i32).to_ne_bytes();
            let _ = unistd::write(&error_write, &bytes);
            // SAFETY: _exit ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            drop(error_write);
            let mut report = Vec::new();
            let _ = std::fs::File::from(error_read).read_to_end(&mut report);
            match <[u8; 4]>::try_from(report.as_slice()) {
                Err(_) => Ok(child),
                Ok(bytes) => {
                    let errno = nix::errno::Errno::from_raw(i32::from_ne_bytes(bytes));
                    // The child has already exited; reap it so it is not reported as a crash.
                    let _ = nix::sys::wait::waitpid(child, None);
                    Err(format!(
                        "cannot execute {:?}: {}",
                        launch.argv[0],
                        errno.desc()
                    ))
                }
            }
        }
    }
}

/// In the child: everything between fork and exec. Returns only on failure.
fn become_process(
    launch: &Launch,
    output: BorrowedFd<'_>,
    null: BorrowedFd<'_>,
    confinement: Option<&Confinement>,
) -> nix::errno::Errno {
    let confined = |result: Result<(), ConfinementError>| {
        result
            .map_err(|_| nix::errno::Errno::last_raw().max(1))
            .map_err(nix::errno::Errno::from_raw)
    };
    let result = (|| -> nix::Result<std::convert::Infallible> {
        // The Rust runtime ignores SIGPIPE in the init and an ignored signal stays ignored across
        // exec: give the program the default dispositions a freshly started one expects.
        for signal in Signal::iterator().filter(|s| ![Signal::SIGKILL, Signal::SIGSTOP].contains(s))
        {
            // SAFETY: SIG_DFL installs no handler, and the forked child has a single thread.
            let _ = unsafe { nix::sys::signal::signal(signal, SigHandler::SigDfl) };
        }
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
        unistd::setsid()?;
        unistd::dup2_stdin(null)?;
        unistd::dup2_stdout(output)?;
        unistd::dup2_stderr(output)?;
        crate::confinement::close_on_exec_beyond_stdio()?;
        if let Some(confinement) = confinement {
            confined(confinement.narrow())?;
        }
        unistd::setgroups(&[launch.gid])?;
        unistd::setgid(launch.gid)?;
        unistd::setuid(launch.uid)?;
        if let Some(confinement) = confinement {
            confined(confinement.seal())?;
        }
        if unistd::chdir(launch.home.as_c_str()).is_err() {
            unistd::chdir("/")?;
        }
        unistd::execvpe(&launch.argv[0], &launch.argv, &launch.env)
    })();
    result.err().unwrap_or(nix::errno::Errno::UnknownErrno)
}

/// A pipe whose read end the init keeps and whose write end every run of one process inherits.
/// Only the read end is non-blocking: a process that outruns the init must wait for it, not
/// lose its lines to EAGAIN.
pub fn output_pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = unistd::pipe2(OFlag::O_CLOEXEC)?;
    nix::fcntl::fcntl(&read, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    Ok((read, write))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www:/var/www:/bin/false\n";

    fn spec(user: Option<&str>) -> ProcessSpec {
        ProcessSpec {
            name: "p".into(),
            command: vec!["sleep".into(), "1".into()],
            env: BTreeMap::from([("PATH".into(), "/bin".into())]),
            user: user.map(Into::into),
            restart: crate::config::RestartPolicy::Always,
        }
    }

    #[test]
    fn accounts_are_found_by_name_or_id() {
        assert_eq!(find_account(PASSWD, "www-data").unwrap().uid, 33);
        assert_eq!(find_account(PASSWD, "33").unwrap().home, "/var/www");
        assert!(find_account(PASSWD, "nobody").is_none());
        assert!(find_account("garbage\n::::\n", "root").is_none());
        let group = "root:x:0:\ntty:x:5:\nbroken:x\nodd:x:notanumber:\n";
        assert_eq!(find_group(group, "tty"), Some(5));
        assert_eq!(find_group(group, "broken"), None);
        assert_eq!(find_group(group, "odd"), None);
        assert_eq!(find_group(group, "www-data"), None);
    }

    #[test]
    fn environment_overrides_replace_defaults() {
        let launch = prepare(&spec(Some("www-data")), PASSWD).unwrap();
        let env: Vec<_> = launch.env.iter().map(|e| e.to_str().unwrap()).collect();
        assert!(env.contains(&"PATH=/bin"));
        assert!(!env.contains(&format!("PATH={DEFAULT_PATH}").as_str()));
        assert!(env.contains(&"HOME=/var/www"));
        assert_eq!(launch.uid.as_raw(), 33);
    }

    #[test]
    fn only_the_read_end_of_an_output_pipe_is_non_blocking() {
        let (read, write) = output_pipe().unwrap();
        let flags = |fd: &OwnedFd| {
            OFlag::from_bits_truncate(nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).unwrap())
        };
        assert!(flags(&read).contains(OFlag::O_NONBLOCK));
        assert!(!flags(&write).contains(OFlag::O_NONBLOCK));
    }

    #[test]
    fn unknown_users_are_refused() {
        let error = prepare(&spec(Some("mysql")), PASSWD).unwrap_err();
        assert!(error.contains("mysql"), "{error}");
    }
}
