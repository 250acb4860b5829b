//! Applying rule sets with `nft -f -`: one atomic transaction each, optionally inside a node's
//! network namespace (so the node's image needs no tools).

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use super::NetError;

pub fn apply(ruleset: &str, netns: Option<&OwnedFd>) -> Result<(), NetError> {
    let mut command = Command::new("nft");
    command
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(netns) = netns {
        let fd = netns.as_raw_fd();
        // SAFETY: between fork and exec the child only calls setns, which is async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = command.spawn().map_err(|e| {
        NetError::Nft(format!(
            "cannot run nft ({e}); install the nftables package"
        ))
    })?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(ruleset.as_bytes())
        .map_err(|e| NetError::Nft(format!("writing the rule set: {e}")))?;
    let output = child
        .wait_with_output()
        .map_err(|e| NetError::Nft(format!("waiting for nft: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NetError::Nft(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ))
    }
}
