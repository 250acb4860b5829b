//! The stack beside agent.toml: where it is, and the checks that let its text follow
//! agent.toml's in one [`Source`] (so every later check reports the right file and line).
//!
//! With a stack file, agent.toml keeps `[host]`, `[network]`, `[metrics]`, `[logs]` and
//! `[pair]`; nodes, roles and id slots live in the stack, which begins with a table header (so none of its
//! keys fall into agent.toml's last table) and holds nothing else. Secrets are never written
//! into it: the stack is committed into the pair's history and sent to the partner.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::source::{Diagnostic, Source};
use super::ConfigError;

/// The stack's name beside agent.toml when `[host] stack` names no other path.
pub const STACK_FILE_NAME: &str = "stack.toml";

/// The largest stack: it travels whole in one frame of the pair link (`pair::wire::MAX_FRAME`,
/// 64 KiB, with room for the version and JSON's escapes).
pub const MAX_STACK_BYTES: usize = 48 << 10;

/// Words in an environment variable's name that mark its value as a secret.
const SECRET_WORDS: [&str; 5] = ["PASSWORD", "PASSWD", "SECRET", "TOKEN", "PRIVATE_KEY"];

/// Where the stack of the configuration `agent` is (whether or not it exists yet): `[host]
/// stack` (relative to agent.toml's directory), else `stack.toml` beside agent.toml; `None`
/// for the embedded default, which has no directory.
pub fn stack_path(agent: &Source) -> Option<PathBuf> {
    let dir = agent.dir.as_ref()?;
    let named = super::lenient::host_string(&agent.text, "stack");
    Some(match named {
        Some(path) if Path::new(&path).is_absolute() => PathBuf::from(path),
        Some(path) => dir.join(path),
        None => dir.join(STACK_FILE_NAME),
    })
}

/// The sections of agent.toml that move into the stack.
const STACK_SECTIONS: [&str; 3] = ["nodes", "roles", "slots"];

/// The stack as written: nodes and roles only.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StackSections {
    #[serde(default, rename = "nodes")]
    _nodes: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    roles: BTreeMap<String, StackRole>,
    #[serde(default, rename = "slots")]
    _slots: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct StackRole {
    #[serde(default)]
    process: Vec<StackProcess>,
}

#[derive(Deserialize)]
struct StackProcess {
    #[serde(default)]
    env: BTreeMap<Spanned<String>, Spanned<String>>,
}

/// agent.toml's text followed by the stack's, once both pass the checks that keep them apart.
pub fn join(agent: Source, stack: Source) -> Result<Source, ConfigError> {
    let mut diagnostics = Vec::new();
    let stack_file = stack.name.clone();
    // toml_edit keeps each table's place in the text (toml's Spanned cannot wrap a Value).
    match toml_edit::ImDocument::parse(agent.text.as_str()) {
        Ok(document) => {
            for field in STACK_SECTIONS {
                if let Some((key, _)) = document.get_key_value(field) {
                    diagnostics.push(agent.at(
                        key.span(),
                        format!("{field}: the stack ({stack_file}) holds the nodes and roles; move them there"),
                    ));
                }
            }
        }
        Err(error) => diagnostics.push(agent.at(error.span(), error.message().trim())),
    }
    diagnostics.extend(check_stack_text(&stack));
    if !diagnostics.is_empty() {
        return Err(ConfigError::Invalid(diagnostics));
    }
    Ok(agent.followed_by(stack))
}

/// What makes a stack text unfit to follow agent.toml or to be shared: a key before the first
/// table header, a section other than nodes and roles, an inline secret.
pub fn check_stack_text(stack: &Source) -> Vec<Diagnostic> {
    if stack.text.len() > MAX_STACK_BYTES {
        return vec![stack.at(
            None,
            format!(
                "the stack is {} bytes; at most {MAX_STACK_BYTES} travel to the partner in one piece",
                stack.text.len()
            ),
        )];
    }
    if let Some((offset, line)) = first_key_outside_tables(&stack.text) {
        return vec![stack.at(
            Some(offset..offset + line.len()),
            format!("`{line}`: the stack holds only [nodes.NAME], [roles.NAME] and [slots] tables; every key belongs under one"),
        )];
    }
    let sections = match toml::from_str::<StackSections>(&stack.text) {
        Ok(sections) => sections,
        Err(error) => return vec![stack.at(error.span(), error.message().trim())],
    };
    let mut diagnostics = Vec::new();
    for (role, definition) in &sections.roles {
        for (index, process) in definition.process.iter().enumerate() {
            for (name, value) in &process.env {
                if looks_secret(name.get_ref()) && !value.get_ref().is_empty() {
                    diagnostics.push(stack.at(
                        Some(value.span()),
                        format!(
                            "roles.{role}.process[{index}].env.{}: a secret is never written into the stack (it is committed and sent to the partner); keep it in a host-local template (templates/ beside agent.toml)",
                            name.get_ref()
                        ),
                    ));
                }
            }
        }
    }
    diagnostics
}

fn looks_secret(variable: &str) -> bool {
    let upper = variable.to_ascii_uppercase();
    SECRET_WORDS.iter().any(|word| upper.contains(word))
}

/// The first line with content before any table header, and its byte offset.
fn first_key_outside_tables(text: &str) -> Option<(usize, &str)> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let content = line.trim();
        let start = offset + (line.len() - line.trim_start().len());
        offset += line.len();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        return (!content.starts_with('[')).then_some((start, content));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(text: &str) -> Source {
        Source::new("agent.toml", text)
    }

    fn stack(text: &str) -> Source {
        Source::new("stack.toml", text)
    }

    fn messages(result: Result<Source, ConfigError>) -> Vec<String> {
        match result {
            Ok(_) => Vec::new(),
            Err(error) => error.diagnostics().iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn nodes_in_agent_toml_beside_a_stack_are_refused_where_they_are() {
        let found = messages(join(
            agent("[host]\nname = \"a\"\n\n[nodes.web1]\nrole = \"web\"\n"),
            stack("[nodes.web2]\nrole = \"web\"\n"),
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("agent.toml:4:"), "{found:?}");
        assert!(
            found[0].contains(
                "nodes: the stack (stack.toml) holds the nodes and roles; move them there"
            ),
            "{found:?}"
        );
    }

    #[test]
    fn roles_with_processes_in_agent_toml_beside_a_stack_are_refused_too() {
        let found = messages(join(
            agent("[nodes.nb]\nrole = \"sleeper\"\n[roles.sleeper]\nimage = \"busybox\"\n[[roles.sleeper.process]]\nname = \"sleep\"\ncommand = [\"sleep\", \"1\"]\n"),
            stack("[nodes.na]\nrole = \"sleeper\"\n"),
        ));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("agent.toml:1:") && found[0].contains("nodes: the stack"),
            "{found:?}"
        );
        assert!(
            found[1].starts_with("agent.toml:3:") && found[1].contains("roles: the stack"),
            "{found:?}"
        );
    }

    #[test]
    fn a_key_before_the_first_table_of_the_stack_is_refused() {
        let found = messages(join(
            agent("[pair]\nlisten = \"10.0.0.1:7946\"\n"),
            stack("# the stack\n\nversion = 3\n[nodes.web1]\nrole = \"web\"\n"),
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("stack.toml:3:1: `version = 3`"),
            "{found:?}"
        );
    }

    #[test]
    fn only_nodes_and_roles_belong_in_the_stack() {
        let found = messages(join(agent(""), stack("[network]\nbridge = \"x\"\n")));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("unknown field `network`"), "{found:?}");
    }

    #[test]
    fn an_inline_password_is_refused_and_an_empty_one_is_not() {
        let found = messages(join(
            agent(""),
            stack("[roles.app]\nimage = \"busybox\"\n[[roles.app.process]]\nname = \"a\"\ncommand = [\"true\"]\nenv = { DB_PASSWORD = \"hunter2\", MODE = \"x\", API_TOKEN = \"\" }\n"),
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("stack.toml:6:")
                && found[0].contains("roles.app.process[0].env.DB_PASSWORD"),
            "{found:?}"
        );
    }

    #[test]
    fn a_stack_too_large_for_the_link_is_refused() {
        let text = format!(
            "[nodes.web1]\nrole = \"web\"\n#{}\n",
            "x".repeat(MAX_STACK_BYTES)
        );
        let found = check_stack_text(&stack(&text));
        assert_eq!(found.len(), 1);
        assert!(
            found[0].message.contains("travel to the partner"),
            "{found:?}"
        );
    }

    #[test]
    fn a_joined_source_reports_stack_errors_in_the_stack() {
        let joined = join(
            agent("[host]\nname = \"a\"\n"),
            stack("[nodes.web1]\nrole = \"web\"\n"),
        )
        .unwrap();
        let offset = joined.text.find("role").unwrap();
        assert_eq!(joined.at(Some(offset..offset + 1), "x").line, 2);
        assert_eq!(joined.at(Some(offset..offset + 1), "x").file, "stack.toml");
    }

    #[test]
    fn the_stack_path_follows_host_stack_relative_to_agent_toml() {
        let mut source = agent("[host]\nstack = \"shared/stack.toml\"\n");
        source.dir = Some(PathBuf::from("/etc/ms"));
        assert_eq!(
            stack_path(&source),
            Some(PathBuf::from("/etc/ms/shared/stack.toml"))
        );
        source.text = "[host]\nname = \"a\"\n".into();
        assert_eq!(
            stack_path(&source),
            Some(PathBuf::from("/etc/ms/stack.toml"))
        );
        source.dir = None;
        assert_eq!(stack_path(&source), None);
    }
}
