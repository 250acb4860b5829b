//! The lease a node's init holds from its agent, as a pure state machine: unarmed until the
//! first renewal (a standalone host's init never fences), held until a deadline on
//! CLOCK_BOOTTIME (which, unlike the monotonic clock, runs through a suspend: a host that slept
//! past the lease must fence as it wakes), lapsed once, and fenced until the agent renews it
//! again.

use std::time::Duration;

/// A point on CLOCK_BOOTTIME: time since boot, suspends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BootTime(pub Duration);

impl BootTime {
    pub fn now() -> BootTime {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .expect("CLOCK_BOOTTIME is always readable");
        BootTime(Duration::from(now))
    }

    pub fn until(self, later: BootTime) -> Duration {
        later.0.saturating_sub(self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Never renewed: the node never fences.
    Unarmed,
    /// The agent renewed it; the node runs until then.
    Held { until: BootTime },
    /// It lapsed and the node was fenced; only a renewal ends this.
    Fenced,
}

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The lease runs on.
    Extended,
    /// The node was fenced: its links must come back before it runs on.
    Unfence,
}

impl Lease {
    pub fn renew(&mut self, now: BootTime, lease: Duration) -> Renewal {
        let renewal = match self {
            Lease::Fenced => Renewal::Unfence,
            Lease::Unarmed | Lease::Held { .. } => Renewal::Extended,
        };
        *self = Lease::Held {
            until: BootTime(now.0 + lease),
        };
        renewal
    }

    /// The links could not be brought back: the node stays fenced, and the next renewal tries
    /// again.
    pub fn still_fenced(&mut self) {
        *self = Lease::Fenced;
    }

    /// Whether the lease has lapsed at `now` and the node must be fenced; it then is, once.
    pub fn lapse(&mut self, now: BootTime) -> bool {
        match *self {
            Lease::Held { until } if now >= until => {
                *self = Lease::Fenced;
                true
            }
            _ => false,
        }
    }

    /// How long until the lease lapses; `None` when nothing is due.
    pub fn remaining(&self, now: BootTime) -> Option<Duration> {
        match *self {
            Lease::Held { until } => Some(now.until(until)),
            Lease::Unarmed | Lease::Fenced => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(millis: u64) -> BootTime {
        BootTime(Duration::from_millis(millis))
    }

    const LEASE: Duration = Duration::from_millis(300);

    #[test]
    fn an_unarmed_lease_never_lapses() {
        let mut lease = Lease::Unarmed;
        assert!(!lease.lapse(at(u64::MAX / 2)));
        assert_eq!(lease.remaining(at(0)), None);
    }

    #[test]
    fn a_held_lease_lapses_once_at_its_deadline_and_stays_fenced() {
        let mut lease = Lease::Unarmed;
        assert_eq!(lease.renew(at(1_000), LEASE), Renewal::Extended);
        assert_eq!(lease.remaining(at(1_100)), Some(Duration::from_millis(200)));
        assert!(!lease.lapse(at(1_299)));
        assert!(lease.lapse(at(1_300)));
        assert_eq!(lease, Lease::Fenced);
        assert!(!lease.lapse(at(5_000)), "fenced once only");
        assert_eq!(lease.remaining(at(5_000)), None);
    }

    #[test]
    fn renewals_push_the_deadline_and_one_after_a_fence_unfences() {
        let mut lease = Lease::Unarmed;
        lease.renew(at(0), LEASE);
        assert_eq!(lease.renew(at(200), LEASE), Renewal::Extended);
        assert!(!lease.lapse(at(400)));
        assert!(lease.lapse(at(500)));
        assert_eq!(lease.renew(at(900), LEASE), Renewal::Unfence);
        lease.still_fenced();
        assert!(!lease.lapse(at(2_000)));
        assert_eq!(lease.renew(at(2_000), LEASE), Renewal::Unfence);
        assert_eq!(lease.remaining(at(2_100)), Some(Duration::from_millis(200)));
    }
}
