//! Time for leases: CLOCK_BOOTTIME, which keeps counting while the machine is suspended (a
//! suspended host's peers do not stop their clocks, so neither may its own lease deadlines) and,
//! unlike the wall clock, never jumps.

use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// A point on CLOCK_BOOTTIME: the time since the machine booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BootInstant(Duration);

impl BootInstant {
    pub fn now() -> BootInstant {
        // CLOCK_BOOTTIME exists on every Linux since 2.6.39; the call cannot fail with a valid id.
        let now = clock_gettime(ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME");
        BootInstant(Duration::from(now))
    }

    /// The point `since_boot` after boot (for tests, and for times carried in messages).
    pub fn from_since_boot(since_boot: Duration) -> BootInstant {
        BootInstant(since_boot)
    }

    pub fn since_boot(self) -> Duration {
        self.0
    }

    /// Microseconds since boot: how a heartbeat carries its send time.
    pub fn as_micros(self) -> u64 {
        u64::try_from(self.0.as_micros()).unwrap_or(u64::MAX)
    }

    pub fn from_micros(micros: u64) -> BootInstant {
        BootInstant(Duration::from_micros(micros))
    }

    /// How long after `earlier` this is; zero when it is not after it.
    pub fn saturating_since(self, earlier: BootInstant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    pub fn plus(self, duration: Duration) -> BootInstant {
        BootInstant(self.0.saturating_add(duration))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boottime_moves_forward_with_the_monotonic_clock() {
        let (boot, mono) = (BootInstant::now(), std::time::Instant::now());
        std::thread::sleep(Duration::from_millis(20));
        let (boot_elapsed, mono_elapsed) =
            (BootInstant::now().saturating_since(boot), mono.elapsed());
        assert!(
            boot_elapsed >= Duration::from_millis(20),
            "{boot_elapsed:?}"
        );
        let skew = boot_elapsed.abs_diff(mono_elapsed);
        assert!(
            skew < Duration::from_millis(5),
            "{boot_elapsed:?} vs {mono_elapsed:?}"
        );
    }

    #[test]
    fn micros_round_trip_and_subtraction_saturates() {
        let at = BootInstant::from_since_boot(Duration::from_micros(1_234_567));
        assert_eq!(BootInstant::from_micros(at.as_micros()), at);
        let later = at.plus(Duration::from_millis(5));
        assert_eq!(later.saturating_since(at), Duration::from_millis(5));
        assert_eq!(at.saturating_since(later), Duration::ZERO);
    }
}
