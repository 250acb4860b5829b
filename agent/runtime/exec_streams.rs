//! The streams of an `exec`'d command without a terminal. The caller's pipes belong to the host's
//! root, whom the node's user namespace cannot name: a tool that reopens /dev/stdout or
//! /dev/stderr (`nginx -T`, a logger writing to /dev/stderr) gets EACCES on them. So `exec` makes
//! new pipes inside the node, as the command's user, and relays them to the caller's stdio.
//!
//! When the caller's stdout and stderr are the same file (`2>&1`), the command gets one pipe for
//! both, so the order of its lines is kept.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd;

/// The command's ends: its stdin, stdout and (unless merged into stdout) stderr.
pub struct CommandStreams {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: Option<OwnedFd>,
}

/// The relay's ends: where the caller's input goes, and where the command's output comes from.
pub struct CallerStreams {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: Option<OwnedFd>,
}

/// New pipes for a command, owned by the filesystem ids in force (set them to the command's
/// user first). Every end is close-on-exec and above the standard descriptors, so installing
/// them as 0, 1 and 2 never overwrites one that is still to be installed.
pub fn open() -> std::io::Result<(CommandStreams, CallerStreams)> {
    let (stdin_read, stdin_write) = pipe()?;
    let (stdout_read, stdout_write) = pipe()?;
    let (stderr_read, stderr_write) = if same_file(1, 2) {
        (None, None)
    } else {
        let (read, write) = pipe()?;
        (Some(read), Some(write))
    };
    for fd in [&stdout_read, &stdin_write].into_iter().chain(&stderr_read) {
        fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    }
    Ok((
        CommandStreams {
            stdin: stdin_read,
            stdout: stdout_write,
            stderr: stderr_write,
        },
        CallerStreams {
            stdin: stdin_write,
            stdout: stdout_read,
            stderr: stderr_read,
        },
    ))
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = unistd::pipe2(OFlag::O_CLOEXEC)?;
    Ok((above_stdio(read)?, above_stdio(write)?))
}

/// `fd`, moved to 3 or above when the caller had a standard descriptor closed.
fn above_stdio(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let moved = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor, owned by nothing else.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(moved) })
}

/// Whether two of our descriptors are the same file (a shell's `2>&1`).
fn same_file(a: RawFd, b: RawFd) -> bool {
    // SAFETY: the caller's standard descriptors, open for the whole of this call.
    let (a, b) = unsafe { (BorrowedFd::borrow_raw(a), BorrowedFd::borrow_raw(b)) };
    match (nix::sys::stat::fstat(a), nix::sys::stat::fstat(b)) {
        (Ok(a), Ok(b)) => (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino),
        _ => false,
    }
}

impl CommandStreams {
    /// In the command's process: its pipes become 0, 1 and 2 (the duplicates are not
    /// close-on-exec, the originals are).
    pub fn install(&self) -> nix::Result<()> {
        unistd::dup2_stdin(&self.stdin)?;
        unistd::dup2_stdout(&self.stdout)?;
        unistd::dup2_stderr(self.stderr.as_ref().unwrap_or(&self.stdout))?;
        Ok(())
    }
}

impl CallerStreams {
    /// Copies the caller's stdin to the command and its output to the caller's stdout and
    /// stderr until the command exits (`child_exit`, its pidfd, becomes readable); what it wrote
    /// before is copied out, what a process it left behind writes later is not waited for.
    /// Input is dropped once the command closes its stdin; output stops once the caller's side
    /// is closed, so the command gets EPIPE as it would writing there itself.
    pub fn relay(self, child_exit: BorrowedFd<'_>) {
        // A closed reader must be an EPIPE to handle here, not the end of the caller.
        // SAFETY: changing a signal disposition has no memory effects.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let mut input = Input {
            to_command: Some(self.stdin),
            pending: Vec::new(),
            caller_open: true,
        };
        let mut outputs: Vec<(OwnedFd, RawFd)> = std::iter::once((self.stdout, 1))
            .chain(self.stderr.map(|stderr| (stderr, 2)))
            .collect();
        let mut buffer = vec![0u8; 64 << 10];
        loop {
            // Polled: the command's exit, its outputs, then its stdin while input waits for
            // it, or the caller's stdin while the command waits for input.
            let writing = input
                .to_command
                .as_ref()
                .filter(|_| !input.pending.is_empty());
            let reading = input.wants_caller();
            let mut fds = vec![PollFd::new(child_exit, PollFlags::POLLIN)];
            for (from, _) in &outputs {
                fds.push(PollFd::new(from.as_fd(), PollFlags::POLLIN));
            }
            let write_at = writing.map(|fd| {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLOUT));
                fds.len() - 1
            });
            let read_at = reading.then(|| {
                fds.push(PollFd::new(stdin_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(_) => return,
            }
            let ready: Vec<bool> = fds
                .iter()
                .map(|fd| fd.revents().is_some_and(|events| !events.is_empty()))
                .collect();
            drop(fds);
            let mut at = 0;
            outputs.retain(|(from, to)| {
                at += 1;
                !ready[at] || copy_out(from.as_fd(), *to, &mut buffer)
            });
            if write_at.is_some_and(|at| ready[at]) {
                input.write();
            }
            if read_at.is_some_and(|at| ready[at]) {
                input.read(&mut buffer);
            }
            if ready[0] {
                for (from, to) in &outputs {
                    drain(from.as_fd(), *to, &mut buffer);
                }
                return;
            }
        }
    }
}

/// The caller's stdin on its way to the command.
struct Input {
    /// `None` once the command has all there is, or closed its end.
    to_command: Option<OwnedFd>,
    /// Read from the caller, not yet taken by the command.
    pending: Vec<u8>,
    caller_open: bool,
}

impl Input {
    fn wants_caller(&self) -> bool {
        self.to_command.is_some() && self.caller_open && self.pending.is_empty()
    }

    fn read(&mut self, buffer: &mut [u8]) {
        match unistd::read(std::io::stdin(), buffer) {
            Ok(0) | Err(_) => self.caller_open = false,
            Ok(count) => self.pending.extend_from_slice(&buffer[..count]),
        }
        self.close_when_done();
    }

    fn write(&mut self) {
        let Some(fd) = &self.to_command else {
            return;
        };
        match unistd::write(fd, &self.pending) {
            Ok(count) => {
                self.pending.drain(..count);
            }
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
            // The command closed its stdin (or exited): nothing more goes to it.
            Err(_) => {
                self.to_command = None;
                self.pending.clear();
            }
        }
        self.close_when_done();
    }

    /// The command sees the end of its input once the caller's ended and all of it was taken.
    fn close_when_done(&mut self) {
        if !self.caller_open && self.pending.is_empty() {
            self.to_command = None;
        }
    }
}

fn stdin_fd() -> BorrowedFd<'static> {
    // SAFETY: descriptor 0 stays open for the whole relay (nothing here closes it); a closed one
    // shows as POLLNVAL and ends the reading.
    unsafe { BorrowedFd::borrow_raw(0) }
}

/// One read of `from` copied to the caller's descriptor `to`; false at the end of that output
/// (its end of file, an error, or a caller that no longer reads).
fn copy_out(from: BorrowedFd<'_>, to: RawFd, buffer: &mut [u8]) -> bool {
    match copy_once(from, to, buffer) {
        Ok(count) => count > 0,
        Err(Errno::EAGAIN) | Err(Errno::EINTR) => true,
        Err(_) => false,
    }
}

/// Copies what `from` holds now, and no more: a process the command left behind may go on
/// writing there for ever.
fn drain(from: BorrowedFd<'_>, to: RawFd, buffer: &mut [u8]) {
    let mut waiting: libc::c_int = 0;
    // SAFETY: FIONREAD writes the number of bytes in the pipe into the int we own.
    if unsafe { libc::ioctl(from.as_raw_fd(), libc::FIONREAD, &mut waiting) } < 0 {
        return;
    }
    let mut left = usize::try_from(waiting).unwrap_or(0);
    while left > 0 {
        let chunk = left.min(buffer.len());
        match copy_once(from, to, &mut buffer[..chunk]) {
            Ok(count) if count > 0 => left -= count.min(left),
            _ => return,
        }
    }
}

/// One read of `from`, written whole to `to`: how much (0 at the end of file).
fn copy_once(from: BorrowedFd<'_>, to: RawFd, buffer: &mut [u8]) -> nix::Result<usize> {
    let count = unistd::read(from, buffer)?;
    // SAFETY: the caller's stdout and stderr stay open while we relay.
    let to = unsafe { BorrowedFd::borrow_raw(to) };
    write_all(to, &buffer[..count])?;
    Ok(count)
}

/// Writes all of `data`, waiting while `fd` is full (a caller's descriptor may be non-blocking).
pub fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> nix::Result<()> {
    while !data.is_empty() {
        match unistd::write(fd, data) {
            Ok(written) => data = &data[written..],
            Err(Errno::EAGAIN) => {
                let mut ready = [PollFd::new(fd, PollFlags::POLLOUT)];
                poll(&mut ready, PollTimeout::NONE)?;
            }
            Err(Errno::EINTR) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}
