//! A witness for a pair of test hosts: `magestack-agent witness` in a network namespace of its
//! own, behind a bridge there that a veth from each host's namespace joins (10.232.<k>.1 is host
//! a, .2 host b, .3 the witness), with its own state dir. Dropping it kills the witness and
//! deletes its namespace, and with it the bridge and the veths, on success and on failure.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use magestack_agent::pair::ca::Fingerprint;
use magestack_agent::pair::store::PairStore;
use magestack_agent::pair::tls::Identity;
use magestack_agent::pair::wire::{LeaseAnswer, Message};
use magestack_agent::pair::witness_client::{request_blocking, WitnessClientError};
use magestack_agent::pair::witness_token::WitnessToken;

use super::netns::Netns;
use super::pair::PairHosts;
use super::{wait_for, TestHost, AGENT};

pub const WITNESS_PORT: u16 = 7947;

pub struct TestWitness {
    pub space: Netns,
    pub dir: PathBuf,
    pub address: String,
    pub token: Option<WitnessToken>,
    process: Option<Child>,
}

impl TestWitness {
    /// The witness's namespace wired to both hosts of `hosts`; not started.
    pub fn new(hosts: &PairHosts) -> TestWitness {
        let k = hosts.k;
        let space = Netns::new(&format!("w{}", hosts.a.name));
        space.ip(&["link", "add", "wbr", "type", "bridge"]);
        space.ip(&["addr", "add", &format!("10.232.{k}.3/24"), "dev", "wbr"]);
        space.ip(&["link", "set", "wbr", "up"]);
        space.ip(&["link", "set", "lo", "up"]);
        for (n, host_space) in hosts.spaces.iter().enumerate() {
            let (outer, inner) = (
                format!("wv{}{n}h{k}", std::process::id() % 100_000),
                format!("wv{}{n}w{k}", std::process::id() % 100_000),
            );
            let made = Command::new("ip")
                .args([
                    "link", "add", &outer, "type", "veth", "peer", "name", &inner,
                ])
                .status()
                .unwrap();
            assert!(made.success(), "ip link add {outer}");
            for (link, netns) in [(&outer, &host_space.0), (&inner, &space.0)] {
                let moved = Command::new("ip")
                    .args(["link", "set", link, "netns", netns])
                    .status()
                    .unwrap();
                assert!(moved.success(), "moving {link} into {netns}");
            }
            host_space.ip(&[
                "addr",
                "add",
                &format!("10.232.{k}.{}/24", n + 1),
                "dev",
                &outer,
            ]);
            host_space.ip(&["link", "set", &outer, "up"]);
            space.ip(&["link", "set", &inner, "master", "wbr"]);
            space.ip(&["link", "set", &inner, "up"]);
        }
        let dir = PathBuf::from(format!(
            "/tmp/magestack-test-witness-{}-{k}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TestWitness {
            space,
            address: format!("10.232.{k}.3:{WITNESS_PORT}"),
            dir,
            token: None,
            process: None,
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("witness.log")).unwrap_or_default()
    }

    /// Starts the witness for the first time and returns the token it printed (its only line
    /// of stdout), once it listens.
    pub fn start(&mut self) -> String {
        let mut child = self.spawn(Stdio::piped());
        let stdout = child.stdout.take().unwrap();
        self.process = Some(child);
        let (sender, line) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut first = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut first);
            let _ = sender.send(first);
        });
        let printed = line
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_default();
        let printed = printed.trim().to_string();
        self.token = Some(WitnessToken::decode(&printed).expect("the witness printed its token"));
        self.wait_listening();
        printed
    }

    /// Starts the witness again (it prints nothing: its stdout is checked to stay empty) and
    /// waits until it listens.
    pub fn restart(&mut self) {
        let out = self.dir.join("restart.out");
        let child = self.spawn(std::fs::File::create(&out).unwrap().into());
        self.process = Some(child);
        self.wait_listening();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "",
            "a token at a restart"
        );
    }

    fn spawn(&mut self, stdout: Stdio) -> Child {
        assert!(self.process.is_none(), "witness already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("witness.log"))
            .unwrap();
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.space.0))
            .arg(AGENT)
            .args(["witness", "--listen", &self.address, "--state"])
            .arg(self.state_dir())
            .env("MAGESTACK_LOG", "debug")
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn wait_listening(&self) {
        let address = self.address.clone();
        wait_for("the witness to listen", Duration::from_secs(20), || {
            let address = address.clone();
            self.space
                .run(move || std::net::TcpStream::connect(address).is_ok())
        });
    }

    pub fn pid(&self) -> i32 {
        self.process.as_ref().expect("witness running").id() as i32
    }

    /// Kills the witness with `signal` and reaps it.
    pub fn kill(&mut self, signal: i32) {
        let mut child = self.process.take().expect("witness running");
        // SAFETY: kill on the pid of a child we have not reaped yet.
        unsafe { libc::kill(child.id() as i32, signal) };
        let _ = child.wait();
    }

    pub fn certificate(&self) -> Fingerprint {
        self.token
            .as_ref()
            .expect("the witness's token")
            .certificate
    }

    /// Sends `message` to the witness as `host` (with its pair certificate), from the host's
    /// namespace `n` of `hosts`.
    pub fn ask(
        &self,
        hosts: &PairHosts,
        n: usize,
        message: Message,
    ) -> Result<Message, WitnessClientError> {
        let host = if n == 0 { &hosts.a } else { &hosts.b };
        let identity = identity(host);
        let address = self.address.parse().unwrap();
        let certificate = self.certificate();
        hosts.spaces[n]
            .run(move || request_blocking(address, certificate, Some(&identity), &message))
    }

    /// Whether `host`'s lease expired at the witness, asked from namespace `n`.
    pub fn lease_of(&self, hosts: &PairHosts, n: usize, host: &str) -> LeaseAnswer {
        match self.ask(hosts, n, Message::LeaseQuery { host: host.into() }) {
            Ok(Message::LeaseAnswer(answer)) => answer,
            other => panic!("a lease query answered {other:?}"),
        }
    }
}

/// A test host's pair identity, as its agent stored it.
pub fn identity(host: &TestHost) -> Identity {
    PairStore::new(&host.state_dir())
        .identity(&host.name)
        .unwrap()
        .expect("a paired host has its identity")
}

impl Drop for TestWitness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("the witness's log, last lines first:\n{}", tail.join("\n"));
        }
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
