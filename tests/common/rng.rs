//! A seeded random number generator for tests that play random schedules: the seed comes from
//! `MAGESTACK_TEST_SEED` (else the clock) and is printed, so a failing run can be replayed.

/// splitmix64: small, good enough, and the same on every machine for a given seed.
pub struct Rng {
    pub seed: u64,
    state: u64,
}

impl Rng {
    /// A generator seeded from `MAGESTACK_TEST_SEED` or the clock; prints the seed for `test`.
    pub fn from_env(test: &str) -> Rng {
        let seed = std::env::var("MAGESTACK_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{test}: MAGESTACK_TEST_SEED={seed}");
        Rng { seed, state: seed }
    }

    pub fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
