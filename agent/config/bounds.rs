//! The sane range of each `[resources]` limit: a value outside it passes the kernel's own checks
//! or fails only when the node starts (a node with `pids = 1` cannot fork its first process), so
//! `config check`, `run` and `reload` refuse it before anything stops.

/// Fewer pids than this and the init cannot start a role's processes and an `exec` beside them.
pub const PIDS_MIN: u64 = 16;
/// The kernel's `PID_MAX_LIMIT` on 64-bit: `pids.max` refuses anything above it.
pub const PIDS_MAX: u64 = 4_194_304;
/// Less memory than this and the init (the agent's binary, mapped in the node) and the kernel's
/// per-cgroup accounting leave nothing for a role's processes.
pub const MEMORY_MIN: u64 = 16 << 20;
/// More than any node of a host this agent runs on has; a value above it is a slip of the unit.
pub const MEMORY_MAX: u64 = 1 << 40;
/// The kernel's smallest CFS quota (1 ms) per the agent's 100 ms period.
pub const CPUS_MIN: f64 = 0.01;
/// More CPUs than a host has is no limit; this many is a slip.
pub const CPUS_MAX: f64 = 1024.0;

/// Why a limit is outside its range, with the bound it crossed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OutOfBounds {
    #[error(
        "{value} is too few: at least {PIDS_MIN} (the node's init and its processes need them)"
    )]
    PidsTooFew { value: i64 },
    #[error("{value} is too many: at most {PIDS_MAX} (the kernel's limit)")]
    PidsTooMany { value: i64 },
    #[error("`{text}` is too little: at least 16M (the node's init and the kernel's accounting)")]
    MemoryTooLittle { text: String },
    #[error("`{text}` is too much: at most 1T")]
    MemoryTooMuch { text: String },
    #[error(
        "{value} is too little: at least {CPUS_MIN} (the kernel's smallest quota, 1 ms per 100 ms)"
    )]
    CpusTooFew { value: f64 },
    #[error("{value} is too many: at most {CPUS_MAX}")]
    CpusTooMany { value: f64 },
}

/// `pids` as written, once it is within [`PIDS_MIN`], [`PIDS_MAX`].
pub fn pids(value: i64) -> Result<u64, OutOfBounds> {
    match u64::try_from(value) {
        Ok(pids) if pids > PIDS_MAX => Err(OutOfBounds::PidsTooMany { value }),
        Ok(pids) if pids >= PIDS_MIN => Ok(pids),
        _ => Err(OutOfBounds::PidsTooFew { value }),
    }
}

/// `memory` in bytes (as `text` wrote it), once it is within [`MEMORY_MIN`], [`MEMORY_MAX`].
pub fn memory(bytes: u64, text: &str) -> Result<u64, OutOfBounds> {
    let text = text.to_string();
    if bytes < MEMORY_MIN {
        Err(OutOfBounds::MemoryTooLittle { text })
    } else if bytes > MEMORY_MAX {
        Err(OutOfBounds::MemoryTooMuch { text })
    } else {
        Ok(bytes)
    }
}

/// `cpus`, once it is within [`CPUS_MIN`], [`CPUS_MAX`] (NaN is neither).
pub fn cpus(value: f64) -> Result<f64, OutOfBounds> {
    if value > CPUS_MAX {
        Err(OutOfBounds::CpusTooMany { value })
    } else if value >= CPUS_MIN {
        Ok(value)
    } else {
        Err(OutOfBounds::CpusTooFew { value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_bounds_themselves_are_accepted() {
        assert_eq!(pids(16), Ok(16));
        assert_eq!(pids(4_194_304), Ok(4_194_304));
        assert_eq!(memory(16 << 20, "16M"), Ok(16 << 20));
        assert_eq!(memory(1 << 40, "1T"), Ok(1 << 40));
        assert_eq!(cpus(0.01), Ok(0.01));
        assert_eq!(cpus(1024.0), Ok(1024.0));
    }

    #[test]
    fn values_that_cannot_run_name_the_bound_they_crossed() {
        let message = |result: Result<u64, OutOfBounds>| result.unwrap_err().to_string();
        assert!(message(pids(1)).contains("at least 16"));
        assert!(message(pids(0)).contains("at least 16"));
        assert!(message(pids(-5)).contains("-5 is too few"));
        assert!(message(pids(99_999_999_999_999)).contains("at most 4194304"));
        assert!(message(memory(1, "1")).contains("`1` is too little: at least 16M"));
        assert!(message(memory(2 << 40, "2T")).contains("at most 1T"));
        let message = cpus(0.001).unwrap_err().to_string();
        assert!(message.contains("at least 0.01"), "{message}");
        assert!(cpus(4096.0)
            .unwrap_err()
            .to_string()
            .contains("at most 1024"));
        assert!(cpus(0.0).is_err() && cpus(-1.0).is_err());
        assert!(cpus(f64::NAN).is_err() && cpus(f64::INFINITY).is_err());
    }

    proptest! {
        #[test]
        fn pids_pass_exactly_inside_the_bounds(value in any::<i64>()) {
            let inside = (16..=4_194_304).contains(&value);
            prop_assert_eq!(pids(value).is_ok(), inside);
        }

        #[test]
        fn memory_passes_exactly_inside_the_bounds(bytes in any::<u64>()) {
            let inside = (16u64 << 20..=1 << 40).contains(&bytes);
            prop_assert_eq!(memory(bytes, "x").is_ok(), inside);
        }
    }
}
