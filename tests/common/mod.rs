//! A test host: a real daemon of the real binary with its own state, run and log dirs and its own
//! cgroup parent, so tests run side by side. Dropping it stops every node and removes every
//! trace, on success and on failure.

#![allow(dead_code)]

pub mod btrfs;
pub mod descriptors;
pub mod load;
pub mod netns;
pub mod network;
pub mod observer;
pub mod pair;
pub mod partition;
pub mod rng;
pub mod schedule;
pub mod stack;
pub mod witness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const AGENT: &str = env!("CARGO_BIN_EXE_magestack-agent");

pub struct TestHost {
    pub name: String,
    /// This host's own network: bridge, link prefix, subnets, so hosts run side by side.
    pub net: TestNet,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub cgroup: String,
    /// `dir/state` unless [`TestHost::with_state_dir`] put it elsewhere.
    state_dir: PathBuf,
    /// `[host] image_dir` when [`TestHost::with_image_dir`] set one (else `state_dir/images`).
    image_dir: Option<PathBuf>,
    daemon: Option<Child>,
    /// Holds this host's network number; released after `drop` removed the network.
    _net_claim: std::os::unix::net::UnixListener,
}

/// The network of one test host.
#[derive(Clone)]
pub struct TestNet {
    pub bridge: String,
    pub link_prefix: String,
    /// 172.20.<k>.0/24
    pub k: u32,
}

impl TestNet {
    /// A network no other live test host on this machine uses, in this test binary or in
    /// another one running at the same time (a shared link prefix lets one host's clean-up and
    /// sweep delete another's links). The number is held by binding the abstract unix socket
    /// `magestack-test-net-<k>` until the host is dropped (or its process dies): the kernel
    /// releases it, and no file is left behind.
    fn claim() -> (TestNet, std::os::unix::net::UnixListener) {
        use std::os::linux::net::SocketAddrExt;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            for k in 1..36u32 {
                let name = format!("magestack-test-net-{k}");
                let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                    .expect("an abstract socket name");
                if let Ok(claim) = std::os::unix::net::UnixListener::bind_addr(&address) {
                    let net = TestNet {
                        bridge: format!("msb{}x{k}", std::process::id() % 100_000),
                        link_prefix: format!("t{}", char::from_digit(k, 36).unwrap()),
                        k,
                    };
                    // A host that died without cleaning up may have left this network behind,
                    // its bridge named after its own process.
                    net.remove();
                    for stale in net.stale_bridges() {
                        TestNet {
                            bridge: stale,
                            ..net.clone()
                        }
                        .remove();
                    }
                    return (net, claim);
                }
            }
            assert!(Instant::now() < deadline, "no free test network");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn subnet(&self) -> String {
        format!("172.20.{}.0/24", self.k)
    }

    /// The address the plan gives offset `n` in this host's subnet.
    pub fn ip(&self, n: u32) -> String {
        format!("172.20.{}.{n}", self.k)
    }

    pub fn host_ip(&self) -> String {
        self.ip(254)
    }

    /// fw1's public address (uplink "host") in this host's public subnet.
    pub fn public_ip(&self) -> String {
        format!("10.210.{}.10", self.k)
    }

    /// `[host] id_base`: 64 id ranges of this host's own, so test hosts on one machine never map
    /// nodes onto the same host ids.
    pub fn id_base(&self) -> u32 {
        (self.k + 1) * 64 * 65536
    }

    pub fn public_gateway(&self) -> String {
        format!("10.210.{}.1", self.k)
    }

    fn config(&self) -> String {
        format!(
            "[network]\nbridge = \"{}\"\nsubnet = \"{}\"\nhost_ip = \"{}\"\nlink_prefix = \"{}\"\nuplink = \"host\"\npublic_ip = \"{}/24\"\npublic_gateway = \"{}\"\n",
            self.bridge,
            self.subnet(),
            self.host_ip(),
            self.link_prefix,
            self.public_ip(),
            self.public_gateway()
        )
    }

    /// Removes the bridge, the policy table and any link with this host's prefix.
    fn remove(&self) {
        let table = format!("magestack_{}", self.bridge);
        for family in ["inet", "bridge"] {
            let _ = Command::new("nft")
                .args(["delete", "table", family, &table])
                .stderr(Stdio::null())
                .status();
        }
        for link in self.links() {
            let _ = Command::new("ip").args(["link", "del", &link]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }

    /// Bridges of earlier test hosts with this network number: `msb<pid>x<k>`, not ours.
    fn stale_bridges(&self) -> Vec<String> {
        let output = Command::new("ip")
            .args(["-o", "link", "show", "type", "bridge"])
            .output()
            .unwrap();
        let suffix = format!("x{}", self.k);
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .filter(|name| {
                name.strip_prefix("msb")
                    .and_then(|rest| rest.strip_suffix(&suffix))
                    .is_some_and(|pid| pid.chars().all(|c| c.is_ascii_digit()))
            })
            .filter(|name| *name != self.bridge)
            .map(str::to_string)
            .collect()
    }

    /// `nft list table inet magestack_<bridge>`: this host's inter-node policy, as nft shows it.
    pub fn policy_table(&self) -> Output {
        Command::new("nft")
            .args([
                "list",
                "table",
                "inet",
                &format!("magestack_{}", self.bridge),
            ])
            .output()
            .unwrap()
    }

    /// Host links of this test host's nodes.
    pub fn links(&self) -> Vec<String> {
        let output = Command::new("ip")
            .args(["-o", "link", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|name| name.split('@').next().unwrap().to_string())
            .filter(|name| {
                name.starts_with(&format!("{}-", self.link_prefix))
                    || name.starts_with(&format!("{}_", self.link_prefix))
            })
            .collect()
    }
}

// Stand-ins for the shipped roles whose real images have tests of their own (role_*.rs): busybox
// processes with the roles' own allow rules, so network tests need no image build.

/// lb1 as busybox httpd (the shipped role runs haproxy from the real `lb` image, tested in
/// role_lb.rs): without its haproxy.cfg template, whose reload names the haproxy process.
pub const LB_STAND_IN: &str = r#"
[roles.lb]
image = "busybox"
template = []
[[roles.lb.process]]
name = "httpd"
command = ["httpd", "-f", "-p", "80", "-h", "/var/www"]
"#;

/// web1 as busybox httpd on port 80 (the shipped role runs nginx and php-fpm from the real `web`
/// image, tested in role_web.rs): without its templates, whose reload names nginx, and checked
/// by tcp instead of its /health_check.php.
pub const WEB_STAND_IN: &str = r#"
[roles.web]
image = "busybox"
template = []
[[roles.web.process]]
name = "httpd"
command = ["httpd", "-f", "-p", "80", "-h", "/var/www"]
[roles.web.health]
tcp = 80
"#;

/// db1 as a busybox TCP echo on the MySQL port (the shipped role runs MariaDB and Redis from the
/// real `db` image, tested in role_db.rs): without its templates, checked over TCP.
pub const DB_STAND_IN: &str = r#"
[roles.db]
image = "busybox"
template = []
[[roles.db.process]]
name = "mysqld"
command = ["nc", "-ll", "-p", "3306", "-e", "cat"]
[roles.db.health]
tcp = 3306
"#;

/// A node definition with one long sleep, the usual test subject.
pub const SLEEPER_ROLE: &str = r#"
[roles.sleeper]
image = "busybox"
[[roles.sleeper.process]]
name = "sleep"
command = ["sleep", "1000000"]
"#;

/// `[nodes]` of the sleeper role, one per name, followed by the role itself.
pub fn sleeper_nodes(names: &[&str]) -> String {
    let mut body = String::new();
    for name in names {
        body.push_str(&format!("[nodes.{name}]\nrole = \"sleeper\"\n"));
    }
    body.push_str(SLEEPER_ROLE);
    body
}

impl TestHost {
    /// A host whose config is the given `[nodes]`/`[roles]` text after a generated `[host]`.
    pub fn new(name: &str, body: &str) -> TestHost {
        TestHost::build(name, body, None, None)
    }

    /// A host whose state dir is `state_dir` (e.g. on a filesystem the test mounted); the test
    /// removes it.
    pub fn with_state_dir(name: &str, body: &str, state_dir: &Path) -> TestHost {
        TestHost::build(name, body, Some(state_dir), None)
    }

    /// A host whose images live in `image_dir` (`[host] image_dir`), e.g. a cache of real
    /// builds kept between test runs; the test does not remove it.
    pub fn with_image_dir(name: &str, body: &str, image_dir: &Path) -> TestHost {
        TestHost::build(name, body, None, Some(image_dir))
    }

    fn build(
        name: &str,
        body: &str,
        state_dir: Option<&Path>,
        image_dir: Option<&Path>,
    ) -> TestHost {
        let cgroup = format!("magestack-test-{name}-{}", std::process::id());
        let dir = PathBuf::from(format!("/tmp/{cgroup}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (net, net_claim) = TestNet::claim();
        let host = TestHost {
            name: name.into(),
            net,
            config: dir.join("agent.toml"),
            state_dir: state_dir.map_or_else(|| dir.join("state"), Path::to_path_buf),
            image_dir: image_dir.map(Path::to_path_buf),
            dir,
            cgroup,
            daemon: None,
            _net_claim: net_claim,
        };
        host.write_config(body);
        host
    }

    pub fn write_config(&self, body: &str) {
        let image_dir = match &self.image_dir {
            Some(dir) => format!("image_dir = \"{}\"\n", dir.display()),
            None => String::new(),
        };
        let text = format!(
            "[host]\nname = \"{name}\"\n{image_dir}state_dir = \"{state}\"\nrun_dir = \"{dir}/run\"\nlog_dir = \"{dir}/log\"\ncgroup = \"{cgroup}\"\nstop_timeout = \"2s\"\nid_base = {id_base}\n\n{network}\n{body}",
            name = self.name,
            dir = self.dir.display(),
            state = self.state_dir.display(),
            cgroup = self.cgroup,
            network = self.net.config(),
            id_base = self.net.id_base(),
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// The value of the first `key = value` line of this host's config file, as written.
    pub fn setting(&self, key: &str) -> String {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let prefix = format!("{key} = ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no `{key}` in {}", self.config.display()))
            .to_string()
    }

    /// Replaces the value of the first `key = value` line of this host's config file (after
    /// [`TestHost::write_config`], which writes every line anew).
    pub fn set_setting(&self, key: &str, value: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let old = format!("{key} = {}", self.setting(key));
        std::fs::write(
            &self.config,
            text.replacen(&old, &format!("{key} = {value}"), 1),
        )
        .unwrap();
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone()
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// Starts the daemon and waits until its socket answers.
    pub fn start_daemon(&mut self) {
        self.start_daemon_no_wait();
        wait_for("the daemon's socket", Duration::from_secs(20), || {
            self.try_cli(&["status", "--json"]).status.success()
        });
    }

    /// Starts the daemon without waiting for it.
    pub fn start_daemon_no_wait(&mut self) {
        self.spawn_daemon(Command::new(AGENT));
    }

    /// Starts the daemon in the network namespace `ip netns add <netns>` made (through
    /// `nsenter`, which keeps the mount namespace and so the cgroup mounts, unlike `ip netns
    /// exec`) and waits until its socket answers.
    pub fn start_daemon_in_netns(&mut self, netns: &str) {
        let mut command = Command::new("nsenter");
        command.arg(format!("--net=/run/netns/{netns}")).arg(AGENT);
        self.spawn_daemon(command);
        wait_for("the daemon's socket", Duration::from_secs(20), || {
            self.try_cli(&["status", "--json"]).status.success()
        });
    }

    /// Runs `launcher` (the agent, or a command that execs it) with `run` on this host's config.
    fn spawn_daemon(&mut self, mut launcher: Command) {
        assert!(self.daemon.is_none(), "daemon already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .unwrap();
        let child = launcher
            .args(["--config", self.config.to_str().unwrap(), "run"])
            .env("MAGESTACK_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
    }

    pub fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().expect("daemon running").id()
    }

    /// Kills the daemon with `signal` and reaps it; nodes stay.
    pub fn kill_daemon(&mut self, signal: i32) {
        let mut child = self.daemon.take().expect("daemon running");
        // SAFETY: kill on the pid of a child we have not reaped yet.
        unsafe { libc::kill(child.id() as i32, signal) };
        let _ = child.wait();
    }

    /// Sends `signal` to the daemon without reaping it (SIGSTOP, SIGCONT).
    pub fn signal_daemon(&self, signal: i32) {
        // SAFETY: kill on the pid of a child we have not reaped yet.
        unsafe { libc::kill(self.daemon_pid() as i32, signal) };
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    pub fn try_cli(&self, args: &[&str]) -> Output {
        Command::new(AGENT)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs the CLI and insists on success.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = self.try_cli(args);
        assert!(
            output.status.success(),
            "magestack-agent {args:?} failed: {}\n{}\ndaemon log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout),
            self.daemon_log()
        );
        String::from_utf8(output.stdout).unwrap()
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.cli(&["status", "--json"])).unwrap()
    }

    pub fn node(&self, name: &str) -> Value {
        self.status()["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("node {name} not in status"))
    }

    pub fn node_pid(&self, name: &str) -> i32 {
        self.node(name)["pid"]
            .as_i64()
            .unwrap_or_else(|| panic!("{name} has no pid")) as i32
    }

    pub fn wait_node_state(&self, name: &str, state: &str) -> Value {
        let mut last = Value::Null;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            last = self.node(name);
            if last["state"] == state {
                return last;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{name} never became {state}: {last:#}\n{}",
            self.daemon_log()
        );
    }

    /// Runs a command in a node through `exec` and returns its output.
    pub fn exec(&self, node: &str, command: &[&str]) -> Output {
        let mut args = vec!["exec", node, "--"];
        args.extend_from_slice(command);
        self.try_cli(&args)
    }

    pub fn exec_stdout(&self, node: &str, command: &[&str]) -> String {
        let output = self.exec(node, command);
        assert!(
            output.status.success(),
            "exec {command:?} in {node}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Directories of this host's cgroups in every v1 hierarchy (or the v2 one).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        cgroup_roots()
            .into_iter()
            .map(|root| root.join(&self.cgroup))
            .filter(|dir| dir.exists())
            .collect()
    }

    /// Host pids of every process in a node's cgroup (the first v1 hierarchy or the v2 one).
    pub fn node_processes(&self, node: &str) -> Vec<i32> {
        let procs = self.cgroup_dirs()[0].join(node).join("cgroup.procs");
        std::fs::read_to_string(procs)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect()
    }

    pub fn node_cgroup_exists(&self, node: &str) -> bool {
        self.cgroup_dirs().iter().any(|dir| dir.join(node).exists())
    }

    /// Waits (bounded) until this host has nothing left on the machine: a stopped node's links
    /// go with its network namespace, which the kernel tears down just after the node stops.
    pub fn assert_nothing_left(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "left behind: {left:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything this host left on the machine: node cgroups, run dirs, processes.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        for dir in self.cgroup_dirs() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.path().is_dir() {
                    found.push(format!("cgroup {}", entry.path().display()));
                }
            }
        }
        for entry in std::fs::read_dir(self.run_dir().join("nodes"))
            .into_iter()
            .flatten()
            .flatten()
        {
            found.push(format!("run dir {}", entry.path().display()));
        }
        for link in self.net.links() {
            found.push(format!("link {link}"));
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        for line in mounts.lines().filter(|l| l.contains(&self.cgroup)) {
            found.push(format!("mount {line}"));
        }
        found
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if self.daemon.is_some() {
            let status = self.try_cli(&["status", "--json"]);
            if let Ok(value) = serde_json::from_slice::<Value>(&status.stdout) {
                let running: Vec<String> = value["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|n| n["pid"].is_i64())
                    .map(|n| n["name"].as_str().unwrap().to_string())
                    .collect();
                if !running.is_empty() {
                    let mut args = vec!["stop"];
                    args.extend(running.iter().map(String::as_str));
                    let _ = self.try_cli(&args);
                }
            }
            self.kill_daemon(libc::SIGKILL);
        }
        // Whatever a failed test left: kill it by cgroup, remove the cgroups and files.
        for dir in self.cgroup_dirs() {
            for node in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if node.path().is_dir() {
                    kill_cgroup(&node.path());
                }
            }
            let _ = std::fs::remove_dir(&dir);
        }
        self.net.remove();
        unmount_below(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Detaches every mount at or below `dir` in this mount namespace, deepest first: what a daemon
/// killed before it could stop its nodes leaves (their pinned namespaces in the run dir), and a
/// filesystem a test mounted there.
pub fn unmount_below(dir: &Path) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .map(PathBuf::from)
        .filter(|point| point.starts_with(dir))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    for point in points {
        let path = std::ffi::CString::new(point.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: umount2 with a valid C string; MNT_DETACH so a busy mount goes too.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
}

/// The hierarchies a node cgroup appears in on this machine.
pub fn cgroup_roots() -> Vec<PathBuf> {
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if unified {
        return vec![PathBuf::from("/sys/fs/cgroup")];
    }
    // The v1 controllers the agent uses.
    ["memory", "pids", "cpu", "cpuacct", "freezer", "devices"]
        .iter()
        .map(|c| Path::new("/sys/fs/cgroup").join(c))
        .filter(|p| p.exists())
        .collect()
}

fn kill_cgroup(dir: &Path) {
    // A frozen (fenced) node's processes take their SIGKILL only once thawed.
    thaw_cgroup(dir);
    for _ in 0..200 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if procs.trim().is_empty() {
            break;
        }
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill takes plain integers.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for _ in 0..100 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Thaws a node's cgroup `dir` if it is frozen: through the v1 freezer hierarchy's mirror of
/// `dir`, or v2's `cgroup.freeze`.
fn thaw_cgroup(dir: &Path) {
    if dir.join("cgroup.freeze").exists() {
        let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
        return;
    }
    let freezer = Path::new("/sys/fs/cgroup/freezer");
    for root in cgroup_roots() {
        if let Ok(relative) = dir.strip_prefix(&root) {
            let _ = std::fs::write(freezer.join(relative).join("freezer.state"), "THAWED");
        }
    }
}

/// Polls `check` every 20 ms until it holds, failing the test after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

pub fn host_namespace(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}"))
        .unwrap()
        .display()
        .to_string()
}

pub fn process_namespace(pid: i32, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .display()
        .to_string()
}

pub fn process_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}
