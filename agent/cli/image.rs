//! `image build/list/rm`: the host's image store, used directly (no daemon needed). Which nodes
//! use an image comes from the nodes' records in the run dir, so `rm` is refused while a node
//! runs from the image whether or not the daemon is up.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Subcommand;
use comfy_table::presets::NOTHING;
use comfy_table::Table;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use magestack_agent::config;
use magestack_agent::image::{BuildProgress, BuildStep, ImageError, ImageInfo, ImageStore};
use magestack_agent::runtime::{live_records, HostDirs};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build an image from its recipe (`images/NAME.toml` next to the configuration file, else
    /// the shipped one); nothing is built when an image of the same recipe exists.
    Build {
        name: String,
        /// Build again against the mirror's current packages even if an image of this recipe
        /// exists (kept as is when the package versions come out the same).
        #[arg(long)]
        refresh: bool,
    },
    /// List the built images: name, digest, size, when built, which nodes use it.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove every build of an image; refused while a node runs from it.
    Rm { name: String },
}

/// Set by SIGINT, SIGTERM or SIGHUP during a build, which then stops the builder and cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn interrupted(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

pub fn run(config_path: Option<&Path>, command: ImageCommand) -> Result<ExitCode> {
    let config = config::load(config_path).map_err(|error| anyhow::anyhow!("{error}"))?;
    let store = ImageStore::for_config(&config);
    let dirs = HostDirs {
        state_dir: config.host.state_dir.clone(),
        run_dir: config.host.run_dir.clone(),
        log_dir: config.host.log_dir.clone(),
    };
    match command {
        ImageCommand::Build { name, refresh } => build(&store, &name, refresh),
        ImageCommand::List { json } => list(&store, &dirs, json),
        ImageCommand::Rm { name } => {
            let users = nodes_using(&dirs).remove(&name).unwrap_or_default();
            if !users.is_empty() {
                return Err(ImageError::InUse { name, nodes: users }.into());
            }
            let removed = store.remove(&name)?;
            println!(
                "{name}: removed {removed} build{}",
                if removed == 1 { "" } else { "s" }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn build(store: &ImageStore, name: &str, refresh: bool) -> Result<ExitCode> {
    for signal in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(interrupted),
            nix::sys::signal::SaFlags::empty(),
            nix::sys::signal::SigSet::empty(),
        );
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { nix::sys::signal::sigaction(signal, &action) }
            .with_context(|| format!("installing a handler for {signal}"))?;
    }
    store
        .sweep_partial()
        .context("removing what earlier builds left")?;
    let began = Instant::now();
    let progress: Box<dyn BuildProgress> = if std::io::stderr().is_terminal() {
        Box::new(BarProgress::new())
    } else {
        Box::new(LineProgress)
    };
    let built = store.build(name, refresh, progress.as_ref(), &INTERRUPTED);
    drop(progress);
    let built = match built {
        Err(error @ ImageError::NotFound { .. }) => {
            let others: Vec<String> = store
                .names()
                .into_iter()
                .filter(|n| !magestack_agent::image::BUILT_IN.contains(&n.as_str()))
                .collect();
            anyhow::bail!("{error}; with a recipe or a build: {}", others.join(", "))
        }
        other => other?,
    };
    let image = &built.image;
    let what = match (built.fresh, refresh) {
        (true, _) => format!("built in {:.1} s", began.elapsed().as_secs_f64()),
        (false, true) => format!(
            "rebuilt in {:.1} s, same package versions: kept",
            began.elapsed().as_secs_f64()
        ),
        (false, false) => "up to date".to_owned(),
    };
    println!(
        "{name}: {what}: {} ({}, {} packages)",
        short(&image.digest),
        size(image.size_bytes),
        image.packages.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// A bar of the build's steps with the step and the builder's last line beside it.
struct BarProgress {
    bar: ProgressBar,
}

impl BarProgress {
    fn new() -> Self {
        let bar = ProgressBar::new(1);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            )
            .expect("static template"),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        BarProgress { bar }
    }
}

impl BuildProgress for BarProgress {
    fn step(&self, image: &str, step: BuildStep, number: usize, total: usize) {
        self.bar.set_length(total as u64);
        self.bar.set_position(number.saturating_sub(1) as u64);
        self.bar.set_message(format!("{image}: {step}"));
    }

    fn output(&self, _image: &str, line: &str) {
        let line: String = line.chars().take(60).collect();
        let message = self.bar.message();
        let step = message.split(" | ").next().unwrap_or_default();
        self.bar.set_message(format!("{step} | {line}"));
    }
}

impl Drop for BarProgress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// One line per step on stderr, for logs and pipes.
struct LineProgress;

impl BuildProgress for LineProgress {
    fn step(&self, image: &str, step: BuildStep, number: usize, total: usize) {
        eprintln!("{image}: {step} ({number}/{total})");
    }

    fn output(&self, _image: &str, _line: &str) {}
}

#[derive(Serialize)]
struct ListedImage<'a> {
    #[serde(flatten)]
    image: &'a ImageInfo,
    rootfs: &'a Path,
    used_by: &'a [String],
}

fn list(store: &ImageStore, dirs: &HostDirs, json: bool) -> Result<ExitCode> {
    let images = store.list()?;
    let users = nodes_using(dirs);
    let no_users = Vec::new();
    let used_by = |image: &ImageInfo| users.get(&image.name).unwrap_or(&no_users);
    if json {
        let listed: Vec<ListedImage> = images
            .iter()
            .map(|image| ListedImage {
                image,
                rootfs: &image.rootfs,
                used_by: used_by(image),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new();
    table.force_no_tty().load_preset(NOTHING).set_header([
        "NAME", "DIGEST", "SIZE", "PACKAGES", "BUILT", "SOURCE", "USED BY",
    ]);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for image in &images {
        table.add_row([
            image.name.clone(),
            short(&image.digest).to_owned(),
            size(image.size_bytes),
            image.packages.len().to_string(),
            format!("{} ago", age(now.saturating_sub(image.built_at))),
            image.source.clone(),
            used_by(image).join(" "),
        ]);
    }
    println!("{table}");
    Ok(ExitCode::SUCCESS)
}

/// Image name -> nodes whose init is alive and whose record names that image.
fn nodes_using(dirs: &HostDirs) -> BTreeMap<String, Vec<String>> {
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for record in live_records(&dirs.nodes_run_dir()) {
        users
            .entry(record.spec.definition.image)
            .or_default()
            .push(record.name);
    }
    users
}

fn short(digest: &str) -> &str {
    &digest[..16.min(digest.len())]
}

pub(super) fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = "B";
    for next in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    if unit == "B" {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {unit}")
    }
}

fn age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
