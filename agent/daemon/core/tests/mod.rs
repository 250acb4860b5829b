//! The core fed events by a model executor (`harness.rs`): each decision on its own
//! (`decisions.rs`), and invariants over random orders of events (`orders.rs`).

mod decisions;
mod harness;
mod orders;
