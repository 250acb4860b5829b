//! Moving a standalone host's nodes and roles from agent.toml into the stack, once, when the
//! host pairs. Done on the texts with toml_edit, so the operator's comments and layout stay.

use toml_edit::{DocumentMut, Item, Table};

/// The stack's first lines.
const STACK_HEADER: &str = "\
# The stack: the nodes and roles this host's pair shares. Edit it, then `magestack-agent reload`
# on either host: the change is checked, committed (`config log`) and sent to the partner.
# Never write secrets here: it is committed and shared. agent.toml keeps what is this host's.

";

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
}

/// agent.toml without its nodes and roles, and the stack that holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub agent: String,
    pub stack: String,
    pub nodes: usize,
    pub roles: usize,
}

/// Splits agent.toml's text (`file` for errors). Every node without a home gets `host`; an
/// agent.toml without `[nodes]` ran `default_nodes`, which the stack then names.
pub fn split(
    file: &str,
    agent: &str,
    host: &str,
    default_nodes: &[(&str, &str)],
) -> Result<Split, MigrateError> {
    let mut document: DocumentMut =
        agent
            .parse()
            .map_err(|error: toml_edit::TomlError| MigrateError::Parse {
                file: file.to_string(),
                message: error.to_string(),
            })?;
    let mut nodes = match document.remove("nodes") {
        Some(Item::Table(table)) => table,
        Some(other) => match other.into_table() {
            Ok(table) => table,
            Err(_) => {
                return Err(MigrateError::Parse {
                    file: file.to_string(),
                    message: "nodes: not a table".into(),
                })
            }
        },
        None => {
            let mut table = Table::new();
            for (node, role) in default_nodes {
                let mut entry = Table::new();
                entry.insert("role", toml_edit::value(*role));
                table.insert(node, Item::Table(entry));
            }
            table
        }
    };
    nodes.set_implicit(false);
    for (_, node) in nodes.iter_mut() {
        if let Some(node) = node.as_table_like_mut() {
            if !node.contains_key("host") {
                node.insert("host", toml_edit::value(host));
            }
        }
    }
    let roles = document.remove("roles");
    let mut stack = DocumentMut::new();
    let counts = (
        nodes.len(),
        roles
            .as_ref()
            .and_then(Item::as_table_like)
            .map_or(0, |r| r.len()),
    );
    stack.insert("nodes", Item::Table(nodes));
    if let Some(roles) = roles {
        stack.insert("roles", roles);
    }
    Ok(Split {
        agent: document.to_string(),
        stack: format!("{STACK_HEADER}{}", stack.to_string().trim_start()),
        nodes: counts.0,
        roles: counts.1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT: &str = "\
[host]
name = \"dh1\"

# the shop's web node
[nodes.web1]
role = \"web\"

[nodes.db1]
role = \"db\"
host = \"dh2\"

[roles.web.resources]
memory = \"1G\"

[pair]
listen = \"10.0.0.1:7946\"
";

    #[test]
    fn nodes_and_roles_move_with_their_comments_and_get_a_home() {
        let split = split("agent.toml", AGENT, "dh1", &[]).unwrap();
        assert_eq!(
            split.agent,
            "[host]\nname = \"dh1\"\n\n[pair]\nlisten = \"10.0.0.1:7946\"\n"
        );
        assert!(
            split
                .stack
                .contains("# the shop's web node\n[nodes.web1]\nrole = \"web\"\nhost = \"dh1\"\n"),
            "{}",
            split.stack
        );
        assert!(
            split
                .stack
                .contains("[nodes.db1]\nrole = \"db\"\nhost = \"dh2\"\n"),
            "{}",
            split.stack
        );
        assert!(
            split
                .stack
                .contains("[roles.web.resources]\nmemory = \"1G\"\n"),
            "{}",
            split.stack
        );
        assert_eq!((split.nodes, split.roles), (2, 1));
        let stack = crate::config::Source::new("stack.toml", split.stack);
        assert!(crate::config::check_stack_text(&stack).is_empty());
    }

    #[test]
    fn no_nodes_table_names_the_default_nodes_and_an_empty_one_stays() {
        let split = split(
            "agent.toml",
            "[host]\nname = \"dh1\"\n",
            "dh1",
            &[("fw1", "fw")],
        )
        .unwrap();
        assert!(
            split
                .stack
                .contains("[nodes.fw1]\nrole = \"fw\"\nhost = \"dh1\"\n"),
            "{}",
            split.stack
        );
        let empty = super::split(
            "agent.toml",
            "[nodes]\n[host]\nname = \"b\"\n",
            "b",
            &[("fw1", "fw")],
        )
        .unwrap();
        assert!(empty.stack.ends_with("[nodes]\n"), "{}", empty.stack);
        assert_eq!(empty.nodes, 0);
    }

    #[test]
    fn a_file_that_does_not_parse_is_named() {
        let error = split("/etc/ms/agent.toml", "[host\n", "a", &[]).unwrap_err();
        assert!(
            error.to_string().starts_with("/etc/ms/agent.toml: "),
            "{error}"
        );
    }
}
