//! The inviting host's record of its invites: the open one (its secret's hash and when it
//! expires) and the used ones (with the digest of the join that used each), and the decision on
//! a join: replayed, used, expired, wrong, or accepted. Pure: the core persists it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::refusal::Refusal;

/// How long a printed token can be used.
pub const INVITE_TTL_S: u64 = 3600;
/// Used invites kept to tell a reused token from a wrong one.
const USED_KEPT: usize = 32;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invites {
    pub open: Option<OpenInvite>,
    #[serde(default)]
    pub used: Vec<UsedInvite>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenInvite {
    /// SHA-256 of the secret, hex: the secret itself is only in the printed token.
    pub secret_sha256: String,
    pub expires_unix: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsedInvite {
    pub secret_sha256: String,
    /// The digest of the join message that used it.
    pub join_sha256: String,
    pub by: String,
}

impl Invites {
    /// Opens an invite for `secret`, replacing any open one.
    pub fn open(&mut self, secret: &[u8], now_unix: u64) {
        self.open = Some(OpenInvite {
            secret_sha256: hex(&Sha256::digest(secret)),
            expires_unix: now_unix + INVITE_TTL_S,
        });
    }

    /// Whether a join with `secret` (as sent) and message digest `join` may be accepted now.
    pub fn check(&self, secret: &str, join: &[u8; 32], now_unix: u64) -> Result<(), Refusal> {
        let join = hex(join);
        if self.used.iter().any(|used| used.join_sha256 == join) {
            return Err(Refusal::Replay);
        }
        let presented = hex(&Sha256::digest(unhex(secret).unwrap_or_default()));
        let matches = |hash: &str| bool::from(hash.as_bytes().ct_eq(presented.as_bytes()));
        if self.used.iter().any(|used| matches(&used.secret_sha256)) {
            return Err(Refusal::TokenUsed);
        }
        match &self.open {
            Some(open) if matches(&open.secret_sha256) => {
                if now_unix > open.expires_unix {
                    Err(Refusal::TokenExpired)
                } else {
                    Ok(())
                }
            }
            _ => Err(Refusal::WrongSecret),
        }
    }

    /// The open invite was used by `by` with the join `join`: it can never be used again.
    pub fn consume(&mut self, join: &[u8; 32], by: &str) {
        if let Some(open) = self.open.take() {
            self.used.push(UsedInvite {
                secret_sha256: open.secret_sha256,
                join_sha256: hex(join),
                by: by.to_string(),
            });
        }
        let excess = self.used.len().saturating_sub(USED_KEPT);
        self.used.drain(..excess);
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_000_000;

    #[test]
    fn an_invite_is_used_once_and_then_told_apart_from_a_replay_and_a_wrong_secret() {
        let mut invites = Invites::default();
        let secret = [5u8; 32];
        invites.open(&secret, NOW);
        let (join, again) = ([1u8; 32], [2u8; 32]);
        assert_eq!(invites.check(&hex(&secret), &join, NOW + 10), Ok(()));
        assert_eq!(
            invites.check(&hex(&[6u8; 32]), &join, NOW),
            Err(Refusal::WrongSecret)
        );
        invites.consume(&join, "dh2");
        assert_eq!(invites.open, None);
        assert_eq!(
            invites.check(&hex(&secret), &join, NOW),
            Err(Refusal::Replay)
        );
        assert_eq!(
            invites.check(&hex(&secret), &again, NOW),
            Err(Refusal::TokenUsed)
        );
        assert_eq!(invites.check("zz", &again, NOW), Err(Refusal::WrongSecret));
    }

    #[test]
    fn an_invite_expires_after_an_hour() {
        let mut invites = Invites::default();
        invites.open(&[5u8; 32], NOW);
        let secret = hex(&[5u8; 32]);
        assert_eq!(invites.check(&secret, &[0; 32], NOW + INVITE_TTL_S), Ok(()));
        assert_eq!(
            invites.check(&secret, &[0; 32], NOW + INVITE_TTL_S + 1),
            Err(Refusal::TokenExpired)
        );
    }

    #[test]
    fn a_new_invite_replaces_the_open_one() {
        let mut invites = Invites::default();
        invites.open(&[5u8; 32], NOW);
        invites.open(&[6u8; 32], NOW);
        assert_eq!(
            invites.check(&hex(&[5u8; 32]), &[0; 32], NOW),
            Err(Refusal::WrongSecret)
        );
        assert_eq!(invites.check(&hex(&[6u8; 32]), &[0; 32], NOW), Ok(()));
    }

    proptest! {
        #[test]
        fn hex_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(unhex(&hex(&bytes)), Some(bytes));
        }

        #[test]
        fn any_secret_text_is_checked_without_panic(text in "\\PC{0,80}") {
            let mut invites = Invites::default();
            invites.open(&[5u8; 32], NOW);
            let _ = invites.check(&text, &[0; 32], NOW);
        }
    }
}
