//! The pair: two hosts that know each other through a CA of their own and keep a mutually
//! authenticated TLS link.
//!
//! `pair invite` (on the inviting host) makes the CA and this host's certificate and opens a
//! one-time invite ([`token`], [`ca`], [`invite`]); `pair join TOKEN` (on the joining host)
//! connects, checks the inviting host's CA against the token's fingerprint, sends the secret and
//! a signing request, and stores the certificate it gets back ([`store`]). From then on [`link`]
//! keeps one connection between them ([`tls`], [`wire`], [`backoff`]). What is refused, and why,
//! is a [`refusal::Refusal`]. The daemon's core owns the pairing; the link only reports to it.
//!
//! Heartbeats ([`heartbeat`]) run on a thread and connections of their own, to the partner and
//! to the pair's witness (added with its token, [`witness_token`], [`witness_client`]); each
//! peer heard holds a lease ([`lease`]) on CLOCK_BOOTTIME ([`clock`]). The link's listener
//! hands heartbeat connections over by their ALPN ([`channel`]).
//!
//! Who may run which node, and the witness's compare-and-set that hands a node over, are the
//! rules of [`ownership`].

pub mod backoff;
pub mod ca;
pub mod channel;
pub mod clock;
pub mod heartbeat;
pub mod invite;
pub mod lease;
pub mod link;
pub mod ownership;
pub mod refusal;
pub mod store;
pub mod tls;
pub mod token;
pub mod wire;
pub mod witness_client;
pub mod witness_token;

pub use link::{Link, LinkCommand, LinkState, PairEvent, PartnerAddress, Plan};
pub use refusal::Refusal;
pub use token::Token;
