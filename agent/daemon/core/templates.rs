//! Templates of the running nodes: re-rendered once the set of running nodes, the health of
//! one of them, or the configuration changed; only files whose text changed are written, and
//! only the processes those files name are told to reload, once each.

use std::collections::BTreeSet;

use super::{Action, Core, InstallFailed, Phase};
use crate::template::{Rendered, Running};

/// How a node's `error` starts when its templates failed to re-render (cleared once they do).
const TEMPLATES_FAILED: &str = "templates not re-rendered: ";

impl Core {
    pub(super) fn refresh_templates(&mut self) {
        let running = self.running_nodes();
        if self.templates_rendered_for.as_ref() == Some(&running) {
            return;
        }
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for name in names {
            self.refresh_node_templates(&name, &running);
        }
        self.templates_rendered_for = Some(running);
    }

    fn refresh_node_templates(&mut self, node: &str, running: &Running) {
        let entry = self.nodes.get_mut(node).expect("listed");
        let (Some(spec), Some(init)) = (&entry.spec, &entry.init) else {
            return;
        };
        // A node about to restart for a changed definition renders at its next start.
        if entry.phase != Phase::Running
            || spec.definition.templates.is_empty()
            || *spec != init.spec
        {
            return;
        }
        let files = match crate::template::render_node(&self.config, spec, running) {
            Ok(files) => files,
            Err(error) => {
                tracing::error!(node, role = spec.role, "templates not re-rendered: {error}");
                entry.error = Some(format!("{TEMPLATES_FAILED}{error}"));
                return;
            }
        };
        let pid = init.pid;
        if entry.error_starts_with(TEMPLATES_FAILED) {
            entry.error = None;
        }
        let changed: Vec<Rendered> = files
            .into_iter()
            .filter(|file| entry.rendered.get(&file.dest) != Some(&file.text))
            .collect();
        if !changed.is_empty() {
            self.actions.push(Action::InstallTemplates {
                node: node.to_string(),
                pid,
                files: changed,
            });
        }
    }

    /// Written files are what the node has now, and their processes are told to reload; after
    /// a failed write, what its files hold is.
    pub(super) fn templates_installed(
        &mut self,
        node: &str,
        pid: i32,
        files: Vec<Rendered>,
        result: Result<(), InstallFailed>,
    ) {
        let Some(entry) = self.nodes.get_mut(node) else {
            return;
        };
        let Some(init) = entry.init.as_ref().filter(|init| init.pid == pid) else {
            return;
        };
        let role = init.spec.role.as_str();
        if let Err(InstallFailed { error, on_disk }) = result {
            tracing::error!(node, role, "writing re-rendered templates: {error}");
            entry.rendered.extend(on_disk);
            return;
        }
        for file in &files {
            entry.rendered.insert(file.dest.clone(), file.text.clone());
        }
        let dests: Vec<&str> = files.iter().map(|file| file.dest.as_str()).collect();
        tracing::info!(node, role, "templates re-rendered: {}", dests.join(", "));
        // One signal per process, however many of its files changed.
        let reloads: BTreeSet<(String, String)> = files
            .into_iter()
            .filter_map(|file| file.reload)
            .map(|reload| (reload.process, reload.signal))
            .collect();
        if !reloads.is_empty() {
            self.actions.push(Action::SignalReloads {
                node: node.to_string(),
                reloads,
            });
        }
    }
}
