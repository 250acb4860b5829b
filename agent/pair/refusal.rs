//! Why a peer was turned away. Each reason is a metrics label
//! (`magestack_pair_refused_total{reason}`) and what a refused joining host is told.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// The first bytes were not a TLS handshake: plain TCP, HTTP, JSON, random bytes.
    NotTls,
    /// The TLS handshake failed for another reason than the certificate (bytes that start like
    /// TLS and are not, a protocol or version mismatch, an alert).
    Tls,
    /// The peer's certificate was not issued by the pair CA.
    UnknownCa,
    /// The peer's certificate is from the pair CA but names another host than the partner.
    NotPartner,
    /// A link message on a connection without a certificate.
    Unauthenticated,
    /// Bytes inside TLS that are not a pair message.
    Malformed,
    /// A join with a secret of no invite.
    WrongSecret,
    /// A join with the secret of an invite already used.
    TokenUsed,
    /// A join with the secret of an invite whose time ran out.
    TokenExpired,
    /// A join message identical to one already accepted, sent again.
    Replay,
    /// Joining: the inviting host's CA is not the one the token names.
    FingerprintMismatch,
}

impl Refusal {
    pub const ALL: [Refusal; 11] = [
        Refusal::NotTls,
        Refusal::Tls,
        Refusal::UnknownCa,
        Refusal::NotPartner,
        Refusal::Unauthenticated,
        Refusal::Malformed,
        Refusal::WrongSecret,
        Refusal::TokenUsed,
        Refusal::TokenExpired,
        Refusal::Replay,
        Refusal::FingerprintMismatch,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::NotTls => "not_tls",
            Refusal::Tls => "tls",
            Refusal::UnknownCa => "unknown_ca",
            Refusal::NotPartner => "not_partner",
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::Malformed => "malformed",
            Refusal::WrongSecret => "wrong_secret",
            Refusal::TokenUsed => "token_used",
            Refusal::TokenExpired => "token_expired",
            Refusal::Replay => "replay",
            Refusal::FingerprintMismatch => "fingerprint_mismatch",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_metric_label_values() {
        let labels: std::collections::BTreeSet<&str> =
            Refusal::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), Refusal::ALL.len());
        assert!(labels
            .iter()
            .all(|l| l.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
    }
}
