//! The messages the agent's processes exchange: the CLI with the daemon (`control`), and the
//! daemon with each node's init (`init`). Both are newline-delimited JSON.

pub mod control;
pub mod init;

use std::io::{BufRead, BufReader, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest message either side accepts; a status of hundreds of nodes fits easily.
pub const MAX_MESSAGE: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed before a message arrived")]
    Closed,
    #[error("message larger than {MAX_MESSAGE} bytes")]
    TooLarge,
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Writes one message as a JSON line.
pub fn write_message<T: Serialize>(mut writer: impl Write, message: &T) -> Result<(), WireError> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    writer.write_all(&line)?;
    writer.flush()?;
    Ok(())
}

/// Reads one JSON line, refusing lines over [`MAX_MESSAGE`].
pub fn read_message<T: DeserializeOwned>(reader: impl Read) -> Result<T, WireError> {
    let mut line = Vec::new();
    BufReader::new(reader.take(MAX_MESSAGE + 1)).read_until(b'\n', &mut line)?;
    decode_line(&line)
}

/// Decodes one line read from the wire.
pub fn decode_line<T: DeserializeOwned>(line: &[u8]) -> Result<T, WireError> {
    if line.is_empty() {
        return Err(WireError::Closed);
    }
    if line.len() as u64 > MAX_MESSAGE {
        return Err(WireError::TooLarge);
    }
    Ok(serde_json::from_slice(line)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn messages_round_trip() {
        let request = control::Request::Stop {
            nodes: vec!["web1".into()],
        };
        let mut wire = Vec::new();
        write_message(&mut wire, &request).unwrap();
        let back: control::Request = read_message(&wire[..]).unwrap();
        assert_eq!(back, request);
    }

    #[test]
    fn empty_input_is_a_closed_connection() {
        let result: Result<control::Request, _> = read_message(&b""[..]);
        assert!(matches!(result, Err(WireError::Closed)));
    }

    /// A message cut anywhere decodes to itself or is refused, never read as another.
    fn cut_message<T>(message: &T, cut: usize) -> Result<(), TestCaseError>
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let mut line = Vec::new();
        write_message(&mut line, message).unwrap();
        match decode_line::<T>(&line[..cut.min(line.len())]) {
            Ok(decoded) => prop_assert_eq!(&decoded, message),
            Err(_) => prop_assert!(cut < line.len()),
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn truncated_messages_are_refused(cut in 0usize..600) {
            let processes = vec![init::ProcessStatus {
                name: "nginx".into(),
                pid: Some(7),
                state: init::ProcessState::Crashloop,
                restarts: 4,
                last_error: Some("crash loop: 3 quick exits".into()),
            }];
            cut_message(&init::Handshake::Ready { processes: processes.clone() }, cut)?;
            cut_message(&init::Handshake::Failed { step: "pivot_root".into(), error: "EINVAL".into() }, cut)?;
            cut_message(&init::InitReply::Status { processes, health: init::HealthStatus::default() }, cut)?;
            cut_message(&control::Request::Start { nodes: vec!["web1".into(), "db1".into()] }, cut)?;
            cut_message(&control::Response::Done { nodes: vec!["web1".into()] }, cut)?;
            cut_message(&control::Response::Error { message: "no node named x".into() }, cut)?;
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_line::<control::Request>(&bytes);
            let _ = decode_line::<control::Response>(&bytes);
            let _ = decode_line::<init::InitRequest>(&bytes);
            let _ = decode_line::<init::InitReply>(&bytes);
            let _ = decode_line::<init::Handshake>(&bytes);
        }
    }
}
