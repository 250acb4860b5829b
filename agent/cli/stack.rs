//! `config log`, `config diff [REV [REV]]`, `config rollback REV`: the stack's history. Log and
//! diff read the history under the state dir directly (they work while the agent is down);
//! rollback asks the agent, which checks, commits and sends the version like a reload.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use magestack_agent::api::control::Request;
use magestack_agent::config;
use magestack_agent::stack::{version::short, History};

#[derive(Subcommand)]
pub enum StackCommand {
    /// The stack's versions, newest first: counter, id, time, the host that made it, summary.
    Log {
        /// At most this many.
        #[arg(short = 'n', long)]
        limit: Option<usize>,
    },
    /// What changed: with no REV, from the version in force to stack.toml as it is now (what a
    /// reload would commit); with one, from REV to the version in force; with two, from the
    /// first to the second. A REV is a counter or an id from `config log`.
    Diff {
        #[arg(num_args = 0..=2)]
        revs: Vec<String>,
    },
    /// Make a new version equal to REV: checked, committed and sent to the partner like a
    /// reload, and run.
    Rollback { rev: String },
}

pub fn run(config_path: &Option<PathBuf>, command: StackCommand) -> Result<ExitCode> {
    match command {
        StackCommand::Log { limit } => {
            let history = history(config_path.as_deref())?;
            for entry in history.log(limit)? {
                let version = &entry.version;
                println!(
                    "{:>5}  {}  {}  {:<12} {}",
                    version.name.counter,
                    short(&version.name.id),
                    utc(version.time_unix),
                    version.host,
                    version.summary
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        StackCommand::Diff { revs } => {
            let history = history(config_path.as_deref())?;
            let head = || {
                history
                    .head()?
                    .ok_or(magestack_agent::stack::HistoryError::Empty)
            };
            let named = |rev: &str| -> Result<(String, String)> {
                let entry = history.find(rev)?;
                Ok((
                    entry.version.name.counter.to_string(),
                    history.text(&entry)?,
                ))
            };
            let ((old_name, old), (new_name, new)) = match revs.as_slice() {
                [] => {
                    let head = head()?;
                    let path = stack_file(config_path.as_deref())?;
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    (
                        (head.version.name.counter.to_string(), history.text(&head)?),
                        ("stack.toml".to_string(), text),
                    )
                }
                [rev] => {
                    let head = head()?;
                    (
                        named(rev)?,
                        (head.version.name.counter.to_string(), history.text(&head)?),
                    )
                }
                [old, new] => (named(old)?, named(new)?),
                _ => bail!("config diff takes at most two versions"),
            };
            print!("{}", history.diff((&old_name, &old), (&new_name, &new))?);
            Ok(ExitCode::SUCCESS)
        }
        StackCommand::Rollback { rev } => {
            match super::request(config_path, &Request::ConfigRollback { rev })? {
                magestack_agent::api::control::Response::Reloaded(report) => {
                    Ok(super::reloaded(&report))
                }
                other => super::unexpected(other),
            }
        }
    }
}

fn history(config_path: Option<&Path>) -> Result<History> {
    let state_dir = config::state_dir(config_path)
        .map_err(|error| anyhow::anyhow!("{error}"))
        .context("reading the configuration to find the state dir")?;
    match History::existing(&state_dir) {
        Some(history) => Ok(history),
        None => bail!(
            "no stack history in {}: a host keeps one once it pairs (its nodes move into stack.toml)",
            state_dir.display()
        ),
    }
}

fn stack_file(config_path: Option<&Path>) -> Result<PathBuf> {
    let agent = config::read_agent(config_path).map_err(|error| anyhow::anyhow!("{error}"))?;
    config::stack_path(&agent).context("the embedded default configuration has no stack file")
}

/// `2026-12-04 18:09:14Z`.
fn utc(unix: u64) -> String {
    let Ok(time) = time::OffsetDateTime::from_unix_timestamp(unix as i64) else {
        return unix.to_string();
    };
    format!(
        "{}-{:02}-{:02} {:02}:{:02}:{:02}Z",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second()
    )
}
