//! Descriptors a node process may inherit: exactly stdin, stdout and stderr. Whatever else its
//! parent holds (the init's handshake and control sockets, its directory of the host's logs,
//! the caller's descriptors in `exec`) is a way out of the node if it crosses an exec.

/// The first descriptor a node process never inherits.
const FIRST_PRIVATE: libc::c_uint = 3;

/// Marks every descriptor from 3 up close-on-exec, in one system call (`close_range` with
/// `CLOSE_RANGE_CLOEXEC`, Linux 5.11). Called in a forked child just before exec: descriptors
/// it still needs until then (the pipe that reports a failed exec) stay usable, and the program
/// starts with 0, 1 and 2 only.
pub fn close_on_exec_beyond_stdio() -> nix::Result<()> {
    // SAFETY: close_range takes plain integers and only changes descriptor flags.
    let result = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            FIRST_PRIVATE,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if result != 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}

/// Sets close-on-exec on descriptors this process was handed open at fixed numbers (the init's
/// 3, 4 and 5), so no program it starts can inherit them, whatever path starts it.
pub fn keep_private(fds: &[std::os::fd::RawFd]) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    for &fd in fds {
        // SAFETY: the caller names descriptors this process holds open for its whole life.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    use std::os::fd::AsRawFd;

    fn cloexec(fd: std::os::fd::RawFd) -> bool {
        // SAFETY: the tests ask only about descriptors they hold open.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD).unwrap())
            .contains(FdFlag::FD_CLOEXEC)
    }

    #[test]
    fn a_forked_child_marks_everything_beyond_stdio() {
        let (read, write) = nix::unistd::pipe().unwrap();
        assert!(!cloexec(read.as_raw_fd()));
        // SAFETY: the child makes only raw system calls and _exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let ok = close_on_exec_beyond_stdio().is_ok()
                    && cloexec(read.as_raw_fd())
                    && cloexec(write.as_raw_fd())
                    && !cloexec(0);
                // SAFETY: ends the child without running the test harness's handlers.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }

    #[test]
    fn private_descriptors_are_close_on_exec() {
        let (read, _write) = nix::unistd::pipe().unwrap();
        keep_private(&[read.as_raw_fd()]).unwrap();
        assert!(cloexec(read.as_raw_fd()));
    }
}
