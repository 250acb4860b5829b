//! Needs root: real node cgroups, a forked child placed in them, and device nodes it tries to
//! open and make. Each probe runs twice, outside the cgroup first, so a refusal is known to come
//! from the cgroup and not from the filesystem or the device.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, pipe2, ForkResult, Pid};
use tempfile::TempDir;

use super::*;
use crate::runtime::cgroup::{CgroupVersion, Cgroups, Limits};

/// One device access the probe tries.
enum Access {
    Open { path: CString, flags: libc::c_int },
    Mknod { path: CString, dev: libc::dev_t },
}

/// What the probe should see for each access inside the node's cgroup.
struct Expect {
    what: String,
    access: Access,
    allowed: bool,
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

/// The first block device the kernel lists, as major and minor.
fn some_block_device() -> (u64, u64) {
    let mut devs: Vec<String> = fs::read_dir("/sys/class/block")
        .unwrap()
        .flatten()
        .filter_map(|entry| fs::read_to_string(entry.path().join("dev")).ok())
        .collect();
    devs.sort();
    let dev = devs
        .first()
        .expect("this test needs a block device in /sys/class/block");
    let (major, minor) = dev.trim().split_once(':').unwrap();
    (major.parse().unwrap(), minor.parse().unwrap())
}

/// Makes, in `dir`, a null (1:3), a kmsg (1:11) and a block device node, and returns the accesses
/// a node's process may and may not make.
fn accesses_in(dir: &Path) -> Vec<Expect> {
    fs::create_dir(dir).unwrap();
    let (block_major, block_minor) = some_block_device();
    let char_dev = SFlag::S_IFCHR;
    for (name, kind, major, minor) in [
        ("null", char_dev, 1, 3),
        ("kmsg", char_dev, 1, 11),
        ("block", SFlag::S_IFBLK, block_major, block_minor),
    ] {
        mknod(
            &dir.join(name),
            kind,
            Mode::from_bits_truncate(0o600),
            makedev(major, minor),
        )
        .unwrap();
    }
    let open = |what: &str, path: &Path, flags, allowed| Expect {
        what: what.into(),
        access: Access::Open {
            path: c_path(path),
            flags: flags | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK,
        },
        allowed,
    };
    let make = |what: &str, name: &str, minor, allowed| Expect {
        what: what.into(),
        access: Access::Mknod {
            path: c_path(&dir.join(name)),
            dev: makedev(1, minor),
        },
        allowed,
    };
    let dev = Path::new("/dev");
    vec![
        open("open /dev/null", &dev.join("null"), libc::O_RDWR, true),
        open("open /dev/zero", &dev.join("zero"), libc::O_RDWR, true),
        open(
            "open /dev/urandom",
            &dev.join("urandom"),
            libc::O_RDWR,
            true,
        ),
        open(
            "open /dev/ptmx (5:2)",
            &dev.join("ptmx"),
            libc::O_RDWR,
            true,
        ),
        open("open made 1:3", &dir.join("null"), libc::O_RDWR, true),
        open("open made 1:11", &dir.join("kmsg"), libc::O_RDWR, false),
        open("open made block", &dir.join("block"), libc::O_RDONLY, false),
        make("mknod 1:3", "new-null", 3, true),
        make("mknod 1:11", "new-kmsg", 11, false),
    ]
}

/// A forked child that waits to be placed in a cgroup, then tries each access and reports 0 or
/// the errno; killed and reaped on drop if it is still there.
///
/// Tests run in parallel threads, so a probe forked by another test may hold copies of this
/// probe's pipe ends: "go" is a byte rather than end-of-file, and the results are read after the
/// child has exited rather than until end-of-file.
struct Probe {
    pid: Pid,
    go: fs::File,
    results: fs::File,
    reaped: bool,
}

impl Probe {
    fn fork(accesses: &[Expect]) -> Probe {
        let (go_read, go_write) = pipe2(OFlag::O_CLOEXEC).unwrap();
        let (results_read, results_write) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
        // SAFETY: the child only makes async-signal-safe system calls on memory prepared before
        // the fork, and leaves with _exit, so the test harness's other threads do not matter.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let mut byte = 0u8;
                // SAFETY: reads one byte into a live local.
                unsafe { libc::read(go_read.as_raw_fd(), (&raw mut byte).cast(), 1) };
                for expect in accesses {
                    let result: i32 = match &expect.access {
                        Access::Open { path, flags } => {
                            // SAFETY: a NUL-terminated path made before the fork.
                            let fd = unsafe { libc::open(path.as_ptr(), *flags) };
                            if fd >= 0 {
                                // SAFETY: closes the fd just opened.
                                unsafe { libc::close(fd) };
                            }
                            fd.min(0)
                        }
                        Access::Mknod { path, dev } => {
                            // SAFETY: a NUL-terminated path made before the fork.
                            unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, *dev) }
                        }
                    };
                    let code = if result < 0 {
                        io::Error::last_os_error().raw_os_error().unwrap_or(-1)
                    } else {
                        0
                    };
                    // SAFETY: writes the 4 bytes of a live local.
                    unsafe { libc::write(results_write.as_raw_fd(), (&raw const code).cast(), 4) };
                }
                // SAFETY: ends the child without running the parent's destructors or atexit.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => Probe {
                pid: child,
                go: fs::File::from(go_write),
                results: fs::File::from(results_read),
                reaped: false,
            },
        }
    }

    fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// Lets the child run and returns what each access gave: 0 or an errno.
    fn results(&mut self) -> Vec<i32> {
        self.go.write_all(b"g").unwrap();
        let status = waitpid(self.pid, None).unwrap();
        self.reaped = true;
        assert_eq!(status, WaitStatus::Exited(self.pid, 0));
        // The child's few results are all in the pipe now; its other holders write nothing.
        let mut bytes = Vec::new();
        if let Err(error) = self.results.read_to_end(&mut bytes) {
            assert_eq!(error.kind(), io::ErrorKind::WouldBlock, "{error}");
        }
        bytes
            .chunks_exact(4)
            .map(|chunk| i32::from_ne_bytes(chunk.try_into().unwrap()))
            .collect()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = kill(self.pid, Signal::SIGKILL);
            let _ = waitpid(self.pid, None);
        }
    }
}

/// Removes the node cgroup and its parent even when an assertion fails.
struct CgroupCleanup {
    cgroups: Cgroups,
    node: NodeCgroup,
    parent: String,
}

impl Drop for CgroupCleanup {
    fn drop(&mut self) {
        if let Err(error) = self.node.remove() {
            eprintln!("cleanup: {error}");
        }
        self.cgroups.remove_parent_if_empty(&self.parent);
        for dir in self.node.dirs() {
            if let Some(parent) = dir.parent().filter(|parent| parent.exists()) {
                eprintln!("cleanup: {} is left", parent.display());
            }
        }
    }
}

/// Makes node `name` in `cgroups`, checks `check_cgroup` on it, then probes its device access:
/// everything allowed outside it, exactly the expected accesses inside it.
fn probe_node(cgroups: Cgroups, name: &str, check_cgroup: impl FnOnce(&NodeCgroup)) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test makes real cgroups and device nodes: run it as root"
    );
    let temp = TempDir::new().unwrap();
    let parent = format!("magestack-devtest-{name}-{}", std::process::id());
    let node = cgroups.node(&parent, name);
    let _cleanup = CgroupCleanup {
        cgroups: cgroups.clone(),
        node: node.clone(),
        parent,
    };

    let outside = accesses_in(&temp.path().join("outside"));
    let results = Probe::fork(&outside).results();
    let report = |accesses: &[Expect], results: &[i32]| -> Vec<String> {
        accesses
            .iter()
            .zip(results)
            .map(|(expect, errno)| {
                format!("{}: {}", expect.what, io::Error::from_raw_os_error(*errno))
            })
            .collect()
    };
    assert!(
        results.len() == outside.len() && results.iter().all(|&errno| errno == 0),
        "outside any node cgroup every access must work: {:?}",
        report(&outside, &results)
    );

    node.create(&Limits::default()).unwrap();
    check_cgroup(&node);
    let inside = accesses_in(&temp.path().join("inside"));
    let mut probe = Probe::fork(&inside);
    node.attach(probe.pid()).unwrap();
    assert_eq!(node.procs().unwrap(), [probe.pid()]);
    let results = probe.results();
    let expected: Vec<i32> = inside
        .iter()
        .map(|expect| if expect.allowed { 0 } else { libc::EPERM })
        .collect();
    assert_eq!(
        results,
        expected,
        "in the node cgroup: {:?}",
        report(&inside, &results)
    );
}

/// The node cgroup on this host's own layout (v1 here, v2 in production).
#[test]
fn a_real_node_cgroup_allows_only_the_nodes_devices() {
    let cgroups = Cgroups::detect().unwrap();
    let version = cgroups.version();
    probe_node(cgroups, "dev1", |node| {
        if version != CgroupVersion::V1 {
            return;
        }
        let list = node
            .dirs()
            .into_iter()
            .map(|dir| dir.join("devices.list"))
            .find(|file| file.exists())
            .expect("a v1 node cgroup has a devices hierarchy");
        let listed: Vec<String> = fs::read_to_string(&list)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        let allowed: Vec<String> = ALLOWED.iter().map(|device| device.v1_rule()).collect();
        assert_eq!(listed, allowed, "{}", list.display());
    });
}

/// The v2 path, device program included, on whatever cgroup2 mount this host has: the
/// controller-less `unified` one of a hybrid host still runs device programs.
#[test]
fn a_real_v2_node_cgroup_runs_the_device_program() {
    let cgroups = crate::runtime::cgroup::tests::real_v2();
    probe_node(cgroups, "dev2", |_| {});
}

#[test]
fn v1_rules_deny_all_then_allow_each_device() {
    let dir = Path::new("/sys/fs/cgroup/devices/magestack/web1");
    let writes = v1_writes(dir);
    assert_eq!(writes[0], ControlWrite::new(dir.join("devices.deny"), "a"));
    let allows: Vec<&str> = writes[1..]
        .iter()
        .inspect(|write| assert_eq!(write.path, dir.join("devices.allow")))
        .map(|write| write.value.as_str())
        .collect();
    assert_eq!(
        allows,
        [
            "c 1:3 rwm",
            "c 1:5 rwm",
            "c 1:7 rwm",
            "c 1:8 rwm",
            "c 1:9 rwm",
            "c 5:0 rwm",
            "c 5:2 rwm",
            "c 136:* rwm",
            "c 137:* rwm",
            "c 138:* rwm",
            "c 139:* rwm",
            "c 140:* rwm",
            "c 141:* rwm",
            "c 142:* rwm",
            "c 143:* rwm",
        ]
    );
}

/// Needs root (CAP_BPF): the kernel's refusal comes back with its verifier's reason.
#[test]
fn the_kernel_refusing_a_program_gives_its_verifier_log() {
    // Exits without setting R0, which the verifier refuses.
    let error = bpf::load_device_program(&[program::Insn::exit()]).unwrap_err();
    assert_eq!(error.source.raw_os_error(), Some(libc::EACCES), "{error:?}");
    assert!(error.verifier_log.contains("R0 !read_ok"), "{error:?}");
}

#[test]
fn a_refused_program_load_names_the_node_and_shows_the_verifier_log() {
    let error = CgroupError::LoadDeviceProgram {
        node: "web1".into(),
        path: "/sys/fs/cgroup/magestack/web1".into(),
        source: io::Error::from_raw_os_error(libc::EACCES),
        log: "0: R2 !read_ok".into(),
    };
    let text = error.to_string();
    assert!(text.starts_with("node web1: "), "{text}");
    assert!(text.contains("/sys/fs/cgroup/magestack/web1"), "{text}");
    assert!(text.ends_with("verifier log:\n0: R2 !read_ok"), "{text}");
}
