//! The pair link: its own thread with its own tokio runtime, so it never waits behind the core's
//! work. It listens on `[pair] listen`, dials the partner when this host is the dialer, runs the
//! join handshakes, and keeps one mutually authenticated connection to the partner alive with a
//! `Hello` each way and a `Keepalive` every second. It owns no state of the world: what it sees
//! (the link's state, a refused peer, a join to decide, a join's answer) goes to the core as a
//! [`PairEvent`], and the core tells it what to run with ([`LinkCommand::Configure`]).
//!
//! Who dials: both hosts listen; the host whose name sorts first dials the other, and redials
//! with backoff ([`super::backoff`]) whenever the connection ends. The other side only accepts,
//! and a new authenticated connection from the partner replaces the one it had (the partner
//! noticed a loss first). One connection, one direction, no tie to break.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::backoff::{jitter, Backoff};
use super::ca::{names_host, Fingerprint};
use super::channel::{peek_channel, Channel};
use super::heartbeat::Inbound;
use super::refusal::Refusal;
use super::tls::{join_client_config, refusal_of, Identity, TlsError};
use super::token::Token;
use super::wire::{
    self, FrameError, JoinAccepted, JoinRequest, Message, StackOffer, StackVerdict, WitnessRecord,
};
use super::witness_client::WitnessClientError;
use super::witness_token::WitnessToken;

/// A link message is due at least this often: the keepalive period.
const KEEPALIVE: Duration = Duration::from_secs(1);
/// Silence after which the link is taken for lost.
const IDLE_LIMIT: Duration = Duration::from_secs(5);
/// Limits on each step of setting up a connection.
const CONNECT_LIMIT: Duration = Duration::from_secs(3);
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(5);
/// How long a join may wait for the inviting host's core and answer.
const JOIN_LIMIT: Duration = Duration::from_secs(30);

/// The partner as the link needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerAddress {
    pub name: String,
    pub address: SocketAddr,
}

/// What the link runs with: this host's certificate (none before an invite or a join) and the
/// partner (none until paired).
#[derive(Clone, Default)]
pub struct Plan {
    pub identity: Option<Identity>,
    pub partner: Option<PartnerAddress>,
}

pub enum LinkCommand {
    Configure(Plan),
    /// Join the host a token names with this request; the answer comes back as
    /// [`PairEvent::Joined`].
    Join(Token, JoinRequest),
    /// The pair's witness as this host knows it: told to the partner on every link.
    Witness(Option<WitnessRecord>),
    /// The stack version in force here: told to the partner on every link.
    Stack(StackOffer),
    /// What this host did with the partner's latest stack version: told on every link.
    StackVerdict(StackVerdict),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Paired, no link yet since the agent started (dialing, or waiting for the partner).
    Connecting,
    Up,
    /// The link was lost or could not be made; retried.
    Down,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Up => "up",
            LinkState::Down => "down",
        }
    }
}

/// What the link reports to the core.
pub enum PairEvent {
    Link {
        state: LinkState,
        error: Option<String>,
    },
    Refused {
        peer: SocketAddr,
        reason: Refusal,
        detail: String,
    },
    /// A join arrived: the core decides and answers with the message to send back.
    JoinRequested {
        peer: SocketAddr,
        request: JoinRequest,
        reply: oneshot::Sender<Message>,
    },
    /// The answer to this host's own join.
    Joined(Result<JoinAccepted, JoinError>),
    /// The answer of the witness this host enrolled at (from the heartbeat thread).
    WitnessEnrolled {
        token: WitnessToken,
        outcome: Result<(), WitnessClientError>,
    },
    /// The witness the partner knows, as it told this host on the link.
    PartnerWitness(WitnessRecord),
    /// The stack version in force on the partner.
    PartnerStack(StackOffer),
    /// What the partner did with this host's stack version.
    PartnerStackVerdict(StackVerdict),
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("the host at {address} is not of the pair the token names: its CA is not the one the token names ({ca:?})")]
    ForeignCa {
        address: SocketAddr,
        ca: Fingerprint,
    },
    #[error("TLS with {address}: {source}")]
    Tls {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("{address} refused the join: {reason}")]
    Refused { address: SocketAddr, reason: String },
    #[error("{address} answered the join with {what}")]
    Protocol { address: SocketAddr, what: String },
    #[error("{address} did not answer within {JOIN_LIMIT:?}")]
    Timeout { address: SocketAddr },
    #[error("this host's TLS setup: {0}")]
    Setup(#[from] TlsError),
}

impl JoinError {
    /// What this host refused of the inviting host, if anything (a CA other than the token's).
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            JoinError::ForeignCa { .. } => Some(Refusal::FingerprintMismatch),
            JoinError::Tls { source, .. } => refusal_of(source, false),
            _ => None,
        }
    }
}

/// The core's handle on the link thread.
pub struct Link {
    commands: mpsc::UnboundedSender<LinkCommand>,
}

impl Link {
    /// Starts the link thread for `host`, listening on `listen`; events go to `report`, and
    /// heartbeat connections to `heartbeats`.
    pub fn spawn(
        host: String,
        listen: SocketAddr,
        heartbeats: mpsc::UnboundedSender<Inbound>,
        report: impl Fn(PairEvent) + Send + Sync + 'static,
    ) -> std::io::Result<Link> {
        let (commands, inbox) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (witness, _) = watch::channel(None);
        let (stack, _) = watch::channel(None);
        let (stack_verdict, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            host,
            report: Box::new(report),
            current: Mutex::new(Current::default()),
            heartbeats,
            witness,
            stack,
            stack_verdict,
        });
        std::thread::Builder::new()
            .name("pair-link".into())
            .spawn(move || runtime.block_on(run(shared, listen, inbox)))?;
        Ok(Link { commands })
    }

    pub fn send(&self, command: LinkCommand) {
        // The thread ends only with the process.
        let _ = self.commands.send(command);
    }
}

/// What the link's tasks share.
struct Shared {
    host: String,
    report: Box<dyn Fn(PairEvent) + Send + Sync>,
    current: Mutex<Current>,
    /// Where heartbeat connections go, untouched.
    heartbeats: mpsc::UnboundedSender<Inbound>,
    /// The pair's witness as this host knows it, sent on each link and whenever it changes.
    witness: watch::Sender<Option<WitnessRecord>>,
    /// The stack version in force here, and the verdict on the partner's: the same.
    stack: watch::Sender<Option<StackOffer>>,
    stack_verdict: watch::Sender<Option<StackVerdict>>,
}

/// The one connection to the partner: a generation number that grows with each, so a
/// replaced connection's last words never overwrite the state of the one that replaced it.
#[derive(Default)]
struct Current {
    generation: u64,
    task: Option<AbortHandle>,
}

/// The plan with its TLS configurations built once.
#[derive(Clone, Default)]
struct Active {
    server: Option<TlsAcceptor>,
    client: Option<TlsConnector>,
    partner: Option<PartnerAddress>,
}

impl Shared {
    fn refuse(&self, peer: SocketAddr, reason: Refusal, detail: impl Into<String>) {
        (self.report)(PairEvent::Refused {
            peer,
            reason,
            detail: detail.into(),
        });
    }

    /// Makes the calling connection the current one, ending any other.
    fn take_over(&self, task: AbortHandle) -> u64 {
        let mut current = self.current.lock().expect("link lock");
        if let Some(previous) = current.task.replace(task) {
            previous.abort();
        }
        current.generation += 1;
        current.generation
    }

    /// Ends the current connection, and makes any report of it stale.
    fn drop_current(&self) {
        let mut current = self.current.lock().expect("link lock");
        if let Some(previous) = current.task.take() {
            previous.abort();
        }
        current.generation += 1;
    }

    /// Reports the link's state when `generation` is still the current connection's.
    fn report_link(&self, generation: Option<u64>, state: LinkState, error: Option<String>) {
        let current = self.current.lock().expect("link lock");
        if generation.is_none_or(|generation| generation == current.generation) {
            (self.report)(PairEvent::Link { state, error });
        }
    }
}

async fn run(
    shared: Arc<Shared>,
    listen: SocketAddr,
    mut inbox: mpsc::UnboundedReceiver<LinkCommand>,
) {
    let (plan_sender, plan) = watch::channel(Active::default());
    tokio::spawn(accept_loop(shared.clone(), listen, plan));
    let mut dialer: Option<AbortHandle> = None;
    while let Some(command) = inbox.recv().await {
        match command {
            LinkCommand::Configure(plan) => {
                if let Some(dialer) = dialer.take() {
                    dialer.abort();
                }
                shared.drop_current();
                let active = match activate(&plan) {
                    Ok(active) => active,
                    Err(error) => {
                        shared.report_link(None, LinkState::Down, Some(error.to_string()));
                        plan_sender.send_replace(Active::default());
                        continue;
                    }
                };
                if let Some(partner) = &active.partner {
                    shared.report_link(None, LinkState::Connecting, None);
                    if shared.host < partner.name {
                        dialer = Some(
                            tokio::spawn(dial_loop(shared.clone(), active.clone())).abort_handle(),
                        );
                    }
                }
                plan_sender.send_replace(active);
            }
            LinkCommand::Witness(record) => {
                shared.witness.send_replace(record);
            }
            LinkCommand::Stack(offer) => {
                shared.stack.send_replace(Some(offer));
            }
            LinkCommand::StackVerdict(verdict) => {
                shared.stack_verdict.send_replace(Some(verdict));
            }
            LinkCommand::Join(token, request) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let outcome = join(&token, &request).await;
                    (shared.report)(PairEvent::Joined(outcome));
                });
            }
        }
    }
}

fn activate(plan: &Plan) -> Result<Active, TlsError> {
    let Some(identity) = &plan.identity else {
        return Ok(Active::default());
    };
    Ok(Active {
        server: Some(TlsAcceptor::from(identity.server_config()?)),
        client: Some(TlsConnector::from(identity.link_client_config()?)),
        partner: plan.partner.clone(),
    })
}

/// Listens on `listen` (retrying with backoff while the address cannot be bound) and serves
/// each connection on a task of its own.
async fn accept_loop(shared: Arc<Shared>, listen: SocketAddr, plan: watch::Receiver<Active>) {
    let mut backoff = Backoff::default();
    let listener = loop {
        match TcpListener::bind(listen).await {
            Ok(listener) => break listener,
            Err(error) => {
                let delay = backoff.next_delay(jitter());
                tracing::warn!(%listen, "pair link: cannot listen: {error}; again in {delay:?}");
                shared.report_link(
                    None,
                    LinkState::Down,
                    Some(format!("cannot listen on {listen}: {error}")),
                );
                tokio::time::sleep(delay).await;
            }
        }
    };
    tracing::info!(%listen, "pair link listening");
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let active = plan.borrow().clone();
                tokio::spawn(inbound(shared.clone(), stream, peer, active));
            }
            Err(error) => {
                tracing::warn!(%listen, "pair link accept: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One inbound connection: TLS or refused; with a partner's certificate, the link; without a
/// certificate, one join.
async fn inbound(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, active: Active) {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_LIMIT, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == 0x16 => {}
        Ok(Ok(1)) => {
            return shared.refuse(
                peer,
                Refusal::NotTls,
                format!(
                    "first byte {:#04x} does not start a TLS handshake",
                    first[0]
                ),
            )
        }
        _ => return tracing::debug!(%peer, "pair link: closed before sending anything"),
    }
    if peek_channel(&stream, HANDSHAKE_LIMIT).await == Channel::Heartbeat {
        return match stream.into_std() {
            Ok(stream) => {
                let _ = shared.heartbeats.send(Inbound { stream, peer });
            }
            Err(error) => {
                tracing::warn!(%peer, "pair link: handing over a heartbeat connection: {error}")
            }
        };
    }
    let Some(acceptor) = active.server else {
        return tracing::info!(%peer, "pair link: connection closed: this host has no pair certificate yet (no invite, not paired)");
    };
    let mut tls = match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            return match refusal_of(&error, true) {
                Some(reason) => shared.refuse(peer, reason, format!("TLS handshake: {error}")),
                None => tracing::info!(%peer, "pair link: the peer ended the handshake: {error}"),
            }
        }
        Err(_) => return shared.refuse(peer, Refusal::Tls, "TLS handshake did not finish in time"),
    };
    let certificate = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| leaf.as_ref().to_vec());
    match certificate {
        Some(leaf) => {
            let Some(partner) = active.partner else {
                return shared.refuse(
                    peer,
                    Refusal::NotPartner,
                    "a pair certificate, but this host has no partner",
                );
            };
            if !names_host(&leaf, &partner.name).unwrap_or(false) {
                return shared.refuse(
                    peer,
                    Refusal::NotPartner,
                    format!("its certificate does not name the partner {}", partner.name),
                );
            }
            let (start, generation) = oneshot::channel();
            let task = tokio::spawn({
                let shared = shared.clone();
                async move {
                    let Ok(generation) = generation.await else {
                        return;
                    };
                    let error = match run_link(&shared, &mut tls, &partner.name, generation).await {
                        Ok(()) => "the partner closed the link".to_string(),
                        Err(error) => error.to_string(),
                    };
                    let error = format!("link from {peer}: {error}");
                    tracing::warn!(partner = partner.name, "pair {error}");
                    shared.report_link(Some(generation), LinkState::Down, Some(error));
                }
            });
            let _ = start.send(shared.take_over(task.abort_handle()));
        }
        None => join_request(&shared, &mut tls, peer).await,
    }
}

/// A connection without a certificate: one join request, answered by the core.
async fn join_request(
    shared: &Shared,
    tls: &mut tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
) {
    let request = match tokio::time::timeout(HANDSHAKE_LIMIT, wire::read(tls)).await {
        Ok(Ok(Message::Join(request))) => request,
        Ok(Ok(other)) => {
            return shared.refuse(
                peer,
                Refusal::Unauthenticated,
                format!("{} without a pair certificate", other.kind()),
            )
        }
        Ok(Err(FrameError::Closed)) => {
            return tracing::debug!(%peer, "pair link: closed without a message")
        }
        Ok(Err(error @ (FrameError::Malformed(_) | FrameError::TooLarge(_)))) => {
            return shared.refuse(peer, Refusal::Malformed, error.to_string())
        }
        Ok(Err(error)) => return tracing::info!(%peer, "pair link: {error}"),
        Err(_) => return tracing::info!(%peer, "pair link: no join within {HANDSHAKE_LIMIT:?}"),
    };
    let (reply, answer) = oneshot::channel();
    (shared.report)(PairEvent::JoinRequested {
        peer,
        request,
        reply,
    });
    let Ok(Ok(answer)) = tokio::time::timeout(JOIN_LIMIT, answer).await else {
        return tracing::warn!(%peer, "pair link: the join was not decided in time");
    };
    if let Err(error) = wire::write(tls, &answer).await {
        tracing::warn!(%peer, "pair link: answering the join: {error}");
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(tls).await;
}

/// Dials the partner until the plan changes: connect, link, and after each end a backoff delay
/// (from the start again once a link was up).
async fn dial_loop(shared: Arc<Shared>, active: Active) {
    let (Some(connector), Some(partner)) = (active.client, active.partner) else {
        return;
    };
    let mut backoff = Backoff::default();
    loop {
        let error = match dial(&connector, &partner).await {
            Ok(mut tls) => {
                let generation = {
                    let mut current = shared.current.lock().expect("link lock");
                    current.generation += 1;
                    current.generation
                };
                backoff.reset();
                match run_link(&shared, &mut tls, &partner.name, generation).await {
                    Ok(()) => "the partner closed the link".to_string(),
                    Err(error) => error.to_string(),
                }
            }
            Err(DialError::Tls(error)) => {
                if let Some(reason) = refusal_of(&error, false) {
                    shared.refuse(partner.address, reason, format!("TLS handshake: {error}"));
                }
                format!("TLS handshake: {error}")
            }
            Err(error) => error.to_string(),
        };
        let delay = backoff.next_delay(jitter());
        let error = format!("link to {} at {}: {error}", partner.name, partner.address);
        tracing::info!("pair {error}; again in {delay:?}");
        shared.report_link(None, LinkState::Down, Some(error));
        tokio::time::sleep(delay).await;
    }
}

#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("no connection within {CONNECT_LIMIT:?}")]
    Timeout,
}

async fn dial(
    connector: &TlsConnector,
    partner: &PartnerAddress,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, DialError> {
    let stream = tokio::time::timeout(CONNECT_LIMIT, TcpStream::connect(partner.address))
        .await
        .map_err(|_| DialError::Timeout)?
        .map_err(DialError::Connect)?;
    let _ = stream.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(partner.name.clone())
        .map_err(|error| DialError::Tls(std::io::Error::other(error)))?;
    tokio::time::timeout(HANDSHAKE_LIMIT, connector.connect(name, stream))
        .await
        .map_err(|_| DialError::Timeout)?
        .map_err(DialError::Tls)
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("no Hello within {HANDSHAKE_LIMIT:?}")]
    NoHello,
    #[error("the peer said it is {0}, not the partner")]
    NotPartner(String),
    #[error("{0} where a Hello was due")]
    Unexpected(&'static str),
    #[error("silent for {IDLE_LIMIT:?}")]
    Silent,
}

/// The link on an authenticated connection: `Hello` both ways, then keepalives both ways until
/// a read or write fails or the peer falls silent.
async fn run_link<S>(
    shared: &Shared,
    stream: &mut S,
    partner: &str,
    generation: u64,
) -> Result<(), LinkError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let hello = Message::Hello {
        host: shared.host.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    wire::write(stream, &hello).await?;
    match tokio::time::timeout(HANDSHAKE_LIMIT, wire::read(stream)).await {
        Ok(Ok(Message::Hello { host, version })) if host == partner => {
            tracing::info!(partner, version, "pair link up");
        }
        Ok(Ok(Message::Hello { host, .. })) => return Err(LinkError::NotPartner(host)),
        Ok(Ok(other)) => return Err(LinkError::Unexpected(other.kind())),
        Ok(Err(error)) => return Err(error.into()),
        Err(_) => return Err(LinkError::NoHello),
    }
    shared.report_link(Some(generation), LinkState::Up, None);
    let (mut reader, mut writer) = tokio::io::split(stream);
    let receive = async {
        loop {
            match tokio::time::timeout(IDLE_LIMIT, wire::read(&mut reader)).await {
                Ok(Ok(Message::Keepalive | Message::Hello { .. })) => {}
                Ok(Ok(Message::Witness(record))) => {
                    (shared.report)(PairEvent::PartnerWitness(record))
                }
                Ok(Ok(Message::Stack(offer))) => (shared.report)(PairEvent::PartnerStack(offer)),
                Ok(Ok(Message::StackVerdict(verdict))) => {
                    (shared.report)(PairEvent::PartnerStackVerdict(verdict))
                }
                Ok(Ok(other)) => return Err(LinkError::Unexpected(other.kind())),
                Ok(Err(FrameError::Closed)) => return Ok(()),
                Ok(Err(error)) => return Err(error.into()),
                Err(_) => return Err(LinkError::Silent),
            }
        }
    };
    let send = async {
        let mut witness = shared.witness.subscribe();
        let mut stack = shared.stack.subscribe();
        let mut stack_verdict = shared.stack_verdict.subscribe();
        // Each is sent once on this link, then whenever it changes.
        witness.mark_changed();
        stack.mark_changed();
        stack_verdict.mark_changed();
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        loop {
            let message = tokio::select! {
                _ = keepalive.tick() => Some(Message::Keepalive),
                Ok(()) = witness.changed() => {
                    witness.borrow_and_update().clone().map(Message::Witness)
                }
                Ok(()) = stack.changed() => stack.borrow_and_update().clone().map(Message::Stack),
                Ok(()) = stack_verdict.changed() => {
                    stack_verdict.borrow_and_update().clone().map(Message::StackVerdict)
                }
            };
            if let Some(message) = message {
                wire::write(&mut writer, &message).await?;
            }
        }
    };
    tokio::select! {
        result = receive => result,
        result = send => result,
    }
}

/// The joining side: TLS to the token's address trusting only the token's CA, the request,
/// the answer.
async fn join(token: &Token, request: &JoinRequest) -> Result<JoinAccepted, JoinError> {
    let address = token.address;
    let connector = TlsConnector::from(join_client_config(token.ca)?);
    let exchange = async {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|source| JoinError::Connect { address, source })?;
        let name =
            rustls::pki_types::ServerName::try_from(token.host.clone()).map_err(|error| {
                JoinError::Tls {
                    address,
                    source: std::io::Error::other(error),
                }
            })?;
        let mut tls = connector.connect(name, stream).await.map_err(|source| {
            match refusal_of(&source, false) {
                Some(Refusal::FingerprintMismatch) => JoinError::ForeignCa {
                    address,
                    ca: token.ca,
                },
                _ => JoinError::Tls { address, source },
            }
        })?;
        let protocol = |what: String| JoinError::Protocol { address, what };
        wire::write(&mut tls, &Message::Join(request.clone()))
            .await
            .map_err(|error| protocol(error.to_string()))?;
        match wire::read(&mut tls).await {
            Ok(Message::Accepted(accepted)) => Ok(accepted),
            Ok(Message::Refused { reason }) => Err(JoinError::Refused { address, reason }),
            Ok(other) => Err(protocol(other.kind().to_string())),
            Err(error) => Err(protocol(error.to_string())),
        }
    };
    tokio::time::timeout(JOIN_LIMIT, exchange)
        .await
        .map_err(|_| JoinError::Timeout { address })?
}
