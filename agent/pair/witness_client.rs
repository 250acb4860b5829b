//! A host's side of a witness: one request on a connection of its own (enrollment, without a
//! certificate; a compare-and-set or a lease query, with this host's pair certificate). The
//! heartbeats keep a connection of their own ([`crate::pair::heartbeat`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::ca::Fingerprint;
use super::refusal::Refusal;
use super::tls::{refusal_of, witness_client_config, Identity, TlsError};
use super::wire::{self, Message};

/// The name in a witness's certificate (hosts check its fingerprint, not its name).
pub const WITNESS_NAME: &str = "magestack-witness";

/// How long a request to the witness may take in all.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum WitnessClientError {
    #[error("cannot connect to the witness at {address}: {source}")]
    Connect {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("the server at {address} is not the witness the token names: its certificate is not {certificate:?}")]
    NotTheWitness {
        address: SocketAddr,
        certificate: Fingerprint,
    },
    #[error("TLS with the witness at {address}: {source}")]
    Tls {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("the witness at {address}: {what}")]
    Protocol { address: SocketAddr, what: String },
    #[error("the witness at {address} refused: {reason}")]
    Refused { address: SocketAddr, reason: String },
    #[error("the witness at {address} did not answer within {REQUEST_LIMIT:?}")]
    Timeout { address: SocketAddr },
    #[error("this host's TLS setup: {0}")]
    Setup(#[from] TlsError),
}

impl WitnessClientError {
    /// What this host refused of the server, if anything (a certificate other than the token's).
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            WitnessClientError::NotTheWitness { .. } => Some(Refusal::FingerprintMismatch),
            _ => None,
        }
    }
}

/// Sends `message` to the witness at `address` (pinned to `certificate`), as `identity` (none:
/// without a certificate, for enrollment), and returns its answer; a refusal is an error.
pub async fn request(
    address: SocketAddr,
    certificate: Fingerprint,
    identity: Option<&Identity>,
    message: &Message,
) -> Result<Message, WitnessClientError> {
    let config = witness_client_config(certificate, identity)?;
    tokio::time::timeout(
        REQUEST_LIMIT,
        exchange(address, certificate, config, message),
    )
    .await
    .map_err(|_| WitnessClientError::Timeout { address })?
}

async fn exchange(
    address: SocketAddr,
    certificate: Fingerprint,
    config: Arc<ClientConfig>,
    message: &Message,
) -> Result<Message, WitnessClientError> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|source| WitnessClientError::Connect { address, source })?;
    let name = rustls::pki_types::ServerName::try_from(WITNESS_NAME).expect("a DNS name");
    let mut tls = TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|source| match refusal_of(&source, false) {
            Some(Refusal::FingerprintMismatch) => WitnessClientError::NotTheWitness {
                address,
                certificate,
            },
            _ => WitnessClientError::Tls { address, source },
        })?;
    let protocol = |what: String| WitnessClientError::Protocol { address, what };
    wire::write(&mut tls, message)
        .await
        .map_err(|error| protocol(error.to_string()))?;
    match wire::read(&mut tls).await {
        Ok(Message::Refused { reason }) => Err(WitnessClientError::Refused { address, reason }),
        Ok(answer) => Ok(answer),
        Err(error) => Err(protocol(format!("no answer: {error}"))),
    }
}

/// [`request`] from a thread with no runtime (tests, tools).
pub fn request_blocking(
    address: SocketAddr,
    certificate: Fingerprint,
    identity: Option<&Identity>,
    message: &Message,
) -> Result<Message, WitnessClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| WitnessClientError::Connect { address, source })?;
    runtime.block_on(request(address, certificate, identity, message))
}
