//! Which channel an inbound connection on `[pair] listen` asks for, read from the ALPN of its
//! TLS ClientHello without consuming a byte: the link (no ALPN) stays on the link thread, a
//! heartbeat connection ([`HEARTBEAT_ALPN`]) is handed whole to the heartbeat thread, which
//! runs its TLS handshake from the first byte. One port, and heartbeats never wait behind the
//! link's work once their connection is made.

use std::time::Duration;

use tokio::net::TcpStream;

/// The ALPN protocol a heartbeat connection offers (and the heartbeat server accepts).
pub const HEARTBEAT_ALPN: &[u8] = b"magestack-heartbeat/1";

/// The most of a ClientHello looked at: one TLS record.
const MAX_HELLO: usize = 5 + (16 << 10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Link,
    Heartbeat,
}

/// The channel a complete ClientHello in `bytes` asks for; `None` while it is incomplete. Bytes
/// that are no ClientHello are the link's to refuse.
pub fn channel_of(bytes: &[u8]) -> Option<Channel> {
    let mut acceptor = rustls::server::Acceptor::default();
    if acceptor.read_tls(&mut &bytes[..]).is_err() {
        return Some(Channel::Link);
    }
    match acceptor.accept() {
        Ok(None) => None,
        Ok(Some(accepted)) => {
            let heartbeat = accepted
                .client_hello()
                .alpn()
                .is_some_and(|mut protocols| protocols.any(|p| p == HEARTBEAT_ALPN));
            Some(if heartbeat {
                Channel::Heartbeat
            } else {
                Channel::Link
            })
        }
        Err(_) => Some(Channel::Link),
    }
}

/// Peeks at `stream` until its ClientHello is complete (or `limit` passes: the link's handshake
/// then deals with it).
pub async fn peek_channel(stream: &TcpStream, limit: Duration) -> Channel {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buffer = vec![0u8; MAX_HELLO];
    let mut seen = 0;
    loop {
        let peeked = match tokio::time::timeout_at(deadline, stream.peek(&mut buffer)).await {
            Ok(Ok(peeked)) => peeked,
            _ => return Channel::Link,
        };
        if let Some(channel) = channel_of(&buffer[..peeked]) {
            return channel;
        }
        if peeked == 0 || peeked == MAX_HELLO || tokio::time::Instant::now() >= deadline {
            return Channel::Link;
        }
        if peeked == seen {
            // The rest of the hello is on its way: peek returns at once while bytes wait.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        seen = peeked;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The bytes a rustls client sends first, offering `alpn`.
    fn client_hello(alpn: &[&[u8]]) -> Vec<u8> {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from("dh1").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut bytes = Vec::new();
        client.write_tls(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn the_alpn_of_a_client_hello_names_its_channel() {
        assert_eq!(channel_of(&client_hello(&[])), Some(Channel::Link));
        assert_eq!(
            channel_of(&client_hello(&[b"h2", HEARTBEAT_ALPN])),
            Some(Channel::Heartbeat)
        );
        assert_eq!(channel_of(&client_hello(&[b"h2"])), Some(Channel::Link));
    }

    #[test]
    fn a_hello_cut_short_is_incomplete_and_garbage_is_the_links() {
        let hello = client_hello(&[HEARTBEAT_ALPN]);
        assert_eq!(channel_of(&hello[..hello.len() / 2]), None);
        assert_eq!(channel_of(b"GET / HTTP/1.1\r\n\r\n"), Some(Channel::Link));
        assert_eq!(
            channel_of(&[0x16, 3, 1, 0, 4, 0, 0, 0, 0]),
            Some(Channel::Link)
        );
    }
}
