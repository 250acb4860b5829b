//! The `pair` sections: two agents and a witness in a network namespace of the bench's own
//! (`mbpair<pid>`: each on its own loopback address, with its own bridge, prefix and subnet, so
//! their claims do not collide), paired, with the witness added.
//!
//! - `pair`: the daemon's RSS unpaired and with the link, heartbeats and witness up; the
//!   heartbeat round trip (the agent's own p50 and p99 over its last heartbeats); a TLS 1.3
//!   handshake with pair certificates (in process, over loopback); and the time from a SIGKILL
//!   of one agent until its partner and the witness both hold its lease expired.
//! - `pair_load`: the leases' expiries while two busy loops hold both cores for
//!   `MAGESTACK_BENCH_LOAD_S` seconds (default 30): every expiry there is spurious.

use std::io::BufRead;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use magestack_agent::api::control::{PairStatus, Request, Response};
use magestack_agent::pair::ca::PairCa;
use magestack_agent::pair::store::PairStore;
use magestack_agent::pair::tls::Identity;
use magestack_agent::pair::wire::Message;
use magestack_agent::pair::witness_client::request_blocking;
use magestack_agent::pair::witness_token::WitnessToken;

use super::{ask, ms, AGENT};

const WITNESS: &str = "127.0.0.3:17947";

struct Agent {
    name: &'static str,
    dir: PathBuf,
    cgroup: String,
    process: Option<Child>,
}

struct PairBench {
    netns: String,
    dir: PathBuf,
    agents: [Agent; 2],
    witness: Option<Child>,
    token: Option<WitnessToken>,
}

impl Drop for PairBench {
    fn drop(&mut self) {
        for child in self
            .agents
            .iter_mut()
            .filter_map(|agent| agent.process.as_mut())
            .chain(self.witness.as_mut())
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        for agent in &self.agents {
            for root in std::fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = std::fs::remove_dir(root.path().join(&agent.cgroup));
            }
            let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(&agent.cgroup));
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Agent {
    fn config(&self) -> PathBuf {
        self.dir.join("agent.toml")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("run/agent.sock")
    }

    fn status(&self) -> PairStatus {
        match ask(&self.socket(), &Request::PairStatus) {
            Ok(Response::PairStatus(status)) => status,
            other => panic!("{}: pair status: {other:?}", self.name),
        }
    }

    fn rss_kb(&self) -> u64 {
        let pid = self.process.as_ref().expect("agent running").id();
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap()
    }

    fn cli(&self, args: &[&str]) -> String {
        let output = Command::new(AGENT)
            .arg("--config")
            .arg(self.config())
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}: {args:?}: {output:?}",
            self.name
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

impl PairBench {
    fn new(bench_dir: &Path, cgroup: &str) -> PairBench {
        let netns = format!("mbpair{}", std::process::id());
        let dir = bench_dir.join("pair");
        let made = Command::new("ip")
            .args(["netns", "add", &netns])
            .status()
            .unwrap();
        assert!(made.success(), "ip netns add {netns}");
        let agent = |name: &'static str, n: u32| {
            let dir = dir.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let agent = Agent {
                name,
                cgroup: format!("{cgroup}-{name}"),
                dir,
                process: None,
            };
            std::fs::write(
                agent.config(),
                format!(
                    "[host]\nname = \"{name}\"\nstate_dir = \"{d}/state\"\nrun_dir = \"{d}/run\"\nlog_dir = \"{d}/log\"\ncgroup = \"{cg}\"\n\n[network]\nbridge = \"mbp{n}\"\nsubnet = \"172.2{s}.0.0/24\"\nhost_ip = \"172.2{s}.0.254\"\nlink_prefix = \"p{n}\"\n\n[pair]\nlisten = \"127.0.0.{n}:17946\"\n\n[nodes]\n",
                    d = agent.dir.display(),
                    cg = agent.cgroup,
                    s = n + 1,
                ),
            )
            .unwrap();
            agent
        };
        let mut bench = PairBench {
            agents: [agent("pa", 1), agent("pb", 2)],
            netns,
            dir,
            witness: None,
            token: None,
        };
        bench.run(&[&["link", "set", "lo", "up"]]);
        for n in 0..2 {
            bench.start_agent(n);
        }
        bench
    }

    fn run(&self, commands: &[&[&str]]) {
        for args in commands {
            let status = Command::new("ip")
                .args(["-n", &self.netns])
                .args(*args)
                .status()
                .unwrap();
            assert!(status.success(), "ip {args:?}");
        }
    }

    fn start_agent(&mut self, n: usize) {
        let agent = &mut self.agents[n];
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(agent.dir.join("daemon.log"))
            .unwrap();
        agent.process = Some(
            Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", self.netns))
                .arg(AGENT)
                .arg("--config")
                .arg(agent.config())
                .arg("run")
                .env("MAGESTACK_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let socket = agent.socket();
        wait(
            &format!("{}'s socket", agent.name),
            Duration::from_secs(30),
            || ask(&socket, &Request::PairStatus).is_ok(),
        );
    }

    fn kill_agent(&mut self, n: usize) -> Instant {
        let mut child = self.agents[n].process.take().unwrap();
        // SAFETY: SIGKILL to a child of this bench, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let killed = Instant::now();
        let _ = child.wait();
        killed
    }

    /// Pairs the agents, starts the witness and adds it from pa; waits until every lease is
    /// heard on both.
    fn pair(&mut self) {
        let token = self.agents[0].cli(&["pair", "invite"]);
        self.agents[1].cli(&["pair", "join", token.trim()]);
        let mut witness = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(AGENT)
            .args(["witness", "--listen", WITNESS, "--state"])
            .arg(self.dir.join("witness"))
            .env("MAGESTACK_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(witness.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        self.witness = Some(witness);
        self.agents[0].cli(&["pair", "witness", line.trim()]);
        self.token = Some(WitnessToken::decode(&line).unwrap());
        self.wait_all_heard();
    }

    fn wait_all_heard(&self) {
        for agent in &self.agents {
            wait(
                &format!("{}'s leases", agent.name),
                Duration::from_secs(30),
                || {
                    let status = agent.status();
                    status.witness.as_ref().is_some_and(|w| w.reachable)
                        && status
                            .leases
                            .get("partner")
                            .is_some_and(|l| l.alive && l.last_heard_ms_ago.is_some())
                },
            );
        }
    }

    /// Whether the witness holds `host`'s lease expired, asked as pa from inside the namespace.
    fn witness_says_expired(&self, host: &str) -> bool {
        let identity = identity(&self.agents[0]);
        let token = self.token.clone().unwrap();
        let message = Message::LeaseQuery { host: host.into() };
        in_netns(&self.netns, move || {
            match request_blocking(token.address, token.certificate, Some(&identity), &message) {
                Ok(Message::LeaseAnswer(answer)) => answer.expired,
                other => panic!("lease query: {other:?}"),
            }
        })
    }

    fn expiries(&self) -> Vec<(String, u64)> {
        self.agents
            .iter()
            .flat_map(|agent| {
                agent
                    .status()
                    .leases
                    .into_iter()
                    .map(|(role, lease)| (format!("{}'s {role} lease", agent.name), lease.expiries))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

fn identity(agent: &Agent) -> Identity {
    PairStore::new(&agent.dir.join("state"))
        .identity(agent.name)
        .unwrap()
        .unwrap()
}

fn in_netns<T: Send + 'static>(netns: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        work()
    })
    .join()
    .unwrap()
}

fn wait(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn us(micros: Option<u64>) -> String {
    micros.map_or("-".into(), |m| format!("{:.3} ms", m as f64 / 1000.0))
}

pub fn bench(bench_dir: &Path, cgroup: &str) {
    let mut setup = PairBench::new(bench_dir, cgroup);
    std::thread::sleep(Duration::from_secs(1));
    let unpaired = setup.agents[0].rss_kb();
    setup.pair();
    std::thread::sleep(Duration::from_secs(10));
    let paired = setup.agents[0].rss_kb();
    let status = setup.agents[0].status();
    println!("pair (two agents and a witness on one 2-core machine: indicative)");
    for (role, lease) in &status.leases {
        println!(
            "  heartbeat round trip to the {role:<8} ({} beats): p50 {}, p99 {}",
            10_000 / 100,
            us(lease.rtt_p50_us),
            us(lease.rtt_p99_us)
        );
    }
    let mut handshakes = tls_handshakes(50);
    handshakes.sort();
    println!(
        "  TLS 1.3 handshake, pair certificates (50, loopback): median {}, max {}",
        ms(handshakes[handshakes.len() / 2]),
        ms(*handshakes.last().unwrap())
    );
    println!(
        "  daemon RSS: unpaired {:.1} MB, link + heartbeats + witness up {:.1} MB ({:+.1} MB)",
        unpaired as f64 / 1024.0,
        paired as f64 / 1024.0,
        (paired as f64 - unpaired as f64) / 1024.0
    );
    let mut agreed = Vec::new();
    for _ in 0..5 {
        let killed = setup.kill_agent(1);
        let (mut partner, mut witness) = (None, None);
        while partner.is_none() || witness.is_none() {
            assert!(
                killed.elapsed() < Duration::from_secs(10),
                "no agreement on pb's death"
            );
            if partner.is_none() && !setup.agents[0].status().leases["partner"].alive {
                partner = Some(killed.elapsed());
            }
            if witness.is_none() && setup.witness_says_expired("pb") {
                witness = Some(killed.elapsed());
            }
        }
        agreed.push(partner.unwrap().max(witness.unwrap()));
        setup.start_agent(1);
        setup.wait_all_heard();
        std::thread::sleep(Duration::from_secs(1));
    }
    agreed.sort();
    println!(
        "  SIGKILL of pb's agent to pa and the witness both holding it expired (5): median {}, max {} (lease 500 ms, target 700 ms)",
        ms(agreed[agreed.len() / 2]),
        ms(*agreed.last().unwrap())
    );
}

pub fn bench_load(bench_dir: &Path, cgroup: &str) {
    let seconds: u64 = std::env::var("MAGESTACK_BENCH_LOAD_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let mut setup = PairBench::new(bench_dir, cgroup);
    setup.pair();
    std::thread::sleep(Duration::from_secs(2));
    let before = setup.expiries();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loops: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut spins = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    let under_load = setup.agents[0].status();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for spinner in loops {
        spinner.join().unwrap();
    }
    let after = setup.expiries();
    println!("pair leases under load (two busy loops for {seconds} s, defaults: heartbeat 100 ms, lease 500 ms)");
    for ((what, before), (_, after)) in before.iter().zip(&after) {
        println!("  {what:<28} spurious expiries: {}", after - before);
    }
    for (role, lease) in &under_load.leases {
        println!(
            "  pa's heartbeat round trip to the {role} under load: p50 {}, p99 {}",
            us(lease.rtt_p50_us),
            us(lease.rtt_p99_us)
        );
    }
}

/// Times `rounds` TLS 1.3 handshakes between two identities of one pair CA, client
/// certificate included, over loopback.
fn tls_handshakes(rounds: usize) -> Vec<Duration> {
    let ca = PairCa::generate("ha").unwrap();
    let identity = |host: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        Identity {
            host: host.into(),
            ca: ca.cert_pem().into(),
            certificate: ca.issue(host, &key).unwrap(),
            key: key.serialize_pem(),
        }
    };
    let server = identity("ha").server_config().unwrap();
    let client = identity("hb").link_client_config().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address: SocketAddr = listener.local_addr().unwrap();
    let serving = std::thread::spawn(move || {
        for stream in listener.incoming().take(rounds) {
            let mut stream = stream.unwrap();
            let mut connection = rustls::ServerConnection::new(server.clone()).unwrap();
            while connection.is_handshaking() {
                if connection.complete_io(&mut stream).is_err() {
                    break;
                }
            }
        }
    });
    let times = (0..rounds)
        .map(|_| {
            let started = Instant::now();
            let mut stream = TcpStream::connect(address).unwrap();
            stream.set_nodelay(true).unwrap();
            let name = rustls::pki_types::ServerName::try_from("ha").unwrap();
            let mut connection = rustls::ClientConnection::new(client.clone(), name).unwrap();
            while connection.is_handshaking() {
                connection.complete_io(&mut stream).unwrap();
            }
            started.elapsed()
        })
        .collect();
    serving.join().unwrap();
    times
}
