//! The pair's certificate authority: made by `pair invite` on the inviting host, it issues both
//! hosts' certificates (the inviting host's at invite, the joining host's from its signing
//! request at join). A certificate names its host as its only DNS name, which is how each side
//! knows the other is the partner and not merely someone the CA knows.

use std::fmt;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use sha2::{Digest, Sha256};

/// How long the CA's certificate is valid.
const CA_VALIDITY: time::Duration = time::Duration::days(20 * 365);
/// How long a host's certificate is valid (shown by `pair status`).
pub const HOST_VALIDITY: time::Duration = time::Duration::days(5 * 365);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("host name `{0}` cannot name a certificate: a pair needs host names that are DNS names (letters, digits, '-', '.')")]
    HostName(String),
    #[error("the certificate signing request is not valid: {0}")]
    Request(rcgen::Error),
    #[error("not a PEM certificate")]
    Pem,
    #[error("the certificate does not decode: {0}")]
    Certificate(String),
}

/// SHA-256 of a certificate's DER.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{self}")
    }
}

/// The CA: its certificate and its key (only the inviting host has the key).
pub struct PairCa {
    /// What issues: the CA's parameters, signed by its own key, as rcgen needs them.
    issuer: rcgen::Certificate,
    key: KeyPair,
    /// The certificate as made at invite and stored (re-signing above yields other bytes).
    pem: String,
}

impl PairCa {
    /// A new CA, named after the host that makes it.
    pub fn generate(host: &str) -> Result<PairCa, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("magestack pair CA of {host}"));
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + CA_VALIDITY;
        let issuer = params.self_signed(&key)?;
        let pem = issuer.pem();
        Ok(PairCa { issuer, key, pem })
    }

    /// The CA as stored: its certificate and key, PEM.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<PairCa, CaError> {
        let key = KeyPair::from_pem(key_pem)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)?;
        let issuer = params.self_signed(&key)?;
        Ok(PairCa {
            issuer,
            key,
            pem: cert_pem.to_string(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn fingerprint(&self) -> Result<Fingerprint, CaError> {
        Ok(Fingerprint::of(&der_of(&self.pem)?))
    }

    /// A certificate for `host`'s key, for TLS as server and client, naming `host`.
    pub fn issue(&self, host: &str, key: &impl PublicKeyData) -> Result<String, CaError> {
        Ok(host_params(host)?
            .signed_by(key, &self.issuer, &self.key)?
            .pem())
    }

    /// A certificate for the key of a signing request (its signature proves the requester
    /// holds that key); whatever names the request asks for, the certificate names `host`.
    pub fn issue_for_request(&self, host: &str, request_der: &[u8]) -> Result<String, CaError> {
        let request = CertificateSigningRequestParams::from_der(
            &CertificateSigningRequestDer::from(request_der.to_vec()),
        )
        .map_err(CaError::Request)?;
        self.issue(host, &request.public_key)
    }
}

/// A host's new key pair and the signing request the joining host sends.
pub fn key_and_request(host: &str) -> Result<(KeyPair, Vec<u8>), CaError> {
    let key = KeyPair::generate()?;
    let request = host_params(host)?.serialize_request(&key)?;
    Ok((key, request.der().to_vec()))
}

/// The one DER certificate in `pem`.
pub fn der_of(pem: &str) -> Result<CertificateDer<'static>, CaError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| CaError::Pem)
}

/// When a certificate expires, in seconds since the epoch.
pub fn expiry(der: &[u8]) -> Result<i64, CaError> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|error| CaError::Certificate(error.to_string()))?;
    Ok(certificate.validity().not_after.timestamp())
}

/// Whether the certificate names `host` among its DNS names.
pub fn names_host(der: &[u8], host: &str) -> Result<bool, CaError> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|error| CaError::Certificate(error.to_string()))?;
    let names = certificate
        .subject_alternative_name()
        .map_err(|error| CaError::Certificate(error.to_string()))?;
    Ok(names.is_some_and(|names| {
        names.value.general_names.iter().any(|name| {
            matches!(name, x509_parser::extensions::GeneralName::DNSName(dns) if dns.eq_ignore_ascii_case(host))
        })
    }))
}

/// The first DNS name a certificate names: the host a pair certificate is for.
pub fn host_of(der: &[u8]) -> Result<Option<String>, CaError> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|error| CaError::Certificate(error.to_string()))?;
    let names = certificate
        .subject_alternative_name()
        .map_err(|error| CaError::Certificate(error.to_string()))?;
    Ok(names.and_then(|names| {
        names
            .value
            .general_names
            .iter()
            .find_map(|name| match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
                _ => None,
            })
    }))
}

/// Checks, as rustls (webpki) does in a handshake, that `cert_pem` was issued by the CA of
/// `ca_pem`, is valid now, and names `host`.
pub fn chains_to(ca_pem: &str, cert_pem: &str, host: &str) -> Result<(), CaError> {
    use rustls::client::danger::ServerCertVerifier;
    let invalid = |error: String| CaError::Certificate(error);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(der_of(ca_pem)?)
        .map_err(|error| invalid(error.to_string()))?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        std::sync::Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|error| invalid(error.to_string()))?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|_| CaError::HostName(host.to_string()))?;
    verifier
        .verify_server_cert(
            &der_of(cert_pem)?,
            &[],
            &name,
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .map_err(|error| invalid(error.to_string()))?;
    Ok(())
}

/// Whether the certificate is for `key`.
pub fn certifies(cert_pem: &str, key: &KeyPair) -> Result<bool, CaError> {
    let der = der_of(cert_pem)?;
    let (_, certificate) = x509_parser::parse_x509_certificate(&der)
        .map_err(|error| CaError::Certificate(error.to_string()))?;
    Ok(certificate.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
}

/// Whether `host` can be a certificate's DNS name (and so a TLS server name).
pub fn valid_host_name(host: &str) -> bool {
    rustls::pki_types::DnsName::try_from(host).is_ok() && host.parse::<std::net::IpAddr>().is_err()
}

fn host_params(host: &str) -> Result<CertificateParams, CaError> {
    if !valid_host_name(host) {
        return Err(CaError::HostName(host.to_string()));
    }
    let mut params = CertificateParams::new(vec![host.to_string()])
        .map_err(|_| CaError::HostName(host.to_string()))?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, host);
    params.distinguished_name = name;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + HOST_VALIDITY;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifies(ca: &PairCa, cert_pem: &str, host: &str) -> bool {
        chains_to(ca.cert_pem(), cert_pem, host).is_ok()
    }

    #[test]
    fn a_certificate_chains_to_its_ca_and_not_to_another() {
        let ca = PairCa::generate("dh1").unwrap();
        let other = PairCa::generate("dh1").unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = ca.issue("dh1", &key).unwrap();
        assert!(verifies(&ca, &cert, "dh1"));
        assert!(!verifies(&other, &cert, "dh1"), "a foreign CA accepted it");
        assert!(!verifies(&ca, &cert, "dh2"), "valid for another host");
        assert!(names_host(&der_of(&cert).unwrap(), "dh1").unwrap());
        assert!(!names_host(&der_of(&cert).unwrap(), "dh2").unwrap());
        assert_eq!(
            host_of(&der_of(&cert).unwrap()).unwrap().as_deref(),
            Some("dh1")
        );
        assert_ne!(ca.fingerprint().unwrap(), other.fingerprint().unwrap());
    }

    #[test]
    fn a_request_gets_a_certificate_naming_the_host_the_ca_chose() {
        let ca = PairCa::generate("dh1").unwrap();
        let (key, request) = key_and_request("dh2").unwrap();
        let cert = ca.issue_for_request("dh2", &request).unwrap();
        assert!(verifies(&ca, &cert, "dh2"));
        // The certificate is for the requester's key.
        assert!(certifies(&cert, &key).unwrap());
        assert!(!certifies(&cert, &KeyPair::generate().unwrap()).unwrap());
        let mut forged = request.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(matches!(
            ca.issue_for_request("dh2", &forged),
            Err(CaError::Request(_))
        ));
    }

    #[test]
    fn a_stored_ca_issues_certificates_that_chain_to_the_stored_certificate() {
        let made = PairCa::generate("dh1").unwrap();
        let loaded = PairCa::load(made.cert_pem(), &made.key_pem()).unwrap();
        assert_eq!(loaded.fingerprint().unwrap(), made.fingerprint().unwrap());
        let key = KeyPair::generate().unwrap();
        assert!(verifies(&made, &loaded.issue("dh2", &key).unwrap(), "dh2"));
    }

    #[test]
    fn host_certificates_expire_in_five_years() {
        let ca = PairCa::generate("dh1").unwrap();
        let cert = ca.issue("dh1", &KeyPair::generate().unwrap()).unwrap();
        let expires = expiry(&der_of(&cert).unwrap()).unwrap();
        let expected = (time::OffsetDateTime::now_utc() + HOST_VALIDITY).unix_timestamp();
        assert!((expires - expected).abs() < 60, "{expires} vs {expected}");
    }

    #[test]
    fn host_names_must_be_dns_names() {
        assert!(valid_host_name("dh1"));
        assert!(valid_host_name("dh1.example.net"));
        assert!(!valid_host_name("dh 1"));
        assert!(!valid_host_name("10.0.0.1"));
        assert!(matches!(
            key_and_request("under_score!"),
            Err(CaError::HostName(_))
        ));
    }
}
