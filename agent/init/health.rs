//! What the init concludes from its health checks, kept free of syscalls so every rule is
//! testable: when the next check is due, when a check has run too long, and how consecutive
//! passes and failures turn into the node's health.
//!
//! The node is `starting` until either threshold is first reached, then `healthy` or
//! `unhealthy`; it changes side only after the other threshold's count in a row, so one lost
//! check does not flap a healthy node.

use std::time::{Duration, Instant};

use crate::api::init::HealthStatus;
use crate::config::HealthSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    Starting,
    Healthy,
    Unhealthy,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Starting => "starting",
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
        }
    }
}

#[derive(Debug)]
pub struct Health {
    interval: Duration,
    timeout: Duration,
    healthy_after: u32,
    unhealthy_after: u32,
    state: HealthState,
    passes: u32,
    failures: u32,
    last_error: Option<String>,
    checked_at_unix: Option<u64>,
    /// When the next check starts; `None` while one runs or after [`Health::pause`].
    next_due: Option<Instant>,
    /// When the running check has taken too long; `None` when no check runs.
    deadline: Option<Instant>,
}

impl Health {
    /// The first check is due one interval after the node's processes started, as every later
    /// one is an interval after the previous result: a service gets that long to come up.
    pub fn new(spec: &HealthSpec, now: Instant) -> Self {
        Health {
            interval: spec.interval,
            timeout: spec.timeout,
            healthy_after: spec.healthy_after.max(1),
            unhealthy_after: spec.unhealthy_after.max(1),
            state: HealthState::Starting,
            passes: 0,
            failures: 0,
            last_error: None,
            checked_at_unix: None,
            next_due: Some(now + spec.interval),
            deadline: None,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether a check should start now.
    pub fn is_due(&self, now: Instant) -> bool {
        self.deadline.is_none() && self.next_due.is_some_and(|at| at <= now)
    }

    /// A check has started; it must finish within the timeout.
    pub fn begin(&mut self, now: Instant) {
        self.next_due = None;
        self.deadline = Some(now + self.timeout);
    }

    /// Whether the running check has used up its timeout.
    pub fn is_overdue(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|at| at <= now)
    }

    /// Records a check's outcome (`Err` carries the reason) and schedules the next one.
    pub fn record(&mut self, outcome: Result<(), String>, now: Instant, unix_now: u64) {
        self.deadline = None;
        self.next_due = Some(now + self.interval);
        self.checked_at_unix = Some(unix_now);
        match outcome {
            Ok(()) => {
                self.failures = 0;
                self.passes = self.passes.saturating_add(1);
                if self.passes >= self.healthy_after {
                    self.state = HealthState::Healthy;
                }
            }
            Err(reason) => {
                self.passes = 0;
                self.failures = self.failures.saturating_add(1);
                self.last_error = Some(reason);
                if self.failures >= self.unhealthy_after {
                    self.state = HealthState::Unhealthy;
                }
            }
        }
    }

    /// No more checks (the node is stopping); the verdict so far stays.
    pub fn pause(&mut self) {
        self.next_due = None;
        self.deadline = None;
    }

    /// When the event loop must wake for the checks: a check's deadline, or the next start.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadline.or(self.next_due)
    }

    pub fn status(&self) -> HealthStatus {
        HealthStatus {
            state: self.state.as_str().into(),
            last_error: self.last_error.clone(),
            checked_at_unix: self.checked_at_unix,
        }
    }
}

/// The status of a node whose role has no health check.
pub fn no_check() -> HealthStatus {
    HealthStatus {
        state: "none".into(),
        last_error: None,
        checked_at_unix: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HealthCheck;

    const INTERVAL: Duration = Duration::from_millis(200);
    const TIMEOUT: Duration = Duration::from_secs(2);

    fn health(healthy_after: u32, unhealthy_after: u32, now: Instant) -> Health {
        Health::new(
            &HealthSpec {
                check: HealthCheck::Tcp(80),
                interval: INTERVAL,
                timeout: TIMEOUT,
                healthy_after,
                unhealthy_after,
            },
            now,
        )
    }

    /// Runs one check that starts when due and ends with `outcome` at once; returns the time
    /// the check ran.
    fn check(health: &mut Health, outcome: Result<(), &str>) -> Instant {
        let now = health.next_deadline().expect("a check is scheduled");
        assert!(health.is_due(now));
        health.begin(now);
        health.record(outcome.map_err(String::from), now, 1_000);
        now
    }

    fn states(health: &mut Health, outcomes: &[Result<(), &str>]) -> Vec<HealthState> {
        outcomes
            .iter()
            .map(|outcome| {
                check(health, *outcome);
                health.state
            })
            .collect()
    }

    #[test]
    fn starting_until_the_first_check_which_waits_one_interval() {
        let now = Instant::now();
        let health = health(1, 3, now);
        assert_eq!(health.status().state, "starting");
        assert!(!health.is_due(now));
        assert!(!health.is_due(now + INTERVAL - Duration::from_millis(1)));
        assert!(health.is_due(now + INTERVAL));
        assert_eq!(health.next_deadline(), Some(now + INTERVAL));
        assert_eq!(health.status().checked_at_unix, None);
    }

    #[test]
    fn one_pass_is_healthy_by_default() {
        let mut health = health(1, 3, Instant::now());
        check(&mut health, Ok(()));
        let status = health.status();
        assert_eq!(status.state, "healthy");
        assert_eq!(status.checked_at_unix, Some(1_000));
        assert_eq!(status.last_error, None);
    }

    #[test]
    fn failures_while_starting_stay_starting_until_the_threshold() {
        let mut health = health(1, 3, Instant::now());
        let seen = states(&mut health, &[Err("a"), Err("b"), Err("c")]);
        use HealthState::*;
        assert_eq!(seen, [Starting, Starting, Unhealthy]);
        assert_eq!(health.status().last_error.as_deref(), Some("c"));
    }

    #[test]
    fn only_consecutive_results_count() {
        use HealthState::*;
        let mut health = health(2, 2, Instant::now());
        let seen = states(
            &mut health,
            &[Ok(()), Err("x"), Ok(()), Err("y"), Ok(()), Ok(())],
        );
        assert_eq!(
            seen,
            [Starting, Starting, Starting, Starting, Starting, Healthy]
        );
    }

    #[test]
    fn a_healthy_node_survives_fewer_failures_than_the_threshold() {
        use HealthState::*;
        let mut health = health(1, 3, Instant::now());
        let seen = states(
            &mut health,
            &[
                Ok(()),
                Err("slow"),
                Err("slow"),
                Ok(()),
                Err("a"),
                Err("b"),
                Err("c"),
            ],
        );
        assert_eq!(
            seen,
            [Healthy, Healthy, Healthy, Healthy, Healthy, Healthy, Unhealthy]
        );
    }

    #[test]
    fn an_unhealthy_node_recovers_after_enough_passes_and_keeps_the_last_reason() {
        use HealthState::*;
        let mut health = health(2, 1, Instant::now());
        let seen = states(&mut health, &[Err("refused"), Ok(()), Ok(())]);
        assert_eq!(seen, [Unhealthy, Unhealthy, Healthy]);
        assert_eq!(health.status().last_error.as_deref(), Some("refused"));
    }

    #[test]
    fn the_next_check_is_an_interval_after_the_last_result() {
        let mut health = health(1, 3, Instant::now());
        let started = health.next_deadline().unwrap();
        health.begin(started);
        assert!(!health.is_due(started), "one check at a time");
        let finished = started + Duration::from_millis(700);
        health.record(Ok(()), finished, 1);
        assert_eq!(health.next_deadline(), Some(finished + INTERVAL));
    }

    #[test]
    fn a_running_check_wakes_the_loop_at_its_timeout() {
        let mut health = health(1, 3, Instant::now());
        let started = health.next_deadline().unwrap();
        health.begin(started);
        assert_eq!(health.next_deadline(), Some(started + TIMEOUT));
        assert!(!health.is_overdue(started + TIMEOUT - Duration::from_millis(1)));
        assert!(health.is_overdue(started + TIMEOUT));
        health.record(Err("timed out".into()), started + TIMEOUT, 1);
        assert!(!health.is_overdue(started + TIMEOUT * 10));
    }

    #[test]
    fn paused_checks_never_wake_the_loop() {
        let now = Instant::now();
        let mut health = health(1, 3, now);
        check(&mut health, Ok(()));
        health.begin(now + INTERVAL * 3);
        health.pause();
        assert_eq!(health.next_deadline(), None);
        assert!(!health.is_due(now + INTERVAL * 100));
        assert!(!health.is_overdue(now + INTERVAL * 100));
        assert_eq!(health.status().state, "healthy");
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let mut health = health(0, 0, Instant::now());
        check(&mut health, Err("x"));
        assert_eq!(health.state, HealthState::Unhealthy);
        check(&mut health, Ok(()));
        assert_eq!(health.state, HealthState::Healthy);
    }

    #[test]
    fn no_check_reports_none() {
        assert_eq!(no_check().state, "none");
    }
}
