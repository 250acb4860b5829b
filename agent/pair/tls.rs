//! The rustls configurations of the pair link (TLS 1.3 only, ring provider):
//!
//! - the server: this host's certificate (with the CA's, so a joining host can find the CA it
//!   was told the fingerprint of); client certificates verified against the pair CA and
//!   optional, because a joining host has none yet (such a connection may only join);
//! - the link client: this host's certificate, the partner's checked against the pair CA and
//!   for the partner's name;
//! - the join client: no certificate; the server's chain must contain a CA certificate with the
//!   token's fingerprint, which must have issued the server's certificate for the inviting
//!   host's name;
//! - heartbeats: the link's configurations with the heartbeat ALPN, the server requiring a
//!   client certificate;
//! - a witness: its certificate pinned by the fingerprint its token carries (it has no CA),
//!   with this host's pair certificate as client certificate once enrolled.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};

use super::ca::{der_of, Fingerprint};
use super::channel::HEARTBEAT_ALPN;
use super::refusal::Refusal;

/// What this host shows its peers: its name, the pair CA, its certificate and key (PEM).
#[derive(Clone)]
pub struct Identity {
    pub host: String,
    pub ca: String,
    pub certificate: String,
    pub key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the pair's certificates: {0}")]
    Certificate(#[from] super::ca::CaError),
    #[error("this host's pair key does not decode")]
    Key,
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Identity {
    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(der_of(&self.ca)?)?;
        Ok(Arc::new(roots))
    }

    /// This host's certificate followed by the CA's.
    fn chain(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        Ok(vec![der_of(&self.certificate)?, der_of(&self.ca)?])
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(self.key.as_bytes()).map_err(|_| TlsError::Key)
    }

    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let clients = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider())
            .allow_unauthenticated()
            .build()?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(clients)
            .with_single_cert(self.chain()?, self.key()?)?;
        Ok(Arc::new(config))
    }

    /// The heartbeat server: like the link's, but a client certificate is required.
    pub fn heartbeat_server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let clients =
            WebPkiClientVerifier::builder_with_provider(self.roots()?, provider()).build()?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(clients)
            .with_single_cert(self.chain()?, self.key()?)?;
        config.alpn_protocols = vec![HEARTBEAT_ALPN.to_vec()];
        Ok(Arc::new(config))
    }

    /// Heartbeats to the partner: the link's client with the heartbeat ALPN.
    pub fn heartbeat_client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let mut config = Arc::unwrap_or_clone(self.link_client_config()?);
        config.alpn_protocols = vec![HEARTBEAT_ALPN.to_vec()];
        Ok(Arc::new(config))
    }

    pub fn link_client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain()?, self.key()?)?;
        Ok(Arc::new(config))
    }
}

/// The joining host's configuration: trusts the CA with fingerprint `ca` only.
pub fn join_client_config(ca: Fingerprint) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Verifier::new(CaNamedByToken(ca)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A witness's client: only the certificate with fingerprint `witness` is accepted; with an
/// identity, this host's pair certificate is the client certificate (enrollment goes without).
pub fn witness_client_config(
    witness: Fingerprint,
    identity: Option<&Identity>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Verifier::new(PinnedCertificate(witness)));
    let config = match identity {
        Some(identity) => builder.with_client_auth_cert(identity.chain()?, identity.key()?)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The server's chain holds no CA certificate with the token's fingerprint.
#[derive(Debug, thiserror::Error)]
#[error("the server's certificate is not the one the token names ({0:?})")]
pub struct FingerprintMismatch(Fingerprint);

/// How a server's certificate is accepted. The handshake's signatures are then verified
/// against it the same way whatever the check ([`Verifier`]), so the server holds its key.
trait ServerCheck: std::fmt::Debug + Send + Sync {
    fn accept(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
        provider: &Arc<CryptoProvider>,
    ) -> Result<ServerCertVerified, rustls::Error>;
}

/// Finds the CA the token names among the certificates the server sent, then verifies the
/// server's certificate against it alone, as webpki does for any root.
#[derive(Debug)]
struct CaNamedByToken(Fingerprint);

impl ServerCheck for CaNamedByToken {
    fn accept(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
        provider: &Arc<CryptoProvider>,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|cert| Fingerprint::of(cert) == self.0)
        else {
            return Err(fingerprint_mismatch(self.0));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|error| rustls::Error::General(error.to_string()))?
            .verify_server_cert(end_entity, &[], server_name, &[], now)
    }
}

/// Accepts exactly one certificate, by its fingerprint.
#[derive(Debug)]
struct PinnedCertificate(Fingerprint);

impl ServerCheck for PinnedCertificate {
    fn accept(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _now: UnixTime,
        _provider: &Arc<CryptoProvider>,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Fingerprint::of(end_entity) == self.0 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(fingerprint_mismatch(self.0))
        }
    }
}

fn fingerprint_mismatch(expected: Fingerprint) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        FingerprintMismatch(expected),
    ))))
}

/// A server certificate verifier made of a [`ServerCheck`] and the provider's signature
/// verification.
#[derive(Debug)]
struct Verifier<C> {
    check: C,
    provider: Arc<CryptoProvider>,
}

impl<C: ServerCheck> Verifier<C> {
    fn new(check: C) -> Arc<Verifier<C>> {
        Arc::new(Verifier {
            check,
            provider: provider(),
        })
    }
}

impl<C: ServerCheck> ServerCertVerifier for Verifier<C> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check
            .accept(end_entity, intermediates, server_name, now, &self.provider)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What this host refused in a failed handshake, if it refused anything: a certificate it did
/// not accept, or (as the server) a handshake it could not complete. An alert from the peer is
/// the peer refusing us, not a refusal of ours.
pub fn refusal_of(error: &std::io::Error, server: bool) -> Option<Refusal> {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(other)))
            if other.0.downcast_ref::<FingerprintMismatch>().is_some() =>
        {
            Some(Refusal::FingerprintMismatch)
        }
        Some(rustls::Error::InvalidCertificate(_)) => Some(Refusal::UnknownCa),
        Some(rustls::Error::AlertReceived(_)) => None,
        Some(_) if server => Some(Refusal::Tls),
        None if server && error.kind() == std::io::ErrorKind::InvalidData => Some(Refusal::Tls),
        _ => None,
    }
}
