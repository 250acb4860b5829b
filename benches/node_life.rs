//! The runtime benchmark (`cargo bench --bench node_life`).
//!
//! 1. Node life: start a node until its first process runs, then stop it until everything is
//!    cleaned up, repeatedly; medians of start, stop and the whole life. Where crun is installed
//!    it runs the same rootfs with the same namespaces and memory limit (`run --detach`, then
//!    `delete --force`), alternating with the agent, and the ratio is reported.
//! 2. The daemon with 8 nodes: its RSS and the latency of `status` (socket round trip, and the
//!    CLI end to end).
//! 3. Restart: `magestack-agent restart` of a running node end to end from the CLI, alternating
//!    with crun's `run --detach` of the same rootfs.
//! 4. The pair (`node_life/pair.rs`): heartbeat round trip, TLS handshake, RSS with the link up,
//!    a killed agent's lease expired on its partner and at the witness; `pair_load`: spurious
//!    lease expiries with both cores busy.
//! 5. Fence: a node's init renewed once with the default pair settings' init lease, then left
//!    alone as by a dead agent: the time from that last renewal until the node is fenced (its
//!    cgroup frozen and eth0 down), what the fence itself takes past the lease, and the unfence
//!    (thaw, renewal, links up with a gratuitous ARP). Indicative: an agent killed just after a
//!    renewal; killed up to a heartbeat later, its nodes fence that much sooner.
//!
//! Sections can be picked by name: `cargo bench --bench node_life -- network daemon` (names:
//! life, confinement, network, daemon, restart, stack, pair, pair_load, fence; none given runs
//! them all).
//!
//! Runs as root. Everything it makes lives under /tmp/magestack-bench-<pid> and a cgroup parent of
//! the same name, and is removed on every path.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use magestack_agent::api::control::{Request, Response};
use magestack_agent::api::{read_message, write_message};
use magestack_agent::config::{self, NodeSpec, Source};
use magestack_agent::runtime::Runtime;

#[path = "node_life/pair.rs"]
mod pair;

const AGENT: &str = env!("CARGO_BIN_EXE_magestack-agent");
const ROUNDS: usize = 30;
/// The bench's own bridge (and link prefix `mb`, subnet 172.21.0.0/24).
const BRIDGE: &str = "msbench0";

struct BenchDir {
    path: PathBuf,
    cgroup: String,
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        // Every hierarchy: crun makes the bench's cgroup in all of them (systemd, blkio, cpuset
        // too), the agent in the ones it uses; on v2 the root itself.
        let hierarchies = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .chain([PathBuf::from("/sys/fs/cgroup")]);
        for root in hierarchies {
            // The bench's cgroup parents: its own and the default set's (`<name>-stack`).
            let ours = std::fs::read_dir(&root)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|entry| {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    name == self.cgroup || name == format!("{}-stack", self.cgroup)
                });
            for dir in ours.map(|entry| entry.path()) {
                if let Ok(entries) = std::fs::read_dir(&dir) {
                    for entry in entries.flatten().filter(|e| e.path().is_dir()) {
                        let _ = std::fs::remove_dir(entry.path());
                    }
                }
                let _ = std::fs::remove_dir(&dir);
            }
        }
        remove_network(BRIDGE);
        let _ = nix::mount::umount2(&self.path.join("run"), nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The sections named on the command line (cargo adds `--bench`), or all of them.
fn section_wanted(section: &str) -> bool {
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    named.is_empty() || named.iter().any(|name| name == section)
}

fn main() {
    let name = format!("magestack-bench-{}", std::process::id());
    let bench = BenchDir {
        path: PathBuf::from("/tmp").join(&name),
        cgroup: name.clone(),
    };
    std::fs::create_dir_all(bench.path.join("run")).unwrap();
    hide_unified_cgroup_mount();
    // run_dir is /run/magestack in production: a tmpfs, where state files cost no disk flush.
    nix::mount::mount(
        Some("tmpfs"),
        &bench.path.join("run"),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("mode=711"),
    )
    .expect("tmpfs run dir");

    let config = bench_config(&bench, 8);
    let spec = config.nodes["b1"].clone();
    let mut runtime = Runtime::new(&config).expect("cgroups");
    runtime.init_binary = PathBuf::from(AGENT);
    let rootfs = runtime.images.rootfs("busybox").expect("busybox image");
    runtime.network.ensure_bridge().expect("bridge");
    runtime.network.apply_policy(&config).expect("policy");

    if section_wanted("life") {
        node_life(&runtime, &config, &spec, &bench, &rootfs);
    }
    if section_wanted("confinement") {
        seccomp_cost(&spec);
    }
    if section_wanted("network") {
        network_costs(&runtime, &spec, &bench);
    }
    if section_wanted("daemon") {
        daemon_with_eight_nodes(&bench);
    }
    if section_wanted("restart") {
        node_restart(&bench, &rootfs);
    }
    if section_wanted("stack") {
        default_set_start(&bench);
    }
    if section_wanted("pair") {
        pair::bench(&bench.path, &bench.cgroup);
    }
    if section_wanted("pair_load") {
        pair::bench_load(&bench.path, &bench.cgroup);
    }
    if section_wanted("fence") {
        fence(&runtime, &spec);
    }
}

/// How many nodes the fence section fences and unfences.
const FENCE_ROUNDS: usize = 10;

/// A node's init armed by one renewal and left to fence, then thawed and renewed again.
fn fence(runtime: &Runtime, spec: &NodeSpec) {
    use magestack_agent::api::init::{InitReply, InitRequest};
    use magestack_agent::runtime::cgroup::FreezeState;
    let lease = config::PairSettings::default().init_lease();
    let mut fenced = Vec::new();
    let mut unfenced = Vec::new();
    for _ in 0..FENCE_ROUNDS {
        let handle = runtime.start(spec, 0, &[]).expect("node start");
        let socket = handle.paths.control_socket();
        let eth0_up = || {
            let output = Command::new("nsenter")
                .arg(format!("--net=/proc/{}/ns/net", handle.record.pid))
                .args(["ip", "-o", "link", "show", "eth0"])
                .output()
                .expect("nsenter ip");
            String::from_utf8_lossy(&output.stdout).contains(",UP")
        };
        let frozen = || handle.cgroup.freeze_state().expect("freezer") == FreezeState::Frozen;
        let renewed = Instant::now();
        let reply = magestack_agent::runtime::init_request(&socket, &InitRequest::Renew { lease });
        assert!(
            matches!(reply, Ok(InitReply::Renewed { unfenced: false })),
            "{reply:?}"
        );
        let deadline = renewed + lease + Duration::from_secs(5);
        while !frozen() || eth0_up() {
            assert!(Instant::now() < deadline, "the node did not fence");
            std::thread::sleep(Duration::from_millis(1));
        }
        fenced.push(renewed.elapsed());
        let thawing = Instant::now();
        handle.cgroup.thaw().expect("thaw");
        let reply = magestack_agent::runtime::init_request(&socket, &InitRequest::Renew { lease });
        assert!(
            matches!(reply, Ok(InitReply::Renewed { unfenced: true })),
            "{reply:?}"
        );
        unfenced.push(thawing.elapsed());
        assert!(eth0_up(), "links back after the unfence");
        runtime.stop(&handle);
    }
    let fenced = median(&mut fenced);
    println!(
        "fence, {FENCE_ROUNDS} rounds, default [pair] settings (init lease {}), cgroup {:?}",
        ms(lease),
        runtime.cgroups.version()
    );
    println!(
        "  last renewal to fenced (frozen, eth0 down):   median {}",
        ms(fenced)
    );
    println!(
        "  the fence past the lease (links down, freeze): median {}",
        signed_ms(fenced.as_secs_f64() - lease.as_secs_f64())
    );
    println!(
        "  unfence (thaw, renewal, links up, ARP):       median {}",
        ms(median(&mut unfenced))
    );
}

/// Node life, the agent's with and without a user namespace and crun's, interleaved.
fn node_life(
    runtime: &Runtime,
    config: &config::Config,
    spec: &NodeSpec,
    bench: &BenchDir,
    rootfs: &Path,
) {
    let crun = which("crun");
    // The same node without its user namespace (and so without the idmapped lower layer), run
    // interleaved with the isolated one so both see the same machine.
    let mut shared_ids = config.nodes["b2"].clone();
    shared_ids.definition.privileged = true;
    let mut agent_life = Vec::new();
    let mut agent_start = Vec::new();
    let mut agent_stop = Vec::new();
    let mut shared_ids_life = Vec::new();
    let mut shared_ids_start = Vec::new();
    let mut crun_life = Vec::new();
    for round in 0..ROUNDS {
        let (start, stop) = agent_node_life(runtime, spec);
        agent_start.push(start);
        agent_stop.push(stop);
        agent_life.push(start + stop);
        let (start, stop) = agent_node_life(runtime, &shared_ids);
        shared_ids_start.push(start);
        shared_ids_life.push(start + stop);
        if let Some(crun) = &crun {
            crun_life.push(crun_node_life(crun, bench, rootfs, round));
        }
    }
    println!("node life, {ROUNDS} rounds, busybox rootfs, user+pid+mnt+uts+ipc+net+cgroup namespaces, idmapped lower, seccomp, memory 64M, cgroup {:?}, run dir on tmpfs", runtime.cgroups.version());
    println!(
        "  agent start (clone to first process running): median {}",
        ms(median(&mut agent_start))
    );
    println!(
        "  agent stop (SIGTERM to cgroup removed):       median {}",
        ms(median(&mut agent_stop))
    );
    let agent = median(&mut agent_life);
    println!(
        "  agent node life:                              median {}",
        ms(agent)
    );
    let shared = median(&mut shared_ids_life);
    println!(
        "  same node, no user namespace (privileged):    median {} (start {}; user namespace + idmap add {})",
        ms(shared),
        ms(median(&mut shared_ids_start)),
        signed_ms(agent.as_secs_f64() - shared.as_secs_f64())
    );
    if crun.is_some() {
        let crun = median(&mut crun_life);
        println!(
            "  crun run --detach + delete --force:           median {}",
            ms(crun)
        );
        println!(
            "  ratio agent / crun:                           {:.2}",
            agent.as_secs_f64() / crun.as_secs_f64()
        );
    } else {
        println!("  crun not installed: no comparison");
    }
}

/// The network part of a node start (veth with eth0 made in the node, addresses, lo, route) on
/// a bare network namespace, and a policy update with 50 nodes.
fn network_costs(runtime: &Runtime, spec: &NodeSpec, bench: &BenchDir) {
    let mut host_side = Vec::new();
    let mut inside = Vec::new();
    let mut total = Vec::new();
    for _ in 0..ROUNDS {
        let mut holder = Command::new("sleep");
        holder.arg("60");
        // SAFETY: unshare in the child between fork and exec; no memory is touched.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut holder, || {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        let mut holder = holder.spawn().expect("netns holder");
        let started = Instant::now();
        let result = runtime.network.attach(spec, holder.id() as i32);
        let attached = started.elapsed();
        // What the node's init does next, from a thread inside the node's namespace.
        let netns = std::fs::File::open(format!("/proc/{}/ns/net", holder.id())).unwrap();
        let inside_took = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .expect("join the node's network namespace");
                    let started = Instant::now();
                    magestack_agent::net::configure_inside(&spec.network).expect("configure");
                    started.elapsed()
                })
                .join()
                .expect("inside thread")
        });
        host_side.push(attached);
        inside.push(inside_took);
        total.push(attached + inside_took);
        let _ = runtime.network.detach(&spec.name);
        let _ = holder.kill();
        let _ = holder.wait();
        result.expect("attach");
        // The kernel tears the namespace down in a worker after the holder exits; let it finish
        // so the next round does not measure that contention.
        std::thread::sleep(Duration::from_millis(100));
    }
    let config = fifty_node_config(bench);
    let mut policy: Vec<Duration> = (0..10)
        .map(|_| {
            let started = Instant::now();
            runtime.network.apply_policy(&config).expect("policy");
            started.elapsed()
        })
        .collect();
    println!("network");
    println!(
        "  node network (host side + inside):            median {} (host: veth on the bridge with eth0 made in the node {}; inside: lo, address, route {})",
        ms(median(&mut total)),
        ms(median(&mut host_side)),
        ms(median(&mut inside))
    );
    println!(
        "  policy update, 50 nodes (render + nft -f):    median {}",
        ms(median(&mut policy))
    );
}

/// crun must not see the hybrid host's empty cgroup2 mount, or it tries to use it: give this
/// process (and so both runtimes) a private mount namespace without it.
fn hide_unified_cgroup_mount() {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare mount namespace");
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .expect("make mounts private");
    let _ = umount2("/sys/fs/cgroup/unified", MntFlags::MNT_DETACH);
}

fn bench_config(bench: &BenchDir, nodes: usize) -> config::Config {
    let mut text = format!(
        "[host]\nname = \"bench\"\nstate_dir = \"{dir}/state\"\nrun_dir = \"{dir}/run\"\nlog_dir = \"{dir}/log\"\ncgroup = \"{cgroup}\"\nstop_timeout = \"5s\"\n\n[network]\nbridge = \"{BRIDGE}\"\nsubnet = \"172.21.0.0/24\"\nhost_ip = \"172.21.0.254\"\nlink_prefix = \"mb\"\n\n[roles.bench]\nimage = \"busybox\"\n[[roles.bench.process]]\nname = \"sleep\"\ncommand = [\"sleep\", \"1000000\"]\n[roles.bench.resources]\nmemory = \"64M\"\n",
        dir = bench.path.display(),
        cgroup = bench.cgroup
    );
    for index in 1..=nodes {
        text.push_str(&format!("[nodes.b{index}]\nrole = \"bench\"\n"));
    }
    let path = bench.path.join("agent.toml");
    std::fs::write(&path, &text).unwrap();
    config::parse(&Source::new(path.display().to_string(), text)).expect("bench config")
}

/// 50 nodes of the shipped roles, for the size of a realistic policy.
fn fifty_node_config(bench: &BenchDir) -> config::Config {
    let mut text = format!(
        "[host]\nstate_dir = \"{dir}/state\"\nrun_dir = \"{dir}/run\"\nlog_dir = \"{dir}/log\"\n[network]\nbridge = \"{BRIDGE}\"\nsubnet = \"172.21.0.0/24\"\nhost_ip = \"172.21.0.254\"\nlink_prefix = \"mb\"\n",
        dir = bench.path.display()
    );
    for (role, count) in [
        ("fw", 1),
        ("lb", 9),
        ("web", 19),
        ("db", 9),
        ("mail", 4),
        ("acc", 4),
        ("monitor", 4),
    ] {
        for index in 1..=count {
            text.push_str(&format!("[nodes.{role}{index}]\nrole = \"{role}\"\n"));
        }
    }
    let config = config::parse(&Source::new("fifty nodes", text)).expect("fifty-node config");
    assert_eq!(config.nodes.len(), 50);
    config
}

fn agent_node_life(runtime: &Runtime, spec: &NodeSpec) -> (Duration, Duration) {
    let started = Instant::now();
    let handle = runtime.start(spec, 0, &[]).expect("node start");
    let running = started.elapsed();
    let stopping = Instant::now();
    runtime.stop(&handle);
    (running, stopping.elapsed())
}

fn crun_node_life(crun: &Path, bench: &BenchDir, rootfs: &Path, round: usize) -> Duration {
    let id = format!("{}-{round}", bench.cgroup);
    let started = Instant::now();
    crun_run(crun, bench, rootfs, &id);
    crun_command(crun, bench, &["delete", "--force", &id]);
    started.elapsed()
}

/// `crun run --detach` of the bench's bundle (made on first use) as container `id`.
fn crun_run(crun: &Path, bench: &BenchDir, rootfs: &Path, id: &str) {
    let bundle = bench.path.join("crun-bundle");
    if !bundle.join("config.json").exists() {
        write_crun_bundle(crun, &bundle, rootfs, &bench.cgroup);
    }
    crun_command(
        crun,
        bench,
        &["run", "--detach", "--bundle", bundle.to_str().unwrap(), id],
    );
}

/// One crun command on the bench's state root; it must succeed.
fn crun_command(crun: &Path, bench: &BenchDir, args: &[&str]) {
    let status = Command::new(crun)
        .arg("--root")
        .arg(bench.path.join("crun-state"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("crun");
    assert!(status.success(), "crun {args:?} failed");
}

fn write_crun_bundle(crun: &Path, bundle: &Path, rootfs: &Path, cgroup: &str) {
    std::fs::create_dir_all(bundle).unwrap();
    let status = Command::new(crun)
        .args(["spec", "--bundle", bundle.to_str().unwrap()])
        .status()
        .expect("crun spec");
    assert!(status.success());
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["root"] = serde_json::json!({ "path": rootfs, "readonly": true });
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["sleep", "1000000"]);
    spec["hostname"] = "crun".into();
    spec["linux"]["namespaces"] = serde_json::json!([
        {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
        {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
    ]);
    spec["linux"]["resources"] = serde_json::json!({ "memory": { "limit": 64u64 << 20 } });
    spec["linux"]["cgroupsPath"] = format!("/{cgroup}/crun").into();
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
}

/// The daemon on the bench's configuration (nodes b1..b8), every node wanted running.
fn spawn_daemon(bench: &BenchDir) -> std::process::Child {
    // Stops of an earlier section are remembered as desired state: start from none.
    let _ = std::fs::remove_file(bench.path.join("state/desired.json"));
    Command::new(AGENT)
        .args([
            "--config",
            bench.path.join("agent.toml").to_str().unwrap(),
            "run",
        ])
        .env("MAGESTACK_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start the daemon")
}

/// Waits until the daemon on `socket` runs its 8 nodes.
fn wait_for_eight_nodes(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "daemon did not bring up 8 nodes");
        if let Ok(Response::Status(status)) = ask(socket, &Request::Status { nodes: vec![] }) {
            if status
                .nodes
                .iter()
                .filter(|n| n.state.as_str() == "running")
                .count()
                == 8
            {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops the 8 nodes and then the daemon; re-raises `outcome`'s panic.
fn stop_daemon(mut daemon: std::process::Child, socket: &Path, outcome: std::thread::Result<()>) {
    let names: Vec<String> = (1..=8).map(|i| format!("b{i}")).collect();
    let _ = ask(socket, &Request::Stop { nodes: names });
    // SAFETY: SIGTERM to the daemon child this bench started.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn daemon_with_eight_nodes(bench: &BenchDir) {
    let config = bench.path.join("agent.toml");
    let daemon = spawn_daemon(bench);
    let socket = bench.path.join("run/agent.sock");
    let report = || {
        wait_for_eight_nodes(&socket);
        let mut socket_latency: Vec<Duration> = (0..50)
            .map(|_| {
                let started = Instant::now();
                ask(&socket, &Request::Status { nodes: vec![] }).expect("status");
                started.elapsed()
            })
            .collect();
        let mut cli_latency: Vec<Duration> = (0..20)
            .map(|_| {
                let started = Instant::now();
                let output = Command::new(AGENT)
                    .args(["--config", config.to_str().unwrap(), "status", "--json"])
                    .output()
                    .expect("status");
                assert!(output.status.success());
                started.elapsed()
            })
            .collect();
        let rss = std::fs::read_to_string(format!("/proc/{}/status", daemon.id()))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
            .unwrap();
        println!("daemon with 8 running nodes");
        println!(
            "  RSS:                                          {:.1} MB",
            rss as f64 / 1024.0
        );
        println!(
            "  status over the socket (50 requests):         median {}",
            ms(median(&mut socket_latency))
        );
        println!(
            "  `magestack-agent status --json` (20 runs):    median {}",
            ms(median(&mut cli_latency))
        );
    };
    let outcome = std::panic::catch_unwind(report);
    stop_daemon(daemon, &socket, outcome);
}

/// `magestack-agent restart b1` end to end from the CLI (the daemon runs b1..b8), alternating
/// with crun's `run --detach` of the same rootfs, timed alone and after the `delete --force` of
/// the previous round's container (crun's restart).
fn node_restart(bench: &BenchDir, rootfs: &Path) {
    let crun = which("crun");
    let config = bench.path.join("agent.toml");
    let daemon = spawn_daemon(bench);
    let socket = bench.path.join("run/agent.sock");
    let measure = || {
        wait_for_eight_nodes(&socket);
        let mut agent = Vec::new();
        let mut crun_runs = Vec::new();
        let mut crun_restarts = Vec::new();
        let mut previous: Option<String> = None;
        for round in 0..ROUNDS {
            let started = Instant::now();
            let output = Command::new(AGENT)
                .args(["--config", config.to_str().unwrap(), "restart", "b1"])
                .output()
                .expect("restart");
            agent.push(started.elapsed());
            assert!(
                output.status.success(),
                "restart b1: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            if let Some(crun) = &crun {
                // crun's restart: the previous container deleted, the next one run.
                let id = format!("{}-restart-{round}", bench.cgroup);
                let started = Instant::now();
                if let Some(previous) = &previous {
                    crun_command(crun, bench, &["delete", "--force", previous]);
                }
                let deleted = started.elapsed();
                crun_run(crun, bench, rootfs, &id);
                crun_runs.push(started.elapsed() - deleted);
                if previous.is_some() {
                    crun_restarts.push(started.elapsed());
                }
                previous = Some(id);
            }
        }
        if let (Some(crun), Some(previous)) = (&crun, &previous) {
            crun_command(crun, bench, &["delete", "--force", previous]);
        }
        println!("restart of a running busybox node (7 others running), {ROUNDS} rounds");
        let agent = median(&mut agent);
        println!(
            "  `magestack-agent restart b1` (CLI, end to end): median {}",
            ms(agent)
        );
        if crun.is_some() {
            let crun = median(&mut crun_runs);
            println!(
                "  crun run --detach, same rootfs:                median {}",
                ms(crun)
            );
            println!(
                "  ratio agent restart / crun run:                {:.2}",
                agent.as_secs_f64() / crun.as_secs_f64()
            );
            let crun_restart = median(&mut crun_restarts);
            println!(
                "  crun delete --force + run --detach:            median {} (ratio {:.2})",
                ms(crun_restart),
                agent.as_secs_f64() / crun_restart.as_secs_f64()
            );
        } else {
            println!("  crun not installed: no comparison");
        }
    };
    let outcome = std::panic::catch_unwind(measure);
    stop_daemon(daemon, &socket, outcome);
}

fn ask(socket: &Path, request: &Request) -> Result<Response, Box<dyn std::error::Error>> {
    let stream = UnixStream::connect(socket)?;
    write_message(&stream, request)?;
    Ok(read_message(&stream)?)
}

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn signed_ms(seconds: f64) -> String {
    format!("{:+.2} ms", seconds * 1000.0)
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
}

/// What confining a node's processes costs: the init prepares the confinement once (capability
/// sets, seccomp filters compiled), then every process narrows and seals itself after fork. The
/// second part is measured in forked children against children that only exit.
fn seccomp_cost(spec: &NodeSpec) {
    use magestack_agent::confinement::Confinement;
    use nix::sys::wait::waitpid;
    use nix::unistd::{fork, ForkResult};

    let mut prepare: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            Confinement::new(&spec.definition.capabilities).expect("confinement");
            started.elapsed()
        })
        .collect();
    let confinement = Confinement::new(&spec.definition.capabilities).expect("confinement");
    let child_life = |confine: bool| {
        let started = Instant::now();
        // SAFETY: the bench is single-threaded here; the child only applies the prepared
        // confinement (no locks are held across the fork) and leaves with _exit.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                let code = if confine {
                    let applied = confinement.narrow().and_then(|_| confinement.seal());
                    i32::from(applied.is_err())
                } else {
                    0
                };
                // SAFETY: ends the child without running the parent's destructors.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                let status = waitpid(child, None).expect("wait");
                assert!(
                    matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)),
                    "confinement failed in the child: {status:?}"
                );
            }
        }
        started.elapsed()
    };
    let mut confined: Vec<Duration> = Vec::new();
    let mut bare: Vec<Duration> = Vec::new();
    for _ in 0..ROUNDS {
        confined.push(child_life(true));
        bare.push(child_life(false));
    }
    let (confined, bare) = (median(&mut confined), median(&mut bare));
    println!(
        "  confinement: prepared once per node {}; per process (caps + no_new_privs + seccomp) {} (fork+exit {} vs {})",
        ms(median(&mut prepare)),
        signed_ms(confined.as_secs_f64() - bare.as_secs_f64()),
        ms(confined),
        ms(bare)
    );
}

/// The default node set (fw1, lb1, web1, web2, db1, mail1, acc1, monitor1) on its real images:
/// how long each image build takes (cold the first time, then a cache hit), and the time from
/// starting the daemon until every node runs (its processes started: the agent's work, not the
/// services' own start-up), over several daemon starts.
fn default_set_start(bench: &BenchDir) {
    const STACK_BRIDGE: &str = "msbench1";
    let dir = bench.path.join("stack");
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("image-cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let cgroup = format!("{}-stack", bench.cgroup);
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[host]\nname = \"bench\"\nimage_dir = \"{cache}\"\nstate_dir = \"{dir}/state\"\nrun_dir = \"{dir}/run\"\nlog_dir = \"{dir}/log\"\ncgroup = \"{cgroup}\"\nstop_timeout = \"30s\"\n\n[network]\nbridge = \"{STACK_BRIDGE}\"\nsubnet = \"172.21.1.0/24\"\nhost_ip = \"172.21.1.254\"\nlink_prefix = \"mc\"\nuplink = \"host\"\npublic_ip = \"10.211.0.10/24\"\npublic_gateway = \"10.211.0.1\"\n",
            cache = cache.display(),
            dir = dir.display(),
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        Command::new(AGENT)
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .expect("magestack-agent")
    };
    println!("default node set on its real images");
    let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("images");
    for image in ["lb", "web", "db", "mail", "acc", "monitor"] {
        if !recipes.join(format!("{image}.toml")).exists() {
            continue;
        }
        let started = Instant::now();
        let output = cli(&["image", "build", image]);
        assert!(
            output.status.success(),
            "image build {image}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let said = String::from_utf8_lossy(&output.stdout);
        println!(
            "  image build {image:<8} {:>9}  ({})",
            ms(started.elapsed()),
            said.lines().last().unwrap_or_default()
        );
    }

    let socket = dir.join("run/agent.sock");
    let names: Vec<String> = [
        "fw1", "lb1", "web1", "web2", "db1", "mail1", "acc1", "monitor1",
    ]
    .map(String::from)
    .to_vec();
    let mut all_running = Vec::new();
    for _ in 0..5 {
        // Stops of the previous round are remembered as desired state: start from none.
        let _ = std::fs::remove_file(dir.join("state/desired.json"));
        let started = Instant::now();
        let mut daemon = Command::new(AGENT)
            .args(["--config", config.to_str().unwrap(), "run"])
            // The shipped roles' disk limits are not enforced off btrfs, and say so per start.
            .env("MAGESTACK_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the daemon");
        let deadline = Instant::now() + Duration::from_secs(120);
        let outcome = loop {
            if Instant::now() > deadline {
                break Err("the default set did not come up in 120 s");
            }
            if let Ok(Response::Status(status)) = ask(&socket, &Request::Status { nodes: vec![] }) {
                if status.nodes.len() == names.len()
                    && status.nodes.iter().all(|n| n.state.as_str() == "running")
                {
                    break Ok(started.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let _ = ask(
            &socket,
            &Request::Stop {
                nodes: names.clone(),
            },
        );
        // SAFETY: SIGTERM to the daemon child this bench started.
        unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
        let _ = daemon.wait();
        match outcome {
            Ok(took) => all_running.push(took),
            Err(error) => {
                remove_network(STACK_BRIDGE);
                panic!("{error}");
            }
        }
    }
    remove_network(STACK_BRIDGE);
    println!(
        "  daemon start to all 8 nodes running (5 starts): median {}",
        ms(median(&mut all_running))
    );
}

/// Removes a bench bridge, its policy table and its port table.
fn remove_network(bridge: &str) {
    for family in ["inet", "bridge"] {
        let _ = Command::new("nft")
            .args(["delete", "table", family, &format!("magestack_{bridge}")])
            .stderr(Stdio::null())
            .status();
    }
    let _ = Command::new("ip")
        .args(["link", "del", bridge])
        .stderr(Stdio::null())
        .status();
}
