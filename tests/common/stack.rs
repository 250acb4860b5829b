//! What the tests of the real stack share: the cache of real images (built once, kept between
//! runs under `target/tmp/image-cache`, removed by `cargo clean`), plain HTTP from the host, and
//! waiting for nodes and their processes.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::TestHost;

/// A cold build of an image took 30-90 s here; the mirror may be slower elsewhere.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// Builds into the cache are serialised: between the tests of one binary by this mutex, between
/// test binaries by an flock on the cache's lock file.
static CACHE: Mutex<()> = Mutex::new(());

pub fn image_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("image-cache")
}

/// A host whose `state_dir/images` is the shared image cache.
pub fn cached_host(name: &str, body: &str) -> TestHost {
    let host = TestHost::new(name, body);
    let cache = image_cache();
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::create_dir_all(host.state_dir()).unwrap();
    std::os::unix::fs::symlink(&cache, host.state_dir().join("images")).unwrap();
    host
}

/// Builds `images` through the CLI unless cached; prints how long each took.
pub fn build_images(host: &TestHost, images: &[&str]) {
    let _guard = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let lock = File::create(image_cache().join(".lock")).unwrap();
    // SAFETY: flock on a descriptor we own; released when `lock` is closed.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    for image in images {
        let began = Instant::now();
        let output = host.try_cli(&["image", "build", image]);
        assert!(
            output.status.success(),
            "image build {image}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let took = began.elapsed();
        assert!(took < BUILD_TIMEOUT, "{image} took {took:?}");
        let said = String::from_utf8_lossy(&output.stdout);
        eprintln!(
            "timing: `image build {image}`: {took:.1?} ({})",
            said.lines().last().unwrap_or_default()
        );
    }
}

/// One HTTP/1.0 GET from the host: status code, headers (lower-cased names) and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub fn get(ip: &str, path: &str) -> std::io::Result<Response> {
    let address: SocketAddr = format!("{ip}:80").parse().unwrap();
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {ip}\r\nUser-Agent: magestack-test\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_string(),
    })
}

/// Waits until `path` on `ip` answers at all; returns the answer.
pub fn first_answer(ip: &str, path: &str, limit: Duration) -> Response {
    let deadline = Instant::now() + limit;
    loop {
        match get(ip, path) {
            Ok(response) if response.status != 0 => return response,
            result if Instant::now() >= deadline => {
                panic!("{ip}{path} never answered: {:?}", result.err())
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Polls `path` on `ip` until it answers `status`, for at most `limit`; returns that answer.
pub fn wait_status(ip: &str, path: &str, status: u16, limit: Duration) -> Response {
    let deadline = Instant::now() + limit;
    loop {
        let answer = get(ip, path);
        match answer {
            Ok(response) if response.status == status => return response,
            other if Instant::now() >= deadline => {
                panic!("{ip}{path} did not answer {status} within {limit:?}: {other:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

pub fn ip(host: &TestHost, node: &str) -> String {
    host.node(node)["ip"].as_str().unwrap().to_string()
}

/// Waits until `node` runs (its image may be built meanwhile); returns how long it took.
pub fn wait_running(host: &TestHost, node: &str, limit: Duration) -> Duration {
    let began = Instant::now();
    loop {
        let status = host.node(node);
        match status["state"].as_str().unwrap() {
            "running" => return began.elapsed(),
            "starting" if began.elapsed() < limit => std::thread::sleep(Duration::from_millis(50)),
            _ => panic!("{node} did not start: {status:#}\n{}", host.daemon_log()),
        }
    }
}

/// The commands running in `node`, as `user comm` lines.
pub fn processes(host: &TestHost, node: &str) -> Vec<String> {
    host.exec_stdout(node, &["ps", "-e", "-o", "user=,comm="])
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// The command names (`comm`) of every process in `node`'s cgroup, read on the host: images
/// need no `ps` for it.
pub fn commands_in(host: &TestHost, node: &str) -> Vec<String> {
    host.node_processes(node)
        .into_iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok())
        .map(|comm| comm.trim().to_string())
        .collect()
}

/// Waits (bounded) until every command in `expected` runs in `node`.
pub fn wait_processes(host: &TestHost, node: &str, expected: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running = commands_in(host, node);
        let missing: Vec<&&str> = expected
            .iter()
            .filter(|name| !running.iter().any(|comm| comm == *name))
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{missing:?} not running in {node}: {running:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
