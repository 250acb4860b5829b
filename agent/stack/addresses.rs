//! Addresses of nodes outside the address plan as values of the stack. Such a node takes the
//! lowest free address from .100 by name order (or the one it runs with), which depends on the
//! other nodes and on what runs on one host; a commit writes the address it resolved to into
//! the node's table (`ip = "..."`), so both hosts give it the same one and adding a node never
//! moves another.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use toml_edit::DocumentMut;

use crate::config::{in_address_plan, Config};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("the stack does not parse: {0}")]
    Parse(String),
    #[error("nodes.{0}: not a table")]
    NotATable(String),
}

/// The nodes outside the plan whose table in the stack `text` names no `ip`, with the address
/// `config` (resolved from that text) gave them.
pub fn unpinned(config: &Config, text: &str) -> Result<BTreeMap<String, Ipv4Addr>, AddressError> {
    let document = parse(text)?;
    let nodes = document
        .get("nodes")
        .and_then(|nodes| nodes.as_table_like());
    let pinned = |node: &str| {
        nodes
            .and_then(|nodes| nodes.get(node))
            .and_then(|table| table.as_table_like())
            .is_some_and(|table| table.contains_key("ip"))
    };
    Ok(config
        .nodes
        .values()
        .filter(|node| !in_address_plan(&node.name, &node.role) && !pinned(&node.name))
        .map(|node| (node.name.clone(), node.ip()))
        .collect())
}

/// The stack's text with each node's `ip` in `addresses` written into its table.
pub fn with_addresses(
    text: &str,
    addresses: &BTreeMap<String, Ipv4Addr>,
) -> Result<String, AddressError> {
    if addresses.is_empty() {
        return Ok(text.to_string());
    }
    let mut document = parse(text)?;
    for (node, ip) in addresses {
        let table = document
            .get_mut("nodes")
            .and_then(|nodes| nodes.as_table_like_mut())
            .and_then(|nodes| nodes.get_mut(node))
            .and_then(|table| table.as_table_like_mut())
            .ok_or_else(|| AddressError::NotATable(node.clone()))?;
        table.insert("ip", toml_edit::value(ip.to_string()));
    }
    Ok(document.to_string())
}

fn parse(text: &str) -> Result<DocumentMut, AddressError> {
    text.parse()
        .map_err(|error: toml_edit::TomlError| AddressError::Parse(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(stack: &str) -> Config {
        let agent = crate::config::Source::new(
            "agent.toml",
            "[host]\nname = \"dh1\"\n[network]\nsubnet = \"10.9.0.0/24\"\nhost_ip = \"10.9.0.254\"\n",
        );
        let source = agent.followed_by(crate::config::Source::new("stack.toml", stack));
        crate::config::parse(&source).unwrap()
    }

    const STACK: &str = "[nodes.web1]\nrole = \"web\"\n[nodes.app1]\nrole = \"app\"\n[nodes.app2]\nrole = \"app\"\nip = \"10.9.0.150\"\n[roles.app]\nimage = \"busybox\"\n[[roles.app.process]]\nname = \"a\"\ncommand = [\"sleep\", \"1\"]\n";

    #[test]
    fn only_unplanned_nodes_without_an_ip_are_pinned_and_stay_where_they_were() {
        let found = unpinned(&config(STACK), STACK).unwrap();
        let app1: Ipv4Addr = "10.9.0.100".parse().unwrap();
        assert_eq!(found, BTreeMap::from([("app1".to_string(), app1)]));
        let pinned = with_addresses(STACK, &found).unwrap();
        assert!(
            pinned.starts_with(
                "[nodes.web1]\nrole = \"web\"\n[nodes.app1]\nrole = \"app\"\nip = \"10.9.0.100\"\n"
            ),
            "{pinned}"
        );
        assert_eq!(config(&pinned).nodes["app1"].ip(), app1);
        assert!(unpinned(&config(&pinned), &pinned).unwrap().is_empty());
    }

    #[test]
    fn adding_a_node_that_sorts_first_moves_no_pinned_one() {
        let pinned = with_addresses(STACK, &unpinned(&config(STACK), STACK).unwrap()).unwrap();
        let grown = format!("{pinned}[nodes.app0]\nrole = \"app\"\n");
        let config = config(&grown);
        assert_eq!(config.nodes["app1"].ip().to_string(), "10.9.0.100");
        assert_eq!(config.nodes["app0"].ip().to_string(), "10.9.0.101");
    }
}
