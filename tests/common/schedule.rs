//! A seeded, bounded schedule of faults for a pair and its witness: a list of steps made from
//! one seed (`MAGESTACK_TEST_SEED`, else the clock), printed at the start and again if the test
//! fails, so a failing run can be repeated exactly. Each step is a fault held for a while, then
//! healed; the test plays it (and waits between steps as its contract needs).

use std::time::Duration;

use super::partition::Machine;
use super::rng::Rng;

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
        let mut rng = Rng::from_env(test);
        let seed = rng.seed;
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
