//! What the init decides about its processes, kept free of syscalls so every rule is testable:
//! when to start, when to restart, how long to back off, when a process is crash-looping.

use std::time::{Duration, Instant};

use crate::api::init::{ProcessState, ProcessStatus};
use crate::config::{ProcessSpec, RestartPolicy};

/// First restart delay; doubles for every quick exit in a row.
pub const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// The longest delay between restarts.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A process that ran at least this long before exiting is restarted without backoff history.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Quick exits in a row after which a process is marked crash-looping.
pub const CRASHLOOP_AFTER: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    fn is_success(self) -> bool {
        self == Exit::Code(0)
    }

    pub fn describe(self) -> String {
        match self {
            Exit::Code(code) => format!("exited with status {code}"),
            Exit::Signal(signal) => format!("killed by signal {signal}"),
        }
    }
}

#[derive(Debug)]
pub struct Supervised {
    pub spec: ProcessSpec,
    pub pid: Option<i32>,
    pub state: ProcessState,
    pub restarts: u32,
    quick_exits: u32,
    started_at: Option<Instant>,
    next_start: Option<Instant>,
    last_error: Option<String>,
}

#[derive(Debug)]
pub struct Supervisor {
    processes: Vec<Supervised>,
    stopping: bool,
}

impl Supervisor {
    /// Every process is due at once.
    pub fn new(specs: Vec<ProcessSpec>, now: Instant) -> Self {
        let processes = specs
            .into_iter()
            .map(|spec| Supervised {
                spec,
                pid: None,
                state: ProcessState::Backoff,
                restarts: 0,
                quick_exits: 0,
                started_at: None,
                next_start: Some(now),
                last_error: None,
            })
            .collect();
        Supervisor {
            processes,
            stopping: false,
        }
    }

    pub fn process(&self, index: usize) -> &Supervised {
        &self.processes[index]
    }

    /// Processes whose start time has come.
    pub fn due(&self, now: Instant) -> Vec<usize> {
        if self.stopping {
            return Vec::new();
        }
        self.processes
            .iter()
            .enumerate()
            .filter(|(_, p)| p.pid.is_none() && p.next_start.is_some_and(|at| at <= now))
            .map(|(index, _)| index)
            .collect()
    }

    pub fn started(&mut self, index: usize, pid: i32, now: Instant) {
        let process = &mut self.processes[index];
        if process.started_at.is_some() {
            process.restarts += 1;
        }
        process.pid = Some(pid);
        process.started_at = Some(now);
        process.next_start = None;
        // A crash-looping process that is up again shows as running; its run of quick exits
        // is kept, so the next quick exit marks it crash-looping again at once.
        process.state = ProcessState::Running;
    }

    /// The program could not be executed at all: retrying cannot help.
    pub fn exec_failed(&mut self, index: usize, error: String) {
        let process = &mut self.processes[index];
        process.pid = None;
        process.next_start = None;
        process.state = ProcessState::Failed;
        process.last_error = Some(error);
    }

    /// Records a reaped child; false if it was not one of the supervised processes.
    pub fn exited(&mut self, pid: i32, exit: Exit, now: Instant) -> bool {
        let stopping = self.stopping;
        let Some(process) = self.processes.iter_mut().find(|p| p.pid == Some(pid)) else {
            return false;
        };
        process.pid = None;
        let ran_for = process
            .started_at
            .map(|at| now.saturating_duration_since(at))
            .unwrap_or_default();
        if !exit.is_success() || ran_for < STABLE_AFTER {
            process.last_error = Some(exit.describe());
        }
        if stopping {
            process.state = ProcessState::Stopped;
            return true;
        }
        let restart = match process.spec.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !exit.is_success(),
            RestartPolicy::Never => false,
        };
        if !restart {
            process.state = ProcessState::Exited;
            return true;
        }
        process.quick_exits = if ran_for < STABLE_AFTER {
            process.quick_exits + 1
        } else {
            0
        };
        let delay = backoff(process.quick_exits);
        process.next_start = Some(now + delay);
        if process.quick_exits >= CRASHLOOP_AFTER {
            process.state = ProcessState::Crashloop;
            process.last_error = Some(format!(
                "crash loop: {} quick exits in a row, last {}; next try in {:.1}s",
                process.quick_exits,
                exit.describe(),
                delay.as_secs_f64()
            ));
        } else {
            process.state = ProcessState::Backoff;
        }
        true
    }

    /// When the next restart is due, to bound the event loop's wait.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.stopping {
            return None;
        }
        self.processes.iter().filter_map(|p| p.next_start).min()
    }

    /// No more starts or restarts from now on.
    pub fn begin_stop(&mut self) {
        self.stopping = true;
        for process in &mut self.processes {
            process.next_start = None;
            if process.pid.is_none() {
                process.state = ProcessState::Stopped;
            }
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// The pid of process `name` and when it started, while it runs.
    pub fn running(&self, name: &str) -> Option<(i32, Instant)> {
        let process = self.processes.iter().find(|p| p.spec.name == name)?;
        Some((process.pid?, process.started_at?))
    }

    pub fn running_pids(&self) -> Vec<i32> {
        self.processes.iter().filter_map(|p| p.pid).collect()
    }

    pub fn statuses(&self) -> Vec<ProcessStatus> {
        self.processes
            .iter()
            .map(|p| ProcessStatus {
                name: p.spec.name.clone(),
                pid: p.pid,
                state: p.state,
                restarts: p.restarts,
                last_error: p.last_error.clone(),
            })
            .collect()
    }
}

/// Delay before the restart that follows `quick_exits` quick exits in a row.
pub fn backoff(quick_exits: u32) -> Duration {
    if quick_exits == 0 {
        return BACKOFF_BASE;
    }
    let factor = 1u32 << (quick_exits - 1).min(16);
    (BACKOFF_BASE * factor).min(BACKOFF_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn spec(name: &str, restart: RestartPolicy) -> ProcessSpec {
        ProcessSpec {
            name: name.into(),
            command: vec!["x".into()],
            env: BTreeMap::new(),
            user: None,
            restart,
        }
    }

    #[test]
    fn everything_starts_at_once() {
        let now = Instant::now();
        let supervisor = Supervisor::new(
            vec![
                spec("a", RestartPolicy::Always),
                spec("b", RestartPolicy::Never),
            ],
            now,
        );
        assert_eq!(supervisor.due(now), vec![0, 1]);
    }

    #[test]
    fn quick_exits_back_off_exponentially_then_crashloop() {
        let mut now = Instant::now();
        let mut supervisor = Supervisor::new(vec![spec("a", RestartPolicy::Always)], now);
        let mut delays = Vec::new();
        for pid in 1..=6 {
            assert_eq!(supervisor.due(now), vec![0]);
            supervisor.started(0, pid, now);
            now += Duration::from_millis(10);
            assert!(supervisor.exited(pid, Exit::Code(1), now));
            let next = supervisor.next_deadline().unwrap();
            delays.push(next - now);
            assert!(
                supervisor.due(now).is_empty(),
                "no restart before the delay"
            );
            now = next;
        }
        assert_eq!(delays[0], BACKOFF_BASE);
        assert_eq!(delays[1], BACKOFF_BASE * 2);
        assert_eq!(delays[2], BACKOFF_BASE * 4);
        assert_eq!(supervisor.process(0).state, ProcessState::Crashloop);
        assert_eq!(supervisor.process(0).restarts, 5);
        assert!(supervisor.statuses()[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("crash loop"));
    }

    #[test]
    fn backoff_is_capped() {
        assert_eq!(backoff(40), BACKOFF_CAP);
        assert!(backoff(7) <= BACKOFF_CAP);
    }

    #[test]
    fn a_stable_run_resets_the_backoff() {
        let mut now = Instant::now();
        let mut supervisor = Supervisor::new(vec![spec("a", RestartPolicy::Always)], now);
        for pid in 1..=3 {
            supervisor.started(0, pid, now);
            supervisor.exited(pid, Exit::Code(1), now);
            now = supervisor.next_deadline().unwrap();
        }
        assert_eq!(supervisor.process(0).state, ProcessState::Crashloop);
        supervisor.started(0, 10, now);
        now += STABLE_AFTER;
        supervisor.exited(10, Exit::Signal(9), now);
        assert_eq!(supervisor.process(0).state, ProcessState::Backoff);
        assert_eq!(supervisor.next_deadline().unwrap() - now, BACKOFF_BASE);
    }

    #[test]
    fn restart_policies() {
        let now = Instant::now();
        let mut supervisor = Supervisor::new(
            vec![
                spec("always", RestartPolicy::Always),
                spec("failure", RestartPolicy::OnFailure),
                spec("never", RestartPolicy::Never),
            ],
            now,
        );
        for index in 0..3 {
            supervisor.started(index, index as i32 + 1, now);
        }
        for pid in 1..=3 {
            supervisor.exited(pid, Exit::Code(0), now);
        }
        let states: Vec<_> = supervisor.statuses().iter().map(|s| s.state).collect();
        assert_eq!(
            states,
            [
                ProcessState::Backoff,
                ProcessState::Exited,
                ProcessState::Exited
            ]
        );
    }

    #[test]
    fn exec_failures_are_not_retried() {
        let now = Instant::now();
        let mut supervisor = Supervisor::new(vec![spec("a", RestartPolicy::Always)], now);
        supervisor.exec_failed(0, "No such file or directory".into());
        assert_eq!(supervisor.process(0).state, ProcessState::Failed);
        assert!(supervisor.due(now + BACKOFF_CAP).is_empty());
        assert!(supervisor.next_deadline().is_none());
    }

    #[test]
    fn stopping_ends_restarts_and_marks_exits_stopped() {
        let now = Instant::now();
        let mut supervisor = Supervisor::new(vec![spec("a", RestartPolicy::Always)], now);
        supervisor.started(0, 7, now);
        supervisor.begin_stop();
        assert_eq!(supervisor.running_pids(), vec![7]);
        supervisor.exited(7, Exit::Signal(15), now);
        assert_eq!(supervisor.process(0).state, ProcessState::Stopped);
        assert!(supervisor.due(now + BACKOFF_CAP).is_empty());
        assert!(supervisor.running_pids().is_empty());
    }

    #[test]
    fn strangers_are_not_ours() {
        let now = Instant::now();
        let mut supervisor = Supervisor::new(vec![spec("a", RestartPolicy::Always)], now);
        assert!(!supervisor.exited(99, Exit::Code(0), now));
    }

    /// One thing that can happen to a supervised process.
    #[derive(Debug, Clone)]
    enum Step {
        /// Time passes, then every due process is started.
        StartDue {
            after_ms: u64,
        },
        /// A running process exits after running this long.
        Exit {
            index: usize,
            ran_ms: u64,
            code: i32,
        },
        ExecFailed {
            index: usize,
        },
        Stop,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u64..40_000).prop_map(|after_ms| Step::StartDue { after_ms }),
            (0usize..3, 0u64..20_000, -1i32..3).prop_map(|(index, ran_ms, code)| Step::Exit {
                index,
                ran_ms,
                code
            }),
            (0usize..3).prop_map(|index| Step::ExecFailed { index }),
            Just(Step::Stop),
        ]
    }

    proptest! {
        /// Whatever the processes do, the next restart is never sooner than the base delay
        /// after an exit nor later than the cap (no busy loop, no process given up for good
        /// unless exec failed or it is stopping), and nothing starts while stopping.
        #[test]
        fn restarts_are_always_backed_off_within_bounds(
            steps in proptest::collection::vec(step(), 0..60),
        ) {
            let mut now = Instant::now();
            let policies = [RestartPolicy::Always, RestartPolicy::OnFailure, RestartPolicy::Never];
            let specs = policies.iter().enumerate().map(|(i, p)| spec(&format!("p{i}"), *p)).collect();
            let mut supervisor = Supervisor::new(specs, now);
            let mut next_pid = 2;
            for step in steps {
                match step {
                    Step::StartDue { after_ms } => {
                        now += Duration::from_millis(after_ms);
                        for index in supervisor.due(now) {
                            prop_assert!(!supervisor.is_stopping());
                            supervisor.started(index, next_pid, now);
                            next_pid += 1;
                        }
                    }
                    Step::Exit { index, ran_ms, code } => {
                        let Some(pid) = supervisor.process(index).pid else { continue };
                        now += Duration::from_millis(ran_ms);
                        let exit = if code < 0 { Exit::Signal(9) } else { Exit::Code(code) };
                        prop_assert!(supervisor.exited(pid, exit, now));
                        let process = supervisor.process(index);
                        prop_assert!(process.pid.is_none());
                        if let Some(at) = process.next_start {
                            let delay = at - now;
                            prop_assert!(delay >= BACKOFF_BASE && delay <= BACKOFF_CAP, "{delay:?}");
                        }
                    }
                    Step::ExecFailed { index } => {
                        if supervisor.process(index).pid.is_none() && !supervisor.is_stopping() {
                            supervisor.exec_failed(index, "gone".into());
                        }
                    }
                    Step::Stop => supervisor.begin_stop(),
                }
                if let Some(deadline) = supervisor.next_deadline() {
                    prop_assert!(deadline <= now + BACKOFF_CAP);
                }
                for status in supervisor.statuses() {
                    prop_assert_eq!(status.pid.is_some(), status.state == ProcessState::Running);
                }
            }
        }
    }
}
