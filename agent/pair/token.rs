//! The one-time join token `pair invite` prints: what a joining host needs to reach the inviting
//! one, to know it is talking to that host before it sends anything, and to prove it was invited.
//!
//! Wire form: base64url (no padding) of
//! `[version = 1][CA fingerprint: 32][secret: 32][name length: 1][name][address length: 1][address]`,
//! the name being the inviting host's (the name in its certificate) and the address its
//! `[pair] listen` as text. About 110 characters; one line, no shell quoting needed.

use std::net::SocketAddr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::ca::Fingerprint;

const VERSION: u8 = 1;
/// Bytes of the one-time secret.
pub const SECRET_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The inviting host's name.
    pub host: String,
    /// Its `[pair] listen`: where the joining host connects.
    pub address: SocketAddr,
    /// SHA-256 of the pair CA's certificate (DER): the joining host accepts only a server
    /// certificate issued by a CA with this fingerprint.
    pub ca: Fingerprint,
    pub secret: [u8; SECRET_LEN],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not base64url text (copy the whole line `pair invite` printed)")]
    NotBase64,
    #[error("the token is cut short (copy the whole line `pair invite` printed)")]
    Truncated,
    #[error("token version {0} is not known to this agent (version 1)")]
    Version(u8),
    #[error("the token has {0} bytes past its end")]
    Trailing(usize),
    #[error("the token's host name is not UTF-8")]
    Name,
    #[error("the token's address is not an address with a port")]
    Address,
}

impl Token {
    pub fn encode(&self) -> String {
        let address = self.address.to_string();
        let mut bytes = Vec::with_capacity(3 + 64 + self.host.len() + address.len());
        bytes.push(VERSION);
        bytes.extend_from_slice(&self.ca.0);
        bytes.extend_from_slice(&self.secret);
        for text in [self.host.as_bytes(), address.as_bytes()] {
            // Host names (at most 253) and socket addresses (at most 47) fit a length byte.
            bytes.push(u8::try_from(text.len()).unwrap_or(u8::MAX));
            bytes.extend_from_slice(&text[..text.len().min(usize::from(u8::MAX))]);
        }
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Any text decodes to a token or is refused; nothing panics.
    pub fn decode(text: &str) -> Result<Token, TokenError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| TokenError::NotBase64)?;
        let mut reader = Reader(&bytes);
        let version = reader.take(1)?[0];
        if version != VERSION {
            return Err(TokenError::Version(version));
        }
        let ca = Fingerprint(reader.take(32)?.try_into().expect("32 bytes"));
        let secret = reader.take(SECRET_LEN)?.try_into().expect("32 bytes");
        let host = reader.text()?;
        let host = std::str::from_utf8(host).map_err(|_| TokenError::Name)?;
        let address = std::str::from_utf8(reader.text()?)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or(TokenError::Address)?;
        if !reader.0.is_empty() {
            return Err(TokenError::Trailing(reader.0.len()));
        }
        Ok(Token {
            host: host.to_string(),
            address,
            ca,
            secret,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], TokenError> {
        if self.0.len() < count {
            return Err(TokenError::Truncated);
        }
        let (taken, rest) = self.0.split_at(count);
        self.0 = rest;
        Ok(taken)
    }

    /// A length byte and that many bytes.
    fn text(&mut self) -> Result<&'a [u8], TokenError> {
        let length = self.take(1)?[0];
        self.take(usize::from(length))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn token() -> Token {
        Token {
            host: "dh1".into(),
            address: "10.0.0.1:7946".parse().unwrap(),
            ca: Fingerprint([7; 32]),
            secret: [9; 32],
        }
    }

    #[test]
    fn a_token_is_one_short_line_that_decodes_to_itself() {
        let text = token().encode();
        assert!(text.len() < 120, "{text}");
        assert!(text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(Token::decode(&text), Ok(token()));
        assert_eq!(Token::decode(&format!("  {text}\n")), Ok(token()));
    }

    #[test]
    fn damaged_tokens_are_refused_with_what_is_wrong() {
        let text = token().encode();
        assert_eq!(Token::decode("not a token!"), Err(TokenError::NotBase64));
        assert_eq!(Token::decode(&text[..40]), Err(TokenError::Truncated));
        let mut bytes = URL_SAFE_NO_PAD.decode(&text).unwrap();
        bytes[0] = 2;
        assert_eq!(
            Token::decode(&URL_SAFE_NO_PAD.encode(&bytes)),
            Err(TokenError::Version(2))
        );
        bytes[0] = 1;
        bytes.push(0);
        assert_eq!(
            Token::decode(&URL_SAFE_NO_PAD.encode(&bytes)),
            Err(TokenError::Trailing(1))
        );
    }

    proptest! {
        #[test]
        fn any_text_decodes_or_is_refused(text in "\\PC{0,200}") {
            let _ = Token::decode(&text);
        }

        #[test]
        fn any_bytes_decode_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Token::decode(&URL_SAFE_NO_PAD.encode(&bytes));
        }

        #[test]
        fn every_token_round_trips(
            host in "[a-z][a-z0-9-]{0,40}",
            ip in any::<[u8; 4]>(),
            port in 1u16..,
            ca in any::<[u8; 32]>(),
            secret in any::<[u8; 32]>(),
        ) {
            let token = Token {
                host,
                address: SocketAddr::from((ip, port)),
                ca: Fingerprint(ca),
                secret,
            };
            prop_assert_eq!(Token::decode(&token.encode()), Ok(token));
        }
    }
}
