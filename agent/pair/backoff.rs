//! How long the link waits before its next attempt: doubling from [`BASE`] to [`CAP`], each
//! delay drawn between half and all of its nominal value so two hosts that lost each other at
//! the same instant do not retry in step.

use std::time::Duration;

pub const BASE: Duration = Duration::from_millis(100);
pub const CAP: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The delay after one more failure; `jitter` in [0, 1] picks within its half-to-whole
    /// range.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let nominal = BASE.saturating_mul(1 << self.failures.min(16)).min(CAP);
        self.failures = self.failures.saturating_add(1);
        nominal.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// After a link came up: the next loss starts from [`BASE`] again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A number in [0, 1] from the system's random source.
pub fn jitter() -> f64 {
    let mut bytes = [0u8; 4];
    match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX),
        Err(_) => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn delays_double_from_100ms_to_5s() {
        let mut backoff = Backoff::default();
        let nominal: Vec<u64> = (0..10)
            .map(|_| backoff.next_delay(1.0).as_millis() as u64)
            .collect();
        assert_eq!(
            nominal,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
        );
        backoff.reset();
        assert_eq!(backoff.next_delay(0.0), Duration::from_millis(50));
    }

    proptest! {
        #[test]
        fn every_delay_is_within_half_and_whole_of_its_nominal(
            jitters in proptest::collection::vec(-1.0f64..2.0, 1..40),
        ) {
            let mut backoff = Backoff::default();
            for (failure, jitter) in jitters.into_iter().enumerate() {
                let nominal = BASE.saturating_mul(1 << failure.min(16)).min(CAP);
                let delay = backoff.next_delay(jitter);
                prop_assert!(delay >= nominal / 2 && delay <= nominal, "{delay:?} for {nominal:?}");
            }
        }
    }

    #[test]
    fn jitter_is_within_its_range() {
        for _ in 0..100 {
            assert!((0.0..=1.0).contains(&jitter()));
        }
    }
}
