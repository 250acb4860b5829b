//! Role templates: configuration files rendered from the node registry (minijinja), checked
//! whole when a configuration loads, re-rendered by the daemon's core when nodes come and go.
//!
//! A rendered file lives on the host under `run_dir/nodes/<node>/templates/<dest>` and is
//! replaced by rename; that directory is bind-mounted read-only at [`IN_NODE`] and each `dest`
//! in the node is a symlink into it, so a process never reads a half-written file.

mod context;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use minijinja::{Environment, UndefinedBehavior};

use crate::config::{Config, Diagnostic, NodeSpec, TemplateReload};
pub use context::{Context, NodeView, Running, HEALTH_UNKNOWN};

/// Where a node sees its rendered files (a read-only bind of the host directory).
pub use crate::config::TEMPLATES_IN_NODE as IN_NODE;

/// One rendered file of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub dest: String,
    pub text: String,
    pub reload: Option<TemplateReload>,
}

/// A template that does not parse or does not render, located in its own file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: roles.{role}.template `{source_name}`: {message}")]
pub struct TemplateError {
    pub role: String,
    /// The `source` the role names it by.
    pub source_name: String,
    /// The file its text came from.
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl TemplateError {
    pub fn diagnostic(&self) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            line: self.line,
            column: self.column,
            message: format!(
                "roles.{}.template `{}`: {}",
                self.role, self.source_name, self.message
            ),
        }
    }
}

/// The engine every template renders with: an unknown variable or attribute is an error rather
/// than an empty string, and block tags take their line with them (`trim_blocks`,
/// `lstrip_blocks`), as suits line-oriented configuration files.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_debug(true);
    env
}

/// Every template of `spec`, rendered for it with the nodes in `running` up (in their health).
pub fn render_node(
    config: &Config,
    spec: &NodeSpec,
    running: &Running,
) -> Result<Vec<Rendered>, TemplateError> {
    if spec.definition.templates.is_empty() {
        return Ok(Vec::new());
    }
    let env = environment();
    let context = Context::new(config, spec, running);
    spec.definition
        .templates
        .iter()
        .map(|template| {
            let error = |message: String, line: usize, column: usize, file: &str| TemplateError {
                role: spec.role.clone(),
                source_name: template.source.clone(),
                file: file.to_string(),
                line,
                column,
                message,
            };
            let Some(source) = config.templates.get(&template.source) else {
                return Err(error(
                    "its text was not loaded with the configuration".into(),
                    1,
                    1,
                    &template.source,
                ));
            };
            env.template_from_named_str(&template.source, &source.text)
                .and_then(|compiled| compiled.render(&context))
                .map(|text| Rendered {
                    dest: template.dest.clone(),
                    text,
                    reload: template.reload.clone(),
                })
                .map_err(|e| {
                    let (line, column) = locate(&e, &source.text);
                    error(describe(&e), line, column, &source.file)
                })
        })
        .collect()
}

/// Every template rendered for every node that uses it, once with every configured node
/// running and once with none (a template that works only while some node is up would break
/// the node that renders it later): the problems, each once, in their templates' files.
pub fn check(config: &Config) -> Vec<Diagnostic> {
    let everyone: Running = config
        .nodes
        .keys()
        .map(|name| (name.clone(), "healthy".to_string()))
        .collect();
    let nobody = Running::new();
    let mut problems = Vec::new();
    for spec in config.nodes.values() {
        for running in [&everyone, &nobody] {
            if let Err(error) = render_node(config, spec, running) {
                let diagnostic = error.diagnostic();
                if !problems.contains(&diagnostic) {
                    problems.push(diagnostic);
                }
            }
        }
    }
    problems
}

/// Line and column of a minijinja error in the template's text.
fn locate(error: &minijinja::Error, text: &str) -> (usize, usize) {
    match error.range() {
        Some(range) => crate::config::line_column(text, range.start),
        None => (error.line().unwrap_or(1), 1),
    }
}

/// The error's kind and detail, without minijinja's own location suffix.
fn describe(error: &minijinja::Error) -> String {
    match error.detail() {
        Some(detail) => format!("{}: {detail}", error.kind()),
        None => error.kind().to_string(),
    }
}

/// Writes each file below `dir` at its `dest` (temp file, then rename), owned by `owner` (the
/// node's root on the host) when given, readable by everyone in the node.
pub fn install(dir: &Path, files: &[Rendered], owner: Option<u32>) -> std::io::Result<()> {
    create_searchable(dir, dir)?;
    for file in files {
        let path = dir.join(file.dest.trim_start_matches('/'));
        let parent = path.parent().unwrap_or(dir);
        create_searchable(dir, parent)?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let temp = parent.join(format!(".{name}.tmp"));
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&temp)
            .map_err(|e| with_path(e, &temp))?;
        out.write_all(file.text.as_bytes())
            .and_then(|()| out.set_permissions(std::fs::Permissions::from_mode(0o644)))
            .map_err(|e| with_path(e, &temp))?;
        if let Some(id) = owner {
            std::os::unix::fs::fchown(&out, Some(id), Some(id)).map_err(|e| with_path(e, &temp))?;
        }
        drop(out);
        std::fs::rename(&temp, &path).map_err(|e| with_path(e, &path))?;
    }
    Ok(())
}

/// What is installed below `dir` for each of `dests` (empty text for a missing file).
pub fn installed(dir: &Path, dests: &[String]) -> BTreeMap<String, String> {
    dests
        .iter()
        .map(|dest| {
            let path = dir.join(dest.trim_start_matches('/'));
            (
                dest.clone(),
                std::fs::read_to_string(path).unwrap_or_default(),
            )
        })
        .collect()
}

/// `dir` and every directory from it down to `parent`, mode 0755 whatever the umask: the node's
/// processes (other ids on the host) look up the files through them.
fn create_searchable(dir: &Path, parent: &Path) -> std::io::Result<()> {
    let below = parent.strip_prefix(dir).unwrap_or(Path::new(""));
    let mut current = dir.to_path_buf();
    for part in std::iter::once(None).chain(below.components().map(Some)) {
        if let Some(part) = part {
            current.push(part);
        }
        match std::fs::DirBuilder::new().mode(0o755).create(&current) {
            Ok(()) => std::fs::set_permissions(&current, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| with_path(e, &current))?,
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(with_path(error, &current)),
        }
    }
    Ok(())
}

fn with_path(error: std::io::Error, path: &Path) -> std::io::Error {
    std::io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

#[cfg(test)]
mod tests;
