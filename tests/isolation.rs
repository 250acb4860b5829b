//! Root in a node is not root on the host: an escape battery run as root inside a node, and the
//! id mapping, confinement and socket checks behind it.

mod common;

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use common::descriptors::{descriptors, foreign_descriptors};
use common::network::{can_connect, http_get, run, stack};
use common::{process_alive, wait_for, TestHost, AGENT, SLEEPER_ROLE};

/// Two nodes: `s1`, the attacker, with small limits, and `s2`, its neighbour.
fn two_nodes(name: &str) -> TestHost {
    let mut host = TestHost::new(
        name,
        &format!(
            r#"
[nodes.s1]
role = "sleeper"
[nodes.s1.resources]
memory = "64M"
pids = 40
[nodes.s2]
role = "sleeper"
{SLEEPER_ROLE}
[[roles.sleeper.volume]]
name = "data"
path = "/srv/data"
"#
        ),
    );
    host.start_daemon();
    host.wait_node_state("s1", "running");
    host.wait_node_state("s2", "running");
    host
}

/// Runs a shell line in a node as its root; returns (success, stdout + stderr).
fn attempt(host: &TestHost, node: &str, line: &str) -> (bool, String) {
    let output = host.exec(node, &["sh", "-c", line]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn refused(host: &TestHost, line: &str) -> String {
    refused_in(host, "s1", line)
}

fn refused_in(host: &TestHost, node: &str, line: &str) -> String {
    let (succeeded, text) = attempt(host, node, line);
    assert!(!succeeded, "`{line}` succeeded in the node: {text}");
    text
}

/// The node's role process (`sleep`): in its cgroup, not its init.
fn role_process(host: &TestHost, node: &str) -> i32 {
    let init = host.node_pid(node);
    let mut found = 0;
    wait_for("the role process", Duration::from_secs(10), || {
        found = host
            .node_processes(node)
            .into_iter()
            .find(|pid| {
                *pid != init
                    && std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default()
                        == "sleep\n"
            })
            .unwrap_or(0);
        found != 0
    });
    found
}

/// The host's id range of a node, from its init's uid_map: (inside, outside, count).
fn uid_map(pid: i32) -> (u64, u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(|field| field.parse().unwrap())
        .collect();
    assert_eq!(fields.len(), 3, "one mapping expected: {text}");
    (fields[0], fields[1], fields[2])
}

fn first_block_device() -> (String, String) {
    let entry = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .find(|entry| entry.path().join("dev").exists())
        .expect("a block device on the host");
    let numbers = std::fs::read_to_string(entry.path().join("dev")).unwrap();
    let (major, minor) = numbers.trim().split_once(':').unwrap();
    (major.to_string(), minor.to_string())
}

#[test]
fn root_in_a_node_cannot_reach_the_host_or_its_neighbour() {
    let host = two_nodes("escape");
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let neighbour_init = host.node_pid("s2");
    let neighbour_sleep = role_process(&host, "s2");

    refused(&host, "echo owned > /proc/sys/kernel/hostname");
    // Every host-facing kernel path this kernel has reads empty in the node.
    let masked: Vec<&str> = [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/sched_debug",
        "/proc/acpi",
        "/sys/firmware",
        "/sys/block",
        "/sys/class/block",
        "/sys/dev/block",
        "/proc/partitions",
        "/proc/diskstats",
    ]
    .into_iter()
    .filter(|path| std::path::Path::new(path).exists())
    .collect();
    assert!(
        !masked.is_empty(),
        "this kernel has none of the masked paths"
    );
    for path in masked {
        let seen = attempt(
            &host,
            "s1",
            &format!("if [ -d {path} ]; then ls -A {path}; else cat {path}; fi"),
        )
        .1;
        assert_eq!(seen, "", "{path} shows in the node");
    }
    refused(&host, "echo b > /proc/sysrq-trigger");
    let (major, minor) = first_block_device();
    refused(
        &host,
        &format!("mknod /tmp/disk b {major} {minor} && head -c 512 /tmp/disk | wc -c"),
    );
    // A module file that the kernel would reject as malformed: only a refusal before it is
    // looked at says "not permitted".
    let insmod = refused(
        &host,
        "head -c 4096 /dev/zero > /tmp/m.ko && insmod /tmp/m.ko",
    );
    assert!(insmod.contains("not permitted"), "{insmod}");
    let pids: Vec<u32> = attempt(&host, "s1", "ls /proc")
        .1
        .split_whitespace()
        .filter_map(|entry| entry.parse().ok())
        .collect();
    assert!(
        pids.len() < 10 && !pids.contains(&(neighbour_init as u32)),
        "host processes visible in the node: {pids:?}"
    );
    refused(
        &host,
        &format!("kill -9 {neighbour_init} || kill -9 {neighbour_sleep}"),
    );
    refused(
        &host,
        &format!("mknod /tmp/root b {major} {minor}; mount /tmp/root /mnt"),
    );
    refused(
        &host,
        "mount --bind /proc/1/root/.. /mnt && ls /mnt/proc/1/root",
    );
    let marker = host.state_dir().join("host-only-marker");
    std::fs::write(&marker, "host").unwrap();
    refused(
        &host,
        &format!(
            "for root in /proc/*/root; do cat $root{} && exit 0; done; exit 1",
            marker.display()
        ),
    );

    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host_name
    );
    assert!(process_alive(neighbour_init) && process_alive(neighbour_sleep));
    assert_eq!(host.node("s2")["state"], "running");
}

#[test]
fn a_fork_bomb_and_an_oom_stay_inside_their_node() {
    let host = two_nodes("bomb");
    let neighbour = role_process(&host, "s2");
    let daemon = host.daemon_pid() as i32;

    // Far more processes than pids = 40 allows, bounded so it ends by itself.
    let (_, bomb) = attempt(
        &host,
        "s1",
        "i=0; while [ $i -lt 120 ]; do sleep 30 >/dev/null 2>&1 & i=$((i+1)); done; echo started",
    );
    assert!(bomb.contains("can't fork"), "no fork was refused: {bomb}");
    let pids = host
        .cgroup_dirs()
        .into_iter()
        .find(|dir| dir.join("s1/pids.max").exists())
        .map(|dir| dir.join("s1"));
    if let Some(dir) = pids {
        let current: u32 = std::fs::read_to_string(dir.join("pids.current"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(current <= 40, "pids.current {current} over the limit");
    }
    host.exec(
        "s1",
        &[
            "sh",
            "-c",
            "kill $(pidof sleep | tr ' ' '\\n' | tail -n +2) 2>/dev/null; true",
        ],
    );

    // 150 MB held by one process in a node limited to 64 MiB.
    let oom = host.exec(
        "s1",
        &[
            "sh",
            "-c",
            "head -c 150000000 /dev/zero | tail -c 150000000 | wc -c",
        ],
    );
    let counted = String::from_utf8_lossy(&oom.stdout).trim().to_string();
    assert_ne!(counted, "150000000", "150 MB fitted in a 64 MiB node");

    assert!(process_alive(neighbour), "the neighbour's process died");
    assert!(process_alive(daemon), "the daemon died");
    assert_eq!(host.node("s2")["state"], "running");
    assert_eq!(host.node("s1")["state"], "running");
    assert_eq!(
        host.exec_stdout("s1", &["echo", "alive"]),
        "alive\n",
        "the node itself no longer answers"
    );
}

#[test]
fn each_node_maps_root_to_its_own_unprivileged_range() {
    let host = two_nodes("ids");
    let (inside_1, outside_1, count_1) = uid_map(host.node_pid("s1"));
    let (inside_2, outside_2, count_2) = uid_map(host.node_pid("s2"));
    assert_eq!((inside_1, count_1), (0, 65536));
    assert_eq!((inside_2, count_2), (0, 65536));
    // The ranges start at this host's `[host] id_base`, above the system's ids.
    assert_eq!(
        outside_1.min(outside_2),
        u64::from(host.net.id_base()),
        "not from id_base"
    );
    assert!(
        outside_1.abs_diff(outside_2) >= 65536,
        "ranges overlap: {outside_1} and {outside_2}"
    );
    let gid_map =
        std::fs::read_to_string(format!("/proc/{}/gid_map", host.node_pid("s1"))).unwrap();
    assert_eq!(
        gid_map.split_whitespace().collect::<Vec<_>>(),
        ["0", &outside_1.to_string(), "65536"]
    );

    // Inside, root and the image's files belong to root (the idmapped lower layer).
    assert_eq!(host.exec_stdout("s1", &["id", "-u"]), "0\n");
    assert_eq!(
        host.exec_stdout("s1", &["stat", "-c", "%u:%g", "/bin/busybox"]),
        "0:0\n"
    );
    // A file root creates in a volume is the node's shifted root on the host.
    host.exec_stdout("s1", &["sh", "-c", "echo x > /srv/data/made-by-root"]);
    let on_host = host.state_dir().join("volumes/s1/data/made-by-root");
    let metadata = std::fs::metadata(&on_host).unwrap();
    assert_eq!(
        (metadata.uid() as u64, metadata.gid() as u64),
        (outside_1, outside_1)
    );

    // The ranges are recorded and stay the node's across a restart of the node and the agent.
    let before = outside_1;
    host.cli(&["restart", "s1"]);
    assert_eq!(uid_map(host.node_pid("s1")).1, before);
}

#[test]
fn role_processes_run_with_seccomp_and_no_new_privileges() {
    let host = two_nodes("seccomp");
    let pid = role_process(&host, "s1");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in status"))
            .trim()
            .to_string()
    };
    assert_eq!(field("Seccomp"), "2");
    assert_eq!(field("NoNewPrivs"), "1");
    // Host root's capabilities are not in the bounding set (CAP_SYS_ADMIN is bit 21).
    let bounding = u64::from_str_radix(&field("CapBnd"), 16).unwrap();
    assert_eq!(bounding & (1 << 21), 0, "CAP_SYS_ADMIN kept: {bounding:x}");
    // The same holds for a command started by exec.
    let exec_status = host.exec_stdout("s1", &["cat", "/proc/self/status"]);
    assert!(exec_status.contains("Seccomp:\t2"), "{exec_status}");
    assert!(exec_status.contains("NoNewPrivs:\t1"), "{exec_status}");
}

#[test]
fn a_caller_that_is_not_root_is_refused_and_logged() {
    let host = two_nodes("socket");
    // DAC override lets the caller open the socket; the daemon still refuses it by credentials.
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=+dac_override",
            "--ambient-caps=+dac_override",
            AGENT,
            "--config",
        ])
        .arg(&host.config)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a non-root caller was served");
    assert!(stderr.contains("root"), "no reason given: {stderr}");
    wait_for("the refusal in the log", Duration::from_secs(5), || {
        host.daemon_log().contains("non-root caller")
    });
}

#[test]
fn even_a_privileged_node_reaches_only_its_minimal_devices() {
    let mut host = TestHost::new(
        "devices",
        &format!(
            "[nodes.s1]\nrole = \"sleeper\"\n{SLEEPER_ROLE}"
        )
        .replace(
            "[[roles.sleeper.process]]\nname = \"sleep\"",
            "privileged = true\nprivileged_reason = \"device cgroup test\"\n[[roles.sleeper.process]]\nname = \"sleep\"",
        ),
    );
    host.start_daemon();
    host.wait_node_state("s1", "running");
    // Without a user namespace root may make device nodes; the device controller decides
    // which it may create and open. The root is not mounted nodev, /tmp is.
    let (allowed, text) = attempt(
        &host,
        "s1",
        "mknod /null-again c 1 3 && echo fine > /null-again && rm /null-again",
    );
    assert!(allowed, "an allowed device was refused: {text}");
    let kmsg = refused(&host, "mknod /kmsg c 1 11");
    assert!(kmsg.contains("not permitted"), "{kmsg}");
    let (major, minor) = first_block_device();
    refused(
        &host,
        &format!("mknod /disk b {major} {minor} || head -c 512 /dev/block/{major}:{minor}"),
    );
}

#[test]
fn no_descriptor_of_the_host_reaches_a_node() {
    let mut host = TestHost::new(
        "descriptors",
        &format!(
            r#"
[nodes.s1]
role = "sleeper"
{SLEEPER_ROLE}
[roles.sleeper.health]
exec = ["sleep", "1"]
interval = "200ms"
"#
        ),
    );
    host.start_daemon();
    host.wait_node_state("s1", "running");
    role_process(&host, "s1");

    // An `exec` whose caller holds descriptors of its own (a host file, a host directory) and
    // whose stdin is the host's /dev/null: the command gets pipes of the node's.
    let session = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 7</etc/passwd 8<{}; exec {AGENT} --config {} exec s1 -- sleep 3",
            host.dir.display(),
            host.config.display()
        ))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let command_line =
        |pid: &i32| std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut exec_session = 0;
    let mut health_check = 0;
    wait_for(
        "the exec session and a health check",
        Duration::from_secs(10),
        || {
            for pid in host.node_processes("s1") {
                match command_line(&pid).as_slice() {
                    b"sleep\x003\x00" => exec_session = pid,
                    b"sleep\x001\x00" => health_check = pid,
                    _ => {}
                }
            }
            exec_session != 0 && health_check != 0
        },
    );
    let foreign = foreign_descriptors(&host, "s1");
    assert!(
        foreign.is_empty(),
        "host descriptors in the node: {foreign:#?}"
    );
    for pid in [exec_session, role_process(&host, "s1")] {
        let fds: Vec<u32> = descriptors(pid).into_iter().map(|(fd, _)| fd).collect();
        assert_eq!(fds, [0, 1, 2], "pid {pid} holds more than stdio");
    }
    // The init keeps its own (5: the host's log dir of the node): nothing in the node may
    // follow them.
    refused_in(&host, "s1", "ls /proc/1/fd/5/");
    refused_in(&host, "s1", "readlink /proc/1/fd/5");
    let output = session.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
}

/// Whether `from` gets an answer over TCP from `[address]:port` within one second.
fn can_connect_v6(host: &TestHost, from: &str, address: &str, port: u16) -> bool {
    let line = format!("echo ping | nc -w 1 {address} {port} | grep -q .");
    attempt(host, from, &line).0
}

#[test]
fn ipv6_is_no_way_around_the_policy() {
    let host = stack("ipv6", "");
    let nodes = ["fw1", "lb1", "web1", "db1"];
    // Off on every link of the internal network: no address a node could be reached at.
    for link in host.net.links().iter().chain([&host.net.bridge]) {
        let addresses = run(&["ip", "-6", "-o", "address", "show", "dev", link]);
        assert_eq!(addresses, "", "IPv6 on {link}");
    }
    for node in nodes {
        let addresses = host.exec_stdout(node, &["cat", "/proc/net/if_inet6"]);
        assert!(
            !addresses.contains("eth"),
            "IPv6 on a link of {node}: {addresses}"
        );
    }

    // Turned back on from outside, as a mistake on the host could: every flow is dropped over
    // IPv6 whatever its IPv4 verdict, and the host's listeners stay out of reach.
    let v6 = |n: u32| format!("fd00:{}::{n}", host.net.k);
    let bridge_sysctl = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", host.net.bridge);
    std::fs::write(&bridge_sysctl, "0").unwrap();
    let host_address = format!("{}/64", v6(254));
    run(&[
        "ip",
        "-6",
        "address",
        "add",
        &host_address,
        "dev",
        &host.net.bridge,
        "nodad",
    ]);
    for (node, n) in [("fw1", 1), ("lb1", 11), ("web1", 21), ("db1", 41)] {
        let netns = format!("--net=/proc/{}/ns/net", host.node_pid(node));
        run(&[
            "nsenter",
            &netns,
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.eth0.disable_ipv6=0",
        ]);
        let address = format!("{}/64", v6(n));
        run(&[
            "nsenter", &netns, "ip", "-6", "address", "add", &address, "dev", "eth0", "nodad",
        ]);
    }
    // A node's port carries IPv4 and ARP only: not even the replies to the host's own IPv6
    // connections leave it.
    for n in [11, 21] {
        let target = format!("[{}]:80", v6(n));
        assert!(
            http_get(&target, "/", Duration::from_secs(1)).is_none(),
            "the host reached {target} over IPv6"
        );
    }
    let flows = [
        ("lb1", "web1", 21, true),
        ("web1", "lb1", 11, false),
        ("db1", "web1", 21, false),
        ("fw1", "lb1", 11, true),
    ];
    for (from, to, n, allowed_over_ipv4) in flows {
        assert_eq!(
            can_connect(&host, from, &format!("{to}.i:80")),
            allowed_over_ipv4,
            "{from} -> {to}:80 over IPv4"
        );
        assert!(
            !can_connect_v6(&host, from, &v6(n), 80),
            "{from} -> {to}:80 passed over IPv6"
        );
    }
    let listener = TcpListener::bind(format!("[{}]:0", v6(254))).unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    can_connect_v6(&host, "web1", &v6(254), port);
    assert!(
        listener.accept().is_err(),
        "web1 reached the host over IPv6"
    );
    std::fs::write(&bridge_sysctl, "1").unwrap();
}

#[test]
fn the_host_uplink_is_no_way_to_the_host() {
    let host = stack("uplink", "");
    let net = &host.net;
    // A host service on the host end of fw1's public link.
    let listener = TcpListener::bind(format!("{}:0", net.public_gateway())).unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    for node in ["web1", "fw1"] {
        let line = format!("echo x | timeout 2 nc -w 1 {} {port}", net.public_gateway());
        attempt(&host, node, &line);
        assert!(
            listener.accept().is_err(),
            "{node} reached the host through fw1's public link"
        );
    }
    // What the host itself opens through the public side still gets its answers.
    let public = format!("{}:80", net.public_ip());
    assert!(
        http_get(&public, "/", Duration::from_secs(2)).is_some(),
        "the public address does not answer the host"
    );
}

/// The memory limit holds swap too wherever the kernel accounts it (cgroup v1's memsw, v2's
/// swap.max), and status says whether it does.
#[test]
fn swap_is_no_way_past_the_memory_limit() {
    let host = two_nodes("swap");
    let limited = host.status()["host"]["swap_limited"].as_bool();
    let memory = host
        .cgroup_dirs()
        .into_iter()
        .map(|dir| dir.join("s1"))
        .find(|dir| dir.join("memory.limit_in_bytes").exists() || dir.join("memory.max").exists())
        .expect("s1's memory cgroup");
    let read = |file: &str| std::fs::read_to_string(memory.join(file)).ok();
    match (read("memory.memsw.limit_in_bytes"), read("memory.swap.max")) {
        (Some(memsw), _) => {
            assert_eq!(memsw.trim(), (64u64 << 20).to_string(), "memory + swap");
            assert_eq!(limited, Some(true));
        }
        (None, Some(swap)) => {
            assert_eq!(swap.trim(), "0", "swap");
            assert_eq!(limited, Some(true));
        }
        (None, None) => {
            assert_eq!(limited, Some(false));
            assert!(host.cli(&["status"]).contains("swap not limited"));
        }
    }
}

/// acc1 (which the policy lets reach every node), s1 the attacker with a volume for its tools,
/// s2 with a secret on a port the policy closes to s1, and fw1, their way out.
fn spoofing_nodes(name: &str) -> TestHost {
    let mut host = TestHost::new(
        name,
        &format!(
            r#"
[nodes.fw1]
role = "fw"
[nodes.acc1]
role = "acc"
[nodes.s1]
role = "sleeper"
[nodes.s2]
role = "target"
[roles.acc]
image = "busybox"
template = []
ssh_keys = {{}}
[[roles.acc.process]]
name = "sshd"
command = ["sleep", "1000000"]
[roles.target]
image = "busybox"
[[roles.target.process]]
name = "secret"
command = ["nc", "-ll", "-p", "9999", "-e", "echo", "SECRET-9999"]
{SLEEPER_ROLE}
[[roles.sleeper.volume]]
name = "tools"
path = "/tools"
"#
        ),
    );
    host.start_daemon();
    for node in ["fw1", "acc1", "s1", "s2"] {
        host.wait_node_state(node, "running");
    }
    install_tool(&host, "s1", "spoof");
    host
}

/// Builds `tests/tools/<tool>.c` statically and puts it in `node`'s `tools` volume (`/tools`).
fn install_tool(host: &TestHost, node: &str, tool: &str) {
    let binary = host.dir.join(tool);
    let source =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/tools/{tool}.c"));
    let built = Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("gcc (setup.sh installs it) builds the test's tools");
    assert!(built.success(), "gcc {}", source.display());
    let dest = host
        .state_dir()
        .join(format!("volumes/{node}/tools/{tool}"));
    std::fs::copy(&binary, &dest).unwrap();
    std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

fn node_ip(host: &TestHost, node: &str) -> String {
    host.node(node)["ip"].as_str().unwrap().to_string()
}

/// The MAC a node's eth0 has: `02:6e` and its IPv4 address.
fn node_mac(ip: &str) -> String {
    let o = ip.parse::<std::net::Ipv4Addr>().unwrap().octets();
    format!("02:6e:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

#[test]
fn a_node_cannot_send_as_another_node() {
    let host = spoofing_nodes("spoof");
    let (acc, s1, s2) = (
        node_ip(&host, "acc1"),
        node_ip(&host, "s1"),
        node_ip(&host, "s2"),
    );
    let (reached, text) = attempt(&host, "s1", &format!("echo | nc -w 2 {s2} 9999"));
    assert!(
        !text.contains("SECRET"),
        "the policy itself lets s1 in: {reached} {text}"
    );
    // As acc1 (which may reach everything): its address, then its address and MAC too.
    let line = format!("/tools/spoof eth0 {acc} {s2} 9999 {}", node_mac(&s2));
    let (_, as_acc) = attempt(&host, "s1", &line);
    assert!(
        !as_acc.contains("SECRET-9999"),
        "s1 passed as acc1:\n{as_acc}"
    );
    let line = format!(
        "/tools/spoof eth0 {acc} {s2} 9999 {} noVLAN arp {}",
        node_mac(&s2),
        node_mac(&acc)
    );
    let (_, as_acc_mac) = attempt(&host, "s1", &line);
    assert!(
        !as_acc_mac.contains("SECRET-9999"),
        "s1 passed as acc1's address and MAC:\n{as_acc_mac}"
    );
    // Its own address in a VLAN-tagged frame, which the inet policy would never see.
    let line = format!(
        "/tools/spoof eth0 {s1} {s2} 9999 {} vlan0 noarp",
        node_mac(&s2)
    );
    let (_, tagged) = attempt(&host, "s1", &line);
    assert!(
        tagged.contains("no SYN-ACK seen"),
        "a tagged SYN was answered:\n{tagged}"
    );
    // And acc1 itself still reaches s2: the rules hold each port to its own node only.
    let (_, from_acc) = attempt(&host, "acc1", &format!("echo | nc -w 2 {s2} 9999"));
    assert!(from_acc.contains("SECRET-9999"), "acc1: {from_acc}");
}

#[test]
fn a_node_cannot_fill_the_hosts_connection_table() {
    let host = spoofing_nodes("flows");
    install_tool(&host, "s1", "udpn");
    let s1 = node_ip(&host, "s1");
    // Twice the allowance of new flows out through fw1 (which the policy lets pass), each to
    // another port; nothing answers, so each stays tracked for half a minute.
    let outside = "10.255.255.1";
    let (sent, text) = attempt(&host, "s1", &format!("/tools/udpn {outside} 8192"));
    assert!(sent, "{text}");
    let table = std::fs::read_to_string("/proc/net/nf_conntrack").unwrap();
    let held = table
        .lines()
        .filter(|entry| entry.contains(&format!("src={s1} dst={outside} ")))
        .count();
    assert!(
        (1..=4096).contains(&held),
        "s1 holds {held} tracked flows on the host"
    );
}
