//! `volume list/rm`: the nodes' volumes under `state_dir/volumes`, used directly (no daemon
//! needed). Whether a volume is in use comes from the live nodes' records in the run dir and from
//! the configuration file, so `rm` is refused while a node mounts the volume or the configuration
//! still declares it, whether or not the daemon is up.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use comfy_table::presets::NOTHING;
use comfy_table::Table;
use serde::Serialize;

use magestack_agent::config;
use magestack_agent::runtime::volume::{self, VolumeError, VolumeInfo, VolumeUse};
use magestack_agent::runtime::{live_records, HostDirs};

#[derive(Subcommand)]
pub enum VolumeCommand {
    /// List volumes: node (`@<role>` for a role's shared volume), name, kind (btrfs subvolume
    /// or directory), size, whether in use, path.
    List {
        /// Only this node's volumes.
        node: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove a volume and all its data; refused while a node runs with it or the
    /// configuration declares it. A role's shared volume is under `@<role>`.
    Rm { node: String, name: String },
}

#[derive(Serialize)]
struct ListedVolume<'a> {
    #[serde(flatten)]
    volume: &'a VolumeInfo,
    /// `running`, `configured`, or null when nothing uses it.
    in_use: Option<VolumeUse>,
}

pub fn run(config_path: Option<&Path>, command: VolumeCommand) -> Result<ExitCode> {
    let config = config::load(config_path).map_err(|error| anyhow::anyhow!("{error}"))?;
    let dirs = HostDirs {
        state_dir: config.host.state_dir.clone(),
        run_dir: config.host.run_dir.clone(),
        log_dir: config.host.log_dir.clone(),
    };
    let live = live_records(&dirs.nodes_run_dir());
    match command {
        VolumeCommand::List { node, json } => {
            let volumes = volume::list(&dirs, node.as_deref())?;
            let listed: Vec<ListedVolume> = volumes
                .iter()
                .map(|volume| ListedVolume {
                    volume,
                    in_use: volume::volume_use(&volume.node, &volume.name, &config.nodes, &live),
                })
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&listed)?);
            } else {
                print_table(&listed);
            }
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Rm { node, name } => {
            if let Some(by) = volume::volume_use(&node, &name, &config.nodes, &live) {
                return Err(VolumeError::InUse { node, name, by }.into());
            }
            let kind = volume::remove(&dirs, &node, &name)?;
            println!(
                "volume {name} of {}: {kind} removed",
                volume::owner_text(&node)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_table(listed: &[ListedVolume]) {
    let mut table = Table::new();
    table
        .force_no_tty()
        .load_preset(NOTHING)
        .set_header(["NODE", "VOLUME", "KIND", "SIZE", "IN USE", "PATH"]);
    for entry in listed {
        let volume = entry.volume;
        table.add_row([
            volume.node.clone(),
            volume.name.clone(),
            volume.kind.to_string(),
            super::image::size(volume.size_bytes),
            entry
                .in_use
                .map_or_else(|| "-".to_owned(), |by| by.to_string()),
            volume.path.display().to_string(),
        ]);
    }
    println!("{table}");
}
