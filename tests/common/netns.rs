//! Network namespaces for tests: made with `ip netns add`, deleted on drop (with every link in
//! them), and entered by a thread of the test itself.

use std::process::{Command, Stdio};

/// A network namespace made with `ip netns add`, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    /// `ms<tag><pid>`: unique to this test process.
    pub fn new(tag: &str) -> Netns {
        let name = format!("ms{tag}{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let made = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(made.success(), "ip netns add {name}");
        Netns(name)
    }

    /// `ip -n <netns> ARGS`, insisting on success.
    pub fn ip(&self, args: &[&str]) {
        let status = Command::new("ip")
            .args(["-n", &self.0])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "ip -n {} {args:?}", self.0);
    }

    pub fn links(&self) -> String {
        let output = Command::new("ip")
            .args(["-n", &self.0, "-o", "link", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `work` on a thread that entered this namespace (a network namespace is per thread:
    /// the test's other threads stay where they are), and returns what it returns.
    pub fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|error| panic!("entering {path}: {error}"));
            work()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
