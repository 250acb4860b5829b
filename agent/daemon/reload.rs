//! What of a new configuration a reload applies while the agent runs, and what waits for its
//! restart: the directories, the cgroup parent, the image store, the stop timeout, log rotation,
//! the metrics listener and the pair link are taken once, when the agent starts (the runtime,
//! the listeners and the link are built from them), so a reload keeps them and says which ones
//! it did not apply.

use crate::api::control::PendingSetting;
use crate::config::{Config, HostSettings, LogRotation, MetricsSettings, PairSettings};

/// Every setting whose value in `new` differs from the one `running` is in force with, and that
/// only a restart of the agent applies.
pub fn pending_settings(running: &Config, new: &Config) -> Vec<PendingSetting> {
    // Named field by field, so a setting added to `[host]` must be placed here or in `in_force`.
    let HostSettings {
        name: _,
        state_dir,
        image_dir,
        image_builder,
        run_dir,
        log_dir,
        cgroup,
        stop_timeout,
        id_base,
    } = &new.host;
    let LogRotation { max_size, keep } = new.logs;
    let MetricsSettings { listen } = new.metrics;
    let PairSettings {
        listen: pair_listen,
        heartbeat,
        lease,
        fence_margin,
        fence_command,
        alert_command,
    } = &new.pair;
    let was = &running.host;
    let mut pending = Vec::new();
    let mut compare = |field: &str, running: String, configured: String| {
        if running != configured {
            pending.push(PendingSetting {
                field: field.to_string(),
                running,
                configured,
            });
        }
    };
    let path = |path: &std::path::Path| path.display().to_string();
    compare("host.state_dir", path(&was.state_dir), path(state_dir));
    compare("host.image_dir", path(&was.image_dir), path(image_dir));
    let builder = |builder: &crate::config::ImageBuilder| format!("{builder:?}").to_lowercase();
    compare(
        "host.image_builder",
        builder(&was.image_builder),
        builder(image_builder),
    );
    compare("host.run_dir", path(&was.run_dir), path(run_dir));
    compare("host.log_dir", path(&was.log_dir), path(log_dir));
    compare("host.cgroup", was.cgroup.clone(), cgroup.clone());
    compare(
        "host.stop_timeout",
        format!("{:?}", was.stop_timeout),
        format!("{stop_timeout:?}"),
    );
    compare("host.id_base", was.id_base.to_string(), id_base.to_string());
    compare(
        "logs.max_size",
        running.logs.max_size.to_string(),
        max_size.to_string(),
    );
    compare("logs.keep", running.logs.keep.to_string(), keep.to_string());
    let address = |listen: Option<std::net::SocketAddr>| {
        listen.map_or_else(|| "none".to_string(), |address| address.to_string())
    };
    compare(
        "metrics.listen",
        address(running.metrics.listen),
        address(listen),
    );
    compare(
        "pair.listen",
        address(running.pair.listen),
        address(*pair_listen),
    );
    let pair = &running.pair;
    for (field, was, now) in [
        ("pair.heartbeat", pair.heartbeat, *heartbeat),
        ("pair.lease", pair.lease, *lease),
        ("pair.fence_margin", pair.fence_margin, *fence_margin),
    ] {
        compare(field, format!("{was:?}"), format!("{now:?}"));
    }
    for (field, was, now) in [
        ("pair.fence_command", &pair.fence_command, fence_command),
        ("pair.alert_command", &pair.alert_command, alert_command),
    ] {
        compare(field, format!("{was:?}"), format!("{now:?}"));
    }
    pending
}

/// `new` with the settings only a restart applies set back to those of `running`: what the
/// agent then works with. The host's name applies live (status and templates show it).
pub fn in_force(running: &Config, new: Config) -> Config {
    Config {
        host: HostSettings {
            name: new.host.name,
            ..running.host.clone()
        },
        logs: running.logs,
        metrics: running.metrics.clone(),
        pair: running.pair.clone(),
        ..new
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Source};

    fn config(extra: &str) -> Config {
        let text = format!(
            "[host]\nstate_dir = \"/s\"\n{extra}\n[nodes.n1]\nrole = \"x\"\n[roles.x]\nimage = \"busybox\"\n"
        );
        parse(&Source::new("agent.toml", text)).unwrap()
    }

    #[test]
    fn the_same_settings_leave_nothing_pending() {
        assert_eq!(pending_settings(&config(""), &config("")), []);
    }

    #[test]
    fn each_setting_taken_at_start_is_named_with_both_values() {
        let running = config("");
        let new = config(
            "cgroup = \"other\"\nstop_timeout = \"3s\"\nrun_dir = \"/r\"\nimage_builder = \"debootstrap\"\n[logs]\nkeep = 2\n[metrics]\nlisten = \"127.0.0.1:9\"\n[pair]\nlisten = \"10.0.0.1:7946\"",
        );
        let pending = pending_settings(&running, &new);
        let found: Vec<(&str, &str, &str)> = pending
            .iter()
            .map(|p| (p.field.as_str(), p.running.as_str(), p.configured.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                ("host.image_builder", "auto", "debootstrap"),
                ("host.run_dir", "/run/magestack", "/r"),
                ("host.cgroup", "magestack", "other"),
                ("host.stop_timeout", "10s", "3s"),
                ("logs.keep", "5", "2"),
                ("metrics.listen", "none", "127.0.0.1:9"),
                ("pair.listen", "none", "10.0.0.1:7946"),
            ]
        );
    }

    #[test]
    fn what_is_in_force_keeps_the_running_settings_and_takes_the_rest() {
        let running = config("");
        let new = config("name = \"renamed\"\ncgroup = \"other\"\n[logs]\nkeep = 2");
        let nodes = new.nodes.clone();
        let kept = in_force(&running, new);
        assert_eq!(kept.host.name, "renamed");
        assert_eq!(kept.host.cgroup, "magestack");
        assert_eq!(kept.logs, running.logs);
        assert_eq!(kept.nodes, nodes);
        assert_eq!(pending_settings(&kept, &kept), []);
    }
}
