//! PID 1 inside a node: the agent binary re-executed into the node's namespaces.
//!
//! It waits for the daemon's go, builds the node's root, starts the role's processes, reports
//! ready, then supervises: reaps every child, restarts processes with backoff, relays their
//! output to log files, answers the daemon on its control socket, and stops gracefully.
//! Single-threaded by design: it forks, and a forking process must not have other threads.

mod fence;
mod health;
pub mod lease;
mod logs;
mod probe;
mod process;
pub mod rootfs;
pub mod supervisor;

/// `exec` looks users up and builds the environment the way role processes get them.
pub(crate) use process::{find_account, find_group, Account, DEFAULT_PATH};

use std::fs::File;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::api::init::{
    Handshake, InitPlan, InitReply, InitRequest, CONTROL_FD, FREEZE_FD, HANDSHAKE_FD, LOG_DIR_FD,
};
use crate::api::{read_message, write_message};
use crate::config::LogRotation;
use crate::confinement::Confinement;
use fence::{Fence, Renewed};
use logs::LogFile;
use probe::Prober;
use supervisor::{Exit, Supervisor};

/// How long a process must have run before it is sent a reload signal: a program still setting
/// itself up may not handle the signal yet (haproxy's master then loses a reload), so one sent
/// sooner is held until then.
const SIGNAL_GRACE: Duration = Duration::from_secs(1);

/// Runs the init; the return value is its exit status.
pub fn main() -> i32 {
    // Handed over open across the exec; from here on no program the init starts may inherit
    // them, whatever path starts it.
    if let Err(error) =
        crate::confinement::keep_private(&[HANDSHAKE_FD, CONTROL_FD, LOG_DIR_FD, FREEZE_FD])
    {
        eprintln!("magestack-agent init: close-on-exec on the daemon's descriptors: {error}");
        return 1;
    }
    // SAFETY: the daemon passes these descriptors open at these numbers and nothing else in this
    // process owns them.
    let (handshake, control, log_dir, freeze) = unsafe {
        (
            File::from_raw_fd(HANDSHAKE_FD),
            UnixListener::from_raw_fd(CONTROL_FD),
            OwnedFd::from_raw_fd(LOG_DIR_FD),
            File::from_raw_fd(FREEZE_FD),
        )
    };
    let mut own_log = LogFile::new(
        log_dir.try_clone().expect("dup log dir"),
        "init",
        LogRotation::default(),
    );
    match Init::start(handshake, control, log_dir, freeze, &mut own_log) {
        Ok(mut init) => {
            init.run(&mut own_log);
            0
        }
        Err(message) => {
            own_log.append(format!("init: {message}\n").as_bytes());
            1
        }
    }
}

/// Moves the init (single-threaded, so its only thread is the whole process) into the node's
/// cgroup, then roots a new cgroup namespace there so the node sees its cgroup as `/`.
fn join_cgroup(files: &[std::path::PathBuf]) -> Result<(), String> {
    if files.is_empty() {
        return Ok(());
    }
    for file in files {
        std::fs::write(file, "0").map_err(|e| format!("{}: {e}", file.display()))?;
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| format!("unshare cgroup namespace: {e}"))
}

struct Init {
    plan: InitPlan,
    supervisor: Supervisor,
    signals: SignalFd,
    control: UnixListener,
    null: OwnedFd,
    /// One output pipe (read, write) and log file per process, in spec order.
    outputs: Vec<(OwnedFd, OwnedFd, LogFile)>,
    /// The role's health check; `None` when it has none.
    prober: Option<Prober>,
    /// Capabilities, no_new_privs and seccomp for every process the node runs.
    confinement: Confinement,
    stop_deadline: Option<Instant>,
    /// Reload signals held until their process has run for [`SIGNAL_GRACE`]: (when, pid, signal).
    held_signals: Vec<(Instant, i32, Signal)>,
    /// The lease the agent renews, and the fence when it lapses.
    fence: Fence,
}

impl Init {
    /// The spawn handshake: wait for go, build the root, start the processes, report.
    fn start(
        handshake: File,
        control: UnixListener,
        log_dir: OwnedFd,
        freeze: File,
        own_log: &mut LogFile,
    ) -> Result<Init, String> {
        // Nothing in the node may ptrace its init or read its memory and inherited descriptors.
        // SAFETY: prctl with PR_SET_DUMPABLE takes plain integers.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
        let mut mask = SigSet::empty();
        for signal in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
        ] {
            mask.add(signal);
        }
        mask.thread_block()
            .map_err(|e| format!("block signals: {e}"))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| format!("signalfd: {e}"))?;

        let plan = match read_message::<Handshake>(&handshake) {
            Ok(Handshake::Go(plan)) => *plan,
            Ok(other) => return Err(format!("expected go from the daemon, got {other:?}")),
            Err(error) => return Err(format!("no go from the daemon: {error}")),
        };
        own_log.set_rotation(plan.log_rotation);
        let fail = |step: &str, error: String| {
            let _ = write_message(
                &handshake,
                &Handshake::Failed {
                    step: step.into(),
                    error: error.clone(),
                },
            );
            format!("{step}: {error}")
        };

        join_cgroup(&plan.join_cgroup).map_err(|e| fail("join the node's cgroup", e))?;
        if !plan.network_configured {
            crate::net::configure_inside(&plan.spec.network)
                .map_err(|e| fail("configure the node's network", e.to_string()))?;
        }
        let steps = rootfs::plan(&plan).map_err(|e| fail("plan root filesystem", e))?;
        rootfs::apply(&steps, &plan.root_mount)
            .map_err(|e| fail("build root filesystem", e.to_string()))?;
        nix::unistd::sethostname(&plan.spec.name)
            .map_err(|e| fail("set hostname", e.to_string()))?;
        std::env::set_var("PATH", process::DEFAULT_PATH);
        let null = File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| fail("open /dev/null", e.to_string()))?;

        let mut outputs = Vec::new();
        for spec in &plan.spec.definition.processes {
            let (read, write) =
                process::output_pipe().map_err(|e| fail("create output pipe", e.to_string()))?;
            let dir = log_dir
                .try_clone()
                .map_err(|e| fail("open log directory", e.to_string()))?;
            outputs.push((
                read,
                write,
                LogFile::new(dir, &spec.name, plan.log_rotation),
            ));
        }
        control
            .set_nonblocking(true)
            .map_err(|e| fail("control socket", e.to_string()))?;
        let confinement = Confinement::new(&plan.spec.definition.capabilities)
            .map_err(|e| fail("prepare confinement", e.to_string()))?;

        let fence = Fence::new(
            plan.spec.network.clone(),
            plan.freeze_value.clone().map(|value| (freeze, value)),
        );
        let now = Instant::now();
        let mut init = Init {
            fence,
            supervisor: Supervisor::new(plan.spec.definition.processes.clone(), now),
            prober: plan
                .spec
                .definition
                .health
                .as_ref()
                .map(|spec| Prober::new(spec, now)),
            confinement,
            plan,
            signals,
            control,
            null: null.into(),
            outputs,
            stop_deadline: None,
            held_signals: Vec::new(),
        };
        init.start_due(own_log);
        let ready = Handshake::Ready {
            processes: init.supervisor.statuses(),
        };
        write_message(&handshake, &ready).map_err(|e| format!("report ready: {e}"))?;
        Ok(init)
    }

    fn start_due(&mut self, own_log: &mut LogFile) {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        for index in self.supervisor.due(Instant::now()) {
            let spec = &self.supervisor.process(index).spec;
            let name = spec.name.clone();
            let started = process::prepare(spec, &passwd).and_then(|launch| {
                process::spawn(
                    &launch,
                    self.outputs[index].1.as_fd(),
                    self.null.as_fd(),
                    Some(&self.confinement),
                )
            });
            match started {
                Ok(pid) => self.supervisor.started(index, pid.as_raw(), Instant::now()),
                Err(error) => {
                    own_log.append(format!("process {name}: {error}\n").as_bytes());
                    self.supervisor.exec_failed(index, error);
                }
            }
        }
    }

    /// The supervision loop; returns when the node has stopped.
    fn run(&mut self, own_log: &mut LogFile) {
        loop {
            if self.supervisor.is_stopping() && self.supervisor.running_pids().is_empty() {
                break;
            }
            let timeout = self.poll_timeout();
            let (signal_ready, control_ready, output_ready, probe_ready) = {
                let mut fds = vec![
                    PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.control.as_fd(), PollFlags::POLLIN),
                ];
                fds.extend(
                    self.outputs
                        .iter()
                        .map(|(read, _, _)| PollFd::new(read.as_fd(), PollFlags::POLLIN)),
                );
                let outputs_end = fds.len();
                fds.extend(self.prober.as_ref().and_then(Prober::poll_fd));
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(error) => {
                        own_log.append(format!("poll: {error}\n").as_bytes());
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                (
                    ready(&fds[0]),
                    ready(&fds[1]),
                    fds[2..outputs_end].iter().map(ready).collect::<Vec<_>>(),
                    fds[outputs_end..].iter().any(ready),
                )
            };
            for (index, ready) in output_ready.into_iter().enumerate() {
                if ready {
                    self.relay_output(index);
                }
            }
            if signal_ready {
                self.handle_signals();
            }
            if probe_ready {
                if let Some(prober) = &mut self.prober {
                    prober.socket_ready(Instant::now());
                }
            }
            if control_ready {
                self.handle_control(own_log);
            }
            self.fence.enforce(own_log);
            self.enforce_stop_deadline(own_log);
            self.deliver_held_signals(Instant::now());
            self.start_due(own_log);
            if let Some(prober) = &mut self.prober {
                if !self.supervisor.is_stopping() {
                    prober.tick(Instant::now(), self.null.as_fd(), Some(&self.confinement));
                }
            }
        }
        // Whatever is left in the namespace (strays, exec'd shells) goes with the node.
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        for index in 0..self.outputs.len() {
            self.relay_output(index);
        }
        own_log.append(b"init: node stopped\n");
    }

    fn poll_timeout(&self) -> PollTimeout {
        let deadline = [
            self.supervisor.next_deadline(),
            self.stop_deadline,
            self.prober.as_ref().and_then(Prober::next_deadline),
            self.held_signals.iter().map(|(at, _, _)| *at).min(),
            self.fence.remaining().map(|left| Instant::now() + left),
        ]
        .into_iter()
        .flatten()
        .min();
        match deadline {
            None => PollTimeout::NONE,
            Some(at) => {
                let millis = at.saturating_duration_since(Instant::now()).as_millis() + 1;
                PollTimeout::from(u16::try_from(millis).unwrap_or(u16::MAX))
            }
        }
    }

    fn relay_output(&mut self, index: usize) {
        let (read, _, log) = &mut self.outputs[index];
        let mut buffer = [0u8; 16 * 1024];
        for _ in 0..64 {
            match nix::unistd::read(&*read, &mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(count) => log.append(&buffer[..count]),
            }
        }
    }

    fn handle_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => self.reap(),
                Ok(Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP) => self.begin_stop(),
                _ => {}
            }
        }
        // Signals coalesce: reap again in case a SIGCHLD was merged with another.
        self.reap();
    }

    /// Reaps every exited child: supervised processes, the exec health check, and orphans
    /// re-parented to PID 1.
    fn reap(&mut self) {
        loop {
            let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, Exit::Signal(signal as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            let now = Instant::now();
            let health_check = self
                .prober
                .as_mut()
                .is_some_and(|prober| prober.exited(pid.as_raw(), exit, now));
            if !health_check {
                self.supervisor.exited(pid.as_raw(), exit, now);
            }
        }
    }

    fn begin_stop(&mut self) {
        if self.supervisor.is_stopping() {
            return;
        }
        self.supervisor.begin_stop();
        if let Some(prober) = &mut self.prober {
            prober.pause();
        }
        self.stop_deadline = Some(Instant::now() + self.plan.stop_timeout);
        for pid in self.supervisor.running_pids() {
            // Each process leads its own session: signal the whole group it may have forked.
            let _ = kill(Pid::from_raw(-pid), Signal::SIGTERM);
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }

    fn enforce_stop_deadline(&mut self, own_log: &mut LogFile) {
        if self.stop_deadline.is_some_and(|at| Instant::now() >= at) {
            own_log.append(b"init: stop timeout reached; killing what is left\n");
            let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
            self.stop_deadline = None;
        }
    }

    fn handle_control(&mut self, own_log: &mut LogFile) {
        while let Ok((stream, _)) = self.control.accept() {
            if let Err(error) = self.answer(stream, own_log) {
                own_log.append(format!("control: {error}\n").as_bytes());
            }
        }
    }

    /// Sends `signal` to the main pid of the named process, if it runs; the pid signalled.
    fn signal_process(&mut self, process: &str, signal: &str) -> Option<i32> {
        let signal: Signal = signal.parse().ok()?;
        let (pid, started_at) = self.supervisor.running(process)?;
        let due = started_at + SIGNAL_GRACE;
        if Instant::now() < due {
            self.held_signals.push((due, pid, signal));
        } else {
            kill(Pid::from_raw(pid), signal).ok()?;
        }
        Some(pid)
    }

    /// Sends the held signals that are due, to processes still running under the same pid.
    fn deliver_held_signals(&mut self, now: Instant) {
        let running = self.supervisor.running_pids();
        self.held_signals.retain(|(at, pid, signal)| {
            if *at > now {
                return true;
            }
            if running.contains(pid) {
                let _ = kill(Pid::from_raw(*pid), *signal);
            }
            false
        });
    }

    fn answer(
        &mut self,
        stream: UnixStream,
        own_log: &mut LogFile,
    ) -> Result<(), crate::api::WireError> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.set_write_timeout(Some(Duration::from_secs(1)))?;
        let reply = match read_message::<InitRequest>(&stream)? {
            InitRequest::Status => InitReply::Status {
                processes: self.supervisor.statuses(),
                health: self
                    .prober
                    .as_ref()
                    .map_or_else(health::no_check, Prober::status),
            },
            InitRequest::Stop => {
                self.begin_stop();
                InitReply::Stopping
            }
            InitRequest::Signal { process, signal } => InitReply::Signalled {
                pid: self.signal_process(&process, &signal),
            },
            InitRequest::Renew { lease } => match self.fence.renew(lease, own_log) {
                Renewed::Extended => InitReply::Renewed { unfenced: false },
                Renewed::Unfenced => InitReply::Renewed { unfenced: true },
                Renewed::StillFenced(error) => InitReply::StillFenced { error },
            },
        };
        write_message(&stream, &reply)
    }
}
