//! Two test hosts that can pair: each agent in a network namespace of its own, joined by a veth
//! carrying the pair link's addresses (10.231.<k>.1 and .2), each with its own state, run and log
//! dirs, cgroup parent and network (as every `TestHost`), the state dirs optionally each on a
//! btrfs filesystem of its own. Dropping it stops both agents, then deletes the namespaces and so
//! the veth, then unmounts the filesystems, on success and on failure.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;

use super::btrfs::Btrfs;
use super::netns::Netns;
use super::{wait_for, TestHost};

/// The pair link's port on both hosts.
pub const PAIR_PORT: u16 = 7946;
/// The metrics port on each host's loopback, inside its namespace.
pub const METRICS_PORT: u16 = 9477;

pub struct PairHosts {
    pub a: TestHost,
    pub b: TestHost,
    /// Declared last, dropped last: after both agents stopped.
    pub spaces: [Netns; 2],
    /// 10.231.<k>.0/24 carries the link (k is host a's own network number).
    pub k: u32,
    /// More `[pair]` settings, the same on both hosts.
    pair: String,
    /// The hosts' state dirs' filesystems when they have their own: dropped after the agents
    /// stopped.
    filesystems: Vec<Btrfs>,
}

impl PairHosts {
    /// Hosts `a` and `b` with no nodes, `[pair] listen` on the veth and metrics on loopback,
    /// both agents running.
    pub fn start(a: &str, b: &str) -> PairHosts {
        PairHosts::start_with(a, b, "[nodes]\n", "")
    }

    /// As [`PairHosts::start`], with `a_nodes` (`[nodes]` and `[roles]` text) on host `a` and
    /// `pair` (more `[pair]` settings) on both.
    pub fn start_with(a: &str, b: &str, a_nodes: &str, pair: &str) -> PairHosts {
        PairHosts::start_hosts(
            [TestHost::new(a, ""), TestHost::new(b, "")],
            a_nodes,
            pair,
            vec![],
        )
    }

    /// As [`PairHosts::start_with`], each host's state dir on a btrfs filesystem of its own (a
    /// loop device over a file), as on a real host where replicas are subvolumes.
    pub fn start_on_btrfs(a: &str, b: &str, a_nodes: &str, pair: &str) -> PairHosts {
        let filesystems = vec![Btrfs::new(a), Btrfs::new(b)];
        let hosts = [
            TestHost::with_state_dir(a, "", &filesystems[0].mount.join("state")),
            TestHost::with_state_dir(b, "", &filesystems[1].mount.join("state")),
        ];
        PairHosts::start_hosts(hosts, a_nodes, pair, filesystems)
    }

    fn start_hosts(
        [a, b]: [TestHost; 2],
        a_nodes: &str,
        pair: &str,
        filesystems: Vec<Btrfs>,
    ) -> PairHosts {
        let spaces = [
            Netns::new(&format!("{}a", a.name)),
            Netns::new(&format!("{}b", b.name)),
        ];
        let k = a.net.k;
        let mut hosts = PairHosts {
            a,
            b,
            spaces,
            k,
            pair: pair.to_string(),
            filesystems,
        };
        hosts.write_config(0, a_nodes);
        hosts.write_config(1, "[nodes]\n");
        // A pair shares one internal network: b takes a's subnet, with an address of its own.
        hosts.b.set_setting("subnet", &hosts.a.setting("subnet"));
        let a_host_ip = hosts.a.setting("host_ip");
        let (prefix, _) = a_host_ip.trim_matches('"').rsplit_once('.').unwrap();
        hosts.b.set_setting("host_ip", &format!("\"{prefix}.253\""));
        let veth = [
            format!("pv{}a{k}", std::process::id() % 100_000),
            format!("pv{}b{k}", std::process::id() % 100_000),
        ];
        let made = Command::new("ip")
            .args([
                "link", "add", &veth[0], "type", "veth", "peer", "name", &veth[1],
            ])
            .status()
            .unwrap();
        assert!(made.success(), "ip link add {veth:?}");
        for (n, (space, link)) in hosts.spaces.iter().zip(&veth).enumerate() {
            let moved = Command::new("ip")
                .args(["link", "set", link, "netns", &space.0])
                .status()
                .unwrap();
            assert!(moved.success(), "moving {link} into {}", space.0);
            space.ip(&[
                "addr",
                "add",
                &format!("10.231.{k}.{}/24", n + 1),
                "dev",
                link,
            ]);
            space.ip(&["link", "set", link, "up"]);
            space.ip(&["link", "set", "lo", "up"]);
        }
        hosts.a.start_daemon_in_netns(&hosts.spaces[0].0);
        hosts.b.start_daemon_in_netns(&hosts.spaces[1].0);
        hosts
    }

    /// Host `n`'s config: `nodes` (`[nodes]` and `[roles]` text), its pair address and the
    /// pair's settings, metrics on loopback.
    fn write_config(&self, n: usize, nodes: &str) {
        let (k, pair) = (self.k, &self.pair);
        self.host(n).write_config(&format!(
            "{nodes}\n[pair]\nlisten = \"10.231.{k}.{}:{PAIR_PORT}\"\n{pair}\n\n[metrics]\nlisten = \"127.0.0.1:{METRICS_PORT}\"\n",
            n + 1
        ));
    }

    /// Gives host `home`, once paired, sleeper nodes `names` homed on it: added to the shared
    /// stack on host a (whose stack is the pair's first version; a joining host has no nodes
    /// and may not have received it yet), reloaded there, and running on `home`.
    pub fn add_sleepers(&self, home: usize, names: &[&str]) {
        let path = self.a.dir.join("stack.toml");
        let mut stack = std::fs::read_to_string(&path).unwrap();
        for name in names {
            stack.push_str(&format!(
                "\n[nodes.{name}]\nrole = \"sleeper\"\nhost = \"{}\"\n",
                self.host(home).name
            ));
        }
        std::fs::write(&path, stack).unwrap();
        self.a.cli(&["reload"]);
        let host = self.host(home);
        for name in names {
            // Known there once the partner's version arrives, then started.
            wait_for(
                "the node to run on its home",
                Duration::from_secs(20),
                || {
                    host.status()["nodes"].as_array().is_some_and(|nodes| {
                        nodes
                            .iter()
                            .any(|node| node["name"] == *name && node["state"] == "running")
                    })
                },
            );
        }
    }

    /// Host `n`: 0 is a, 1 is b.
    pub fn host(&self, n: usize) -> &TestHost {
        [&self.a, &self.b][n]
    }

    /// The btrfs filesystems the hosts' state dirs are on, if [`PairHosts::start_on_btrfs`].
    pub fn filesystems(&self) -> &[Btrfs] {
        &self.filesystems
    }

    /// Host a's pair address.
    pub fn a_address(&self) -> String {
        format!("10.231.{}.1:{PAIR_PORT}", self.k)
    }

    pub fn b_ip(&self) -> String {
        format!("10.231.{}.2", self.k)
    }

    /// `pair invite` on a, then `pair join` on b, until the link is up on both.
    pub fn pair(&self) -> String {
        let token = invite(&self.a);
        let joined = self.b.cli(&["pair", "join", &token]);
        assert_eq!(joined.trim(), format!("paired with {}", self.a.name));
        for host in [&self.a, &self.b] {
            wait_link(host, "up", Duration::from_secs(15));
        }
        token
    }

    /// GET /metrics from inside host `n`'s namespace.
    pub fn metrics(&self, n: usize) -> String {
        self.spaces[n].run(|| {
            use std::io::{Read, Write};
            let mut stream =
                std::net::TcpStream::connect(("127.0.0.1", METRICS_PORT)).expect("metrics");
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut text = String::new();
            stream.read_to_string(&mut text).unwrap();
            text
        })
    }
}

/// `pair invite`: one line, the token.
pub fn invite(host: &TestHost) -> String {
    let out = host.cli(&["pair", "invite"]);
    assert_eq!(out.lines().count(), 1, "more than the token: {out:?}");
    out.trim().to_string()
}

pub fn pair_status(host: &TestHost) -> Value {
    serde_json::from_str(&host.cli(&["pair", "status", "--json"])).unwrap()
}

/// Waits until `pair status` shows the link in `state`.
pub fn wait_link(host: &TestHost, state: &str, limit: Duration) {
    wait_for(&format!("{}'s link {state}", host.name), limit, || {
        pair_status(host)["link"] == state
    });
}

/// How many refusals for `reason` the host counted.
pub fn refused(host: &TestHost, reason: &str) -> u64 {
    pair_status(host)["refused"][reason].as_u64().unwrap_or(0)
}

/// Every file of the host's pairing with its mode and content: what "nothing changed" compares.
pub fn pair_files(host: &TestHost) -> BTreeMap<String, (u32, Vec<u8>)> {
    let dir = host.state_dir().join("pair");
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| {
            let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
            (
                entry.file_name().to_string_lossy().into_owned(),
                (mode, std::fs::read(entry.path()).unwrap()),
            )
        })
        .collect()
}

/// The mode of a file of the pairing.
pub fn pair_file_mode(host: &TestHost, name: &str) -> u32 {
    let path = host.state_dir().join("pair").join(name);
    std::fs::metadata(Path::new(&path))
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The test client's verifier when it plays a peer with a foreign certificate: it accepts any
/// server, so the inviting host sees the foreign certificate.
#[derive(Debug)]
pub struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
