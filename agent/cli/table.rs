//! The human form of `status`: one table row per node.

use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::Table;

use magestack_agent::api::control::StatusReport;

pub fn render(report: &StatusReport) -> String {
    let mut out = format!(
        "host {}  version {}  up {}  config {}  cgroup {}\n",
        report.host.name,
        report.host.version,
        duration(report.host.uptime_s),
        report.host.config,
        report.host.cgroup_version
    );
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header([
        "NODE",
        "ROLE",
        "STATE",
        "HEALTH",
        "PID",
        "IP",
        "UPTIME",
        "CPU",
        "MEMORY",
        "RESTARTS",
        "PROCESSES",
    ]);
    for node in &report.nodes {
        let processes: Vec<String> = node
            .processes
            .iter()
            .map(|p| format!("{}:{:?}", p.name, p.state).to_lowercase())
            .collect();
        table.add_row([
            node.name.clone(),
            node.role.clone(),
            node.state.as_str().to_string(),
            node.health.clone(),
            node.pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            node.ip.clone(),
            node.uptime_s.map(duration).unwrap_or_else(|| "-".into()),
            node.cpu_usec
                .map(|u| format!("{:.1}s", u as f64 / 1e6))
                .unwrap_or_else(|| "-".into()),
            node.memory_bytes.map(bytes).unwrap_or_else(|| "-".into()),
            node.restarts.to_string(),
            processes.join(" "),
        ]);
    }
    out.push_str(&table.to_string());
    out.push('\n');
    for node in report.nodes.iter().filter(|n| n.error.is_some()) {
        out.push_str(&format!(
            "{}: {}\n",
            node.name,
            node.error.as_deref().unwrap_or("")
        ));
    }
    out
}

fn duration(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

fn bytes(value: u64) -> String {
    match value {
        v if v >= 1 << 30 => format!("{:.1}G", v as f64 / (1u64 << 30) as f64),
        v if v >= 1 << 20 => format!("{:.1}M", v as f64 / (1u64 << 20) as f64),
        v => format!("{}K", v / 1024),
    }
}
