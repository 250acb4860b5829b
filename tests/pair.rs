//! Pairing two agents, each in a network namespace of its own, over a veth: invite, join, a
//! mutually authenticated link that comes back after a restart of either agent, and every bad
//! peer refused with a log line naming it and the reason, counted, and nothing changed on disk.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use common::pair::{
    invite, pair_file_mode, pair_files, pair_status, refused, wait_link, AnyServer, PairHosts,
    PAIR_PORT,
};
use magestack_agent::pair::ca::{self, PairCa};
use magestack_agent::pair::invite::hex;
use magestack_agent::pair::tls::{join_client_config, Identity};
use magestack_agent::pair::wire::{self, JoinRequest, Message};
use magestack_agent::pair::Token;

#[test]
fn invite_and_join_link_both_hosts_and_the_link_comes_back_after_restarts() {
    let mut hosts = PairHosts::start("pa", "pb");
    for host in [&hosts.a, &hosts.b] {
        let status = host.status();
        assert_eq!(status["pair"]["partner"], serde_json::Value::Null);
        assert_eq!(status["pair"]["witness"], serde_json::Value::Null);
    }
    let began = Instant::now();
    let token = hosts.pair();
    eprintln!("join to link up on both: {:?}", began.elapsed());
    for (host, partner) in [(&hosts.a, "pb"), (&hosts.b, "pa")] {
        let status = pair_status(host);
        assert_eq!(status["partner"], partner, "{status}");
        assert_eq!(status["link"], "up");
        let expires = status["certificate_expires_unix"].as_i64().unwrap();
        let now = magestack_agent::runtime::unix_now() as i64;
        assert!(expires > now + 4 * 365 * 86_400, "{status}");
        let full = host.status();
        assert_eq!(full["pair"]["partner"], partner);
        assert_eq!(full["pair"]["link"], "up");
        assert_eq!(full["pair"]["witness"], serde_json::Value::Null);
        for (file, mode) in [("ca.crt", 0o644), ("host.crt", 0o644), ("host.key", 0o600)] {
            assert_eq!(pair_file_mode(host, file), mode, "{}: {file}", host.name);
        }
        let dir = host.state_dir().join("pair");
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
    assert_eq!(pair_file_mode(&hosts.a, "ca.key"), 0o600);
    assert_eq!(pair_file_mode(&hosts.a, "invites.json"), 0o600);
    assert!(
        !hosts.b.state_dir().join("pair/ca.key").exists(),
        "the joining host holds the CA's key"
    );
    assert!(hosts.a.cli(&["pair", "status"]).contains("pb at 10.231."));
    assert!(hosts.a.cli(&["status"]).contains("pair with pb"));

    // The partner's agent restarts: the link comes back by itself.
    hosts.a.kill_daemon(libc::SIGTERM);
    wait_link(&hosts.b, "down", Duration::from_secs(10));
    let restarted = Instant::now();
    hosts.a.start_daemon_in_netns(&hosts.spaces[0].0.clone());
    for host in [&hosts.a, &hosts.b] {
        wait_link(host, "up", Duration::from_secs(15));
    }
    eprintln!(
        "dialing agent restart to link up: {:?}",
        restarted.elapsed()
    );
    // And the accepting one, killed: the dialer redials with backoff.
    hosts.b.kill_daemon(libc::SIGKILL);
    wait_link(&hosts.a, "down", Duration::from_secs(10));
    let restarted = Instant::now();
    hosts.b.start_daemon_in_netns(&hosts.spaces[1].0.clone());
    for host in [&hosts.a, &hosts.b] {
        wait_link(host, "up", Duration::from_secs(15));
    }
    eprintln!(
        "accepting agent restart to link up: {:?}",
        restarted.elapsed()
    );

    // The token again: refused, counted, nothing changed on either host.
    let before = (pair_files(&hosts.a), pair_files(&hosts.b));
    let answer = join_as(&hosts, &token, "pz");
    assert_eq!(answer, refused_with("token_used"));
    assert_eq!(refused(&hosts.a, "token_used"), 1);
    let again = hosts.b.try_cli(&["pair", "join", &token]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already paired with pa"),
        "{again:?}"
    );
    assert_eq!((pair_files(&hosts.a), pair_files(&hosts.b)), before);
    assert_logged(&hosts.a.daemon_log(), &hosts.b_ip(), "token_used");
}

#[test]
fn bad_peers_are_refused_logged_counted_and_change_nothing() {
    let hosts = PairHosts::start("ra", "rb");
    let text = invite(&hosts.a);
    let token = Token::decode(&text).unwrap();
    let unchanged = (pair_files(&hosts.a), pair_files(&hosts.b));
    let check_unchanged = |what: &str| {
        assert_eq!(
            (pair_files(&hosts.a), pair_files(&hosts.b)),
            unchanged,
            "after {what}"
        );
    };

    // A token whose CA is not the inviting host's: the joining host refuses the server.
    let mut foreign = token.clone();
    foreign.ca.0[0] ^= 1;
    let join = hosts.b.try_cli(&["pair", "join", &foreign.encode()]);
    assert!(!join.status.success());
    let said = String::from_utf8_lossy(&join.stderr);
    assert!(said.contains("not the one the token names"), "{said}");
    assert_eq!(refused(&hosts.b, "fingerprint_mismatch"), 1);
    assert_logged(
        &hosts.b.daemon_log(),
        &hosts.a_address(),
        "fingerprint_mismatch",
    );
    check_unchanged("a foreign fingerprint");

    // A wrong secret: the inviting host refuses, and says why.
    let mut wrong = token.clone();
    wrong.secret = [0x5a; 32];
    let join = hosts.b.try_cli(&["pair", "join", &wrong.encode()]);
    assert!(!join.status.success());
    let said = String::from_utf8_lossy(&join.stderr);
    assert!(
        said.contains("wrong_secret") && said.contains("nothing changed"),
        "{said}"
    );
    assert_eq!(refused(&hosts.a, "wrong_secret"), 1);
    check_unchanged("a wrong secret");

    // A client certificate from another CA.
    let other = PairCa::generate("rz").unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let foreign_client = Identity {
        host: "rz".into(),
        ca: other.cert_pem().to_string(),
        certificate: other.issue("rz", &key).unwrap(),
        key: key.serialize_pem(),
    };
    let chain = vec![
        ca::der_of(&foreign_client.certificate).unwrap(),
        ca::der_of(&foreign_client.ca).unwrap(),
    ];
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_client_auth_cert(
            chain,
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let hello = wire::encode(&Message::Hello {
        host: "rz".into(),
        version: "0".into(),
    });
    let _ = exchange_tls(&hosts, Arc::new(config), "ra", hello);
    wait_refused(&hosts, "unknown_ca");
    check_unchanged("a certificate from another CA");

    // Plain TCP carrying a join-like message, and bytes that start like TLS and are not.
    let join_like = serde_json::to_vec(&Message::Join(request_for(&token, "rz"))).unwrap();
    exchange_plain(&hosts, join_like);
    wait_refused(&hosts, "not_tls");
    let mut garbage = vec![0x16, 0x03, 0x01, 0x00, 0x20];
    garbage.extend((0..32u8).map(|i| i.wrapping_mul(37)));
    exchange_plain(&hosts, garbage);
    wait_refused(&hosts, "tls");
    check_unchanged("plain TCP and garbage");

    // Garbage inside TLS.
    let inside = b"\x00\x00\x00\x05hello".to_vec();
    let _ = exchange_tls(&hosts, join_client_config(token.ca).unwrap(), "ra", inside);
    wait_refused(&hosts, "malformed");
    check_unchanged("garbage inside TLS");

    // A join accepted once (the test stands for the joining host), then the same message again.
    let request = request_for(&token, "rz");
    let accepted = send_join(&hosts, &token, &request);
    assert!(matches!(accepted, Message::Accepted(_)), "{accepted:?}");
    let paired = pair_files(&hosts.a);
    assert_ne!(paired, unchanged.0);
    assert_eq!(send_join(&hosts, &token, &request), refused_with("replay"));
    assert_eq!(refused(&hosts.a, "replay"), 1);
    assert_eq!(pair_files(&hosts.a), paired, "after a replay");

    let log = hosts.a.daemon_log();
    for reason in [
        "wrong_secret",
        "unknown_ca",
        "not_tls",
        "tls",
        "malformed",
        "replay",
    ] {
        assert_logged(&log, &hosts.b_ip(), reason);
    }
    let metrics = hosts.metrics(0);
    for reason in [
        "wrong_secret",
        "unknown_ca",
        "not_tls",
        "tls",
        "malformed",
        "replay",
    ] {
        let line = format!("magestack_pair_refused_total{{reason=\"{reason}\"}} 1");
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in\n{metrics}"
        );
    }
    let metrics = hosts.metrics(1);
    let line = "magestack_pair_refused_total{reason=\"fingerprint_mismatch\"} 1";
    assert!(
        metrics.lines().any(|l| l == line),
        "no {line} in\n{metrics}"
    );
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The refusal a joining host is sent.
fn refused_with(reason: &str) -> Message {
    Message::Refused {
        reason: reason.into(),
    }
}

/// A join request for `token` from a host named `host` with a fresh key.
fn request_for(token: &Token, host: &str) -> JoinRequest {
    let (_, request) = ca::key_and_request(host).unwrap();
    JoinRequest {
        host: host.into(),
        listen: format!("10.231.250.2:{PAIR_PORT}").parse().unwrap(),
        secret: hex(&token.secret),
        request: STANDARD.encode(request),
    }
}

/// Joins as a host named `host` from b's namespace; the inviting host's answer.
fn join_as(hosts: &PairHosts, token: &str, host: &str) -> Message {
    let token = Token::decode(token).unwrap();
    send_join(hosts, &token, &request_for(&token, host))
}

fn send_join(hosts: &PairHosts, token: &Token, request: &JoinRequest) -> Message {
    let frame = wire::encode(&Message::Join(request.clone()));
    let config = join_client_config(token.ca).unwrap();
    let answer = exchange_tls(hosts, config, &token.host, frame);
    wire::decode(&answer)
        .unwrap_or_else(|error| panic!("answer {answer:?}: {error}"))
        .unwrap_or_else(|| panic!("incomplete answer {answer:?}"))
        .0
}

/// From b's namespace: TLS to a, `bytes`, and whatever comes back until a closes.
fn exchange_tls(
    hosts: &PairHosts,
    config: Arc<ClientConfig>,
    server: &str,
    bytes: Vec<u8>,
) -> Vec<u8> {
    let address = hosts.a_address();
    let name = ServerName::try_from(server.to_string()).unwrap();
    hosts.spaces[1].run(move || {
        let stream = TcpStream::connect(&address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let connection = rustls::ClientConnection::new(config, name).unwrap();
        let mut tls = rustls::StreamOwned::new(connection, stream);
        let mut answer = Vec::new();
        if tls.write_all(&bytes).and_then(|()| tls.flush()).is_ok() {
            let _ = tls.read_to_end(&mut answer);
        }
        answer
    })
}

/// From b's namespace: `bytes` over plain TCP to a, until a closes.
fn exchange_plain(hosts: &PairHosts, bytes: Vec<u8>) {
    let address = hosts.a_address();
    hosts.spaces[1].run(move || {
        let mut stream = TcpStream::connect(&address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(&bytes).unwrap();
        let _ = stream.read_to_end(&mut Vec::new());
    });
}

fn wait_refused(hosts: &PairHosts, reason: &str) {
    common::wait_for(
        &format!("a refusal for {reason}"),
        Duration::from_secs(10),
        || refused(&hosts.a, reason) == 1,
    );
}

/// A log line naming the peer and the reason.
fn assert_logged(log: &str, peer: &str, reason: &str) {
    let needle = format!(": {reason}:");
    assert!(
        log.lines().any(|line| line.contains("pair: refused")
            && line.contains(peer)
            && line.contains(&needle)),
        "no refusal of {peer} for {reason} in the log:\n{log}"
    );
}
