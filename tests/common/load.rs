//! CPU load for tests: busy loops, one process each, killed by pid and reaped when dropped (and
//! by the kernel if the thread that started them ends first: `PR_SET_PDEATHSIG`).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

pub struct BusyLoops(Vec<Child>);

impl BusyLoops {
    /// `count` shells spinning `while :; do :; done`.
    pub fn start(count: usize) -> BusyLoops {
        let loops = (0..count)
            .map(|_| {
                let mut command = Command::new("sh");
                command
                    .args(["-c", "while :; do :; done"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null());
                // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
                unsafe {
                    command.pre_exec(|| {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                command.spawn().expect("sh")
            })
            .collect();
        BusyLoops(loops)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.0.iter().map(Child::id).collect()
    }
}

impl Drop for BusyLoops {
    fn drop(&mut self) {
        for child in &mut self.0 {
            // SAFETY: kill on the pid of a child we have not reaped yet.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}
