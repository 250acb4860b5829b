//! Command-line parsing and the client side of every subcommand.

mod client;
mod image;
mod logs;
mod pair;
mod stack;
mod table;
mod volume;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};

use magestack_agent::api::control::{ReloadReport, Request, Response};
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
    /// Re-read the configuration; restart only nodes whose definition changed (also SIGHUP).
    Reload,
    /// Show a node's process output (every process, prefixed by its name, without PROCESS).
    Logs {
        node: String,
        process: Option<String>,
        /// Keep showing output as it is written.
        #[arg(short, long)]
        follow: bool,
        /// Lines shown per process before following.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
    },
    /// Run a command inside a node, as its root or as another user of the node (a pty when stdin
    /// is a terminal); exits with the command's exit code.
    Exec {
        /// A user name or uid from the node's /etc/passwd.
        #[arg(short, long)]
        user: Option<String>,
        node: String,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print a shell completion script (e.g. `magestack-agent completions bash >
    /// /etc/bash_completion.d/magestack-agent`).
    Completions { shell: clap_complete::Shell },
    /// The image store: build images from their recipes, list them, remove them.
    Image {
        #[command(subcommand)]
        command: image::ImageCommand,
    },
    /// Pair this host with a partner host: invite, join, and the link's status.
    Pair {
        #[command(subcommand)]
        command: pair::PairCommand,
    },
    /// Run a pair's witness (on a third machine): prints its token, alone on one line, at its
    /// first start; `pair witness TOKEN` on a host of the pair adds it.
    Witness {
        /// The address the pair's hosts reach it at, like 10.0.0.3:7947 (it goes into the token).
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Its state dir: identity, enrollment, node records.
        #[arg(long)]
        state: PathBuf,
        /// How long a host's silence is tolerated: the hosts' `[pair] lease`.
        #[arg(long, default_value = "500ms", value_parser = parse_lease)]
        lease: std::time::Duration,
    },
    /// The nodes' persistent volumes: list them, remove one (never done otherwise).
    Volume {
        #[command(subcommand)]
        command: volume::VolumeCommand,
    },
    /// Print the manual page (roff), e.g. `magestack-agent man | man -l -`; with `--dir`, write it
    /// and one page per subcommand there instead.
    Man {
        /// Where to write magestack-agent.1 and magestack-agent-<command>.1, e.g.
        /// /usr/local/share/man/man1.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration; errors name file, line and column.
    Check,
    #[command(flatten)]
    Stack(stack::StackCommand),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run | Command::Witness { .. }) {
        // A client piped into `head` should end quietly when the pipe closes, like any Unix tool.
        // The servers keep Rust's SIGPIPE ignored: a peer that resets a socket must not kill them.
        // SAFETY: resetting a signal disposition to its default has no memory effects.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    init_tracing(matches!(
        cli.command,
        Command::Run | Command::Witness { .. }
    ));
    match dispatch(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("magestack-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The daemon logs to the journal when systemd connected its stderr there (JOURNAL_STREAM names
/// that stream), with event fields such as `node`, `role` and `process` as journal fields
/// (`journalctl NODE=web1`); everything else logs to stderr.
fn init_tracing(daemon: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter =
        tracing_subscriber::EnvFilter::try_from_env("MAGESTACK_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(if daemon { "info" } else { "warn" })
        });
    let journal = (daemon && stderr_is_journal())
        .then(|| tracing_journald::layer().ok())
        .flatten()
        .map(|layer| {
            layer
                .with_syslog_identifier("magestack-agent".into())
                .with_field_prefix(None)
        });
    // Colour codes only for a person at a terminal, never into a file or a pipe.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let stderr = journal.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(colour)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(journal)
        .with(stderr)
        .init();
}

/// Whether stderr is the journal stream systemd set up (JOURNAL_STREAM is `<dev>:<inode>` of
/// it), as opposed to a stream a child of the service inherited and redirected.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    stream.to_str() == Some(&format!("{}:{}", stat.st_dev, stat.st_ino))
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
        Command::Config {
            command: ConfigCommand::Stack(command),
        } => stack::run(&config_path, command),
        Command::Status { json, nodes } => {
            let report = match request(&config_path, &Request::Status { nodes })? {
                Response::Status(report) => report,
                other => return unexpected(other),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                let colour = std::io::stdout().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
                print!("{}", table::render(&report, colour));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Start { nodes } => done(request(&config_path, &Request::Start { nodes })?),
        Command::Stop { nodes } => done(request(&config_path, &Request::Stop { nodes })?),
        Command::Restart { nodes } => done(request(&config_path, &Request::Restart { nodes })?),
        Command::Reload => match request(&config_path, &Request::Reload)? {
            Response::Reloaded(report) => Ok(reloaded(&report)),
            other => unexpected(other),
        },
        Command::Logs {
            node,
            process,
            follow,
            lines,
        } => {
            let log_dir = config::log_dir(config_path.as_deref())
                .map_err(|error| anyhow::anyhow!("{error}"))
                .context("reading the configuration to find the log dir")?;
            logs::show(&logs::LogsRequest {
                log_dir,
                node,
                process,
                follow,
                lines,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Image { command } => image::run(config_path.as_deref(), command),
        Command::Volume { command } => volume::run(config_path.as_deref(), command),
        Command::Pair { command } => pair::run(&config_path, command),
        Command::Witness {
            listen,
            state,
            lease,
        } => {
            magestack_agent::witness::run(listen, &state, lease)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "magestack-agent",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir: None } => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir: Some(dir) } => {
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing manual pages into {}", dir.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec {
            user,
            node,
            command,
        } => {
            let target = match request(&config_path, &Request::ExecTarget { node: node.clone() })? {
                Response::ExecTarget(target) => target,
                other => return unexpected(other),
            };
            let code = exec_in_node(&ExecRequest {
                node,
                pid: target.pid,
                cgroup_join: target.cgroup_join.into_iter().map(PathBuf::from).collect(),
                capabilities: target.capabilities,
                user_namespace: target.user_namespace,
                user,
                command,
                tty: std::io::stdin().is_terminal(),
            })?;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
    }
}

fn parse_lease(text: &str) -> Result<std::time::Duration, String> {
    match config::parse_duration(text)? {
        lease if lease.is_zero() => Err("more than 0".into()),
        lease => Ok(lease),
    }
}

fn config_check(path: Option<PathBuf>) -> Result<ExitCode> {
    let images = config::load(path.as_deref())
        .map(|c| magestack_agent::image::ImageStore::for_config(&c))
        .map_err(|error| anyhow::anyhow!("{error}"));
    let result = images.and_then(|images| {
        magestack_agent::daemon::load_checked(path.as_deref(), &images)
            .map_err(|error| anyhow::anyhow!("{error}"))
    });
    match result {
        Ok(config) => {
            for warning in magestack_agent::runtime::quota::unenforced(&config) {
                eprintln!("warning: {warning}");
            }
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

/// Prints what a reload did; a refused change (the node runs its previous definition) fails it.
fn reloaded(report: &ReloadReport) -> ExitCode {
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
    for setting in &report.not_applied {
        println!("not applied: {setting}");
    }
    if let Some(version) = &report.stack_version {
        println!(
            "stack version {} committed: {}",
            version.name, version.summary
        );
    }
    for refused in &report.refused {
        eprintln!(
            "refused: {}: {}; it runs its previous definition",
            refused.node, refused.error
        );
    }
    if report.refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
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
