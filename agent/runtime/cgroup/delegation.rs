//! cgroup v2 under systemd's `Delegate=yes`: the subtree the service manager hands the agent.
//!
//! cgroup v2 lets no cgroup hold both processes and children with controllers enabled, so the
//! daemon lives in a leaf, `<delegated>/agent` (where `DelegateSubgroup=agent` starts it, or
//! where it moves itself on an older systemd), and node cgroups go beside that leaf, as
//! `<delegated>/<parent>/<node>`. Outside a delegated subtree (a shell, a container whose cgroup
//! namespace root is its own cgroup) nodes stay at `<hierarchy root>/<parent>/<node>`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The leaf the daemon runs in, beside the node cgroups' parent.
pub const AGENT_LEAF: &str = "agent";

/// The extended attributes systemd sets to "1" on a cgroup it delegated (v251 and later); the
/// `user.` one is for delegation to unprivileged users.
const DELEGATE_XATTRS: [&str; 2] = ["trusted.delegate", "user.delegate"];

/// Where this process's delegated subtree is, relative to the hierarchy root.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Delegation {
    /// The delegated cgroup, like `/system.slice/magestack-agent.service`.
    pub base: String,
    /// Whether this process already runs in `<base>/agent`.
    pub in_leaf: bool,
}

/// This process's cgroup in the unified hierarchy: the `0::<path>` line of `/proc/self/cgroup`.
pub(super) fn own_cgroup(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::trim)
        .filter(|path| path.starts_with('/'))
}

/// The delegated subtree this process runs in or at the top of, if `delegated` (systemd's mark)
/// says the cgroup is one; `None` at the hierarchy root or in an undelegated cgroup.
pub(super) fn find(own: &str, delegated: impl Fn(&str) -> bool) -> Option<Delegation> {
    if own == "/" {
        return None;
    }
    if let Some(base) = own.strip_suffix(&format!("/{AGENT_LEAF}")) {
        let base = if base.is_empty() { "/" } else { base };
        if base != "/" && delegated(base) {
            return Some(Delegation {
                base: base.to_string(),
                in_leaf: true,
            });
        }
    }
    delegated(own).then(|| Delegation {
        base: own.to_string(),
        in_leaf: false,
    })
}

/// Whether systemd marked the cgroup directory `dir` as delegated.
pub(super) fn marked_delegated(dir: &Path) -> bool {
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    DELEGATE_XATTRS.iter().any(|name| {
        let name = CString::new(*name).expect("static name");
        let mut value = [0u8; 8];
        // SAFETY: both strings are NUL-terminated and outlive the call; the buffer's length is
        // passed, so the kernel writes at most that many bytes.
        let length = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        length > 0 && value[..length as usize].starts_with(b"1")
    })
}

/// The directory of `relative` (a `/`-rooted cgroup path) in the hierarchy mounted at `root`.
pub(super) fn dir_of(root: &Path, relative: &str) -> PathBuf {
    root.join(relative.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "/system.slice/magestack-agent.service";

    #[test]
    fn the_unified_line_names_the_own_cgroup() {
        assert_eq!(
            own_cgroup("0::/system.slice/magestack-agent.service/agent\n"),
            Some("/system.slice/magestack-agent.service/agent")
        );
        let hybrid = "9:name=systemd:/\n4:memory:/x\n0::/\n";
        assert_eq!(own_cgroup(hybrid), Some("/"));
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
        assert_eq!(own_cgroup("0::garbage\n"), None);
    }

    #[test]
    fn a_delegated_service_is_the_base_whether_or_not_in_its_leaf() {
        let delegated = |path: &str| path == SERVICE;
        assert_eq!(
            find(SERVICE, delegated),
            Some(Delegation {
                base: SERVICE.into(),
                in_leaf: false
            })
        );
        assert_eq!(
            find(&format!("{SERVICE}/agent"), delegated),
            Some(Delegation {
                base: SERVICE.into(),
                in_leaf: true
            })
        );
    }

    #[test]
    fn no_delegation_at_the_root_or_in_an_unmarked_cgroup() {
        assert_eq!(find("/", |_| true), None);
        assert_eq!(find("/agent", |path| path == "/"), None);
        assert_eq!(find("/user.slice/session-3.scope", |_| false), None);
        assert_eq!(
            find("/user.slice/session-3.scope/agent", |path| path
                == "/user.slice/session-3.scope/agent"),
            Some(Delegation {
                base: "/user.slice/session-3.scope/agent".into(),
                in_leaf: false
            }),
            "a delegated cgroup that happens to be called agent is itself the base"
        );
    }

    #[test]
    fn a_plain_directory_is_not_marked() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!marked_delegated(dir.path()));
        assert!(!marked_delegated(Path::new("/nonexistent/cgroup")));
    }
}
