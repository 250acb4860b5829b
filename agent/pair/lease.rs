//! A lease one side holds for a peer: renewed each time the peer is heard, expired once the peer
//! has been silent for the lease's length. Pure: the caller passes the time (CLOCK_BOOTTIME,
//! [`super::clock`]), so the rules are tested without waiting.
//!
//! A lease starts as if the peer had been heard when it was made: whoever holds it declares the
//! peer dead only after a full lease of silence since then. That is the rule after any restart
//! (of an agent, of the witness): it has no memory of the peer, so it grants it a whole lease.

use std::time::Duration;

use super::clock::BootInstant;

#[derive(Debug, Clone)]
pub struct Lease {
    length: Duration,
    /// When the lease was made: it runs at least a full length from here.
    granted: BootInstant,
    /// When the peer was last heard, if ever since the lease was made.
    heard: Option<BootInstant>,
    /// Whether the lease was alive when last looked at, to count expiries once each.
    was_alive: bool,
    expiries: u64,
}

/// What a look at a lease found changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Expired,
    Renewed,
}

impl Lease {
    pub fn new(length: Duration, now: BootInstant) -> Lease {
        Lease {
            length,
            granted: now,
            heard: None,
            was_alive: true,
            expiries: 0,
        }
    }

    pub fn length(&self) -> Duration {
        self.length
    }

    /// The peer was heard at `now`.
    pub fn renew(&mut self, now: BootInstant) {
        self.heard = Some(self.heard.map_or(now, |heard| heard.max(now)));
    }

    pub fn heard(&self) -> Option<BootInstant> {
        self.heard
    }

    /// When the lease runs out unless renewed.
    pub fn expires(&self) -> BootInstant {
        self.heard
            .unwrap_or(self.granted)
            .max(self.granted)
            .plus(self.length)
    }

    pub fn alive(&self, now: BootInstant) -> bool {
        now < self.expires()
    }

    /// Whether the peer was heard within a lease of `now` (not merely granted one at start).
    pub fn reached(&self, now: BootInstant) -> bool {
        self.heard
            .is_some_and(|heard| now < heard.plus(self.length))
    }

    /// How many times the lease ran out since it was made.
    pub fn expiries(&self) -> u64 {
        self.expiries
    }

    /// Looks at the lease at `now`: counts an expiry once, and says what changed.
    pub fn observe(&mut self, now: BootInstant) -> Option<Transition> {
        let alive = self.alive(now);
        let transition = match (self.was_alive, alive) {
            (true, false) => {
                self.expiries += 1;
                Some(Transition::Expired)
            }
            (false, true) => Some(Transition::Renewed),
            _ => None,
        };
        self.was_alive = alive;
        transition
    }
}

/// The last round trips of heartbeats to one peer, for their median and 99th percentile.
#[derive(Debug, Clone, Default)]
pub struct RoundTrips {
    samples: std::collections::VecDeque<Duration>,
}

impl RoundTrips {
    /// Round trips kept: at 100 ms heartbeats, the last 100 seconds.
    const KEPT: usize = 1000;

    pub fn record(&mut self, round_trip: Duration) {
        if self.samples.len() == Self::KEPT {
            self.samples.pop_front();
        }
        self.samples.push_back(round_trip);
    }

    pub fn last(&self) -> Option<Duration> {
        self.samples.back().copied()
    }

    /// The `q` quantile (0..=1) of the kept round trips, nearest rank.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.samples.is_empty() {
            return None;
        }
        let mut sorted: Vec<Duration> = self.samples.iter().copied().collect();
        sorted.sort_unstable();
        let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
        Some(sorted[rank.saturating_sub(1).min(sorted.len() - 1)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(ms: u64) -> BootInstant {
        BootInstant::from_since_boot(Duration::from_millis(ms))
    }

    const LEASE: Duration = Duration::from_millis(500);

    #[test]
    fn a_new_lease_grants_a_full_length_before_anyone_is_heard() {
        let mut lease = Lease::new(LEASE, at(1000));
        assert!(lease.alive(at(1499)));
        assert!(!lease.reached(at(1001)), "granted is not heard");
        assert_eq!(lease.observe(at(1499)), None);
        assert!(!lease.alive(at(1500)));
        assert_eq!(lease.observe(at(1500)), Some(Transition::Expired));
        assert_eq!(lease.observe(at(1600)), None, "an expiry counts once");
        assert_eq!(lease.expiries(), 1);
    }

    #[test]
    fn heartbeats_renew_and_silence_expires() {
        let mut lease = Lease::new(LEASE, at(0));
        for ms in (100..=1000).step_by(100) {
            lease.renew(at(ms));
            assert_eq!(lease.observe(at(ms + 50)), None);
        }
        assert_eq!(lease.expires(), at(1500));
        assert!(lease.reached(at(1499)));
        assert_eq!(lease.observe(at(1500)), Some(Transition::Expired));
        lease.renew(at(1700));
        assert_eq!(lease.observe(at(1701)), Some(Transition::Renewed));
        assert_eq!(lease.expiries(), 1);
    }

    #[test]
    fn a_late_message_never_moves_the_lease_back() {
        let mut lease = Lease::new(LEASE, at(0));
        lease.renew(at(900));
        lease.renew(at(300));
        assert_eq!(lease.heard(), Some(at(900)));
    }

    #[test]
    fn round_trip_quantiles_by_nearest_rank() {
        let mut trips = RoundTrips::default();
        assert_eq!(trips.quantile(0.5), None);
        for ms in 1..=100 {
            trips.record(Duration::from_millis(ms));
        }
        assert_eq!(trips.quantile(0.5), Some(Duration::from_millis(50)));
        assert_eq!(trips.quantile(0.99), Some(Duration::from_millis(99)));
        assert_eq!(trips.last(), Some(Duration::from_millis(100)));
        for _ in 0..2000 {
            trips.record(Duration::from_millis(1));
        }
        assert_eq!(trips.quantile(0.99), Some(Duration::from_millis(1)));
    }

    proptest! {
        /// Whatever the order of renewals and looks, a lease is alive exactly while the last
        /// hearing (or its start) is less than a length ago, and each expiry is counted once.
        #[test]
        fn alive_exactly_within_a_length_of_the_last_hearing(
            steps in proptest::collection::vec((any::<bool>(), 0u64..400), 1..60),
        ) {
            let mut lease = Lease::new(LEASE, at(0));
            let (mut now, mut last, mut expiries, mut was_alive) = (0u64, 0u64, 0u64, true);
            for (hear, advance) in steps {
                now += advance;
                if hear {
                    lease.renew(at(now));
                    last = now;
                }
                lease.observe(at(now));
                let alive = now < last + 500;
                if was_alive && !alive {
                    expiries += 1;
                }
                was_alive = alive;
                prop_assert_eq!(lease.alive(at(now)), alive);
                prop_assert_eq!(lease.expiries(), expiries);
            }
        }
    }
}
