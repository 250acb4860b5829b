//! `[metrics] listen`: Prometheus (OpenMetrics) text on `GET /metrics`.
//!
//! A scrape gathers node figures exactly as `status` does (the core's snapshot, each init's own
//! report, the cgroup's counters), so the two never disagree; only the reconcile durations are
//! kept between scrapes, observed by the core loop around every event it handles.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::server::Server;
use crate::api::control::{NodeState, StatusReport};
use crate::api::init::ProcessState;

/// Every name starts with this.
const PREFIX: &str = "magestack";
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The most a request's head may take, in bytes and in time.
const MAX_REQUEST_HEAD: usize = 8 << 10;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const HEALTH_STATES: [&str; 5] = ["none", "starting", "healthy", "unhealthy", "unknown"];

type Labels = Vec<(&'static str, String)>;

/// What outlives one scrape: how long the core took per event.
pub struct Metrics {
    reconcile: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            // 10 µs to about 2.6 s, by fours.
            reconcile: Histogram::new(exponential_buckets(1e-5, 4.0, 10)),
        }
    }
}

impl Metrics {
    /// One run of the core: an event handled (and the reconcile after it), or a timer tick.
    pub fn observe_reconcile(&self, took: Duration) {
        self.reconcile.observe(took.as_secs_f64());
    }

    /// The text of one scrape.
    pub fn encode(&self, report: &StatusReport) -> String {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register(
            "agent_build",
            "The agent's version",
            Info::new(vec![("version", report.host.version.clone())]),
        );
        let uptime = Gauge::<i64>::default();
        uptime.set(saturating_i64(report.host.uptime_s));
        registry.register_with_unit(
            "agent_uptime",
            "Time since the agent started",
            Unit::Seconds,
            uptime,
        );
        // The unit is in the name but not declared: some OpenMetrics parsers refuse a UNIT on a
        // histogram, which the specification allows.
        registry.register(
            "reconcile_duration_seconds",
            "Time the core took to handle one event or timer tick and reconcile every node",
            self.reconcile.clone(),
        );
        register_nodes(&mut registry, report);
        register_pair(&mut registry, report);
        register_fencing(&mut registry, report);
        let mut text = String::new();
        encode(&mut text, &registry).expect("writing to a String cannot fail");
        text
    }
}

fn register_nodes(registry: &mut Registry, report: &StatusReport) {
    let state = Family::<Labels, Gauge>::default();
    let health = Family::<Labels, Gauge>::default();
    let restarts = Family::<Labels, Counter>::default();
    let cpu = Family::<Labels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
    let memory = Family::<Labels, Gauge>::default();
    let memory_limit = Family::<Labels, Gauge>::default();
    let disk = Family::<Labels, Gauge>::default();
    let disk_limit = Family::<Labels, Gauge>::default();
    let disk_limit_enforced = Family::<Labels, Gauge>::default();
    let uptime = Family::<Labels, Gauge>::default();
    let process_restarts = Family::<Labels, Counter>::default();
    let process_running = Family::<Labels, Gauge>::default();
    for node in &report.nodes {
        let labels = || vec![("node", node.name.clone()), ("role", node.role.clone())];
        let with = |key: &'static str, value: &str| {
            let mut labels = labels();
            labels.push((key, value.to_string()));
            labels
        };
        // One series per state (one-hot): a query for `state="failed"` finds a 0, not nothing.
        for candidate in NodeState::ALL {
            state
                .get_or_create(&with("state", candidate.as_str()))
                .set(i64::from(node.state == candidate));
        }
        for candidate in HEALTH_STATES {
            health
                .get_or_create(&with("health", candidate))
                .set(i64::from(node.health == candidate));
        }
        restarts
            .get_or_create(&labels())
            .inc_by(u64::from(node.restarts));
        if let Some(usec) = node.cpu_usec {
            cpu.get_or_create(&labels()).inc_by(usec as f64 / 1e6);
        }
        if let Some(bytes) = node.memory_bytes {
            memory.get_or_create(&labels()).set(saturating_i64(bytes));
        }
        if let Some(bytes) = node.memory_limit_bytes {
            memory_limit
                .get_or_create(&labels())
                .set(saturating_i64(bytes));
        }
        if let Some(bytes) = node.disk_bytes {
            disk.get_or_create(&labels()).set(saturating_i64(bytes));
        }
        if let Some(bytes) = node.disk_limit_bytes {
            disk_limit
                .get_or_create(&labels())
                .set(saturating_i64(bytes));
        }
        if let Some(enforced) = node.disk_limit_enforced {
            disk_limit_enforced
                .get_or_create(&labels())
                .set(i64::from(enforced));
        }
        if let Some(seconds) = node.uptime_s {
            uptime.get_or_create(&labels()).set(saturating_i64(seconds));
        }
        for process in &node.processes {
            let labels = || {
                vec![
                    ("node", node.name.clone()),
                    ("process", process.name.clone()),
                ]
            };
            process_restarts
                .get_or_create(&labels())
                .inc_by(u64::from(process.restarts));
            process_running
                .get_or_create(&labels())
                .set(i64::from(process.state == ProcessState::Running));
        }
    }
    registry.register(
        "node_state",
        "1 for the node's state (starting, running, stopping, stopped, failed, remote), else 0",
        state,
    );
    registry.register(
        "node_health",
        "1 for the node's health (none, starting, healthy, unhealthy, unknown), else 0",
        health,
    );
    registry.register(
        "node_restarts",
        "Times the agent restarted the node after its init died",
        restarts,
    );
    registry.register_with_unit(
        "node_cpu",
        "CPU time used by the node's cgroup",
        Unit::Seconds,
        cpu,
    );
    registry.register_with_unit(
        "node_memory",
        "Memory charged to the node's cgroup",
        Unit::Bytes,
        memory,
    );
    registry.register_with_unit(
        "node_memory_limit",
        "The node's memory limit, for nodes that have one",
        Unit::Bytes,
        memory_limit,
    );
    registry.register_with_unit(
        "node_disk",
        "Disk space the node's writable layer and own volumes take (btrfs quota group)",
        Unit::Bytes,
        disk,
    );
    registry.register_with_unit(
        "node_disk_limit",
        "The node's configured disk limit, for nodes that have one",
        Unit::Bytes,
        disk_limit,
    );
    registry.register(
        "node_disk_limit_enforced",
        "1 when the node's disk limit holds, 0 when it is not enforced (state dir not on btrfs)",
        disk_limit_enforced,
    );
    registry.register_with_unit(
        "node_uptime",
        "Time since the node's init started",
        Unit::Seconds,
        uptime,
    );
    registry.register(
        "process_restarts",
        "Times the node's init restarted the process",
        process_restarts,
    );
    registry.register(
        "process_running",
        "1 while the process runs, else 0",
        process_running,
    );
}

/// Refused peers by reason (every reason, so a query finds a 0 rather than nothing); once
/// paired, whether the link is up, each peer's lease and heartbeat round trip, and whether the
/// witness is reachable.
fn register_pair(registry: &mut Registry, report: &StatusReport) {
    let refused = Family::<Labels, Counter>::default();
    for reason in crate::pair::Refusal::ALL {
        let count = report.pair.refused.get(reason.label()).copied();
        refused
            .get_or_create(&vec![("reason", reason.label().to_string())])
            .inc_by(count.unwrap_or(0));
    }
    registry.register(
        "pair_refused",
        "Peers the pair link refused since the agent started, by reason",
        refused,
    );
    if let Some(partner) = &report.pair.partner {
        let up = Family::<Labels, Gauge>::default();
        up.get_or_create(&vec![("partner", partner.clone())])
            .set(i64::from(report.pair.link.as_deref() == Some("up")));
        registry.register(
            "pair_link_up",
            "1 while the link to the partner is up, else 0",
            up,
        );
    }
    register_leases(registry, report);
}

fn register_leases(registry: &mut Registry, report: &StatusReport) {
    let alive = Family::<Labels, Gauge>::default();
    let expiries = Family::<Labels, Counter>::default();
    let rtt = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for (role, lease) in &report.pair.leases {
        let labels = || vec![("peer", lease.peer.clone()), ("role", role.clone())];
        alive.get_or_create(&labels()).set(i64::from(lease.alive));
        expiries.get_or_create(&labels()).inc_by(lease.expiries);
        for (quantile, value) in [("0.5", lease.rtt_p50_us), ("0.99", lease.rtt_p99_us)] {
            if let Some(micros) = value {
                let mut labels = labels();
                labels.push(("quantile", quantile.to_string()));
                rtt.get_or_create(&labels).set(micros as f64 / 1e6);
            }
        }
    }
    if report.pair.leases.is_empty() {
        return;
    }
    registry.register(
        "pair_lease_alive",
        "1 while the lease this host holds for the peer runs, else 0",
        alive,
    );
    registry.register(
        "pair_lease_expiries",
        "Times the lease this host holds for the peer ran out since the agent started",
        expiries,
    );
    registry.register(
        "pair_heartbeat_rtt_seconds",
        "Heartbeat round trip to the peer: median and 99th percentile of the last 1000",
        rtt,
    );
    if let Some(witness) = &report.pair.witness {
        let reachable = Gauge::<i64>::default();
        reachable.set(i64::from(witness.reachable));
        registry.register(
            "pair_witness_reachable",
            "1 while the pair's witness was heard within a lease, else 0",
            reachable,
        );
    }
}

/// On a paired host: the fences found and lifted since the agent started, and the nodes
/// fenced now.
fn register_fencing(registry: &mut Registry, report: &StatusReport) {
    let fencing = &report.fencing;
    if fencing.init_lease_ms.is_none() {
        return;
    }
    for (name, help, count) in [
        (
            "fences",
            "Nodes whose init fenced them (lease lapsed: links down, cgroup frozen) since the agent started",
            fencing.fences,
        ),
        (
            "unfences",
            "Fenced nodes the agent thawed with their links back since it started",
            fencing.unfences,
        ),
    ] {
        let counter = Counter::<u64>::default();
        counter.inc_by(count);
        registry.register(name, help, counter);
    }
    let fenced = Gauge::<i64>::default();
    fenced.set(saturating_i64(fencing.fenced));
    registry.register("nodes_fenced", "Nodes fenced now", fenced);
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Answers HTTP requests on `listener` until the daemon stops.
pub async fn serve(listener: TcpListener, server: Arc<Server>, metrics: Arc<Metrics>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (server, metrics) = (server.clone(), metrics.clone());
                tokio::spawn(async move { connection(stream, &server, &metrics).await });
            }
            Err(error) => {
                tracing::warn!("metrics accept: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One request, one response, then the connection closes.
async fn connection(mut stream: TcpStream, server: &Server, metrics: &Metrics) {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(Some(head)) => head,
        _ => return,
    };
    let (status, content_type, body) = match route(&head) {
        Route::Metrics => match server.status_report(Vec::new()).await {
            Ok(report) => ("200 OK", CONTENT_TYPE, metrics.encode(&report)),
            Err(message) => (
                "503 Service Unavailable",
                "text/plain",
                format!("{message}\n"),
            ),
        },
        Route::NotFound => (
            "404 Not Found",
            "text/plain",
            "metrics are at /metrics\n".to_string(),
        ),
        Route::MethodNotAllowed => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        ),
        Route::BadRequest => ("400 Bad Request", "text/plain", String::new()),
    };
    respond(&mut stream, status, content_type, &body).await;
}

/// The request up to its blank line; `None` when it is cut short or too long.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let read = stream.read(&mut buffer).await.ok()?;
        if read == 0 || head.len() + read > MAX_REQUEST_HEAD {
            return None;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    String::from_utf8(head).ok()
}

#[derive(Debug, PartialEq)]
enum Route {
    Metrics,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

fn route(head: &str) -> Route {
    let mut words = head.lines().next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics,
        ("GET", _) => Route::NotFound,
        _ => Route::MethodNotAllowed,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::control::{HostStatus, NodeStatus};
    use crate::api::init::ProcessStatus;

    fn report() -> StatusReport {
        let node = |name: &str, state: NodeState| NodeStatus {
            name: name.into(),
            role: "web".into(),
            state,
            pid: Some(42),
            ip: "172.16.0.21".into(),
            uptime_s: Some(90),
            restarts: 2,
            memory_bytes: Some(12 << 20),
            memory_limit_bytes: Some(64 << 20),
            cpu_usec: Some(1_500_000),
            disk_bytes: Some(40 << 20),
            disk_limit_bytes: Some(1 << 30),
            disk_limit_enforced: Some(true),
            health: "healthy".into(),
            processes: vec![ProcessStatus {
                name: "nginx".into(),
                pid: Some(7),
                state: ProcessState::Running,
                restarts: 3,
                last_error: None,
            }],
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
                uptime_s: 5,
                config: "agent.toml".into(),
                cgroup_version: "v2".into(),
                swap_limited: true,
            },
            pair: crate::api::control::PairStatus {
                partner: Some("dh2".into()),
                link: Some("up".into()),
                refused: [("wrong_secret".to_string(), 3)].into(),
                ..Default::default()
            },
            fencing: crate::api::control::FencingStatus {
                init_lease_ms: Some(300),
                quorum: Some(true),
                fenced: 1,
                fences: 2,
                unfences: 1,
            },
            nodes: vec![
                node("web1", NodeState::Running),
                NodeStatus {
                    memory_bytes: None,
                    cpu_usec: None,
                    disk_bytes: None,
                    disk_limit_enforced: None,
                    uptime_s: None,
                    processes: Vec::new(),
                    health: "unknown".into(),
                    ..node("web2", NodeState::Stopped)
                },
            ],
        }
    }

    #[test]
    fn a_scrape_has_one_hot_states_and_per_node_figures() {
        let metrics = Metrics::default();
        metrics.observe_reconcile(Duration::from_micros(150));
        let text = metrics.encode(&report());
        for line in [
            r#"magestack_agent_build_info{version="0.1.0"} 1"#,
            r#"magestack_node_state{node="web1",role="web",state="running"} 1"#,
            r#"magestack_node_state{node="web1",role="web",state="failed"} 0"#,
            r#"magestack_node_state{node="web2",role="web",state="stopped"} 1"#,
            r#"magestack_node_health{node="web1",role="web",health="healthy"} 1"#,
            r#"magestack_node_health{node="web2",role="web",health="unknown"} 1"#,
            r#"magestack_node_restarts_total{node="web1",role="web"} 2"#,
            r#"magestack_node_cpu_seconds_total{node="web1",role="web"} 1.5"#,
            r#"magestack_node_memory_bytes{node="web1",role="web"} 12582912"#,
            r#"magestack_node_memory_limit_bytes{node="web1",role="web"} 67108864"#,
            r#"magestack_node_disk_bytes{node="web1",role="web"} 41943040"#,
            r#"magestack_node_disk_limit_bytes{node="web1",role="web"} 1073741824"#,
            r#"magestack_node_disk_limit_enforced{node="web1",role="web"} 1"#,
            r#"magestack_process_restarts_total{node="web1",process="nginx"} 3"#,
            r#"magestack_process_running{node="web1",process="nginx"} 1"#,
            "magestack_reconcile_duration_seconds_count 1",
            r#"magestack_pair_refused_total{reason="wrong_secret"} 3"#,
            r#"magestack_pair_refused_total{reason="not_tls"} 0"#,
            "magestack_fences_total 2",
            "magestack_unfences_total 1",
            "magestack_nodes_fenced 1",
            r#"magestack_pair_link_up{partner="dh2"} 1"#,
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains(r#"magestack_node_cpu_seconds_total{node="web2""#));
        assert!(!text.contains(r#"magestack_node_disk_bytes{node="web2""#));
    }

    #[test]
    fn only_get_of_metrics_is_served() {
        assert_eq!(
            route("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics
        );
        assert_eq!(route("GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(
            route("HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route("GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(
            route("POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route("GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(""), Route::BadRequest);
    }
}
