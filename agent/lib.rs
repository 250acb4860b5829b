//! magestack-agent: runs the MageStack roles as isolated nodes on one host.
//!
//! Data flows one way: `config` -> desired state in the `daemon` -> `runtime` (host side of a
//! node) -> `init` (PID 1 inside it). `api` holds the messages between these processes.

pub mod api;
pub mod config;
pub mod confinement;
pub mod daemon;
pub mod image;
pub mod init;
pub mod net;
pub mod pair;
pub mod runtime;
pub mod stack;
pub mod template;
pub mod witness;
