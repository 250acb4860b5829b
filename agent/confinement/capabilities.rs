//! The capability bounding set of a node's processes.

use std::collections::HashSet;
use std::str::FromStr;

use caps::{CapSet, Capability};

use super::ConfinementError;

/// The default bounding set, as runc's and crun's defaults: what ordinary services need.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// "NET_ADMIN", "net_admin" and "CAP_NET_ADMIN" are the same capability.
/// Capabilities no role may hold, and why.
pub const REFUSED_CAPABILITIES: &[(Capability, &str)] = &[(
    Capability::CAP_SYS_PTRACE,
    "it would let the role's processes trace the node's init, which holds the host's descriptors of the node (its log directory, its sockets to the agent)",
)];

pub fn parse_capability(name: &str) -> Result<Capability, ConfinementError> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    Capability::from_str(&full).map_err(|_| ConfinementError::UnknownCapability(name.to_string()))
}

/// Drops everything outside `keep` from the bounding set, clears the ambient set and makes the
/// inheritable set `keep`. A root process then execs with exactly `keep`; a process that
/// changes to another user loses even those.
pub fn narrow(keep: &HashSet<Capability>) -> Result<(), ConfinementError> {
    let fail = |step: &'static str| {
        move |e: caps::errors::CapsError| ConfinementError::Apply {
            step,
            error: e.to_string(),
        }
    };
    for capability in caps::all() {
        if !keep.contains(&capability) {
            caps::drop(None, CapSet::Bounding, capability)
                .map_err(fail("drop from bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(fail("clear ambient set"))?;
    let permitted = caps::read(None, CapSet::Permitted).map_err(fail("read permitted set"))?;
    let inheritable: HashSet<Capability> = keep.intersection(&permitted).copied().collect();
    caps::set(None, CapSet::Inheritable, &inheritable).map_err(fail("set inheritable set"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_with_or_without_prefix() {
        assert_eq!(
            parse_capability("net_admin").unwrap(),
            Capability::CAP_NET_ADMIN
        );
        assert_eq!(parse_capability("CAP_KILL").unwrap(), Capability::CAP_KILL);
        assert!(parse_capability("FLY").is_err());
        for name in DEFAULT_CAPABILITIES {
            parse_capability(name).unwrap();
        }
    }
}
