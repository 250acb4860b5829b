//! The network tests' stack of busybox stand-ins and the world outside a host: shared by the
//! network tests and the escape battery.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use super::{wait_for, TestHost, DB_STAND_IN, LB_STAND_IN, WEB_STAND_IN};

/// fw1, lb1 (busybox httpd with a CGI that prints the client address), web1, db1.
pub fn stack(name: &str, extra: &str) -> TestHost {
    stack_with(name, extra, |_| {})
}

/// [`stack`], with `prepare` run on the host before its daemon starts.
pub fn stack_with(name: &str, extra: &str, prepare: impl FnOnce(&TestHost)) -> TestHost {
    let mut host = TestHost::new(
        name,
        &format!(
            r#"
[nodes.fw1]
role = "fw"
[nodes.lb1]
role = "lb"
[nodes.web1]
role = "web"
[nodes.db1]
role = "db"
{LB_STAND_IN}{DB_STAND_IN}{WEB_STAND_IN}
{extra}"#
        ),
    );
    prepare(&host);
    host.start_daemon();
    for node in ["fw1", "lb1", "web1", "db1"] {
        host.wait_node_state(node, "running");
    }
    host.exec_stdout(
        "lb1",
        &[
            "sh",
            "-c",
            "mkdir -p /var/www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho client=$REMOTE_ADDR\\n' > /var/www/cgi-bin/ip && chmod +x /var/www/cgi-bin/ip",
        ],
    );
    host
}

/// One HTTP GET with short, bounded timeouts; the body, or None if the connection failed.
pub fn http_get(address: &str, path: &str, timeout: Duration) -> Option<String> {
    let address: SocketAddr = address.parse().unwrap();
    let mut stream = TcpStream::connect_timeout(&address, timeout).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// Whether `from` gets an answer over TCP from `target` (`host:port`) within one second (the
/// test servers echo, or answer a stray line with an HTTP error).
pub fn can_connect(host: &TestHost, from: &str, target: &str) -> bool {
    let (name, port) = target.split_once(':').unwrap();
    host.exec(
        from,
        &[
            "sh",
            "-c",
            &format!("echo ping | nc -w 1 {name} {port} | grep -q ."),
        ],
    )
    .status
    .success()
}

/// The world beyond a host: a network namespace held by a sleeping process, reached from the
/// host through a veth (`uplink` on the host, `wan` with `address` in the namespace). Removed on
/// drop.
pub struct Outside {
    holder: std::process::Child,
    pub uplink: String,
}

impl Outside {
    pub fn new(uplink: &str, address: &str) -> Outside {
        let holder = std::process::Command::new("unshare")
            .args(["--net", "sleep", "120"])
            .spawn()
            .unwrap();
        let outside = Outside {
            uplink: uplink.to_string(),
            holder,
        };
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        wait_for("the outside namespace", Duration::from_secs(5), || {
            std::fs::read_link(outside.netns()).is_ok_and(|ns| ns != ours)
        });
        let pid = outside.holder.id().to_string();
        run(&[
            "ip",
            "link",
            "add",
            &outside.uplink,
            "type",
            "veth",
            "peer",
            "name",
            "wan",
            "netns",
            &pid,
        ]);
        run(&["ip", "link", "set", &outside.uplink, "up"]);
        outside.run(&["ip", "addr", "add", address, "dev", "wan"]);
        outside.run(&["ip", "link", "set", "wan", "up"]);
        outside.run(&["ip", "link", "set", "lo", "up"]);
        outside
    }

    fn netns(&self) -> String {
        format!("/proc/{}/ns/net", self.holder.id())
    }

    /// Moves the calling thread into the outside namespace (sockets it opens belong there).
    pub fn enter(&self) {
        let netns = std::fs::File::open(self.netns()).unwrap();
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    }

    /// `work` on a thread in the outside namespace.
    pub fn within<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.enter();
                    work()
                })
                .join()
                .unwrap()
        })
    }

    /// Listens on `address` in the outside namespace, runs `connect(port)`, and returns the
    /// first peer that arrived (within 3 s).
    pub fn accept_from(&self, address: &str, connect: impl FnOnce(u16)) -> Option<SocketAddr> {
        let (port_sender, port) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            let listening = scope.spawn(|| {
                self.enter();
                let listener = TcpListener::bind(format!("{address}:0")).unwrap();
                port_sender
                    .send(listener.local_addr().unwrap().port())
                    .unwrap();
                listener.set_nonblocking(true).unwrap();
                (0..150).find_map(|_| match listener.accept() {
                    Ok((_, peer)) => Some(peer),
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(20));
                        None
                    }
                })
            });
            connect(port.recv().unwrap());
            listening.join().unwrap()
        })
    }

    /// A command in the outside namespace; its standard output.
    pub fn run(&self, command: &[&str]) -> String {
        let netns = format!("--net={}", self.netns());
        let mut args = vec!["nsenter", netns.as_str()];
        args.extend_from_slice(command);
        run(&args)
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.uplink])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Runs a command on the host; its standard output.
pub fn run(command: &[&str]) -> String {
    let output = std::process::Command::new(command[0])
        .args(&command[1..])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}
