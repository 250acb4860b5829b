//! The init fences its node when the lease its agent renews lapses (`lease.rs`): the agent is
//! dead, hung or stopped, or stopped renewing because it lost quorum, and the partner may take
//! the node over once its own lease for this host lapses. The init first takes the node's links
//! down (the kernel would otherwise go on answering ARP and TCP handshakes for a frozen node),
//! then freezes the node's whole cgroup, itself included, through the descriptor the agent
//! handed it (`FREEZE_FD`). That write is its last act: the kernel stops the writer on its way
//! back to user space, after the write is done, so nothing of the node runs past it. Only the
//! agent thaws the node (it owns the freezer); its next renewal then brings the links back.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use super::lease::{BootTime, Lease, Renewal};
use super::logs::LogFile;
use crate::config::NodeNetwork;

pub struct Fence {
    lease: Lease,
    network: NodeNetwork,
    /// The node cgroup's freeze file and what freezes it; `None` without a freezer.
    freeze: Option<(File, String)>,
}

/// How a renewal went.
pub enum Renewed {
    Extended,
    /// The links are back: the node runs again.
    Unfenced,
    /// The links could not be brought back; the node stays fenced.
    StillFenced(String),
}

impl Fence {
    pub fn new(network: NodeNetwork, freeze: Option<(File, String)>) -> Fence {
        Fence {
            lease: Lease::Unarmed,
            network,
            freeze,
        }
    }

    pub fn renew(&mut self, lease: Duration, log: &mut LogFile) -> Renewed {
        match self.lease.renew(BootTime::now(), lease) {
            Renewal::Extended => Renewed::Extended,
            Renewal::Unfence => match crate::net::fence::links_up(&self.network) {
                Ok(()) => {
                    log.append(b"init: thawed by the agent; links up and announced\n");
                    Renewed::Unfenced
                }
                Err(error) => {
                    self.lease.still_fenced();
                    let error = format!("bring the links back: {error}");
                    log.append(format!("init: still fenced: {error}\n").as_bytes());
                    Renewed::StillFenced(error)
                }
            },
        }
    }

    /// How long the poll may sleep before the lease must be looked at again.
    pub fn remaining(&self) -> Option<Duration> {
        self.lease.remaining(BootTime::now())
    }

    /// Fences the node if its lease has lapsed: links down, then the freeze, last.
    pub fn enforce(&mut self, log: &mut LogFile) {
        if !self.lease.lapse(BootTime::now()) {
            return;
        }
        if let Err(error) = crate::net::fence::links_down(&self.network) {
            // Frozen all the same: it then at least writes nothing.
            log.append(format!("init: fence: links down: {error}\n").as_bytes());
        }
        let Some((file, value)) = &mut self.freeze else {
            log.append(b"init: lease lapsed: links down; no freezer on this host\n");
            return;
        };
        log.append(b"init: lease lapsed: links down, freezing the node\n");
        // One write at offset 0, as cgroupfs takes one value per write.
        if let Err(error) = file.write_at(value.as_bytes(), 0) {
            log.append(format!("init: fence: freeze: {error}\n").as_bytes());
        }
    }
}
