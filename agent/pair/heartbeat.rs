//! Heartbeats: a thread of their own with their own tokio runtime and their own TLS connections,
//! so neither the core's blocking work nor the link's (and later bulk replication's) traffic
//! ever delays one. This host dials each peer it has (the partner, the witness) and sends a
//! `Heartbeat` every `[pair] heartbeat`; the peer answers each with a `HeartbeatAck`. Every
//! message heard from a peer renews the lease this host holds for it ([`super::lease`], on
//! CLOCK_BOOTTIME); the partner's own dial reaches this host through the link's listener,
//! which hands heartbeat connections over whole ([`super::channel`]). While the partner's lease
//! has run out here, each heartbeat to the witness goes with a `LeaseQuery` for the partner, so
//! status shows whether the witness agrees.
//!
//! A connection silent for a lease is dropped and dialed again every heartbeat: a heartbeat is
//! cheap, and a peer that comes back must be heard within one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::backoff::{jitter, Backoff};
use super::ca::{names_host, Fingerprint};
use super::clock::BootInstant;
use super::lease::{Lease, RoundTrips, Transition};
use super::link::{PairEvent, PartnerAddress};
use super::refusal::Refusal;
use super::tls::{refusal_of, witness_client_config, Identity, TlsError};
use super::wire::{self, FrameError, Message, WitnessEnroll, WitnessRecord};
use super::witness_client::{self, WITNESS_NAME};
use super::witness_token::WitnessToken;
use crate::api::control::PeerLease;

/// How long an accepted heartbeat connection may take to finish its handshake, and stay silent.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(5);
const INBOUND_IDLE_LIMIT: Duration = Duration::from_secs(10);

/// `[pair] heartbeat` and `[pair] lease`.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat: Duration,
    pub lease: Duration,
}

/// The witness as the heartbeats need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessAddress {
    pub address: SocketAddr,
    pub certificate: Fingerprint,
}

impl WitnessAddress {
    /// A recorded witness as the heartbeats dial it; `None` when its fingerprint is not one.
    pub fn of(record: &WitnessRecord) -> Option<WitnessAddress> {
        let fingerprint = super::invite::unhex(&record.fingerprint)?;
        Some(WitnessAddress {
            address: record.address,
            certificate: Fingerprint(fingerprint.try_into().ok()?),
        })
    }
}

/// Whom to beat for: this host's certificate, the partner, the witness.
#[derive(Clone, Default)]
pub struct HeartbeatPlan {
    pub identity: Option<Identity>,
    pub partner: Option<PartnerAddress>,
    pub witness: Option<WitnessAddress>,
}

pub enum HeartbeatCommand {
    Configure(HeartbeatPlan),
    /// Enroll this host's pair at the witness a token names; the answer comes back as
    /// [`PairEvent::WitnessEnrolled`].
    Enroll(WitnessToken, WitnessEnroll),
}

/// A heartbeat connection the link's listener accepted, not yet read from.
pub struct Inbound {
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerRole {
    Partner,
    Witness,
}

impl PeerRole {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerRole::Partner => "partner",
            PeerRole::Witness => "witness",
        }
    }
}

/// One peer's lease and heartbeats, as status shows them.
#[derive(Debug, Clone)]
pub struct PeerView {
    pub role: PeerRole,
    pub name: String,
    /// The lease this host holds for the peer has not run out.
    pub alive: bool,
    /// The peer was heard within a lease (not merely granted one at start).
    pub reached: bool,
    pub last_heard_ago: Option<Duration>,
    /// Until the lease runs out (negative: since it ran out), milliseconds.
    pub expires_in_ms: i64,
    pub expiries: u64,
    pub round_trip: Option<Duration>,
    pub round_trip_p50: Option<Duration>,
    pub round_trip_p99: Option<Duration>,
    /// How long the lease the peer holds for this host still runs at least (from the send time
    /// of the last heartbeat it answered).
    pub held_for: Option<Duration>,
    /// For the partner while its lease here has run out: whether the witness says it has there.
    pub witness_says_expired: Option<bool>,
    pub last_error: Option<String>,
}

impl PeerView {
    /// As `pair status --json` shows it.
    pub fn status(&self) -> PeerLease {
        let micros = |d: Option<Duration>| d.map(|d| d.as_micros() as u64);
        PeerLease {
            peer: self.name.clone(),
            alive: self.alive,
            last_heard_ms_ago: self.last_heard_ago.map(|d| d.as_millis() as u64),
            expires_in_ms: self.expires_in_ms,
            expiries: self.expiries,
            rtt_us: micros(self.round_trip),
            rtt_p50_us: micros(self.round_trip_p50),
            rtt_p99_us: micros(self.round_trip_p99),
            held_ms: self.held_for.map(|d| d.as_millis() as u64),
            witness_says_expired: self.witness_says_expired,
            last_error: self.last_error.clone(),
        }
    }
}

struct PeerState {
    name: String,
    lease: Lease,
    trips: RoundTrips,
    /// The send time of the newest heartbeat the peer answered.
    acknowledged: Option<BootInstant>,
    witness_says_expired: Option<bool>,
    last_error: Option<String>,
}

/// What the heartbeat tasks share.
struct Shared {
    timing: Timing,
    report: Box<dyn Fn(PairEvent) + Send + Sync>,
    peers: Mutex<BTreeMap<PeerRole, PeerState>>,
    /// The server for the partner's heartbeats, and the partner's name.
    server: Mutex<Option<(TlsAcceptor, String)>>,
}

/// The core's handle on the heartbeat thread.
pub struct Heartbeats {
    commands: mpsc::UnboundedSender<HeartbeatCommand>,
    inbound: mpsc::UnboundedSender<Inbound>,
    shared: Arc<Shared>,
}

#[derive(Debug, thiserror::Error)]
enum BeatError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("no connection within a lease ({0:?})")]
    Timeout(Duration),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("silent for a lease ({0:?})")]
    Silent(Duration),
    #[error("refused: {0}")]
    Refused(String),
    #[error("{0} where a heartbeat's answer was due")]
    Unexpected(&'static str),
}

impl Heartbeats {
    /// Starts the heartbeat thread; refusals and enrollments go to `report`.
    pub fn spawn(
        timing: Timing,
        report: impl Fn(PairEvent) + Send + Sync + 'static,
    ) -> std::io::Result<Heartbeats> {
        let (commands, command_inbox) = mpsc::unbounded_channel();
        let (inbound, inbound_inbox) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared {
            timing,
            report: Box::new(report),
            peers: Mutex::new(BTreeMap::new()),
            server: Mutex::new(None),
        });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("pair-heartbeat".into())
            .spawn(move || runtime.block_on(run(thread_shared, command_inbox, inbound_inbox)))?;
        Ok(Heartbeats {
            commands,
            inbound,
            shared,
        })
    }

    pub fn send(&self, command: HeartbeatCommand) {
        // The thread ends only with the process.
        let _ = self.commands.send(command);
    }

    /// Where the link's listener hands heartbeat connections.
    pub fn inbound(&self) -> mpsc::UnboundedSender<Inbound> {
        self.inbound.clone()
    }

    /// Every peer's lease and heartbeats now.
    pub fn peers(&self) -> Vec<PeerView> {
        let now = BootInstant::now();
        let lease = self.shared.timing.lease;
        let peers = self.shared.peers.lock().expect("heartbeat lock");
        peers
            .iter()
            .map(|(role, peer)| {
                let expires = peer.lease.expires();
                let expires_in_ms = if now < expires {
                    millis(expires.saturating_since(now))
                } else {
                    -millis(now.saturating_since(expires))
                };
                PeerView {
                    role: *role,
                    name: peer.name.clone(),
                    alive: peer.lease.alive(now),
                    reached: peer.lease.reached(now),
                    last_heard_ago: peer.lease.heard().map(|heard| now.saturating_since(heard)),
                    expires_in_ms,
                    expiries: peer.lease.expiries(),
                    round_trip: peer.trips.last(),
                    round_trip_p50: peer.trips.quantile(0.5),
                    round_trip_p99: peer.trips.quantile(0.99),
                    held_for: peer
                        .acknowledged
                        .map(|sent| sent.plus(lease).saturating_since(now)),
                    witness_says_expired: peer.witness_says_expired,
                    last_error: peer.last_error.clone(),
                }
            })
            .collect()
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Shared {
    fn refuse(&self, peer: SocketAddr, reason: Refusal, detail: impl Into<String>) {
        (self.report)(PairEvent::Refused {
            peer,
            reason,
            detail: detail.into(),
        });
    }

    fn with_peer(&self, role: PeerRole, change: impl FnOnce(&mut PeerState)) {
        if let Some(peer) = self.peers.lock().expect("heartbeat lock").get_mut(&role) {
            change(peer);
        }
    }

    /// The peers of `plan`, keeping the lease of one that stays the same.
    fn configure(&self, plan: &HeartbeatPlan) {
        let now = BootInstant::now();
        let wanted = [
            (
                PeerRole::Partner,
                plan.partner.as_ref().map(|p| p.name.clone()),
            ),
            (
                PeerRole::Witness,
                plan.witness.as_ref().map(|w| w.address.to_string()),
            ),
        ];
        let mut peers = self.peers.lock().expect("heartbeat lock");
        for (role, name) in wanted {
            match name {
                Some(name) if peers.get(&role).is_some_and(|peer| peer.name == name) => {}
                Some(name) => {
                    peers.insert(
                        role,
                        PeerState {
                            name,
                            lease: Lease::new(self.timing.lease, now),
                            trips: RoundTrips::default(),
                            acknowledged: None,
                            witness_says_expired: None,
                            last_error: None,
                        },
                    );
                }
                None => {
                    peers.remove(&role);
                }
            }
        }
    }

    /// The peer answered the heartbeat sent at `sent`.
    fn acknowledged(&self, role: PeerRole, sent: BootInstant) {
        let now = BootInstant::now();
        self.with_peer(role, |peer| {
            peer.lease.renew(now);
            peer.trips.record(now.saturating_since(sent));
            peer.acknowledged = Some(peer.acknowledged.map_or(sent, |known| known.max(sent)));
            peer.last_error = None;
        });
    }

    /// The partner's name while its lease here has run out: what to ask the witness about.
    fn partner_to_ask(&self) -> Option<String> {
        let now = BootInstant::now();
        let peers = self.peers.lock().expect("heartbeat lock");
        peers
            .get(&PeerRole::Partner)
            .filter(|partner| !partner.lease.alive(now))
            .map(|partner| partner.name.clone())
    }

    /// Logs each lease that ran out or came back since the last look.
    fn observe(&self) {
        let now = BootInstant::now();
        for (role, peer) in self.peers.lock().expect("heartbeat lock").iter_mut() {
            match peer.lease.observe(now) {
                Some(Transition::Expired) => tracing::warn!(
                    peer = peer.name,
                    role = role.as_str(),
                    "pair: the lease of {} ({}) ran out here: last heard {}",
                    peer.name,
                    role.as_str(),
                    peer.lease
                        .heard()
                        .map(|heard| format!("{:?} ago", now.saturating_since(heard)))
                        .unwrap_or_else(|| "never since the agent started".into())
                ),
                Some(Transition::Renewed) => {
                    peer.witness_says_expired = None;
                    tracing::info!(
                        peer = peer.name,
                        role = role.as_str(),
                        "pair: {} heard again",
                        peer.name
                    );
                }
                None => {}
            }
        }
    }
}

async fn run(
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<HeartbeatCommand>,
    mut inbound: mpsc::UnboundedReceiver<Inbound>,
) {
    let observer = shared.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(observer.timing.heartbeat);
        loop {
            tick.tick().await;
            observer.observe();
        }
    });
    let mut dialers: Vec<AbortHandle> = Vec::new();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(HeartbeatCommand::Configure(plan)) => {
                    for dialer in dialers.drain(..) {
                        dialer.abort();
                    }
                    shared.configure(&plan);
                    match start(&shared, &plan) {
                        Ok(started) => dialers = started,
                        Err(error) => tracing::error!("pair heartbeats: {error}"),
                    }
                }
                Some(HeartbeatCommand::Enroll(token, request)) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let outcome = witness_client::request(
                            token.address,
                            token.certificate,
                            None,
                            &Message::WitnessEnroll(request),
                        )
                        .await
                        .and_then(|answer| match answer {
                            Message::WitnessEnrolled => Ok(()),
                            other => Err(witness_client::WitnessClientError::Protocol {
                                address: token.address,
                                what: format!("answered with {}", other.kind()),
                            }),
                        });
                        (shared.report)(PairEvent::WitnessEnrolled { token, outcome });
                    });
                }
                None => return,
            },
            Some(connection) = inbound.recv() => {
                tokio::spawn(serve_inbound(shared.clone(), connection));
            }
        }
    }
}

/// The server for the partner's heartbeats and a dialer per peer of `plan`.
fn start(shared: &Arc<Shared>, plan: &HeartbeatPlan) -> Result<Vec<AbortHandle>, TlsError> {
    let Some(identity) = &plan.identity else {
        *shared.server.lock().expect("heartbeat lock") = None;
        return Ok(Vec::new());
    };
    let mut dialers = Vec::new();
    *shared.server.lock().expect("heartbeat lock") = match &plan.partner {
        Some(partner) => Some((
            TlsAcceptor::from(identity.heartbeat_server_config()?),
            partner.name.clone(),
        )),
        None => None,
    };
    if let Some(partner) = &plan.partner {
        let connector = TlsConnector::from(identity.heartbeat_client_config()?);
        let name = ServerName::try_from(partner.name.clone()).map_err(|_| {
            TlsError::Certificate(super::ca::CaError::HostName(partner.name.clone()))
        })?;
        dialers.push(
            tokio::spawn(keep_beating(
                shared.clone(),
                PeerRole::Partner,
                partner.address,
                name,
                connector,
            ))
            .abort_handle(),
        );
    }
    if let Some(witness) = &plan.witness {
        let connector =
            TlsConnector::from(witness_client_config(witness.certificate, Some(identity))?);
        let name = ServerName::try_from(WITNESS_NAME).expect("a DNS name");
        dialers.push(
            tokio::spawn(keep_beating(
                shared.clone(),
                PeerRole::Witness,
                witness.address,
                name,
                connector,
            ))
            .abort_handle(),
        );
    }
    Ok(dialers)
}

/// Dials `address` and beats until the plan changes; after each loss, again a heartbeat later.
async fn keep_beating(
    shared: Arc<Shared>,
    role: PeerRole,
    address: SocketAddr,
    name: ServerName<'static>,
    connector: TlsConnector,
) {
    let lease = shared.timing.lease;
    // After a refused handshake or a refusal, backoff: a peer that turns this host away is not
    // asked ten times a second (nor its refusal logged as often).
    let mut backoff = Backoff::default();
    loop {
        let outcome = async {
            let stream = tokio::time::timeout(lease, TcpStream::connect(address))
                .await
                .map_err(|_| BeatError::Timeout(lease))?
                .map_err(BeatError::Connect)?;
            let _ = stream.set_nodelay(true);
            let tls = tokio::time::timeout(lease, connector.connect(name.clone(), stream))
                .await
                .map_err(|_| BeatError::Timeout(lease))?
                .map_err(BeatError::Tls)?;
            beat(&shared, role, tls).await
        }
        .await;
        let (error, refused) = match outcome {
            Ok(()) => ("closed".to_string(), false),
            Err(BeatError::Tls(error)) => {
                if let Some(reason) = refusal_of(&error, false) {
                    shared.refuse(address, reason, format!("heartbeat TLS handshake: {error}"));
                }
                (format!("TLS handshake: {error}"), true)
            }
            Err(error @ BeatError::Refused(_)) => (error.to_string(), true),
            Err(error) => (error.to_string(), false),
        };
        tracing::debug!(%address, role = role.as_str(), "pair heartbeats: {error}");
        shared.with_peer(role, |peer| {
            peer.last_error = Some(format!("{address}: {error}"))
        });
        let delay = if refused {
            backoff.next_delay(jitter())
        } else {
            backoff.reset();
            shared.timing.heartbeat
        };
        tokio::time::sleep(delay).await;
    }
}

/// Heartbeats out, answers in, on one connection, until it fails or falls silent for a lease.
async fn beat<S>(shared: &Shared, role: PeerRole, stream: S) -> Result<(), BeatError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Timing { heartbeat, lease } = shared.timing;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let send = async {
        let mut tick = tokio::time::interval(heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for seq in 1u64.. {
            tick.tick().await;
            let sent_us = BootInstant::now().as_micros();
            wire::write(&mut writer, &Message::Heartbeat { seq, sent_us }).await?;
            if role == PeerRole::Witness {
                if let Some(host) = shared.partner_to_ask() {
                    wire::write(&mut writer, &Message::LeaseQuery { host }).await?;
                }
            }
        }
        Ok(())
    };
    let receive = async {
        loop {
            match tokio::time::timeout(lease, wire::read(&mut reader)).await {
                Ok(Ok(Message::HeartbeatAck { sent_us, .. })) => {
                    shared.acknowledged(role, BootInstant::from_micros(sent_us))
                }
                Ok(Ok(Message::LeaseAnswer(answer))) if role == PeerRole::Witness => {
                    shared.with_peer(PeerRole::Partner, |partner| {
                        if partner.name == answer.host {
                            partner.witness_says_expired = Some(answer.expired);
                        }
                    });
                }
                Ok(Ok(Message::Refused { reason })) => return Err(BeatError::Refused(reason)),
                Ok(Ok(other)) => return Err(BeatError::Unexpected(other.kind())),
                Ok(Err(error)) => return Err(error.into()),
                Err(_) => return Err(BeatError::Silent(lease)),
            }
        }
    };
    tokio::select! {
        result = send => result,
        result = receive => result,
    }
}

/// The partner's heartbeat connection, handed over by the link's listener: TLS with a client
/// certificate naming the partner, then an answer to every heartbeat.
async fn serve_inbound(shared: Arc<Shared>, inbound: Inbound) {
    let Inbound { stream, peer } = inbound;
    let server = shared.server.lock().expect("heartbeat lock").clone();
    let Some((acceptor, partner)) = server else {
        return tracing::info!(%peer, "pair heartbeats: connection closed: no partner yet");
    };
    let stream = match TcpStream::from_std(stream) {
        Ok(stream) => stream,
        Err(error) => return tracing::warn!(%peer, "pair heartbeats: {error}"),
    };
    let _ = stream.set_nodelay(true);
    let mut tls = match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            return match refusal_of(&error, true) {
                Some(reason) => {
                    shared.refuse(peer, reason, format!("heartbeat TLS handshake: {error}"))
                }
                None => {
                    tracing::info!(%peer, "pair heartbeats: the peer ended the handshake: {error}")
                }
            }
        }
        Err(_) => {
            return shared.refuse(
                peer,
                Refusal::Tls,
                "heartbeat TLS handshake did not finish in time",
            )
        }
    };
    let names_partner = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .is_some_and(|leaf| names_host(leaf.as_ref(), &partner).unwrap_or(false));
    if !names_partner {
        return shared.refuse(
            peer,
            Refusal::NotPartner,
            format!("a heartbeat whose certificate does not name the partner {partner}"),
        );
    }
    loop {
        match tokio::time::timeout(INBOUND_IDLE_LIMIT, wire::read(&mut tls)).await {
            Ok(Ok(Message::Heartbeat { seq, sent_us })) => {
                let now = BootInstant::now();
                shared.with_peer(PeerRole::Partner, |peer| {
                    if peer.name == partner {
                        peer.lease.renew(now);
                    }
                });
                if let Err(error) =
                    wire::write(&mut tls, &Message::HeartbeatAck { seq, sent_us }).await
                {
                    return tracing::debug!(%peer, "pair heartbeats from {partner}: {error}");
                }
            }
            Ok(Ok(other)) => {
                return shared.refuse(
                    peer,
                    Refusal::Malformed,
                    format!("{} on {partner}'s heartbeat connection", other.kind()),
                )
            }
            Ok(Err(error @ (FrameError::Malformed(_) | FrameError::TooLarge(_)))) => {
                return shared.refuse(peer, Refusal::Malformed, error.to_string())
            }
            Ok(Err(error)) => {
                return tracing::debug!(%peer, "pair heartbeats from {partner}: {error}")
            }
            Err(_) => return tracing::debug!(%peer, "pair heartbeats from {partner}: silent"),
        }
    }
}
