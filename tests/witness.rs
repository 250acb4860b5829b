//! Heartbeats, leases and the witness: two paired agents and a witness, each in a network
//! namespace of its own. The witness is added from either host and both reach it; a stranger
//! is refused and changes nothing; the witness killed is shown unreachable and changes nothing
//! else; restarted, it declares nobody dead for a lease; a SIGSTOPped agent's lease runs out on
//! its partner and at the witness within the lease and the fence margin.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pair::{pair_files, pair_status, PairHosts};
use common::wait_for;
use common::witness::TestWitness;
use magestack_agent::pair::ca::{Fingerprint, PairCa};
use magestack_agent::pair::tls::{witness_client_config, Identity};
use magestack_agent::pair::wire::{self, CasRequest, Message, NodeClaim};
use magestack_agent::pair::witness_token::WitnessToken;

/// The defaults: `[pair] lease` and `fence_margin`.
const LEASE: Duration = Duration::from_millis(500);
const FENCE_MARGIN: Duration = Duration::from_millis(200);

/// SIGSTOPs a process, and SIGCONTs it when dropped (a stopped agent would hang its clean-up).
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        // SAFETY: kill takes plain integers; the pid is a child of this test, not yet reaped.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

/// Every file of a directory tree with its content: what "nothing changed" compares.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files(&path));
        } else {
            found.insert(path.display().to_string(), std::fs::read(&path).unwrap());
        }
    }
    found
}

fn witness_of(status: &serde_json::Value) -> &serde_json::Value {
    &status["witness"]
}

/// Waits until both hosts show the witness reachable and every lease alive.
fn wait_all_reached(hosts: &PairHosts, limit: Duration) {
    for host in [&hosts.a, &hosts.b] {
        let mut last = serde_json::Value::Null;
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            last = pair_status(host);
            if witness_of(&last)["reachable"] == true
                && last["leases"]["partner"]["alive"] == true
                && last["leases"]["partner"]["last_heard_ms_ago"].is_u64()
                && last["leases"]["witness"]["alive"] == true
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            Instant::now() < deadline,
            "{} did not reach the witness and its partner within {limit:?}: {last:#}",
            host.name
        );
    }
}

fn claim(owner: &str, epoch: u64) -> NodeClaim {
    NodeClaim {
        owner: owner.into(),
        epoch,
        partner_replica_current: true,
    }
}

#[test]
fn a_witness_added_from_either_host_serves_both_refuses_strangers_and_survives_restarts() {
    let hosts = PairHosts::start("wa", "wb");
    hosts.pair();
    let mut witness = TestWitness::new(&hosts);
    let printed = witness.start();
    assert!(witness.log().contains("first start"));

    // A wrong secret: refused by the witness, said by the host, nothing written anywhere.
    let before = (
        files(&witness.state_dir()),
        pair_files(&hosts.a),
        pair_files(&hosts.b),
    );
    let mut wrong = WitnessToken::decode(&printed).unwrap();
    wrong.secret = [0x5a; 32];
    let added = hosts.b.try_cli(&["pair", "witness", &wrong.encode()]);
    assert!(!added.status.success());
    let said = String::from_utf8_lossy(&added.stderr);
    assert!(
        said.contains("wrong_secret") && said.contains("nothing changed"),
        "{said}"
    );
    // A token whose certificate is not the witness's: the host refuses the server.
    let mut foreign = WitnessToken::decode(&printed).unwrap();
    foreign.certificate.0[0] ^= 1;
    let added = hosts.b.try_cli(&["pair", "witness", &foreign.encode()]);
    assert!(!added.status.success());
    assert!(String::from_utf8_lossy(&added.stderr).contains("not the witness the token names"));
    assert_eq!(common::pair::refused(&hosts.b, "fingerprint_mismatch"), 1);
    // A pair token given to the wrong command.
    let pair_token = magestack_agent::pair::Token {
        host: "wa".into(),
        address: hosts.a_address().parse().unwrap(),
        ca: Fingerprint([1; 32]),
        secret: [2; 32],
    };
    let added = hosts.b.try_cli(&["pair", "witness", &pair_token.encode()]);
    assert!(!added.status.success());
    assert!(String::from_utf8_lossy(&added.stderr).contains("not a witness token"));
    assert_eq!(
        (files(&witness.state_dir()), pair_files(&hosts.a)),
        (before.0.clone(), before.1.clone())
    );

    // Added from the joining host; the inviting host learns it over the link.
    let added = hosts.b.cli(&["pair", "witness", &printed]);
    assert_eq!(
        added.trim(),
        format!("witness at {} added", witness.address)
    );
    let began = Instant::now();
    wait_all_reached(&hosts, Duration::from_secs(15));
    eprintln!("witness added to both reaching it: {:?}", began.elapsed());
    for host in [&hosts.a, &hosts.b] {
        let status = host.status();
        assert_eq!(
            status["pair"]["witness"]["address"],
            witness.address.as_str()
        );
        assert_eq!(status["pair"]["witness"]["reachable"], true);
        assert_eq!(status["pair"]["link"], "up");
        let lease = &status["pair"]["leases"]["partner"];
        assert!(lease["rtt_p99_us"].as_u64().unwrap() < 500_000, "{lease}");
        assert!(host.state_dir().join("pair/witness.json").exists());
    }
    let enrollment = std::fs::read_to_string(witness.state_dir().join("enrollment.json")).unwrap();
    assert!(enrollment.contains("\"wb\""), "{enrollment}");
    // The same token from the other host of the same pair: accepted, nothing new on disk.
    let witness_files = files(&witness.state_dir());
    assert!(hosts
        .a
        .cli(&["pair", "witness", &printed])
        .contains("added"));
    let enrollment = std::fs::read_to_string(witness.state_dir().join("enrollment.json")).unwrap();
    assert!(enrollment.contains("\"wa\""), "{enrollment}");
    assert_eq!(files(&witness.state_dir()).len(), witness_files.len());

    // Node records by compare-and-set, persisted; a stale view refused.
    let first = CasRequest {
        node: "db1".into(),
        expected: None,
        new: claim("wa", 1),
    };
    let answer = witness.ask(&hosts, 0, Message::Cas(first.clone())).unwrap();
    assert!(
        matches!(&answer, Message::CasAnswer(a) if a.applied),
        "{answer:?}"
    );
    let answer = witness.ask(&hosts, 1, Message::Cas(first)).unwrap();
    match answer {
        Message::CasAnswer(answer) => {
            assert!(!answer.applied);
            assert_eq!(answer.current, Some(claim("wa", 1)));
        }
        other => panic!("{other:?}"),
    }
    let record = std::fs::read_to_string(witness.state_dir().join("nodes/db1.json")).unwrap();
    assert!(record.contains("\"epoch\": 1"), "{record}");

    // Strangers: a certificate of another CA, plain TCP, garbage inside TLS without a
    // certificate, a heartbeat without one. Each refused and logged; nothing written.
    let unchanged = files(&witness.state_dir());
    let stranger_ca = PairCa::generate("wz").unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let stranger = Identity {
        host: "wz".into(),
        ca: stranger_ca.cert_pem().into(),
        certificate: stranger_ca.issue("wz", &key).unwrap(),
        key: key.serialize_pem(),
    };
    let config = witness_client_config(witness.certificate(), Some(&stranger)).unwrap();
    let heartbeat = wire::encode(&Message::Heartbeat { seq: 1, sent_us: 1 });
    exchange_tls(&hosts, &witness, config, heartbeat.clone());
    let anonymous = witness_client_config(witness.certificate(), None).unwrap();
    exchange_tls(&hosts, &witness, anonymous.clone(), heartbeat);
    exchange_tls(
        &hosts,
        &witness,
        anonymous,
        b"\x00\x00\x00\x05hello".to_vec(),
    );
    exchange_plain(&hosts, &witness, b"{\"type\":\"heartbeat\"}".to_vec());
    for reason in [
        "unknown_ca",
        "unauthenticated",
        "malformed",
        "not_tls",
        "wrong_secret",
    ] {
        wait_for(
            &format!("the witness to refuse for {reason}"),
            Duration::from_secs(10),
            || {
                witness.log().lines().any(|line| {
                    line.contains("witness: refused") && line.contains(&format!(": {reason}:"))
                })
            },
        );
    }
    assert_eq!(files(&witness.state_dir()), unchanged);
    let a_files = pair_files(&hosts.a);

    // The witness killed: unreachable on both, nothing else changes.
    witness.kill(libc::SIGKILL);
    for host in [&hosts.a, &hosts.b] {
        wait_for(
            &format!("{} to see the witness unreachable", host.name),
            Duration::from_secs(10),
            || pair_status(host)["witness"]["reachable"] == false,
        );
    }
    std::thread::sleep(LEASE * 2);
    for host in [&hosts.a, &hosts.b] {
        let status = pair_status(host);
        assert_eq!(status["witness"]["reachable"], false, "{status}");
        assert!(status["witness"]["last_error"].is_string(), "{status}");
        assert_eq!(status["link"], "up", "{status}");
        assert_eq!(status["leases"]["partner"]["alive"], true, "{status}");
        assert_eq!(status["leases"]["partner"]["expiries"], 0, "{status}");
    }
    assert_eq!(pair_files(&hosts.a), a_files);

    // wb's agent stopped, the witness restarted: for a full lease it declares nobody dead.
    let stopped = Stopped::new(hosts.b.daemon_pid());
    witness.restart();
    let mut answers = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = witness.lease_of(&hosts, 0, "wb");
        let expired = answer.expired;
        answers.push(answer);
        if expired || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let lease_ms = LEASE.as_millis() as u64;
    assert!(answers.iter().any(|a| !a.expired), "{answers:?}");
    for answer in &answers {
        assert_eq!(
            answer.expired,
            answer.since_start_ms >= lease_ms,
            "{answers:?}"
        );
        assert_eq!(answer.heard_ms_ago, None, "{answers:?}");
    }
    assert!(answers.last().unwrap().expired, "{answers:?}");
    // wa, still beating, is alive there; its record survived the restart.
    wait_for(
        "wa heard by the restarted witness",
        Duration::from_secs(5),
        || witness.lease_of(&hosts, 0, "wa").heard_ms_ago.is_some(),
    );
    assert!(!witness.lease_of(&hosts, 0, "wa").expired);
    let answer = witness
        .ask(
            &hosts,
            0,
            Message::Cas(CasRequest {
                node: "db1".into(),
                expected: Some(claim("wa", 1)),
                new: claim("wb", 1),
            }),
        )
        .unwrap();
    assert!(
        matches!(&answer, Message::CasAnswer(a) if !a.applied && a.current == Some(claim("wa", 1))),
        "a second owner at epoch 1: {answer:?}"
    );
    drop(stopped);
    wait_all_reached(&hosts, Duration::from_secs(15));
}

#[test]
fn a_stopped_agent_is_declared_gone_by_partner_and_witness_within_lease_and_margin() {
    let hosts = PairHosts::start("sa", "sb");
    hosts.pair();
    let mut witness = TestWitness::new(&hosts);
    let token = witness.start();
    hosts.a.cli(&["pair", "witness", &token]);
    wait_all_reached(&hosts, Duration::from_secs(15));
    std::thread::sleep(LEASE);

    let stopped = Stopped::new(hosts.b.daemon_pid());
    let began = Instant::now();
    let (mut partner_gone, mut witness_gone) = (None, None);
    while began.elapsed() < Duration::from_secs(5)
        && (partner_gone.is_none() || witness_gone.is_none())
    {
        if partner_gone.is_none() && pair_status(&hosts.a)["leases"]["partner"]["alive"] == false {
            partner_gone = Some(began.elapsed());
        }
        if witness_gone.is_none() && witness.lease_of(&hosts, 0, "sb").expired {
            witness_gone = Some(began.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("SIGSTOP to lease expired: on the partner {partner_gone:?}, at the witness {witness_gone:?}");
    let (partner_gone, witness_gone) = (partner_gone.unwrap(), witness_gone.unwrap());
    assert!(
        partner_gone.max(witness_gone) <= LEASE + FENCE_MARGIN,
        "{partner_gone:?} {witness_gone:?}"
    );
    // The agreement as the partner shows it: its own view and the witness's answer.
    wait_for(
        "sa to show the witness agreeing",
        Duration::from_secs(2),
        || pair_status(&hosts.a)["leases"]["partner"]["witness_says_expired"] == true,
    );
    // Each logs it at its next look at the leases (every heartbeat; every fifth of a lease).
    wait_for("sa to log the expiry", Duration::from_secs(2), || {
        hosts
            .a
            .daemon_log()
            .contains("lease of sb (partner) ran out")
    });
    wait_for(
        "the witness to log the expiry",
        Duration::from_secs(2),
        || witness.log().contains("sb's lease expired"),
    );

    // Back: heard again on both, the expiry counted once.
    drop(stopped);
    wait_all_reached(&hosts, Duration::from_secs(15));
    let status = pair_status(&hosts.a);
    assert_eq!(status["leases"]["partner"]["expiries"], 1, "{status}");
    assert_eq!(
        status["leases"]["partner"]["witness_says_expired"],
        serde_json::Value::Null
    );
    assert!(!witness.lease_of(&hosts, 0, "sb").expired);
    let metrics = hosts.metrics(0);
    for needle in [
        "magestack_pair_lease_alive{peer=\"sb\",role=\"partner\"} 1",
        "magestack_pair_lease_expiries_total{peer=\"sb\",role=\"partner\"} 1",
        "magestack_pair_witness_reachable 1",
        "magestack_pair_heartbeat_rtt_seconds{peer=\"sb\",role=\"partner\",quantile=\"0.99\"}",
    ] {
        assert!(metrics.contains(needle), "no {needle} in\n{metrics}");
    }
}

/// From a's namespace: TLS to the witness with `config`, `bytes`, and whatever comes back.
fn exchange_tls(
    hosts: &PairHosts,
    witness: &TestWitness,
    config: Arc<rustls::ClientConfig>,
    bytes: Vec<u8>,
) {
    let address = witness.address.clone();
    hosts.spaces[0].run(move || {
        let stream = std::net::TcpStream::connect(&address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("magestack-witness").unwrap();
        let connection = rustls::ClientConnection::new(config, name).unwrap();
        let mut tls = rustls::StreamOwned::new(connection, stream);
        if tls.write_all(&bytes).and_then(|()| tls.flush()).is_ok() {
            let _ = tls.read_to_end(&mut Vec::new());
        }
    });
}

fn exchange_plain(hosts: &PairHosts, witness: &TestWitness, bytes: Vec<u8>) {
    let address = witness.address.clone();
    hosts.spaces[0].run(move || {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(&bytes).unwrap();
        let _ = stream.read_to_end(&mut Vec::new());
    });
}

#[test]
fn strangers_on_the_heartbeat_channel_are_refused_and_counted() {
    let hosts = PairHosts::start("ha", "hb");
    hosts.pair();
    wait_for("ha to hear hb", Duration::from_secs(10), || {
        pair_status(&hosts.a)["leases"]["partner"]["last_heard_ms_ago"].is_u64()
    });
    let unchanged = (pair_files(&hosts.a), pair_files(&hosts.b));
    // A certificate of the pair's own CA for a host that is not the partner.
    let dir = hosts.a.state_dir().join("pair");
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let pair_ca = PairCa::load(&read("ca.crt"), &read("ca.key")).unwrap();
    let not_partner = stranger_identity(&pair_ca, "hz");
    // One of another CA, and none at all.
    let foreign = stranger_identity(&PairCa::generate("hz").unwrap(), "hz");
    let heartbeat = wire::encode(&Message::Heartbeat { seq: 1, sent_us: 1 });
    for (identity, reason) in [
        (Some(&not_partner), "not_partner"),
        (Some(&foreign), "unknown_ca"),
        (None, "tls"),
    ] {
        let config = heartbeat_client(identity);
        exchange_heartbeat(&hosts, config, heartbeat.clone());
        wait_for(
            &format!("ha to refuse a heartbeat for {reason}"),
            Duration::from_secs(10),
            || common::pair::refused(&hosts.a, reason) == 1,
        );
    }
    let log = hosts.a.daemon_log();
    for reason in ["not_partner", "unknown_ca", "tls"] {
        assert!(
            log.lines().any(|line| line.contains("pair: refused")
                && line.contains(&format!(": {reason}:"))
                && line.contains("heartbeat")),
            "no heartbeat refusal for {reason} in\n{log}"
        );
    }
    let status = pair_status(&hosts.a);
    assert_eq!(status["link"], "up", "{status}");
    assert_eq!(status["leases"]["partner"]["alive"], true, "{status}");
    assert_eq!((pair_files(&hosts.a), pair_files(&hosts.b)), unchanged);
}

fn stranger_identity(ca: &PairCa, host: &str) -> Identity {
    let key = rcgen::KeyPair::generate().unwrap();
    Identity {
        host: host.into(),
        ca: ca.cert_pem().into(),
        certificate: ca.issue(host, &key).unwrap(),
        key: key.serialize_pem(),
    }
}

/// A client offering the heartbeat ALPN, accepting any server, with `identity`'s certificate.
fn heartbeat_client(identity: Option<&Identity>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(common::pair::AnyServer));
    let mut config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(
                vec![magestack_agent::pair::ca::der_of(&identity.certificate).unwrap()],
                rustls::pki_types::PrivateKeyDer::from_pem_slice(identity.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![magestack_agent::pair::channel::HEARTBEAT_ALPN.to_vec()];
    Arc::new(config)
}

/// From hb's namespace: a heartbeat connection to ha with `config`, `bytes`, until ha closes.
fn exchange_heartbeat(hosts: &PairHosts, config: Arc<rustls::ClientConfig>, bytes: Vec<u8>) {
    let address = hosts.a_address();
    hosts.spaces[1].run(move || {
        let stream = std::net::TcpStream::connect(&address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("ha").unwrap();
        let connection = rustls::ClientConnection::new(config, name).unwrap();
        let mut tls = rustls::StreamOwned::new(connection, stream);
        if tls.write_all(&bytes).and_then(|()| tls.flush()).is_ok() {
            let _ = tls.read_to_end(&mut Vec::new());
        }
    });
}
