//! The stack: the nodes and roles a pair shares, one document (`stack.toml`) kept as a history
//! of versions on each host (`history.rs`, a git repository under the state dir), ordered so
//! that both hosts settle on one (`version.rs`), summarized for `config log` (`summary.rs`), and
//! made once from a standalone host's agent.toml when it pairs (`migrate.rs`).

pub mod addresses;
pub mod history;
pub mod migrate;
pub mod slots;
pub mod summary;
pub mod version;

pub use history::{Entry, History, HistoryError};
pub use version::{offer, Offer, Version, VersionId};
