//! The core's side of the pair: the pairing (partner, invites, this host's certificate, the
//! witness), the link's state as the link thread reports it, and the refusals counted by reason.
//! `pair invite`, `pair join`, `pair witness` and the joins other hosts send are decided here;
//! the link and heartbeat threads only do the network part and report back. The leases are the
//! heartbeat thread's, read when status asks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use tokio::sync::{mpsc, oneshot};

use super::Event;
use crate::api::control::{PairStatus, Response, StackRefusal, StackStatus, WitnessStatus};
use crate::config::Config;
use crate::daemon::stack::{StackEvent, StackKeeper};
use crate::pair::ca::{self, Fingerprint, PairCa};
use crate::pair::heartbeat::{
    HeartbeatCommand, HeartbeatPlan, Heartbeats, PeerRole, Timing, WitnessAddress,
};
use crate::pair::invite::{hex, Invites};
use crate::pair::link::JoinError;
use crate::pair::store::{PairStore, Partner, StoreError};
use crate::pair::tls::Identity;
use crate::pair::wire::{
    JoinAccepted, JoinRequest, Message, StackOffer, StackVerdict, WitnessEnroll, WitnessRecord,
};
use crate::pair::witness_client::WitnessClientError;
use crate::pair::witness_token::{WitnessToken, WitnessTokenError};
use crate::pair::{Link, LinkCommand, LinkState, PairEvent, PartnerAddress, Plan, Refusal, Token};
use crate::runtime::unix_now;

#[derive(Debug, thiserror::Error)]
pub enum PairError {
    #[error("this host has no [pair] listen: set the address its partner connects to (this host's address on the pair link, like 10.0.0.1:7946) and restart the agent")]
    NoListen,
    #[error("already paired with {name} at {address}")]
    Paired { name: String, address: SocketAddr },
    #[error("{0} running: pair join needs a host with no nodes running (stop them first)")]
    NodesRunning(String),
    #[error("a join is already under way")]
    Joining,
    #[error("the token names this host ({0}): run `pair join` on the other host")]
    OwnToken(String),
    #[error("{0}")]
    Token(#[from] crate::pair::token::TokenError),
    #[error("{0}")]
    Certificate(#[from] ca::CaError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{host} answered with {what}")]
    BadAnswer { host: String, what: String },
    #[error("{0}")]
    Join(#[from] JoinError),
    #[error("this host is not paired: add a witness to a pair (pair invite, pair join first)")]
    NotPaired,
    #[error("a witness is already being added")]
    AddingWitness,
    #[error("{0}")]
    WitnessToken(#[from] WitnessTokenError),
    #[error("{0}")]
    Witness(#[from] WitnessClientError),
    #[error("moving the nodes and roles into the stack: {0}")]
    Stack(String),
}

/// This host's own join while it is under way.
struct Joining {
    token: Token,
    key: rcgen::KeyPair,
    reply: oneshot::Sender<Response>,
}

/// A join this host refused: counted, or (a failure of its own) not.
enum JoinRefusal {
    Refused(Refusal, String),
    Failed(String),
}

pub(super) struct PairCore {
    host: String,
    listen: Option<SocketAddr>,
    store: PairStore,
    link: Option<Link>,
    partner: Option<Partner>,
    invites: Invites,
    identity: Option<Identity>,
    certificate_expires: Option<i64>,
    /// The link's state, since when, and its last error.
    link_state: (LinkState, u64, Option<String>),
    refused: BTreeMap<Refusal, u64>,
    joining: Option<Joining>,
    /// What could not be read of the pairing at start-up.
    problem: Option<String>,
    heartbeats: Option<Heartbeats>,
    witness: Option<WitnessRecord>,
    /// `pair witness` while its enrollment is under way.
    adding_witness: Option<oneshot::Sender<Response>>,
    /// The stack's versions: committed, applied and refused through the keeper.
    stack: Arc<StackKeeper>,
    stack_status: StackStatus,
}

impl PairCore {
    /// Reads the pairing and, with `[pair] listen`, starts the link thread.
    pub(super) fn start(
        config: &Config,
        events: &mpsc::UnboundedSender<Event>,
        stack: Arc<StackKeeper>,
    ) -> PairCore {
        let host = config.host.name.clone();
        let store = PairStore::new(&config.host.state_dir);
        let mut core = PairCore {
            host: host.clone(),
            listen: config.pair.listen,
            link: None,
            partner: None,
            invites: Invites::default(),
            identity: None,
            certificate_expires: None,
            link_state: (LinkState::Connecting, unix_now(), None),
            refused: BTreeMap::new(),
            joining: None,
            problem: None,
            heartbeats: None,
            witness: None,
            adding_witness: None,
            store,
            stack,
            stack_status: StackStatus::default(),
        };
        if let Err(error) = core.load() {
            tracing::error!("pair: {error}");
            core.problem = Some(error.to_string());
        }
        match (core.listen, &core.partner) {
            (Some(listen), _) => {
                let timing = Timing {
                    heartbeat: config.pair.heartbeat,
                    lease: config.pair.lease,
                };
                match spawn_threads(host, listen, timing, events) {
                    Ok((link, heartbeats)) => {
                        core.link = Some(link);
                        core.heartbeats = Some(heartbeats);
                    }
                    Err(error) => {
                        tracing::error!("pair: cannot start the link threads: {error}");
                        core.problem = Some(format!("cannot start the link threads: {error}"));
                    }
                }
                core.configure_link();
            }
            (None, Some(partner)) => {
                let problem = format!(
                    "paired with {} but [pair] listen is not set: no link",
                    partner.name
                );
                tracing::error!("pair: {problem}");
                core.problem = Some(problem);
            }
            (None, None) => {}
        }
        match core.stack.head() {
            Ok(head) => {
                if let Some(offer) = head {
                    core.stack_status.version = Some(offer.version.clone());
                    core.offer_stack(offer);
                }
            }
            Err(error) => tracing::error!("stack: reading the version in force: {error}"),
        }
        core
    }

    fn load(&mut self) -> Result<(), PairError> {
        self.partner = self.store.partner()?;
        self.witness = self.store.witness()?;
        self.invites = self.store.invites()?;
        self.set_identity(self.store.identity(&self.host)?)?;
        if let Some(partner) = &self.partner {
            tracing::info!(
                partner = partner.name,
                address = %partner.address,
                "paired"
            );
        }
        Ok(())
    }

    fn set_identity(&mut self, identity: Option<Identity>) -> Result<(), PairError> {
        self.certificate_expires = match &identity {
            Some(identity) => Some(ca::expiry(&ca::der_of(&identity.certificate)?)?),
            None => None,
        };
        self.identity = identity;
        Ok(())
    }

    /// Tells the link and the heartbeats what to run with now.
    fn configure_link(&self) {
        if let Some(link) = &self.link {
            link.send(LinkCommand::Configure(Plan {
                identity: self.identity.clone(),
                partner: self.partner_address(),
            }));
        }
        self.configure_witness();
    }

    /// Tells the heartbeats whom to beat for, and the link which witness to tell the partner
    /// of (without taking the link down).
    fn configure_witness(&self) {
        if let Some(heartbeats) = &self.heartbeats {
            heartbeats.send(HeartbeatCommand::Configure(HeartbeatPlan {
                identity: self.identity.clone(),
                partner: self.partner_address(),
                witness: self.witness.as_ref().and_then(WitnessAddress::of),
            }));
        }
        if let Some(link) = &self.link {
            link.send(LinkCommand::Witness(self.witness.clone()));
        }
    }

    fn partner_address(&self) -> Option<PartnerAddress> {
        self.partner.as_ref().map(|partner| PartnerAddress {
            name: partner.name.clone(),
            address: partner.address,
        })
    }

    /// What quorum is decided from: how long each peer still holds this host's lease, as the
    /// heartbeats tell; `None` on a standalone host.
    pub(super) fn quorum_view(&self) -> Option<crate::daemon::fencing::QuorumView> {
        self.partner.as_ref()?;
        let peers = self.heartbeats.as_ref().map(Heartbeats::peers);
        Some(crate::daemon::fencing::QuorumView {
            held_for: peers
                .into_iter()
                .flatten()
                .map(|peer| peer.held_for)
                .collect(),
        })
    }

    pub(super) fn status(&self) -> PairStatus {
        let (state, since, error) = &self.link_state;
        let peers = self
            .heartbeats
            .as_ref()
            .map(Heartbeats::peers)
            .unwrap_or_default();
        let paired = self.partner.is_some();
        PairStatus {
            partner: self.partner.as_ref().map(|p| p.name.clone()),
            address: self.partner.as_ref().map(|p| p.address.to_string()),
            listen: self.listen.map(|listen| listen.to_string()),
            link: paired.then(|| state.as_str().to_string()),
            link_since_unix: paired.then_some(*since),
            last_error: self.problem.clone().or(error.clone().filter(|_| paired)),
            certificate_expires_unix: self.certificate_expires,
            invite_expires_unix: self.invites.open.as_ref().map(|open| open.expires_unix),
            witness: self.witness.as_ref().map(|witness| {
                let view = peers.iter().find(|peer| peer.role == PeerRole::Witness);
                WitnessStatus {
                    address: witness.address.to_string(),
                    certificate: witness.fingerprint.clone(),
                    reachable: view.is_some_and(|view| view.reached),
                    added_unix: witness.added_unix,
                    last_error: view
                        .filter(|view| !view.reached)
                        .and_then(|view| view.last_error.clone()),
                }
            }),
            refused: self
                .refused
                .iter()
                .map(|(reason, count)| (reason.label().to_string(), *count))
                .collect(),
            leases: peers
                .iter()
                .map(|view| (view.role.as_str().to_string(), view.status()))
                .collect(),
            stack: self.stack_status.clone(),
        }
    }

    /// `pair witness TOKEN`: enrolled by the heartbeat thread; answered when it reports back.
    pub(super) fn add_witness(&mut self, token: &str, reply: oneshot::Sender<Response>) {
        match self.begin_witness(token) {
            Ok(()) => self.adding_witness = Some(reply),
            Err(error) => {
                let _ = reply.send(Response::Error {
                    message: format!("pair witness: {error}"),
                });
            }
        }
    }

    fn begin_witness(&mut self, token: &str) -> Result<(), PairError> {
        let (Some(identity), Some(_), Some(heartbeats)) =
            (&self.identity, &self.partner, &self.heartbeats)
        else {
            return Err(PairError::NotPaired);
        };
        if self.adding_witness.is_some() {
            return Err(PairError::AddingWitness);
        }
        let token = WitnessToken::decode(token)?;
        let request = WitnessEnroll {
            host: self.host.clone(),
            secret: hex(&token.secret),
            ca: identity.ca.clone(),
            certificate: identity.certificate.clone(),
        };
        tracing::info!(address = %token.address, "pair: adding the witness");
        heartbeats.send(HeartbeatCommand::Enroll(token, request));
        Ok(())
    }

    /// The witness's answer to this host's enrollment: recorded, told to the partner, beaten for.
    fn witness_enrolled(&mut self, token: WitnessToken, outcome: Result<(), WitnessClientError>) {
        let Some(reply) = self.adding_witness.take() else {
            return;
        };
        let record = WitnessRecord {
            address: token.address,
            fingerprint: token.certificate.to_string(),
            added_unix: unix_now(),
        };
        let added = outcome
            .map_err(PairError::from)
            .and_then(|()| Ok(self.store.save_witness(&record)?));
        let response = match added {
            Ok(()) => {
                tracing::info!(address = %record.address, "pair: witness added");
                self.witness = Some(record);
                self.configure_witness();
                Response::PairWitnessAdded {
                    address: token.address.to_string(),
                }
            }
            Err(error) => {
                if let PairError::Witness(refused) = &error {
                    if let Some(reason) = refused.refusal() {
                        self.refuse(token.address, reason, &error.to_string());
                    }
                }
                Response::Error {
                    message: format!("pair witness: {error}; nothing changed"),
                }
            }
        };
        let _ = reply.send(response);
    }

    /// The partner's witness: taken when this host has none or the partner's was added later.
    fn partner_witness(&mut self, record: WitnessRecord) {
        if !record.replaces(self.witness.as_ref()) || WitnessAddress::of(&record).is_none() {
            return;
        }
        match self.store.save_witness(&record) {
            Ok(()) => {
                tracing::info!(address = %record.address, "pair: the partner added the witness");
                self.witness = Some(record);
                self.configure_witness();
            }
            Err(error) => tracing::error!("pair: recording the partner's witness: {error}"),
        }
    }

    /// `pair invite`: the CA and this host's certificate (made once), a new one-time secret.
    /// With the token, what moved from agent.toml into the stack (the first invite of a
    /// standalone host moves its nodes and roles there and commits them as the first version).
    pub(super) fn invite(&mut self) -> Result<(String, Option<String>), PairError> {
        let listen = self.listen.ok_or(PairError::NoListen)?;
        if let Some(partner) = &self.partner {
            return Err(PairError::Paired {
                name: partner.name.clone(),
                address: partner.address,
            });
        }
        let moved = self
            .stack
            .move_into_stack(&self.host, true)
            .map_err(PairError::Stack)?
            .map(|moved| moved.to_string());
        let (pair_ca, new) = match self.store.ca()? {
            Some((cert, key)) if self.identity.is_some() => (PairCa::load(&cert, &key)?, None),
            _ => {
                let pair_ca = PairCa::generate(&self.host)?;
                let key = rcgen::KeyPair::generate().map_err(ca::CaError::from)?;
                let identity = Identity {
                    host: self.host.clone(),
                    ca: pair_ca.cert_pem().to_string(),
                    certificate: pair_ca.issue(&self.host, &key)?,
                    key: key.serialize_pem(),
                };
                (pair_ca, Some(identity))
            }
        };
        let mut secret = [0u8; crate::pair::token::SECRET_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| ca::CaError::Generate(rcgen::Error::RingUnspecified))?;
        let mut invites = self.invites.clone();
        invites.open(&secret, unix_now());
        let ca_key = pair_ca.key_pem();
        self.store.save_invite(
            new.as_ref().map(|identity| (ca_key.as_str(), identity)),
            &invites,
        )?;
        self.invites = invites;
        if let Some(identity) = new {
            self.set_identity(Some(identity))?;
            self.configure_link();
        }
        tracing::info!(%listen, "pair: invite opened for one join within the hour");
        let token = Token {
            host: self.host.clone(),
            address: listen,
            ca: pair_ca.fingerprint()?,
            secret,
        };
        Ok((token.encode(), moved))
    }

    /// `pair join TOKEN`: checked here, sent by the link; answered when it reports back.
    pub(super) fn join(
        &mut self,
        token: &str,
        running: &[String],
        reply: oneshot::Sender<Response>,
    ) {
        match self.begin_join(token, running) {
            Ok((token, key)) => self.joining = Some(Joining { token, key, reply }),
            Err(error) => {
                let _ = reply.send(Response::Error {
                    message: format!("pair join: {error}"),
                });
            }
        }
    }

    fn begin_join(
        &mut self,
        token: &str,
        running: &[String],
    ) -> Result<(Token, rcgen::KeyPair), PairError> {
        let listen = self.listen.ok_or(PairError::NoListen)?;
        if let Some(partner) = &self.partner {
            return Err(PairError::Paired {
                name: partner.name.clone(),
                address: partner.address,
            });
        }
        if !running.is_empty() {
            return Err(PairError::NodesRunning(running.join(", ")));
        }
        if self.joining.is_some() {
            return Err(PairError::Joining);
        }
        let token = Token::decode(token)?;
        if token.host == self.host {
            return Err(PairError::OwnToken(token.host));
        }
        let (key, request) = ca::key_and_request(&self.host)?;
        let request = JoinRequest {
            host: self.host.clone(),
            listen,
            secret: hex(&token.secret),
            request: STANDARD.encode(request),
        };
        tracing::info!(host = token.host, address = %token.address, "pair: joining");
        if let Some(link) = &self.link {
            link.send(LinkCommand::Join(token.clone(), request));
        }
        Ok((token, key))
    }

    pub(super) fn handle(&mut self, event: PairEvent) {
        match event {
            PairEvent::Link { state, error } => {
                if self.link_state.0 != state || error.is_some() {
                    let error = error.or_else(|| {
                        // A link that is down keeps the reason it went down.
                        (state != LinkState::Up)
                            .then(|| self.link_state.2.clone())
                            .flatten()
                    });
                    let since = if self.link_state.0 == state {
                        self.link_state.1
                    } else {
                        unix_now()
                    };
                    self.link_state = (state, since, error);
                }
            }
            PairEvent::Refused {
                peer,
                reason,
                detail,
            } => self.refuse(peer, reason, &detail),
            PairEvent::JoinRequested {
                peer,
                request,
                reply,
            } => {
                let answer = match self.accept_join(peer, &request) {
                    Ok(accepted) => Message::Accepted(accepted),
                    Err(JoinRefusal::Refused(reason, detail)) => {
                        self.refuse(peer, reason, &detail);
                        Message::Refused {
                            reason: reason.label().to_string(),
                        }
                    }
                    Err(JoinRefusal::Failed(error)) => {
                        tracing::error!(%peer, "pair: cannot accept the join: {error}");
                        Message::Refused {
                            reason: format!("error: {error}"),
                        }
                    }
                };
                let _ = reply.send(answer);
            }
            PairEvent::Joined(outcome) => self.joined(outcome),
            PairEvent::WitnessEnrolled { token, outcome } => self.witness_enrolled(token, outcome),
            PairEvent::PartnerWitness(record) => self.partner_witness(record),
            PairEvent::PartnerStack(offer) => self.partner_stack(offer),
            PairEvent::PartnerStackVerdict(verdict) => self.partner_stack_verdict(verdict),
        }
    }

    /// Tells the partner the stack version in force here, on this link and every later one.
    fn offer_stack(&self, offer: StackOffer) {
        if let Some(link) = &self.link {
            link.send(LinkCommand::Stack(offer));
        }
    }

    fn tell_verdict(&self, verdict: StackVerdict) {
        if let Some(link) = &self.link {
            link.send(LinkCommand::StackVerdict(verdict));
        }
    }

    /// The partner's version: checked and applied by the keeper when it is newer than the one
    /// in force here (an older one changes nothing: the partner takes this host's).
    fn partner_stack(&mut self, offer: StackOffer) {
        self.stack_status.partner_version = Some(offer.version.name.clone());
        let ours = self
            .stack_status
            .version
            .as_ref()
            .map(|version| &version.name);
        if crate::stack::offer(ours, &offer.version.name) == crate::stack::Offer::Newer {
            self.stack.take_partner_version(offer);
        }
    }

    fn partner_stack_verdict(&mut self, verdict: StackVerdict) {
        match verdict.refused {
            Some(reason) => {
                tracing::warn!(version = %verdict.version, "stack: the partner refused this host's version: {reason}");
                self.stack_status.refused_by_partner = Some(StackRefusal {
                    version: verdict.version,
                    reason,
                });
            }
            None => {
                let refused = self.stack_status.refused_by_partner.as_ref();
                if refused.is_some_and(|refused| refused.version <= verdict.version) {
                    self.stack_status.refused_by_partner = None;
                }
                self.stack_status.partner_version = Some(verdict.version);
            }
        }
    }

    pub(super) fn stack_event(&mut self, event: StackEvent) {
        match event {
            StackEvent::Committed(offer) => {
                self.stack_status.version = Some(offer.version.clone());
                self.offer_stack(offer);
            }
            StackEvent::Applied(offer) => {
                self.stack_status.version = Some(offer.version.clone());
                self.stack_status.refused_here = None;
                self.tell_verdict(StackVerdict {
                    version: offer.version.name.clone(),
                    refused: None,
                });
                self.offer_stack(offer);
            }
            StackEvent::Refused { version, reason } => {
                self.tell_verdict(StackVerdict {
                    version: version.clone(),
                    refused: Some(reason.clone()),
                });
                self.stack_status.refused_here = Some(StackRefusal { version, reason });
            }
        }
    }

    fn refuse(&mut self, peer: SocketAddr, reason: Refusal, detail: &str) {
        *self.refused.entry(reason).or_default() += 1;
        tracing::warn!(%peer, reason = reason.label(), "pair: refused {peer}: {reason}: {detail}");
    }

    /// Another host's join: the invite's secret, once; a certificate for its key.
    fn accept_join(
        &mut self,
        peer: SocketAddr,
        request: &JoinRequest,
    ) -> Result<JoinAccepted, JoinRefusal> {
        let digest = request.digest();
        let refused = |reason: Refusal, detail: String| JoinRefusal::Refused(reason, detail);
        self.invites
            .check(&request.secret, &digest, unix_now())
            .map_err(|reason| {
                let detail = match reason {
                    Refusal::Replay => "the same join message was accepted before",
                    Refusal::TokenUsed => "the token was used before",
                    Refusal::TokenExpired => "the token expired",
                    _ => "no open invite has this secret",
                };
                refused(reason, format!("join from {}: {detail}", request.host))
            })?;
        if !ca::valid_host_name(&request.host) || request.host == self.host {
            return Err(refused(
                Refusal::Malformed,
                format!("join from a host named `{}`", request.host),
            ));
        }
        let failed = |error: &dyn std::fmt::Display| JoinRefusal::Failed(error.to_string());
        let (Some(listen), Some((cert, key))) =
            (self.listen, self.store.ca().map_err(|e| failed(&e))?)
        else {
            return Err(JoinRefusal::Failed("this host's pair CA is missing".into()));
        };
        let pair_ca = PairCa::load(&cert, &key).map_err(|e| failed(&e))?;
        let certificate = STANDARD
            .decode(&request.request)
            .map_err(|e| e.to_string())
            .and_then(|der| {
                pair_ca
                    .issue_for_request(&request.host, &der)
                    .map_err(|e| e.to_string())
            })
            .map_err(|error| {
                refused(
                    Refusal::Malformed,
                    format!("join from {}: its signing request: {error}", request.host),
                )
            })?;
        let mut invites = self.invites.clone();
        invites.consume(&digest, &request.host);
        let partner = Partner {
            name: request.host.clone(),
            address: request.listen,
            paired_unix: unix_now(),
        };
        self.store
            .save_accepted(&invites, &partner)
            .map_err(|e| failed(&e))?;
        tracing::info!(%peer, partner = partner.name, address = %partner.address, "pair: paired");
        self.invites = invites;
        self.partner = Some(partner);
        self.configure_link();
        Ok(JoinAccepted {
            host: self.host.clone(),
            listen,
            ca: pair_ca.cert_pem().to_string(),
            certificate,
        })
    }

    /// The answer to this host's join: checked, stored, and the link started.
    fn joined(&mut self, outcome: Result<JoinAccepted, JoinError>) {
        let Some(joining) = self.joining.take() else {
            return;
        };
        let address = joining.token.address;
        let response = match self.finish_join(&joining, outcome) {
            Ok(partner) => {
                // The joining host runs no nodes: whatever agent.toml names moves into the
                // stack uncommitted, and the partner's version replaces it.
                let moved = match self.stack.move_into_stack(&self.host, false) {
                    Ok(moved) => {
                        moved.map(|moved| format!("{moved}; the partner's stack replaces it"))
                    }
                    Err(error) => {
                        tracing::error!("stack: {error}");
                        Some(format!("the nodes and roles stay in agent.toml: {error}"))
                    }
                };
                Response::PairJoined { partner, moved }
            }
            Err(error) => {
                let refusal = match &error {
                    PairError::Join(join) => join.refusal(),
                    _ => None,
                };
                if let Some(reason) = refusal {
                    self.refuse(address, reason, &error.to_string());
                }
                Response::Error {
                    message: format!("pair join: {error}; nothing changed"),
                }
            }
        };
        let _ = joining.reply.send(response);
    }

    fn finish_join(
        &mut self,
        joining: &Joining,
        outcome: Result<JoinAccepted, JoinError>,
    ) -> Result<String, PairError> {
        let accepted = outcome?;
        let token = &joining.token;
        let bad = |what: &str| PairError::BadAnswer {
            host: token.host.clone(),
            what: what.to_string(),
        };
        if Fingerprint::of(&ca::der_of(&accepted.ca)?) != token.ca {
            return Err(bad("a CA other than the token's"));
        }
        if accepted.host != token.host {
            return Err(bad(&format!("another host's name, {}", accepted.host)));
        }
        ca::chains_to(&accepted.ca, &accepted.certificate, &self.host)
            .map_err(|error| bad(&format!("a certificate that does not hold: {error}")))?;
        if !ca::certifies(&accepted.certificate, &joining.key)? {
            return Err(bad("a certificate for another key"));
        }
        let identity = Identity {
            host: self.host.clone(),
            ca: accepted.ca,
            certificate: accepted.certificate,
            key: joining.key.serialize_pem(),
        };
        let partner = Partner {
            name: accepted.host,
            address: accepted.listen,
            paired_unix: unix_now(),
        };
        self.store.save_joined(&identity, &partner)?;
        tracing::info!(partner = partner.name, address = %partner.address, "pair: paired");
        self.set_identity(Some(identity))?;
        let name = partner.name.clone();
        self.partner = Some(partner);
        self.problem = None;
        self.configure_link();
        Ok(name)
    }
}

/// The link and the heartbeats, each on a thread of its own; the link's listener hands heartbeat
/// connections to the heartbeats.
fn spawn_threads(
    host: String,
    listen: SocketAddr,
    timing: Timing,
    events: &mpsc::UnboundedSender<Event>,
) -> std::io::Result<(Link, Heartbeats)> {
    let report = |events: mpsc::UnboundedSender<Event>| {
        move |event| {
            let _ = events.send(Event::Pair(event));
        }
    };
    let heartbeats = Heartbeats::spawn(timing, report(events.clone()))?;
    let link = Link::spawn(host, listen, heartbeats.inbound(), report(events.clone()))?;
    Ok((link, heartbeats))
}
