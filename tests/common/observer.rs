//! Whether nodes are fenced, seen from outside every few milliseconds: the kernel's freezer
//! state of each node's cgroup and whether its eth0 is up inside its network namespace. A
//! probe reads one small file and asks one ioctl (on a socket made in the node's namespace),
//! so sampling costs no process and a fence a few milliseconds long is still seen.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::TestHost;

/// One node, probed from outside.
pub struct WatchedNode {
    /// `<host>/<node>`.
    pub name: String,
    pub pid: i32,
    /// cgroup v2's `cgroup.events`, else v1's `freezer.state`.
    freezer: PathBuf,
    /// A socket in the node's network namespace, for SIOCGIFFLAGS on its eth0.
    socket: UdpSocket,
}

impl WatchedNode {
    pub fn new(host: &TestHost, node: &str) -> WatchedNode {
        let pid = host.node_pid(node);
        let unified = PathBuf::from("/sys/fs/cgroup")
            .join(&host.cgroup)
            .join(node)
            .join("cgroup.events");
        let freezer = if unified.exists() {
            unified
        } else {
            PathBuf::from("/sys/fs/cgroup/freezer")
                .join(&host.cgroup)
                .join(node)
                .join("freezer.state")
        };
        let namespace = format!("/proc/{pid}/ns/net");
        // A network namespace is per thread: a thread of its own enters it to make the socket,
        // which stays in that namespace wherever it is used from.
        let socket = std::thread::spawn(move || {
            let file = std::fs::File::open(&namespace).unwrap();
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|error| panic!("entering {namespace}: {error}"));
            UdpSocket::bind("0.0.0.0:0").unwrap()
        })
        .join()
        .unwrap();
        WatchedNode {
            name: format!("{}/{node}", host.name),
            pid,
            freezer,
            socket,
        }
    }

    /// The node's cgroup is frozen, as the kernel's freezer reports it.
    pub fn frozen(&self) -> bool {
        let text = std::fs::read_to_string(&self.freezer).unwrap_or_default();
        text.lines()
            .any(|line| line == "frozen 1" || line == "FROZEN")
    }

    /// The node's eth0 is administratively up (false once it is gone).
    pub fn eth0_up(&self) -> bool {
        // SAFETY: an all-zero ifreq is valid; the name is NUL-terminated within its 16 bytes.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (to, from) in request.ifr_name.iter_mut().zip(b"eth0\0") {
            *to = *from as libc::c_char;
        }
        // SAFETY: SIOCGIFFLAGS writes the flags into the ifreq we own, on a socket we own.
        let done = unsafe {
            libc::ioctl(
                self.socket.as_raw_fd(),
                libc::SIOCGIFFLAGS as _,
                &mut request,
            )
        };
        // SAFETY: SIOCGIFFLAGS filled in the flags member of the union.
        done == 0 && i32::from(unsafe { request.ifr_ifru.ifru_flags }) & libc::IFF_UP != 0
    }

    /// Frozen or eth0 down: either half of a fence.
    pub fn fenced(&self) -> bool {
        self.frozen() || !self.eth0_up()
    }
}

/// A node's state when it changed (and when first seen), from the observer's start.
#[derive(Debug, Clone)]
pub struct Change {
    pub at: Duration,
    pub node: String,
    pub frozen: bool,
    pub eth0_up: bool,
}

impl Change {
    pub fn fenced(&self) -> bool {
        self.frozen || !self.eth0_up
    }
}

/// What an observer saw.
#[derive(Debug, Default)]
pub struct Observed {
    pub changes: Vec<Change>,
    /// Rounds of sampling every node.
    pub rounds: u64,
    /// The longest time between two rounds: how fine the sampling really was.
    pub longest_gap: Duration,
}

impl Observed {
    /// Each time a node was seen fenced (frozen or eth0 down).
    pub fn fences(&self) -> Vec<&Change> {
        self.changes
            .iter()
            .filter(|change| change.fenced())
            .collect()
    }
}

/// A thread sampling its nodes every `every` until finished or dropped (at most for `limit`).
pub struct FenceObserver {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Observed>>,
}

impl FenceObserver {
    pub fn start(nodes: Vec<WatchedNode>, every: Duration, limit: Duration) -> FenceObserver {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let began = Instant::now();
            let mut observed = Observed::default();
            let mut last: Vec<Option<(bool, bool)>> = vec![None; nodes.len()];
            let mut previous = began;
            while !stopping.load(Ordering::Relaxed) && began.elapsed() < limit {
                let now = Instant::now();
                observed.longest_gap = observed.longest_gap.max(now - previous);
                previous = now;
                for (node, last) in nodes.iter().zip(&mut last) {
                    let state = (node.frozen(), node.eth0_up());
                    if *last != Some(state) {
                        *last = Some(state);
                        observed.changes.push(Change {
                            at: began.elapsed(),
                            node: node.name.clone(),
                            frozen: state.0,
                            eth0_up: state.1,
                        });
                    }
                }
                observed.rounds += 1;
                std::thread::sleep(every);
            }
            observed
        });
        FenceObserver {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling and returns what was seen.
    pub fn finish(mut self) -> Observed {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for FenceObserver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
