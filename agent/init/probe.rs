//! The role's health check, run from the init's event loop without ever blocking it.
//!
//! Inside the node's network namespace `tcp` is a non-blocking connect to 127.0.0.1, `http` a
//! plain HTTP/1.0 GET over such a connection (2xx and 3xx pass), and `exec` a child started like a
//! role process whose exit status decides (0 passes). The socket is one more descriptor in the
//! loop's poll set and the child's exit comes from the loop's reaping, so a check only ever costs
//! the loop a few non-blocking calls; [`Health`] decides what the results mean and when a check
//! has run too long.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{self, sockopt, AddressFamily, MsgFlags, SockFlag, SockType, SockaddrIn};
use nix::unistd::Pid;

use super::health::Health;
use super::process::{self, Launch};
use super::supervisor::Exit;
use crate::api::init::HealthStatus;
use crate::config::{HealthCheck, HealthSpec, HttpTarget, ProcessSpec, RestartPolicy};
use crate::confinement::Confinement;

/// How much of an HTTP answer is read looking for its status line.
const STATUS_LINE_MAX: usize = 1024;

/// The checks of one node and their verdict.
pub struct Prober {
    target: Target,
    /// What every failure reason starts with: `tcp 127.0.0.1:80`, `exec sh -c ...`.
    label: String,
    health: Health,
    running: Option<Running>,
}

enum Target {
    Tcp(SocketAddrV4),
    Http {
        address: SocketAddrV4,
        request: Vec<u8>,
    },
    Exec(Launch),
    /// A check that cannot run at all: every check fails with this reason.
    Broken(String),
}

/// A check in flight.
enum Running {
    Exec(Pid),
    Connecting(OwnedFd),
    /// HTTP: sending the request, then reading up to the status line.
    Exchanging {
        socket: OwnedFd,
        unsent: Vec<u8>,
        received: Vec<u8>,
    },
}

impl Prober {
    pub fn new(spec: &HealthSpec, now: Instant) -> Self {
        let (label, target) = match &spec.check {
            HealthCheck::Tcp(port) => {
                let address = SocketAddrV4::new(Ipv4Addr::LOCALHOST, *port);
                (format!("tcp {address}"), Target::Tcp(address))
            }
            HealthCheck::Http(url) => {
                let target = match HttpTarget::parse(url) {
                    Ok(target) => Target::Http {
                        address: target.address,
                        request: format!(
                            "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: magestack-agent\r\n\r\n",
                            target.path, target.host
                        )
                        .into_bytes(),
                    },
                    Err(reason) => Target::Broken(reason),
                };
                (format!("http {url}"), target)
            }
            HealthCheck::Exec(command) => {
                let spec = ProcessSpec {
                    name: "health".into(),
                    command: command.clone(),
                    env: Default::default(),
                    user: None,
                    restart: RestartPolicy::Never,
                };
                // No passwd: the check runs as root, which needs no lookup.
                let target = match process::prepare(&spec, "") {
                    Ok(launch) => Target::Exec(launch),
                    Err(reason) => Target::Broken(reason),
                };
                (format!("exec {}", command.join(" ")), target)
            }
        };
        Prober {
            target,
            label,
            health: Health::new(spec, now),
            running: None,
        }
    }

    /// Ends a check that ran out of time, and starts the next one when it is due. `null` is the
    /// init's /dev/null, the output of exec checks.
    pub fn tick(&mut self, now: Instant, null: BorrowedFd<'_>, confinement: Option<&Confinement>) {
        if self.running.is_some() && self.health.is_overdue(now) {
            self.abandon();
            let timeout = describe_duration(self.health.timeout());
            self.finish(Err(format!("timed out after {timeout}")), now);
        }
        if self.running.is_none() && self.health.is_due(now) {
            self.start(now, null, confinement);
        }
    }

    /// The socket of a check in flight and what to wait for on it.
    pub fn poll_fd(&self) -> Option<PollFd<'_>> {
        match self.running.as_ref()? {
            Running::Exec(_) => None,
            Running::Connecting(socket) => Some(PollFd::new(socket.as_fd(), PollFlags::POLLOUT)),
            Running::Exchanging { socket, unsent, .. } => {
                let wanted = if unsent.is_empty() {
                    PollFlags::POLLIN
                } else {
                    PollFlags::POLLOUT
                };
                Some(PollFd::new(socket.as_fd(), wanted))
            }
        }
    }

    /// The socket from [`Prober::poll_fd`] is ready (or failed): move the check on.
    pub fn socket_ready(&mut self, now: Instant) {
        match self.running.take() {
            Some(Running::Connecting(socket)) => {
                match socket::getsockopt(&socket, sockopt::SocketError) {
                    Ok(0) => self.connected(socket, now),
                    Ok(errno) => self.finish(Err(describe_errno(Errno::from_raw(errno))), now),
                    Err(errno) => self.finish(Err(describe_errno(errno)), now),
                }
            }
            Some(Running::Exchanging {
                socket,
                unsent,
                received,
            }) => self.exchange(socket, unsent, received, now),
            other => self.running = other,
        }
    }

    /// Takes a reaped child's exit if it was the exec check's; false if it was not.
    pub fn exited(&mut self, pid: i32, exit: Exit, now: Instant) -> bool {
        if !matches!(self.running, Some(Running::Exec(running)) if running.as_raw() == pid) {
            return false;
        }
        self.running = None;
        let outcome = match exit {
            Exit::Code(0) => Ok(()),
            failed => Err(failed.describe()),
        };
        self.finish(outcome, now);
        true
    }

    /// No more checks: the node is stopping.
    pub fn pause(&mut self) {
        self.abandon();
        self.health.pause();
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.health.next_deadline()
    }

    pub fn status(&self) -> HealthStatus {
        self.health.status()
    }

    fn start(&mut self, now: Instant, null: BorrowedFd<'_>, confinement: Option<&Confinement>) {
        self.health.begin(now);
        match &self.target {
            Target::Tcp(address) | Target::Http { address, .. } => match connect(*address) {
                Ok(Connect::Done(socket)) => self.connected(socket, now),
                Ok(Connect::InProgress(socket)) => self.running = Some(Running::Connecting(socket)),
                Err(errno) => self.finish(Err(describe_errno(errno)), now),
            },
            Target::Exec(launch) => match process::spawn(launch, null, null, confinement) {
                Ok(pid) => self.running = Some(Running::Exec(pid)),
                Err(reason) => self.finish(Err(reason), now),
            },
            Target::Broken(reason) => self.finish(Err(reason.clone()), now),
        }
    }

    fn connected(&mut self, socket: OwnedFd, now: Instant) {
        match &self.target {
            Target::Http { request, .. } => {
                let unsent = request.clone();
                self.exchange(socket, unsent, Vec::new(), now);
            }
            _ => self.finish(Ok(()), now),
        }
    }

    /// Sends what is left of the request, then reads until the status line is in.
    fn exchange(
        &mut self,
        socket: OwnedFd,
        mut unsent: Vec<u8>,
        mut received: Vec<u8>,
        now: Instant,
    ) {
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        while !unsent.is_empty() {
            match socket::send(socket.as_raw_fd(), &unsent, flags) {
                Ok(sent) => drop(unsent.drain(..sent)),
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    self.running = Some(Running::Exchanging {
                        socket,
                        unsent,
                        received,
                    });
                    return;
                }
                Err(errno) => return self.finish(Err(describe_errno(errno)), now),
            }
        }
        let mut buffer = [0u8; STATUS_LINE_MAX];
        loop {
            let room = STATUS_LINE_MAX - received.len();
            match socket::recv(socket.as_raw_fd(), &mut buffer[..room], flags) {
                Ok(0) => break,
                Ok(count) => {
                    received.extend_from_slice(&buffer[..count]);
                    if received.contains(&b'\n') || received.len() >= STATUS_LINE_MAX {
                        break;
                    }
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    self.running = Some(Running::Exchanging {
                        socket,
                        unsent,
                        received,
                    });
                    return;
                }
                Err(errno) => return self.finish(Err(describe_errno(errno)), now),
            }
        }
        self.finish(http_verdict(&received), now);
    }

    /// Drops the check in flight; an exec check is killed with everything it started, and
    /// reaped later as a stranger.
    fn abandon(&mut self) {
        if let Some(Running::Exec(pid)) = self.running.take() {
            // The child leads its own process group (setsid before exec).
            let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
            let _ = kill(pid, Signal::SIGKILL);
        }
    }

    fn finish(&mut self, outcome: Result<(), String>, now: Instant) {
        self.running = None;
        let outcome = outcome.map_err(|reason| format!("{}: {reason}", self.label));
        self.health.record(outcome, now, crate::runtime::unix_now());
    }
}

enum Connect {
    Done(OwnedFd),
    InProgress(OwnedFd),
}

/// Starts a non-blocking connect; loopback usually answers at once.
fn connect(address: SocketAddrV4) -> Result<Connect, Errno> {
    let socket = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    match socket::connect(socket.as_raw_fd(), &SockaddrIn::from(address)) {
        Ok(()) => Ok(Connect::Done(socket)),
        Err(Errno::EINPROGRESS | Errno::EINTR) => Ok(Connect::InProgress(socket)),
        Err(errno) => Err(errno),
    }
}

/// Whether an HTTP answer's status line says the service is fine: 2xx or 3xx.
fn http_verdict(received: &[u8]) -> Result<(), String> {
    if received.is_empty() {
        return Err("closed the connection without answering".into());
    }
    let line = String::from_utf8_lossy(received);
    let line = line.lines().next().unwrap_or_default().trim_end();
    let mut words = line.split_whitespace();
    let code = match (words.next(), words.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/") => code.parse::<u16>().ok(),
        _ => None,
    };
    match code {
        Some(200..=399) => Ok(()),
        Some(_) => Err(format!("answered `{line}`")),
        None => Err(format!(
            "answered without an HTTP status line: `{}`",
            line.chars().take(80).collect::<String>().escape_default()
        )),
    }
}

/// "connection refused": the errno's text as it reads inside a sentence.
fn describe_errno(errno: Errno) -> String {
    let text = errno.desc();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text.to_string(),
    }
}

/// "2s", "1500ms": a duration as the config writes it.
fn describe_duration(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_status_lines() {
        assert_eq!(http_verdict(b"HTTP/1.0 200 OK\r\n"), Ok(()));
        assert_eq!(http_verdict(b"HTTP/1.1 302 Found\r\nLocation: /"), Ok(()));
        assert_eq!(
            http_verdict(b"HTTP/1.1 503 Service Unavailable\r\n"),
            Err("answered `HTTP/1.1 503 Service Unavailable`".into())
        );
        assert!(http_verdict(b"").unwrap_err().contains("without answering"));
        assert!(http_verdict(b"SSH-2.0-OpenSSH\r\n")
            .unwrap_err()
            .contains("without an HTTP status line"));
        assert!(http_verdict(b"HTTP/1.0 abc\r\n").is_err());
    }

    #[test]
    fn reasons_read_inside_a_sentence() {
        assert_eq!(describe_errno(Errno::ECONNREFUSED), "connection refused");
        assert_eq!(describe_duration(Duration::from_secs(2)), "2s");
        assert_eq!(describe_duration(Duration::from_millis(1500)), "1500ms");
    }

    fn prober(check: HealthCheck) -> Prober {
        let spec = HealthSpec {
            check,
            interval: Duration::from_millis(1),
            timeout: Duration::from_millis(500),
            healthy_after: 1,
            unhealthy_after: 1,
        };
        Prober::new(&spec, Instant::now())
    }

    /// Runs the event loop's part until one check has finished.
    fn check_once(prober: &mut Prober) -> HealthStatus {
        let null = std::fs::File::open("/dev/null").unwrap();
        std::thread::sleep(Duration::from_millis(2));
        prober.tick(Instant::now(), null.as_fd(), None);
        while prober.running.is_some() {
            let ready = prober.poll_fd().is_some_and(|fd| {
                let mut fds = [fd];
                nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16)).unwrap();
                fds[0].revents().is_some_and(|r| !r.is_empty())
            });
            if ready {
                prober.socket_ready(Instant::now());
            }
            prober.tick(Instant::now(), null.as_fd(), None);
        }
        prober.status()
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// A one-shot HTTP server answering `answer`; returns its port and the request it got.
    fn http_server(answer: &'static str) -> (u16, std::thread::JoinHandle<String>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buffer = [0u8; 512];
            while !request.ends_with(b"\r\n\r\n") {
                let count = stream.read(&mut buffer).unwrap();
                if count == 0 {
                    break;
                }
                request.extend_from_slice(&buffer[..count]);
            }
            stream.write_all(answer.as_bytes()).unwrap();
            String::from_utf8(request).unwrap()
        });
        (port, server)
    }

    #[test]
    fn tcp_passes_on_a_listener_and_names_the_refusal() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(
            check_once(&mut prober(HealthCheck::Tcp(port))).state,
            "healthy"
        );

        let port = free_port();
        let status = check_once(&mut prober(HealthCheck::Tcp(port)));
        assert_eq!(status.state, "unhealthy");
        assert_eq!(
            status.last_error.unwrap(),
            format!("tcp 127.0.0.1:{port}: connection refused")
        );
    }

    #[test]
    fn http_sends_a_get_and_judges_the_status() {
        let (port, server) = http_server("HTTP/1.0 204 No Content\r\n\r\n");
        let status = check_once(&mut prober(HealthCheck::Http(format!(
            "http://127.0.0.1:{port}/health?deep=1"
        ))));
        assert_eq!(status.state, "healthy", "{status:?}");
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET /health?deep=1 HTTP/1.0\r\nHost: 127.0.0.1\r\n"),
            "{request}"
        );

        let (port, server) = http_server("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let url = format!("http://localhost:{port}/");
        let status = check_once(&mut prober(HealthCheck::Http(url.clone())));
        server.join().unwrap();
        assert_eq!(status.state, "unhealthy");
        assert_eq!(
            status.last_error.unwrap(),
            format!("http {url}: answered `HTTP/1.1 503 Service Unavailable`")
        );
    }

    #[test]
    fn a_silent_server_times_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let started = Instant::now();
        let status = check_once(&mut prober(HealthCheck::Http(format!(
            "http://127.0.0.1:{port}/"
        ))));
        assert!(started.elapsed() >= Duration::from_millis(500));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(status
            .last_error
            .unwrap()
            .ends_with(": timed out after 500ms"),);
        drop(listener);
    }

    #[test]
    fn a_check_that_cannot_run_fails_with_its_reason() {
        let status = check_once(&mut prober(HealthCheck::Exec(vec!["a\0b".into()])));
        assert_eq!(status.state, "unhealthy");
        assert!(status.last_error.unwrap().contains("NUL"));
    }
}
