//! The human form of `status`: one screen, a host line and one row per node, coloured only for a
//! terminal.

use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{Cell, Color, Table};

use magestack_agent::api::control::{summary, NodeState, NodeStatus, StatusReport};
use magestack_agent::config::format_size as bytes;

/// Memory (and disk) use from this share of the limit on is shown in yellow, and from the next
/// in red.
const MEMORY_WARN: f64 = 0.8;
const MEMORY_ALARM: f64 = 0.95;

pub fn render(report: &StatusReport, colour: bool) -> String {
    let states: Vec<NodeState> = report.nodes.iter().map(|n| n.state).collect();
    let swap = if report.host.swap_limited {
        ""
    } else {
        " (swap not limited: no swap accounting)"
    };
    let mut out = format!(
        "{}  magestack-agent {}  up {}  {}  cgroup {}{swap}  {}\n",
        report.host.name,
        report.host.version,
        duration(report.host.uptime_s),
        summary(&states),
        report.host.cgroup_version,
        report.host.config,
    );
    if let Some(partner) = &report.pair.partner {
        out.push_str(&format!(
            "pair with {partner} at {}: link {}\n",
            report.pair.address.as_deref().unwrap_or("?"),
            report.pair.link.as_deref().unwrap_or("?"),
        ));
    }
    let mut table = Table::new();
    table.force_no_tty();
    if colour {
        table.enforce_styling();
    }
    table.load_preset(UTF8_BORDERS_ONLY).set_header([
        "NODE", "ROLE", "STATE", "IP", "UPTIME", "CPU", "MEMORY", "DISK", "RESTARTS", "HEALTH",
    ]);
    for node in &report.nodes {
        let paint = |cell: Cell, color: Option<Color>| match color.filter(|_| colour) {
            Some(color) => cell.fg(color),
            None => cell,
        };
        table.add_row([
            Cell::new(&node.name),
            Cell::new(&node.role),
            match (node.fenced, &node.degraded) {
                (true, _) => paint(Cell::new("fenced"), Some(Color::Red)),
                (false, Some(_)) => paint(Cell::new("degraded"), Some(Color::Yellow)),
                (false, None) => paint(Cell::new(node.state.as_str()), state_color(node.state)),
            },
            Cell::new(&node.ip),
            Cell::new(node.uptime_s.map(duration).unwrap_or_else(|| "-".into())),
            Cell::new(
                node.cpu_usec
                    .map(|usec| duration_fine(usec as f64 / 1e6))
                    .unwrap_or_else(|| "-".into()),
            ),
            paint(Cell::new(memory(node)), memory_color(node)),
            paint(Cell::new(disk(node)), disk_color(node)),
            paint(
                Cell::new(node.restarts),
                (node.restarts > 0).then_some(Color::Yellow),
            ),
            paint(Cell::new(&node.health), health_color(&node.health)),
        ]);
    }
    out.push_str(&table.to_string());
    out.push('\n');
    for node in &report.nodes {
        let fenced = node
            .fence_reason
            .as_ref()
            .map(|reason| format!("fenced: {reason}"));
        for reason in [&fenced, &node.degraded, &node.error].into_iter().flatten() {
            out.push_str(&format!("{}: {reason}\n", node.name));
        }
    }
    out
}

fn state_color(state: NodeState) -> Option<Color> {
    match state {
        NodeState::Running => Some(Color::Green),
        NodeState::Starting | NodeState::Stopping => Some(Color::Yellow),
        NodeState::Stopped => Some(Color::DarkGrey),
        NodeState::Failed => Some(Color::Red),
        NodeState::Remote => Some(Color::Blue),
    }
}

fn health_color(health: &str) -> Option<Color> {
    match health {
        "healthy" => Some(Color::Green),
        "starting" => Some(Color::Yellow),
        "unhealthy" => Some(Color::Red),
        _ => None,
    }
}

/// "12.3M/64M" with a limit, "12.3M" without, "-" when the node does not run.
fn memory(node: &NodeStatus) -> String {
    match (node.memory_bytes, node.memory_limit_bytes) {
        (Some(used), Some(limit)) => format!("{}/{}", bytes(used), bytes(limit)),
        (Some(used), None) => bytes(used),
        (None, _) => "-".into(),
    }
}

fn memory_color(node: &NodeStatus) -> Option<Color> {
    share_color(node.memory_bytes?, node.memory_limit_bytes?)
}

/// "12.3M/10G" against an enforced limit, "12.3M/10G (not enforced)" or "10G (not enforced)"
/// where it does not hold (no usage is known off btrfs), "12.3M" without a limit, "-" when
/// the node does not run or nothing is known.
fn disk(node: &NodeStatus) -> String {
    let used = node.disk_bytes.map(bytes);
    let limit = node.disk_limit_bytes.map(bytes);
    let figures = match (used, limit) {
        (Some(used), Some(limit)) => format!("{used}/{limit}"),
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => return "-".into(),
    };
    match node.disk_limit_enforced {
        Some(false) => format!("{figures} (not enforced)"),
        _ => figures,
    }
}

/// A limit that does not hold is yellow; one that holds is coloured by its share, like memory.
fn disk_color(node: &NodeStatus) -> Option<Color> {
    match node.disk_limit_enforced? {
        false => Some(Color::Yellow),
        true => share_color(node.disk_bytes?, node.disk_limit_bytes?),
    }
}

fn share_color(used: u64, limit: u64) -> Option<Color> {
    match used as f64 / limit as f64 {
        s if s >= MEMORY_ALARM => Some(Color::Red),
        s if s >= MEMORY_WARN => Some(Color::Yellow),
        _ => None,
    }
}

pub(super) fn duration(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// CPU time: tenths of a second below a minute, then as [`duration`].
fn duration_fine(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else {
        duration(seconds as u64)
    }
}

#[cfg(test)]
mod tests {
    use magestack_agent::api::control::HostStatus;

    use super::*;

    fn report() -> StatusReport {
        let node = NodeStatus {
            name: "web1".into(),
            role: "web".into(),
            state: NodeState::Running,
            pid: Some(4242),
            ip: "172.16.0.21".into(),
            uptime_s: Some(3725),
            restarts: 0,
            memory_bytes: Some(12_897_484),
            memory_limit_bytes: Some(64 << 20),
            cpu_usec: Some(1_234_567),
            disk_bytes: Some(12 << 20),
            disk_limit_bytes: Some(10 << 30),
            disk_limit_enforced: Some(true),
            health: "healthy".into(),
            processes: Vec::new(),
            error: None,
            degraded: None,
            fenced: false,
            fence_reason: None,
            fenced_since_unix: None,
            desired: "running".into(),
            home: None,
            host: None,
        };
        StatusReport {
            host: HostStatus {
                name: "dh1".into(),
                version: "0.1.0".into(),
                uptime_s: 200_000,
                config: "/etc/magestack/agent.toml".into(),
                cgroup_version: "v2".into(),
                swap_limited: true,
            },
            pair: Default::default(),
            fencing: Default::default(),
            nodes: vec![
                node.clone(),
                NodeStatus {
                    name: "db1".into(),
                    role: "db".into(),
                    state: NodeState::Failed,
                    memory_bytes: Some(63 << 20),
                    disk_bytes: None,
                    disk_limit_enforced: Some(false),
                    restarts: 3,
                    health: "unhealthy".into(),
                    error: Some("process mariadbd: crash loop".into()),
                    degraded: None,
                    fenced: false,
                    fence_reason: None,
                    fenced_since_unix: None,
                    ..node
                },
            ],
        }
    }

    #[test]
    fn one_screen_with_the_host_line_and_a_row_per_node() {
        let text = render(&report(), false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "dh1  magestack-agent 0.1.0  up 2d7h  2 nodes: 1 running, 1 failed  cgroup v2  /etc/magestack/agent.toml"
        );
        let web1 = lines.iter().find(|l| l.contains("web1")).unwrap();
        for cell in [
            "web",
            "running",
            "172.16.0.21",
            "1h2m",
            "1.2s",
            "12.3M/64M",
            "12M/10G",
            "healthy",
        ] {
            assert!(web1.contains(cell), "{cell:?} not in {web1}");
        }
        assert!(!web1.contains("not enforced"), "{web1}");
        let db1 = lines.iter().find(|l| l.contains("db1")).unwrap();
        assert!(db1.contains("63M/64M"), "{db1}");
        assert!(db1.contains("10G (not enforced)"), "{db1}");
        assert!(
            text.ends_with("db1: process mariadbd: crash loop\n"),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "colour without a terminal: {text}");
        let mut fenced = report();
        fenced.nodes[0].fenced = true;
        fenced.nodes[0].fence_reason = Some("its init's lease lapsed".into());
        let screen = render(&fenced, false);
        let row = screen.lines().find(|line| line.contains("web1")).unwrap();
        assert!(row.contains("fenced"), "{screen}");
        assert!(
            screen.contains("web1: fenced: its init's lease lapsed"),
            "{screen}"
        );

        let mut degraded = report();
        degraded.nodes[0].degraded = Some("network: its link (eth0) was gone; repairing".into());
        let screen = render(&degraded, false);
        let row = screen.lines().find(|l| l.contains("web1")).unwrap();
        assert!(row.contains("degraded"), "{screen}");
        assert!(
            screen.contains("web1: network: its link (eth0) was gone; repairing\n"),
            "{screen}"
        );
        let mut unlimited = report();
        unlimited.host.swap_limited = false;
        assert!(
            render(&unlimited, false)
                .lines()
                .next()
                .unwrap()
                .contains("cgroup v2 (swap not limited: no swap accounting)"),
            "{text}"
        );
    }

    #[test]
    fn colour_only_when_asked() {
        let text = render(&report(), true);
        assert!(text.contains('\x1b'), "{text}");
    }

    #[test]
    fn cpu_time_is_fine_below_a_minute() {
        assert_eq!(duration_fine(75.0), "1m15s");
        assert_eq!(duration_fine(1.234), "1.2s");
    }
}
