//! What confines every process a node runs (role processes, health checks, `exec`): a bounding
//! set of capabilities, `no_new_privs`, and a seccomp filter. Prepared before fork, applied in
//! the child just before exec.

mod capabilities;
mod descriptors;
mod seccomp;

pub use capabilities::{parse_capability, DEFAULT_CAPABILITIES, REFUSED_CAPABILITIES};
pub use descriptors::{close_on_exec_beyond_stdio, keep_private};

use std::collections::HashSet;

use caps::Capability;
use seccompiler::BpfProgram;

#[derive(Debug, thiserror::Error)]
pub enum ConfinementError {
    #[error("capability `{0}` is not one this kernel knows")]
    UnknownCapability(String),
    #[error("building the seccomp filter: {0}")]
    Seccomp(String),
    #[error("{step}: {error}")]
    Apply { step: &'static str, error: String },
}

/// The confinement of one node's processes, ready to apply after fork.
pub struct Confinement {
    capabilities: HashSet<Capability>,
    filters: Vec<BpfProgram>,
}

impl Confinement {
    /// `capabilities` is the role's bounding set (names like "NET_ADMIN" or "CAP_NET_ADMIN").
    pub fn new(capabilities: &[String]) -> Result<Confinement, ConfinementError> {
        let capabilities = capabilities
            .iter()
            .map(|name| parse_capability(name))
            .collect::<Result<HashSet<_>, _>>()?;
        Ok(Confinement {
            capabilities,
            filters: seccomp::filters()?,
        })
    }

    /// In the child after fork, before it changes user (which needs the capabilities to drop
    /// from the bounding set): narrow the capability sets.
    pub fn narrow(&self) -> Result<(), ConfinementError> {
        capabilities::narrow(&self.capabilities)
    }

    /// In the child after it changed user, just before exec: `no_new_privs`, then the seccomp
    /// filters (compiled already, so nothing is allocated here).
    pub fn seal(&self) -> Result<(), ConfinementError> {
        // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes plain integers.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(ConfinementError::Apply {
                step: "no_new_privs",
                error: std::io::Error::last_os_error().to_string(),
            });
        }
        for filter in &self.filters {
            seccompiler::apply_filter(filter).map_err(|e| ConfinementError::Apply {
                step: "seccomp",
                error: e.to_string(),
            })?;
        }
        Ok(())
    }
}
