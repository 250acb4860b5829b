//! The token `magestack-agent witness` prints at its first start: what a host of a pair needs to
//! reach the witness, to know it is the witness before it sends anything, and to prove the
//! witness's operator gave it the token.
//!
//! Wire form: base64url (no padding) of
//! `['W'][version = 1][certificate fingerprint: 32][secret: 32][address length: 1][address]`:
//! the witness has no CA, so the token pins its certificate. The leading `W` tells a witness
//! token from a pair token (which starts with its version, 1) given to the wrong command.

use std::net::SocketAddr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::ca::Fingerprint;

const KIND: u8 = b'W';
const VERSION: u8 = 1;
pub const SECRET_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessToken {
    /// The witness's `--listen`: where the hosts connect.
    pub address: SocketAddr,
    /// SHA-256 of the witness's certificate (DER).
    pub certificate: Fingerprint,
    pub secret: [u8; SECRET_LEN],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WitnessTokenError {
    #[error("the token is not base64url text (copy the whole line the witness printed)")]
    NotBase64,
    #[error("not a witness token (a pair token goes to `pair join`)")]
    NotWitness,
    #[error("the token is cut short (copy the whole line the witness printed)")]
    Truncated,
    #[error("witness token version {0} is not known to this agent (version 1)")]
    Version(u8),
    #[error("the token's address is not an address with a port")]
    Address,
    #[error("the token has {0} bytes past its end")]
    Trailing(usize),
}

impl WitnessToken {
    pub fn encode(&self) -> String {
        let address = self.address.to_string();
        let mut bytes = Vec::with_capacity(3 + 64 + address.len());
        bytes.extend_from_slice(&[KIND, VERSION]);
        bytes.extend_from_slice(&self.certificate.0);
        bytes.extend_from_slice(&self.secret);
        // A socket address is at most 47 characters.
        bytes.push(address.len() as u8);
        bytes.extend_from_slice(address.as_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Any text decodes to a token or is refused; nothing panics.
    pub fn decode(text: &str) -> Result<WitnessToken, WitnessTokenError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| WitnessTokenError::NotBase64)?;
        let (&kind, rest) = bytes.split_first().ok_or(WitnessTokenError::Truncated)?;
        if kind != KIND {
            return Err(WitnessTokenError::NotWitness);
        }
        let (&version, rest) = rest.split_first().ok_or(WitnessTokenError::Truncated)?;
        if version != VERSION {
            return Err(WitnessTokenError::Version(version));
        }
        let (certificate, rest) = split(rest, 32)?;
        let (secret, rest) = split(rest, SECRET_LEN)?;
        let (&length, rest) = rest.split_first().ok_or(WitnessTokenError::Truncated)?;
        let (address, rest) = split(rest, usize::from(length))?;
        if !rest.is_empty() {
            return Err(WitnessTokenError::Trailing(rest.len()));
        }
        let address = std::str::from_utf8(address)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or(WitnessTokenError::Address)?;
        Ok(WitnessToken {
            address,
            certificate: Fingerprint(certificate.try_into().expect("32 bytes")),
            secret: secret.try_into().expect("32 bytes"),
        })
    }
}

fn split(bytes: &[u8], count: usize) -> Result<(&[u8], &[u8]), WitnessTokenError> {
    if bytes.len() < count {
        return Err(WitnessTokenError::Truncated);
    }
    Ok(bytes.split_at(count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn token() -> WitnessToken {
        WitnessToken {
            address: "10.0.0.3:7947".parse().unwrap(),
            certificate: Fingerprint([3; 32]),
            secret: [4; 32],
        }
    }

    #[test]
    fn a_token_is_one_line_that_decodes_to_itself() {
        let text = token().encode();
        assert!(text.len() < 120, "{text}");
        assert_eq!(WitnessToken::decode(&format!("{text}\n")), Ok(token()));
    }

    #[test]
    fn a_pair_token_and_damaged_tokens_are_refused_with_what_is_wrong() {
        let pair = super::super::Token {
            host: "dh1".into(),
            address: "10.0.0.1:7946".parse().unwrap(),
            ca: Fingerprint([1; 32]),
            secret: [2; 32],
        };
        assert_eq!(
            WitnessToken::decode(&pair.encode()),
            Err(WitnessTokenError::NotWitness)
        );
        let text = token().encode();
        assert_eq!(
            WitnessToken::decode(&text[..30]),
            Err(WitnessTokenError::Truncated)
        );
        assert_eq!(WitnessToken::decode("*"), Err(WitnessTokenError::NotBase64));
        let mut bytes = URL_SAFE_NO_PAD.decode(&text).unwrap();
        bytes[1] = 9;
        assert_eq!(
            WitnessToken::decode(&URL_SAFE_NO_PAD.encode(&bytes)),
            Err(WitnessTokenError::Version(9))
        );
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = WitnessToken::decode(&URL_SAFE_NO_PAD.encode(&bytes));
        }

        #[test]
        fn every_token_round_trips(ip in any::<[u8; 4]>(), port in 1u16.., secret in any::<[u8; 32]>()) {
            let token = WitnessToken {
                address: SocketAddr::from((ip, port)),
                certificate: Fingerprint([7; 32]),
                secret,
            };
            prop_assert_eq!(WitnessToken::decode(&token.encode()), Ok(token));
        }
    }
}
