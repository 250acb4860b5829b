//! A seeded, bounded schedule of faults for a pair and its witness: a list of steps made from
//! one seed (`MAGESTACK_TEST_SEED`, else the clock), printed at the start and again if the test
//! fails, so a failing run can be repeated exactly. Each step is a fault held for a while, then
//! healed; the test plays it (and waits between steps as its contract needs).

use std::time::Duration;

use super::partition::Machine;

/// A fault that leaves each host at least one peer: quorum everywhere, by the design.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Traffic between two machines dropped.
    Cut(Machine, Machine),
    /// The witness cut from both hosts.
    WitnessIsolated,
    /// The witness killed; the heal starts it again.
    WitnessDown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub fault: Fault,
    pub hold: Duration,
}

/// The steps of one run and the seed they came from.
pub struct FaultSchedule {
    pub seed: u64,
    pub steps: Vec<Step>,
}

impl FaultSchedule {
    /// Steps until their holds add up to `total` (at most `max_steps`), each held between
    /// `shortest` and `longest`.
    pub fn new(
        test: &str,
        total: Duration,
        max_steps: usize,
        (shortest, longest): (Duration, Duration),
    ) -> FaultSchedule {
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
        let mut rng = Rng(seed);
        let faults = [
            Fault::Cut(Machine::A, Machine::B),
            Fault::Cut(Machine::A, Machine::Witness),
            Fault::Cut(Machine::B, Machine::Witness),
            Fault::WitnessIsolated,
            Fault::WitnessDown,
        ];
        let span = (longest - shortest).as_millis() as u64 + 1;
        let mut steps = Vec::new();
        let mut held = Duration::ZERO;
        while held < total && steps.len() < max_steps {
            let fault = faults[rng.below(faults.len() as u64) as usize];
            let hold = shortest + Duration::from_millis(rng.below(span));
            held += hold;
            steps.push(Step { fault, hold });
        }
        FaultSchedule { seed, steps }
    }
}

impl Drop for FaultSchedule {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "replay with MAGESTACK_TEST_SEED={}; the schedule was {:?}",
                self.seed, self.steps
            );
        }
    }
}

/// splitmix64: small, good enough, and the same on every machine for a given seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
