//! The witness's listener: each connection is TLS with the witness's certificate or is refused.
//! Without a client certificate a connection may only enroll (the token's secret and the pair's
//! CA); with one issued by the enrolled pair CA it is a host of the pair, named by its
//! certificate, and may send heartbeats (renewing its lease here), ask whether a host's lease
//! expired here, and compare-and-set a node's record. Anyone else is refused, logged and
//! counted, and changes nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::claims::valid_node_name;
use super::enrollment::Enrollment;
use super::store::{WitnessIdentity, WitnessStore};
use crate::pair::ca::{self, der_of};
use crate::pair::clock::BootInstant;
use crate::pair::lease::{Lease, Transition};
use crate::pair::tls::{provider, refusal_of};
use crate::pair::wire::{self, FrameError, LeaseAnswer, Message, WitnessEnroll};
use crate::pair::Refusal;

/// Limits on a connection's handshake and first message.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(5);
/// A host's connection silent this long is closed (its lease runs on regardless).
const IDLE_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("the witness's certificate or key: {0}")]
    Identity(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("the pair CA recorded at enrollment: {0}")]
    PairCa(String),
}

pub struct Witness {
    store: WitnessStore,
    identity: WitnessIdentity,
    lease: Duration,
    started: BootInstant,
    /// The lease each host of the pair holds here, made at start: nobody's runs out before a
    /// full lease after the witness started.
    leases: Mutex<BTreeMap<String, Lease>>,
    enrollment: Mutex<Enrollment>,
    acceptor: Mutex<TlsAcceptor>,
    refused: Mutex<BTreeMap<Refusal, u64>>,
}

impl Witness {
    pub fn new(
        store: WitnessStore,
        identity: WitnessIdentity,
        enrollment: Enrollment,
        lease: Duration,
    ) -> Result<Witness, ServerError> {
        let acceptor = TlsAcceptor::from(server_config(&identity, enrollment.pair_ca.as_deref())?);
        Ok(Witness {
            store,
            identity,
            lease,
            started: BootInstant::now(),
            leases: Mutex::new(BTreeMap::new()),
            enrollment: Mutex::new(enrollment),
            acceptor: Mutex::new(acceptor),
            refused: Mutex::new(BTreeMap::new()),
        })
    }

    fn refuse(&self, peer: SocketAddr, reason: Refusal, detail: &str) {
        let count = {
            let mut refused = self.refused.lock().expect("witness lock");
            let count = refused.entry(reason).or_default();
            *count += 1;
            *count
        };
        tracing::warn!(%peer, reason = reason.label(), count, "witness: refused {peer}: {reason}: {detail} ({count} refused for {reason})");
    }

    /// Whether `host`'s lease here has run out, as the answer to a query.
    fn lease_answer(&self, host: &str) -> LeaseAnswer {
        let now = BootInstant::now();
        let mut leases = self.leases.lock().expect("witness lock");
        let lease = leases
            .entry(host.to_string())
            .or_insert_with(|| Lease::new(self.lease, self.started));
        LeaseAnswer {
            host: host.to_string(),
            expired: !lease.alive(now),
            heard_ms_ago: lease
                .heard()
                .map(|heard| millis(now.saturating_since(heard))),
            since_start_ms: millis(now.saturating_since(self.started)),
            lease_ms: millis(self.lease),
        }
    }

    fn heard(&self, host: &str) {
        let now = BootInstant::now();
        let mut leases = self.leases.lock().expect("witness lock");
        leases
            .entry(host.to_string())
            .or_insert_with(|| Lease::new(self.lease, self.started))
            .renew(now);
    }

    /// Logs each lease that ran out or came back since the last look.
    fn observe_leases(&self) {
        let now = BootInstant::now();
        for (host, lease) in self.leases.lock().expect("witness lock").iter_mut() {
            match lease.observe(now) {
                Some(Transition::Expired) => tracing::warn!(
                    host,
                    "witness: {host}'s lease expired (last heard {} ago)",
                    lease
                        .heard()
                        .map(|heard| format!("{:?}", now.saturating_since(heard)))
                        .unwrap_or_else(|| "never since the witness started".into())
                ),
                Some(Transition::Renewed) => tracing::info!(host, "witness: {host} heard again"),
                None => {}
            }
        }
    }

    fn enroll(&self, peer: SocketAddr, request: &WitnessEnroll) -> Message {
        let mut enrollment = self.enrollment.lock().expect("witness lock");
        match enrollment.enroll(request) {
            Ok(None) => Message::WitnessEnrolled,
            Ok(Some(next)) => {
                let stored = self
                    .store
                    .save_enrollment(&next)
                    .map_err(|error| error.to_string())
                    .and_then(|()| {
                        server_config(&self.identity, next.pair_ca.as_deref())
                            .map_err(|error| error.to_string())
                    });
                match stored {
                    Ok(config) => {
                        *self.acceptor.lock().expect("witness lock") = TlsAcceptor::from(config);
                        tracing::info!(%peer, host = request.host, "witness: {} enrolled; serving its pair", request.host);
                        *enrollment = next;
                        Message::WitnessEnrolled
                    }
                    Err(error) => {
                        tracing::error!(%peer, "witness: cannot record the enrollment: {error}");
                        Message::Refused {
                            reason: format!("error: {error}"),
                        }
                    }
                }
            }
            Err((reason, detail)) => {
                self.refuse(
                    peer,
                    reason,
                    &format!("enrollment of {}: {detail}", request.host),
                );
                Message::Refused {
                    reason: reason.label().to_string(),
                }
            }
        }
    }
}

/// The witness's server: its certificate; client certificates verified against the enrolled
/// pair CA and optional (an enrollment has none); before enrollment none are asked for.
fn server_config(
    identity: &WitnessIdentity,
    pair_ca: Option<&str>,
) -> Result<Arc<ServerConfig>, ServerError> {
    let bad = |error: &dyn std::fmt::Display| ServerError::Identity(error.to_string());
    let chain = vec![der_of(&identity.certificate).map_err(|e| bad(&e))?];
    let key = PrivateKeyDer::from_pem_slice(identity.key.as_bytes()).map_err(|e| bad(&e))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let config = match pair_ca {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            roots
                .add(der_of(pem).map_err(|e| ServerError::PairCa(e.to_string()))?)
                .map_err(|e| ServerError::PairCa(e.to_string()))?;
            let clients = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| ServerError::PairCa(e.to_string()))?;
            builder.with_client_cert_verifier(clients)
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config.with_single_cert(chain, key)?))
}

/// Serves `listener` until the process ends.
pub async fn serve(witness: Arc<Witness>, listener: TcpListener) {
    let ticker = witness.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ticker.lease / 5);
        loop {
            tick.tick().await;
            ticker.observe_leases();
        }
    });
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(witness.clone(), stream, peer));
            }
            Err(error) => {
                tracing::warn!("witness accept: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(witness: Arc<Witness>, stream: TcpStream, peer: SocketAddr) {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_LIMIT, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == 0x16 => {}
        Ok(Ok(1)) => {
            return witness.refuse(
                peer,
                Refusal::NotTls,
                &format!(
                    "first byte {:#04x} does not start a TLS handshake",
                    first[0]
                ),
            )
        }
        _ => return tracing::debug!(%peer, "witness: closed before sending anything"),
    }
    let acceptor = witness.acceptor.lock().expect("witness lock").clone();
    let mut tls = match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            return match refusal_of(&error, true) {
                Some(reason) => witness.refuse(peer, reason, &format!("TLS handshake: {error}")),
                None => tracing::info!(%peer, "witness: the peer ended the handshake: {error}"),
            }
        }
        Err(_) => {
            return witness.refuse(peer, Refusal::Tls, "TLS handshake did not finish in time")
        }
    };
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| leaf.as_ref().to_vec());
    match leaf {
        None => enrollment(&witness, &mut tls, peer).await,
        Some(leaf) => match ca::host_of(&leaf) {
            Ok(Some(host)) => host_connection(&witness, &mut tls, peer, &host).await,
            _ => witness.refuse(
                peer,
                Refusal::Malformed,
                "a pair certificate naming no host",
            ),
        },
    }
}

/// A connection without a certificate: one enrollment, answered.
async fn enrollment(witness: &Witness, tls: &mut TlsStream<TcpStream>, peer: SocketAddr) {
    let answer = match tokio::time::timeout(HANDSHAKE_LIMIT, wire::read(tls)).await {
        Ok(Ok(Message::WitnessEnroll(request))) => witness.enroll(peer, &request),
        Ok(Ok(other)) => {
            return witness.refuse(
                peer,
                Refusal::Unauthenticated,
                &format!("{} without a pair certificate", other.kind()),
            )
        }
        Ok(Err(error @ (FrameError::Malformed(_) | FrameError::TooLarge(_)))) => {
            return witness.refuse(peer, Refusal::Malformed, &error.to_string())
        }
        Ok(Err(error)) => return tracing::debug!(%peer, "witness: {error}"),
        Err(_) => return tracing::info!(%peer, "witness: no message within {HANDSHAKE_LIMIT:?}"),
    };
    if let Err(error) = wire::write(tls, &answer).await {
        tracing::warn!(%peer, "witness: answering an enrollment: {error}");
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(tls).await;
}

/// A host of the pair: heartbeats, lease queries and compare-and-sets until it goes.
async fn host_connection(
    witness: &Arc<Witness>,
    tls: &mut TlsStream<TcpStream>,
    peer: SocketAddr,
    host: &str,
) {
    tracing::debug!(%peer, host, "witness: {host} connected");
    loop {
        let message = match tokio::time::timeout(IDLE_LIMIT, wire::read(tls)).await {
            Ok(Ok(message)) => message,
            Ok(Err(FrameError::Closed)) => return,
            Ok(Err(error @ (FrameError::Malformed(_) | FrameError::TooLarge(_)))) => {
                return witness.refuse(peer, Refusal::Malformed, &format!("from {host}: {error}"))
            }
            Ok(Err(error)) => return tracing::info!(%peer, host, "witness: {host}: {error}"),
            Err(_) => {
                return tracing::info!(%peer, host, "witness: {host} silent for {IDLE_LIMIT:?}")
            }
        };
        let answer = match message {
            Message::Heartbeat { seq, sent_us } => {
                witness.heard(host);
                Message::HeartbeatAck { seq, sent_us }
            }
            Message::LeaseQuery { host: asked } => {
                Message::LeaseAnswer(witness.lease_answer(&asked))
            }
            Message::Cas(request) if valid_node_name(&request.node) => {
                // Off this thread: the record's fsync must not hold the other hosts' heartbeats.
                let store = witness.clone();
                let asked = request.clone();
                let outcome = tokio::task::spawn_blocking(move || {
                    store
                        .store
                        .compare_and_set(&asked)
                        .map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|error| Err(error.to_string()));
                match outcome {
                    Ok(answer) => {
                        tracing::info!(
                            host,
                            node = request.node,
                            applied = answer.applied,
                            "witness: compare-and-set of {} by {host}: {}",
                            request.node,
                            answer.reason.as_deref().unwrap_or("applied")
                        );
                        Message::CasAnswer(answer)
                    }
                    Err(error) => {
                        tracing::error!(
                            host,
                            "witness: compare-and-set of {}: {error}",
                            request.node
                        );
                        Message::Refused {
                            reason: format!("error: {error}"),
                        }
                    }
                }
            }
            Message::Cas(request) => {
                return witness.refuse(
                    peer,
                    Refusal::Malformed,
                    &format!(
                        "from {host}: a compare-and-set of `{}`, not a node name",
                        request.node
                    ),
                )
            }
            other => {
                return witness.refuse(
                    peer,
                    Refusal::Malformed,
                    &format!("from {host}: {} is not for a witness", other.kind()),
                )
            }
        };
        if let Err(error) = wire::write(tls, &answer).await {
            return tracing::info!(%peer, host, "witness: writing to {host}: {error}");
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
