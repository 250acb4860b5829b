//! The stack's versions on this host: a reload or a rollback checks the stack and commits it as
//! a new version, a version from the partner is checked here and applied or refused, and a
//! standalone host's nodes and roles move into the stack when it pairs. The file work and git
//! run on blocking threads, one operation at a time; what comes of them goes to the executor as
//! events (the link tells the partner) and as reloads of the core.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};

use super::executor::{Command, Event};
use crate::api::control::Response;
use crate::config::{self, Config, ConfigError, Source};
use crate::pair::wire::StackOffer;
use crate::runtime::{unix_now, write_atomic, Runtime};
use crate::stack::{
    addresses, slots, summary::summarize, History, HistoryError, Offer, Version, VersionId,
};

/// What became of the stack, for the pairing to tell the partner and show.
pub enum StackEvent {
    /// A version this host made (a reload, a rollback, the move out of agent.toml).
    Committed(StackOffer),
    /// The partner's version, checked and in force here.
    Applied(StackOffer),
    /// The partner's version, refused here, and why.
    Refused { version: VersionId, reason: String },
}

/// What a standalone host's move of its nodes and roles into the stack did.
pub struct Moved {
    pub stack: PathBuf,
    pub nodes: usize,
    pub roles: usize,
}

impl std::fmt::Display for Moved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = |n: usize, what: &str| match n {
            1 => format!("1 {what}"),
            n => format!("{n} {what}s"),
        };
        write!(
            f,
            "moved {} and {} from agent.toml into {} (edit it and reload on either host)",
            count(self.nodes, "node"),
            count(self.roles, "role"),
            self.stack.display()
        )
    }
}

pub struct StackKeeper {
    config_path: Option<PathBuf>,
    state_dir: PathBuf,
    runtime: Arc<Runtime>,
    events: mpsc::UnboundedSender<Event>,
    /// One stack operation at a time: each reads the version in force and writes the next.
    busy: Mutex<()>,
}

impl StackKeeper {
    pub fn new(
        config_path: Option<PathBuf>,
        state_dir: &Path,
        runtime: Arc<Runtime>,
        events: mpsc::UnboundedSender<Event>,
    ) -> StackKeeper {
        StackKeeper {
            config_path,
            state_dir: state_dir.to_path_buf(),
            runtime,
            events,
            busy: Mutex::new(()),
        }
    }

    /// The version in force and its text, told to the partner on every link.
    pub fn head(&self) -> Result<Option<StackOffer>, HistoryError> {
        let Some(history) = History::existing(&self.state_dir) else {
            return Ok(None);
        };
        let Some(head) = history.head()? else {
            return Ok(None);
        };
        Ok(Some(StackOffer {
            text: history.text(&head)?,
            version: head.version,
        }))
    }

    /// `reload`: the configuration checked; a stack that differs from the version in force is
    /// committed as the next one and told to the partner. Nothing changes when it is invalid.
    pub async fn reload(self: &Arc<Self>) -> Result<(Config, Option<Version>), String> {
        let _busy = self.busy.lock().await;
        let keeper = self.clone();
        let (config, offer) = tokio::task::spawn_blocking(move || keeper.check_and_commit())
            .await
            .map_err(|error| error.to_string())??;
        Ok((config, self.committed(offer)))
    }

    /// `config rollback REV`: a new version equal to REV, checked, written, committed and told
    /// to the partner like a reload's.
    pub async fn rollback(self: &Arc<Self>, rev: String) -> Result<(Config, Version), String> {
        let _busy = self.busy.lock().await;
        let keeper = self.clone();
        let (config, offer) = tokio::task::spawn_blocking(move || keeper.roll_back(&rev))
            .await
            .map_err(|error| error.to_string())??;
        let version = offer.version.clone();
        self.committed(Some(offer));
        Ok((config, version))
    }

    /// Checks the partner's version and applies it (written, committed as the same version,
    /// the core reloaded) or refuses it; either way the pairing hears of it.
    pub fn take_partner_version(self: &Arc<Self>, offer: StackOffer) {
        let keeper = self.clone();
        tokio::spawn(async move {
            let _busy = keeper.busy.lock().await;
            let worker = keeper.clone();
            let candidate = offer.clone();
            let outcome = tokio::task::spawn_blocking(move || worker.apply(&candidate))
                .await
                .map_err(|error| error.to_string())
                .and_then(|outcome| outcome);
            let version = offer.version.name.clone();
            match outcome {
                Ok(None) => {}
                Ok(Some(config)) => {
                    tracing::info!(version = %version, host = offer.version.host, summary = offer.version.summary, "stack: applied the partner's version");
                    let _ = keeper.events.send(Event::Stack(StackEvent::Applied(offer)));
                    keeper.reload_core(config).await;
                }
                Err(reason) => {
                    tracing::error!(version = %version, "stack: refused the partner's version: {reason}");
                    let _ = keeper
                        .events
                        .send(Event::Stack(StackEvent::Refused { version, reason }));
                }
            }
        });
    }

    /// When this host pairs: nodes and roles move out of agent.toml into the stack, once (a
    /// host with a stack already keeps it). The inviting host (`commit`) checks the stack,
    /// gives it its id slots (this host's idmaps.json migrates into it) and commits it as the
    /// first version before any file changes; a joining host, which runs no nodes, only moves
    /// them, and its partner's version replaces them.
    pub fn move_into_stack(&self, host: &str, commit: bool) -> Result<Option<Moved>, String> {
        let Some(agent_path) = &self.config_path else {
            return Ok(None);
        };
        let agent = config::read_agent(Some(agent_path)).map_err(|e| e.to_string())?;
        let Some(stack_path) = config::stack_path(&agent) else {
            return Ok(None);
        };
        if stack_path.exists() {
            return Ok(None);
        }
        let split =
            crate::stack::migrate::split(&agent.name, &agent.text, host, config::DEFAULT_NODES)
                .map_err(|e| e.to_string())?;
        let stack = match commit {
            true => {
                let moved = Source {
                    text: split.agent.clone(),
                    ..agent.clone()
                };
                self.settle(&moved, &split.stack, true)?.1
            }
            false => split.stack.clone(),
        };
        let write = |path: &Path, text: &str| {
            write_atomic(path, text.as_bytes())
                .map_err(|error| format!("writing {}: {error}", path.display()))
        };
        let before = agent_path.with_extension("toml.before-stack");
        write(&before, &agent.text)?;
        write(&stack_path, &stack)?;
        write(agent_path, &split.agent)?;
        if commit {
            let offer = self.commit_if_changed(
                host,
                &stack,
                Some("nodes and roles moved from agent.toml"),
            )?;
            self.committed(offer);
        }
        let moved = Moved {
            stack: stack_path,
            nodes: split.nodes,
            roles: split.roles,
        };
        tracing::info!(
            stack = %moved.stack.display(),
            kept = %before.display(),
            "stack: {moved}"
        );
        Ok(Some(moved))
    }

    fn committed(&self, offer: Option<StackOffer>) -> Option<Version> {
        let offer = offer?;
        let version = offer.version.clone();
        tracing::info!(version = %version.name, summary = version.summary, "stack: committed a new version");
        let _ = self.events.send(Event::Stack(StackEvent::Committed(offer)));
        Some(version)
    }

    /// The partner's version is in force here now: the core runs it like a reload.
    async fn reload_core(&self, config: Config) {
        let (reply, answer) = oneshot::channel();
        let command = Command::Reload(Box::new(config));
        if self.events.send(Event::Command(command, reply)).is_err() {
            return;
        }
        match answer.await {
            Ok(Response::Reloaded(report)) => tracing::info!(
                started = ?report.started,
                stopped = ?report.stopped,
                restarted = ?report.restarted,
                "stack: the partner's version is running"
            ),
            Ok(other) => tracing::error!("stack: reloading the partner's version: {other:?}"),
            Err(_) => {}
        }
    }

    fn read_agent(&self) -> Result<Source, String> {
        config::read_agent(self.config_path.as_deref())
            .map_err(|error| format!("configuration not reloaded:\n{error}"))
    }

    /// agent.toml `agent` with the stack `text`, checked against this host.
    fn check(&self, agent: &Source, text: &str) -> Result<Config, String> {
        config::with_stack(agent.clone(), text)
            .and_then(|source| super::check_source(source, &self.runtime.images))
            .map_err(|error: ConfigError| format!("configuration not reloaded:\n{error}"))
    }

    /// The stack `text` checked; with `assign`, given what a version names once and for
    /// all and lacks (id slots, this host's recorded ones first; the addresses of nodes outside
    /// the plan, where they are now) and checked again; then its slots taken by this host,
    /// which refuses one that contradicts its record, naming the node. Without `assign` (a
    /// partner's version) a lack refuses it: both hosts must use the same values.
    fn settle(&self, agent: &Source, text: &str, assign: bool) -> Result<(Config, String), String> {
        let config = self.check(agent, text)?;
        let added = slots::plan(
            &slots::needed(&config),
            &config.slots,
            &self.runtime.id_slots(),
        )
        .map_err(|error| format!("id slots: {error}"))?;
        let unpinned = addresses::unpinned(&config, text).map_err(|e| e.to_string())?;
        let (config, text) = match (added.is_empty() && unpinned.is_empty(), assign) {
            (true, _) => (config, text.to_string()),
            (false, true) => {
                let text = slots::with_slots(text, &added).map_err(|e| e.to_string())?;
                let text =
                    addresses::with_addresses(&text, &unpinned).map_err(|e| e.to_string())?;
                (self.check(agent, &text)?, text)
            }
            (false, false) => {
                let slotless: Vec<&String> = added.keys().collect();
                let addressless: Vec<&String> = unpinned.keys().collect();
                return Err(format!(
                    "the stack gives no id slot to {slotless:?} and no address to {addressless:?} (nodes outside the address plan); a version names both for every node"
                ));
            }
        };
        self.runtime
            .adopt_id_slots(&config.slots)
            .map_err(|error| format!("id slots: {error}"))?;
        Ok((config, text))
    }

    /// The stack's text is read once, so the version committed is the text checked; the id
    /// slots and addresses it lacked are written into stack.toml with it.
    fn check_and_commit(&self) -> Result<(Config, Option<StackOffer>), String> {
        let agent = self.read_agent()?;
        let Some(path) = config::stack_path(&agent).filter(|path| path.exists()) else {
            let config = config::read(self.config_path.as_deref())
                .and_then(|source| super::check_source(source, &self.runtime.images))
                .map_err(|error| format!("configuration not reloaded:\n{error}"))?;
            return Ok((config, None));
        };
        let text = std::fs::read_to_string(&path).map_err(|error| {
            format!(
                "configuration not reloaded: reading {}: {error}",
                path.display()
            )
        })?;
        let (config, settled) = self.settle(&agent, &text, true)?;
        if settled != text {
            write_atomic(&path, settled.as_bytes())
                .map_err(|error| format!("writing {}: {error}", path.display()))?;
        }
        let offer = self.commit_if_changed(&config.host.name, &settled, None)?;
        Ok((config, offer))
    }

    fn roll_back(&self, rev: &str) -> Result<(Config, StackOffer), String> {
        let history = History::existing(&self.state_dir).ok_or(HistoryError::Empty.to_string())?;
        let entry = history.find(rev).map_err(|e| e.to_string())?;
        let text = history.text(&entry).map_err(|e| e.to_string())?;
        let (config, text) = self.settle(&self.read_agent()?, &text, true)?;
        let path = config
            .stack
            .path
            .clone()
            .ok_or("this configuration has no stack file")?;
        let summary = format!("rollback to version {}", entry.version.name);
        let entry = self.commit(&history, &config.host.name, &text, &summary)?;
        write_atomic(&path, text.as_bytes())
            .map_err(|error| format!("writing {}: {error}", path.display()))?;
        Ok((
            config,
            StackOffer {
                version: entry,
                text,
            },
        ))
    }

    /// The partner's version checked, written and committed; `None` when it is no longer newer
    /// than the one in force (a reload here went first).
    fn apply(&self, offer: &StackOffer) -> Result<Option<Config>, String> {
        let history = History::open(&self.state_dir).map_err(|e| e.to_string())?;
        let head = history.head().map_err(|e| e.to_string())?;
        if crate::stack::offer(head.as_ref().map(|h| &h.version.name), &offer.version.name)
            != Offer::Newer
        {
            return Ok(None);
        }
        let (config, _) = self.settle(&self.read_agent()?, &offer.text, false)?;
        let path =
            config.stack.path.clone().ok_or(
                "this host runs the embedded default configuration, which has no stack file",
            )?;
        if let Some(head) =
            head.filter(|head| head.version.name.counter == offer.version.name.counter)
        {
            tracing::warn!(
                ours = %head.version.name,
                theirs = %offer.version.name,
                "stack: the partner's version made at the same time as this host's wins (the greater id); this host's stays in `config log`"
            );
        }
        history
            .commit_received(&offer.text, &offer.version)
            .map_err(|e| e.to_string())?;
        write_atomic(&path, offer.text.as_bytes())
            .map_err(|error| format!("writing {}: {error}", path.display()))?;
        Ok(Some(config))
    }

    /// Commits `text` when it differs from the version in force, with `summary` or else what
    /// changed.
    fn commit_if_changed(
        &self,
        host: &str,
        text: &str,
        summary: Option<&str>,
    ) -> Result<Option<StackOffer>, String> {
        let history = History::open(&self.state_dir).map_err(|e| e.to_string())?;
        let head = history.head().map_err(|e| e.to_string())?;
        let previous = match &head {
            Some(head) => Some(history.text(head).map_err(|e| e.to_string())?),
            None => None,
        };
        if previous.as_deref() == Some(text) {
            return Ok(None);
        }
        let summary = summary
            .map(str::to_string)
            .unwrap_or_else(|| summarize(previous.as_deref(), text));
        let version = self.commit(&history, host, text, &summary)?;
        Ok(Some(StackOffer {
            version,
            text: text.to_string(),
        }))
    }

    fn commit(
        &self,
        history: &History,
        host: &str,
        text: &str,
        summary: &str,
    ) -> Result<Version, String> {
        history
            .commit_local(text, host, unix_now(), summary)
            .map(|entry| entry.version)
            .map_err(|e| e.to_string())
    }
}
