//! magestack-agent: runs the MageStack roles as isolated nodes on one host.
pub mod config;
