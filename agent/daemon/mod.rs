//! The daemon (`magestack-agent run`): adopts running nodes, sweeps leftovers, serves the
//! control socket and drives every node towards its desired state. Nodes outlive it.

mod alert;
mod claim;
mod core;
mod desired;
mod executor;
mod fencing;
mod init_client;
mod metrics;
mod notify;
mod reload;
mod server;
mod stack;
mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::config::{self, Config, ConfigError};
use crate::image::ImageStore;
use crate::runtime::{NodeRecord, Runtime};
use desired::DesiredState;
use executor::{Event, Executor, NetworkEvent};
use metrics::Metrics;
use notify::ServiceManager;
use server::Server;

/// The control socket's path under the run dir.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("agent.sock")
}

/// Loads the configuration and checks what parsing alone cannot: that every image exists, that
/// the recipes of those built from one are valid, that every template renders for every node
/// using it, and that the network fits this host's links and routes
/// (`config::check_against_host`).
///
/// Nodes that run keep their addresses where the plan leaves the choice to the agent (roles
/// outside the plan): the addresses are resolved again with theirs when they differ.
pub fn load_checked(path: Option<&Path>, images: &ImageStore) -> Result<Config, ConfigError> {
    check_source(config::read(path)?, images)
}

/// [`load_checked`] of a configuration text already read (one with a stack not yet written).
pub fn check_source(source: config::Source, images: &ImageStore) -> Result<Config, ConfigError> {
    let config = config::parse(&source)?;
    let running: BTreeMap<String, std::net::Ipv4Addr> =
        crate::runtime::live_records(&config.host.run_dir.join("nodes"))
            .into_iter()
            .map(|record| (record.name, record.spec.ip()))
            .collect();
    let moved = running
        .iter()
        .any(|(node, ip)| config.nodes.get(node).is_some_and(|spec| spec.ip() != *ip));
    let config = if moved {
        config::parse_keeping(&source, &running)?
    } else {
        config
    };
    let mut missing: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for node in config.nodes.values() {
        if !images.knows(&node.definition.image) {
            missing
                .entry(&node.definition.image)
                .or_default()
                .push(&node.name);
        }
    }
    let used: BTreeSet<&str> = config
        .nodes
        .values()
        .map(|n| n.definition.image.as_str())
        .collect();
    let mut problems: Vec<config::Diagnostic> = used
        .into_iter()
        .flat_map(|image| images.recipe_problems(image))
        .collect();
    // Every template renders for every node that uses it, or nothing runs.
    problems.extend(crate::template::check(&config));
    match crate::net::read_host_view() {
        Ok(host) => problems.extend(config::check_against_host(&source, &config, &host)),
        Err(error) => problems.push(source.at(
            None,
            format!(
                "cannot read this host's links and routes to check the network against: {error}"
            ),
        )),
    }
    if missing.is_empty() && problems.is_empty() {
        return Ok(config);
    }
    Err(ConfigError::Invalid(
        missing
            .into_iter()
            .map(|(image, nodes)| config::Diagnostic {
                file: config.origin.clone(),
                line: 1,
                column: 1,
                message: format!(
                    "image `{image}` (nodes {}) does not exist; built-in images: {}",
                    nodes.join(", "),
                    crate::image::BUILT_IN.join(", ")
                ),
            })
            .chain(problems)
            .collect(),
    ))
}

pub fn run(config_path: Option<PathBuf>) -> Result<()> {
    let host_images = ImageStore::for_config;
    let config = config::load(config_path.as_deref())?;
    let config = load_checked(config_path.as_deref(), &host_images(&config))?;
    for dir in [&config.host.state_dir, &config.host.log_dir] {
        crate::runtime::create_dir(dir, 0o755)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    crate::runtime::create_dir(&config.host.run_dir, 0o711)
        .with_context(|| format!("creating {}", config.host.run_dir.display()))?;
    let cgroups = crate::runtime::cgroup::Cgroups::detect().context("detecting cgroups")?;
    let _claims = claim::Claims::take(&config, &cgroups)?;
    let runtime = Arc::new(Runtime::new(&config).context("detecting cgroups")?);
    runtime
        .adopt_id_slots(&config.slots)
        .context("taking the stack's id slots")?;
    if let Some(leaf) = runtime.cgroups.enter_agent_leaf()? {
        tracing::info!(leaf = %leaf.display(), "moved into the leaf of the delegated cgroup");
    }
    runtime
        .network
        .ensure_bridge()
        .with_context(|| format!("setting up bridge {}", config.network.bridge))?;
    runtime
        .network
        .apply_policy(&config)
        .context("installing the inter-node policy")?;
    tracing::info!(
        config = %config.origin,
        nodes = config.nodes.len(),
        cgroup = ?runtime.cgroups.version(),
        cgroup_root = ?runtime.cgroups.node_roots(),
        "magestack-agent starting"
    );

    // Re-adopt what kept running, remember what died, sweep the rest.
    let mut adopted = Vec::new();
    let mut dead_restarts = BTreeMap::new();
    for node in runtime.leftover_nodes() {
        match runtime.adopt(&node) {
            Some(handle) => {
                tracing::info!(
                    node,
                    role = handle.record.spec.role,
                    pid = handle.record.pid,
                    "re-adopted running node"
                );
                adopted.push(handle);
            }
            None => {
                if let Ok(record) = NodeRecord::load(&runtime.dirs.node(&node).record()) {
                    dead_restarts.insert(node, record.restarts);
                }
            }
        }
    }
    let adopted_names: BTreeSet<String> = adopted.iter().map(|h| h.record.name.clone()).collect();
    let configured: BTreeSet<String> = config.nodes.keys().cloned().collect();
    runtime.sweep(&adopted_names, &configured);
    dead_restarts.retain(|node, _| configured.contains(node));
    // Built-in images take milliseconds: ready before the first start. Images from recipes take
    // minutes: each is built by the first start of a node that needs it, off the event loop.
    for image in config
        .nodes
        .values()
        .map(|n| n.definition.image.as_str())
        .filter(|image| crate::image::BUILT_IN.contains(image))
        .collect::<BTreeSet<_>>()
    {
        if let Err(error) = runtime.images.rootfs(image) {
            tracing::error!("image {image}: {error}");
        }
    }

    let desired = DesiredState::load(&config.host.state_dir).context("reading desired state")?;
    let socket = socket_path(&config.host.run_dir);
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let mut service = ServiceManager::from_env();
    let result = tokio.block_on(async {
        let listener = bind_control_socket(&socket)?;
        let metrics_listener = match config.metrics.listen {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .with_context(|| format!("binding the metrics listener on {address}"))?,
            ),
            None => None,
        };
        let metrics = Arc::new(Metrics::default());
        let (events, mut inbox) = mpsc::unbounded_channel();
        let notifications = events.clone();
        crate::net::watch_links(&runtime.network.settings, move || {
            let _ = notifications.send(Event::Network(NetworkEvent::Changed));
        })?;
        let stack = Arc::new(stack::StackKeeper::new(
            config_path,
            &config.host.state_dir,
            runtime.clone(),
            events.clone(),
        ));
        let server = Arc::new(Server {
            events: events.clone(),
            stack: stack.clone(),
            runtime: runtime.clone(),
            started: Instant::now(),
        });
        let mut executor = Executor::new(
            config,
            runtime.clone(),
            desired,
            adopted,
            dead_restarts,
            events,
            stack,
        );
        let began = Instant::now();
        executor.tick();
        metrics.observe_reconcile(began.elapsed());
        tokio::spawn(server.clone().serve(listener));
        if let Some(listener) = metrics_listener {
            let address = listener.local_addr()?;
            tokio::spawn(metrics::serve(listener, server.clone(), metrics.clone()));
            tracing::info!(%address, "serving metrics at /metrics");
        }
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut hangup = signal(SignalKind::hangup())?;
        // The watchdog is fed from this loop, so a core that hangs stops feeding it and systemd
        // restarts the daemon (the nodes keep running and are re-adopted).
        let mut watchdog = service.watchdog_every.map(|every| {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        // Leases are renewed from this loop too: a hung core renews nothing and, on a paired
        // host, its nodes fence.
        let mut leases = tokio::time::interval(executor.lease_interval());
        leases.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(socket = %socket.display(), "ready");
        service.ready(crate::api::control::summary(&executor.node_states()));
        loop {
            let wakeup = executor.next_wakeup();
            tokio::select! {
                Some(event) = inbox.recv() => {
                    let began = Instant::now();
                    executor.handle(event);
                    metrics.observe_reconcile(began.elapsed());
                }
                _ = sleep_until(wakeup) => {
                    let began = Instant::now();
                    executor.tick();
                    metrics.observe_reconcile(began.elapsed());
                }
                _ = next_tick(&mut watchdog) => service.watchdog(),
                _ = leases.tick() => {
                    executor.renew_leases();
                    continue;
                }
                _ = hangup.recv() => {
                    let server = server.clone();
                    tokio::spawn(async move { server.reload_on_signal().await });
                }
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
            }
            service.status(crate::api::control::summary(&executor.node_states()));
        }
        service.stopping();
        tracing::info!("stopping the agent; nodes keep running");
        anyhow::Ok(())
    });
    let _ = std::fs::remove_file(&socket);
    // With no node left the parent cgroup is removed too; with nodes running this is a no-op.
    runtime
        .cgroups
        .remove_parent_if_empty(&runtime.cgroup_parent);
    // Start or stop jobs still in flight are abandoned; the next start sweeps what they leave.
    tokio.shutdown_background();
    result
}

/// The next tick of `interval`, or never without one.
async fn next_tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn bind_control_socket(path: &Path) -> Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(error).with_context(|| format!("removing stale {}", path.display()))
        }
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(listener)
}
