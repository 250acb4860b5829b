//! Command-line parsing and the client side of every subcommand.

mod client;
mod table;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use magestack_agent::api::control::{Request, Response};
use magestack_agent::config;
use magestack_agent::runtime::enter::{exec_in_node, ExecRequest};

#[derive(Parser)]
#[command(
    name = "magestack-agent",
    version,
    about = "Runs the MageStack roles as isolated nodes on this host"
)]
struct Cli {
    /// Host configuration (default: $MAGESTACK_CONFIG, else /etc/magestack/agent.toml if it
    /// exists, else the embedded default).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (what systemd runs).
    Run,
    /// Show the host and every node.
    Status {
        #[arg(long)]
        json: bool,
        nodes: Vec<String>,
    },
    /// Start nodes and wait until they run.
    Start {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Stop nodes and wait until they are cleaned up; they stay stopped across restarts.
    Stop {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Stop and start nodes again.
    Restart {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Re-read the configuration; restart only nodes whose definition changed.
    Reload,
    /// Run a command inside a node, as its root.
    Exec {
        node: String,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration; errors name file, line and column.
    Check,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run) {
        // A client piped into `head` should end quietly when the pipe closes, like any Unix tool.
        // SAFETY: resetting a signal disposition to its default has no memory effects.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    init_tracing(matches!(cli.command, Command::Run));
    match dispatch(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("magestack-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(daemon: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("MAGESTACK_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(if daemon { "info" } else { "warn" })
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    let config_path = config::locate(cli.config.as_deref());
    match cli.command {
        Command::Run => {
            magestack_agent::daemon::run(config_path)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => config_check(config_path),
        Command::Status { json, nodes } => {
            let report = match request(&config_path, &Request::Status { nodes })? {
                Response::Status(report) => report,
                other => return unexpected(other),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", table::render(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Start { nodes } => done(request(&config_path, &Request::Start { nodes })?),
        Command::Stop { nodes } => done(request(&config_path, &Request::Stop { nodes })?),
        Command::Restart { nodes } => done(request(&config_path, &Request::Restart { nodes })?),
        Command::Reload => match request(&config_path, &Request::Reload)? {
            Response::Reloaded(report) => {
                for (what, nodes) in [
                    ("started", &report.started),
                    ("stopped", &report.stopped),
                    ("restarted", &report.restarted),
                    ("unchanged", &report.unchanged),
                ] {
                    if !nodes.is_empty() {
                        println!("{what}: {}", nodes.join(" "));
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            other => unexpected(other),
        },
        Command::Exec { node, command } => {
            let target = match request(&config_path, &Request::ExecTarget { node: node.clone() })? {
                Response::ExecTarget(target) => target,
                other => return unexpected(other),
            };
            let code = exec_in_node(&ExecRequest {
                node,
                pid: target.pid,
                cgroup_join: target.cgroup_join.into_iter().map(PathBuf::from).collect(),
                capabilities: target.capabilities,
                command,
                tty: std::io::stdin().is_terminal(),
            })?;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
    }
}

fn config_check(path: Option<PathBuf>) -> Result<ExitCode> {
    let state_dir = config::load(path.as_deref())
        .map(|c| c.host.state_dir)
        .map_err(|error| anyhow::anyhow!("{error}"));
    let result = state_dir.and_then(|dir| {
        magestack_agent::daemon::load_checked(
            path.as_deref(),
            &magestack_agent::image::ImageStore::new(&dir),
        )
        .map_err(|error| anyhow::anyhow!("{error}"))
    });
    match result {
        Ok(config) => {
            println!(
                "{}: ok, {} nodes: {}",
                config.origin,
                config.nodes.len(),
                config.nodes.keys().cloned().collect::<Vec<_>>().join(" ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("{error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn request(config_path: &Option<PathBuf>, request: &Request) -> Result<Response> {
    let run_dir = config::run_dir(config_path.as_deref())
        .map_err(|error| anyhow::anyhow!("{error}"))
        .context("reading the configuration to find the agent's socket")?;
    let socket = magestack_agent::daemon::socket_path(&run_dir);
    client::send(&socket, request)
}

fn done(response: Response) -> Result<ExitCode> {
    match response {
        Response::Done { .. } => Ok(ExitCode::SUCCESS),
        other => unexpected(other),
    }
}

fn unexpected(response: Response) -> Result<ExitCode> {
    match response {
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the agent: {other:?}"),
    }
}
