//! The network audit at work, on a blocking thread: what the bridge and the running nodes'
//! links look like, the repairs planned from it, each applied, and all of it reported to the
//! core (`core/network.rs` decides when to look and what a finding means).

use std::sync::Arc;

use tokio::sync::mpsc;

use super::Event;
use crate::daemon::core::{AuditedNode, NetworkEvent};
use crate::net::{plan_repairs, Repair, RunningNode};
use crate::runtime::Runtime;

/// Runs one audit of `nodes` off the event loop.
pub(super) fn spawn(
    runtime: &Arc<Runtime>,
    nodes: Vec<AuditedNode>,
    events: &mpsc::UnboundedSender<Event>,
) {
    let runtime = runtime.clone();
    let events = events.clone();
    let report = move |event| {
        let _ = events.send(Event::Network(event));
    };
    tokio::task::spawn_blocking(move || {
        let running: Vec<RunningNode<'_>> = nodes
            .iter()
            .map(|node| RunningNode {
                name: &node.name,
                init_pid: node.init_pid,
                network: &node.network,
            })
            .collect();
        let network = &runtime.network;
        let repairs = match network.observe(&running) {
            Ok(observed) => plan_repairs(&observed, network, &running),
            Err(error) => return report(NetworkEvent::Audited(Err(error))),
        };
        if !repairs.is_empty() {
            report(NetworkEvent::Repairing(repairs.clone()));
        }
        let outcomes = repairs
            .into_iter()
            .map(|repair| {
                let outcome = match repair {
                    Repair::Restart { .. } => Ok(()),
                    _ => network.repair(&repair, &running),
                };
                (repair, outcome)
            })
            .collect();
        report(NetworkEvent::Audited(Ok(outcomes)));
    });
}
