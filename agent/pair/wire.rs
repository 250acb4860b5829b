//! The messages on the pair link, and their framing: a 4-byte big-endian length, then that
//! many bytes of one JSON message. One enum carries every kind, so heartbeats, leases and the
//! stack's versions are variants on the same framing.
//!
//! A join connection carries one `Join` and its answer (`Accepted` or `Refused`); a link
//! connection starts with a `Hello` each way, then `Keepalive`s, `Witness` whenever the
//! pair's witness changes, `Stack` with the sender's stack version in force (on each link and
//! whenever it changes) and `StackVerdict` with what the sender did with the partner's latest. A heartbeat connection carries `Heartbeat`s one way and
//! `HeartbeatAck`s back, and to a witness `LeaseQuery`s and `Cas` requests with their answers.
//! An enrollment at a witness is one `WitnessEnroll` and its answer (`WitnessEnrolled` or
//! `Refused`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame either side accepts (a join carries two certificates: a few KiB).
pub const MAX_FRAME: usize = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Join(JoinRequest),
    Accepted(JoinAccepted),
    /// A join refused, and why (a refusal reason's label).
    Refused {
        reason: String,
    },
    Hello {
        host: String,
        version: String,
    },
    Keepalive,
    /// The sender is alive; `sent_us` is its CLOCK_BOOTTIME in microseconds, echoed back.
    Heartbeat {
        seq: u64,
        sent_us: u64,
    },
    HeartbeatAck {
        seq: u64,
        sent_us: u64,
    },
    /// On the link: the witness this host's pair uses.
    Witness(WitnessRecord),
    /// On the link: the stack version in force on the sender, with its text.
    Stack(StackOffer),
    /// On the link: the sender applied or refused the receiver's stack version.
    StackVerdict(StackVerdict),
    /// To a witness, without a certificate: add it to the pair whose CA this is.
    WitnessEnroll(WitnessEnroll),
    WitnessEnrolled,
    /// To a witness: has `host`'s lease expired there?
    LeaseQuery {
        host: String,
    },
    LeaseAnswer(LeaseAnswer),
    /// To a witness: replace a node's record if it is still `expected`.
    Cas(CasRequest),
    CasAnswer(CasAnswer),
}

impl Message {
    /// What a log line calls a message that was not due.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Join(_) => "a join",
            Message::Accepted(_) => "an acceptance",
            Message::Refused { .. } => "a refusal",
            Message::Hello { .. } => "a Hello",
            Message::Keepalive => "a keepalive",
            Message::Heartbeat { .. } => "a heartbeat",
            Message::HeartbeatAck { .. } => "a heartbeat's answer",
            Message::Witness(_) => "a witness record",
            Message::Stack(_) => "a stack version",
            Message::StackVerdict(_) => "a stack verdict",
            Message::WitnessEnroll(_) => "a witness enrollment",
            Message::WitnessEnrolled => "an enrollment's answer",
            Message::LeaseQuery { .. } => "a lease query",
            Message::LeaseAnswer(_) => "a lease answer",
            Message::Cas(_) => "a compare-and-set",
            Message::CasAnswer(_) => "a compare-and-set's answer",
        }
    }
}

/// A stack version as one host offers it to the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackOffer {
    pub version: crate::stack::Version,
    /// `stack.toml` as committed.
    pub text: String,
}

/// What a host did with the partner's stack version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackVerdict {
    pub version: crate::stack::VersionId,
    /// Why it was refused; `None`: applied.
    pub refused: Option<String>,
}

/// A pair's witness as the hosts record it and tell each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessRecord {
    pub address: SocketAddr,
    /// SHA-256 of the witness's certificate (DER), hex: the only certificate accepted from it.
    pub fingerprint: String,
    /// When it was added: of two hosts that added different witnesses, the later one wins.
    pub added_unix: u64,
}

impl WitnessRecord {
    /// Whether this record, told by the partner, replaces `ours`: when this host has none, or
    /// this one was added later (the fingerprint breaks a tie, so both hosts settle on one).
    pub fn replaces(&self, ours: Option<&WitnessRecord>) -> bool {
        ours.is_none_or(|ours| {
            (self.added_unix, &self.fingerprint) > (ours.added_unix, &ours.fingerprint)
        })
    }
}

/// A host adding a witness: the token's secret, and the pair CA the witness is to trust.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessEnroll {
    pub host: String,
    /// The witness token's secret, hex.
    pub secret: String,
    /// The pair CA's certificate, PEM.
    pub ca: String,
    /// The enrolling host's certificate, PEM: it must chain to `ca` and name `host`.
    pub certificate: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAnswer {
    pub host: String,
    pub expired: bool,
    /// How long ago the witness last heard the host (none since the witness started).
    pub heard_ms_ago: Option<u64>,
    /// How long the witness has run: it declares nobody dead before a full lease of it.
    pub since_start_ms: u64,
    pub lease_ms: u64,
}

/// Who owns a node, at which epoch, and whether the other host's replica of it is current.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeClaim {
    pub owner: String,
    pub epoch: u64,
    pub partner_replica_current: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CasRequest {
    pub node: String,
    /// What the sender believes is recorded (none: nothing yet).
    pub expected: Option<NodeClaim>,
    pub new: NodeClaim,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CasAnswer {
    pub node: String,
    pub applied: bool,
    /// The record after the request: the new one when applied, else what stood in its way.
    pub current: Option<NodeClaim>,
    /// Why it was not applied.
    pub reason: Option<String>,
}

/// What the joining host sends, inside TLS, once it has checked the inviting host's CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The joining host's name: its certificate will name it.
    pub host: String,
    /// Its `[pair] listen`, for the inviting host to record as its partner's address.
    pub listen: SocketAddr,
    /// The token's secret, hex.
    pub secret: String,
    /// Its certificate signing request, DER in base64.
    pub request: String,
}

impl JoinRequest {
    /// What identifies this exact message: the same join sent again has the same digest.
    pub fn digest(&self) -> [u8; 32] {
        let bytes = serde_json::to_vec(self).expect("a join request serialises");
        Sha256::digest(bytes).into()
    }
}

/// The inviting host's answer: the pair CA and the joining host's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAccepted {
    pub host: String,
    pub listen: SocketAddr,
    /// PEM.
    pub ca: String,
    /// PEM.
    pub certificate: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("a frame of {0} bytes, more than {MAX_FRAME}")]
    TooLarge(usize),
    #[error("not a pair message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// One message as a frame.
pub fn encode(message: &Message) -> Vec<u8> {
    let body = serde_json::to_vec(message).expect("a message serialises");
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// The first message in `bytes` and how many bytes it took; `None` while it is incomplete.
pub fn decode(bytes: &[u8]) -> Result<Option<(Message, usize)>, FrameError> {
    let Some(header) = bytes.first_chunk::<4>() else {
        return Ok(None);
    };
    let length = body_length(*header)?;
    let Some(body) = bytes.get(4..4 + length) else {
        return Ok(None);
    };
    Ok(Some((serde_json::from_slice(body)?, 4 + length)))
}

fn body_length(header: [u8; 4]) -> Result<usize, FrameError> {
    let length = u32::from_be_bytes(header) as usize;
    if length > MAX_FRAME {
        return Err(FrameError::TooLarge(length));
    }
    Ok(length)
}

pub async fn read(stream: &mut (impl AsyncRead + Unpin)) -> Result<Message, FrameError> {
    let mut header = [0u8; 4];
    match stream.read_exact(&mut header).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(FrameError::Closed)
        }
        Err(error) => return Err(error.into()),
    }
    let mut body = vec![0u8; body_length(header)?];
    stream.read_exact(&mut body).await?;
    Ok(serde_json::from_slice(&body)?)
}

pub async fn write(
    stream: &mut (impl AsyncWrite + Unpin),
    message: &Message,
) -> Result<(), FrameError> {
    stream.write_all(&encode(message)).await?;
    stream.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn messages() -> Vec<Message> {
        vec![
            Message::Join(JoinRequest {
                host: "dh2".into(),
                listen: "10.0.0.2:7946".parse().unwrap(),
                secret: "00ff".into(),
                request: "MIIB".into(),
            }),
            Message::Refused {
                reason: "wrong_secret".into(),
            },
            Message::Hello {
                host: "dh1".into(),
                version: "0.1.0".into(),
            },
            Message::Keepalive,
            Message::Heartbeat {
                seq: 7,
                sent_us: 123_456,
            },
            Message::Cas(CasRequest {
                node: "db1".into(),
                expected: None,
                new: NodeClaim {
                    owner: "dh1".into(),
                    epoch: 1,
                    partner_replica_current: true,
                },
            }),
        ]
    }

    #[test]
    fn frames_decode_one_after_another() {
        let stream: Vec<u8> = messages().iter().flat_map(encode).collect();
        let mut at = 0;
        let mut decoded = Vec::new();
        while let Some((message, used)) = decode(&stream[at..]).unwrap() {
            decoded.push(message);
            at += used;
        }
        assert_eq!(decoded, messages());
        assert_eq!(at, stream.len());
    }

    #[test]
    fn the_witness_added_last_replaces_the_other_on_both_hosts() {
        let record = |added_unix, fingerprint: &str| WitnessRecord {
            address: "10.0.0.3:7947".parse().unwrap(),
            fingerprint: fingerprint.into(),
            added_unix,
        };
        let (old, new, tie) = (record(5, "aa"), record(9, "aa"), record(5, "bb"));
        assert!(old.replaces(None));
        assert!(new.replaces(Some(&old)) && !old.replaces(Some(&new)));
        assert!(tie.replaces(Some(&old)) && !old.replaces(Some(&tie)));
        assert!(!old.replaces(Some(&old)), "the same record changes nothing");
    }

    #[test]
    fn an_oversized_frame_is_refused_before_its_body_arrives() {
        let header = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(decode(&header), Err(FrameError::TooLarge(_))));
    }

    #[tokio::test]
    async fn reading_a_stream_stops_at_its_end() {
        let frame = encode(&Message::Keepalive);
        let mut reader = &frame[..];
        assert_eq!(read(&mut reader).await.unwrap(), Message::Keepalive);
        assert!(matches!(read(&mut reader).await, Err(FrameError::Closed)));
        let mut garbage = &b"GET / HTTP/1.1\r\n\r\n"[..];
        assert!(matches!(
            read(&mut garbage).await,
            Err(FrameError::TooLarge(_))
        ));
    }

    fn stack_offer() -> impl Strategy<Value = Message> {
        (
            any::<u64>(),
            "[0-9a-f]{40}",
            "[a-z][a-z0-9-]{0,11}",
            any::<u64>(),
            ".{0,80}",
            ".{0,2000}",
        )
            .prop_map(|(counter, id, host, time_unix, summary, text)| {
                Message::Stack(StackOffer {
                    version: crate::stack::Version {
                        name: crate::stack::VersionId { counter, id },
                        host,
                        time_unix,
                        summary,
                    },
                    text,
                })
            })
    }

    fn stack_verdict() -> impl Strategy<Value = Message> {
        (
            any::<u64>(),
            "[0-9a-f]{40}",
            proptest::option::of(".{0,200}"),
        )
            .prop_map(|(counter, id, refused)| {
                Message::StackVerdict(StackVerdict {
                    version: crate::stack::VersionId { counter, id },
                    refused,
                })
            })
    }

    proptest! {
        /// A stack version or verdict comes out of its frame as it went in, whatever its text,
        /// and a frame cut short is incomplete, never another message.
        #[test]
        fn stack_messages_survive_their_frames(
            message in prop_oneof![stack_offer(), stack_verdict()],
            cut in any::<prop::sample::Index>(),
        ) {
            let frame = encode(&message);
            prop_assert_eq!(decode(&frame).unwrap(), Some((message.clone(), frame.len())));
            let cut = cut.index(frame.len());
            prop_assert_eq!(decode(&frame[..cut]).unwrap(), None);
        }

        /// A stack message with its JSON bytes changed decodes to some message or fails with
        /// an error; it never panics.
        #[test]
        fn a_corrupted_stack_message_never_panics(
            message in prop_oneof![stack_offer(), stack_verdict()],
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut frame = encode(&message);
            let at = 4 + at.index(frame.len() - 4);
            frame[at] = byte;
            let _ = decode(&frame);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn a_frame_cut_anywhere_is_incomplete_never_another_message(cut in 0usize..200) {
            for message in messages() {
                let frame = encode(&message);
                match decode(&frame[..cut.min(frame.len())]).unwrap() {
                    Some((decoded, used)) => {
                        prop_assert_eq!(decoded, message);
                        prop_assert_eq!(used, frame.len());
                    }
                    None => prop_assert!(cut < frame.len()),
                }
            }
        }
    }
}
