//! The shipped acc role on its real image (as root): sshd runs in acc1 and lets root and
//! www-data in by the public keys the configuration gives (`[roles.acc.ssh_keys]`), from the host
//! with the host's own ssh client; a key the configuration does not give is refused, and so is a
//! password; the host keys made at the first start are the same after a `restart`.
//!
//! The image is built once into `target/tmp/image-cache` (see role_db.rs); timings are printed.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::stack::{build_images, cached_host, ip, wait_processes, wait_running};
use common::{wait_for, TestHost};

/// A new ed25519 key pair at `path` (and `path.pub`), made by the host's ssh-keygen; returns
/// the public key's line.
fn keypair(path: &Path) -> String {
    let output = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "role-acc-test", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen (openssh-client, installed by scripts/setup.sh)");
    assert!(output.status.success(), "ssh-keygen: {output:?}");
    let public = path.with_extension("pub");
    std::fs::read_to_string(&public)
        .unwrap_or_else(|e| panic!("{}: {e}", public.display()))
        .trim()
        .to_string()
}

/// `ssh -i key user@address command...` from the host, by key only, without a known_hosts.
fn ssh(key: &Path, user: &str, address: &str, command: &[&str]) -> Output {
    ssh_with(key, user, address, &[], command)
}

/// [`ssh`] with more options for the client (e.g. `-tt` for a terminal).
fn ssh_with(key: &Path, user: &str, address: &str, options: &[&str], command: &[&str]) -> Output {
    Command::new("ssh")
        .args(options)
        .arg("-i")
        .arg(key)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
            "-F",
            "/dev/null",
        ])
        .arg(format!("{user}@{address}"))
        .args(command)
        .output()
        .expect("ssh (openssh-client, installed by scripts/setup.sh)")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Waits until sshd answers on port 22 with its banner; shows acc1's status and logs if not.
fn wait_sshd(host: &TestHost, address: &str) -> Duration {
    use std::io::Read;
    let began = Instant::now();
    loop {
        let last = match std::net::TcpStream::connect_timeout(
            &format!("{address}:22").parse().unwrap(),
            Duration::from_secs(1),
        ) {
            Ok(mut stream) => {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buffer = [0u8; 64];
                let read = stream.read(&mut buffer).unwrap_or(0);
                if buffer[..read].starts_with(b"SSH-2.0-OpenSSH") {
                    return began.elapsed();
                }
                format!("answered {:?}", String::from_utf8_lossy(&buffer[..read]))
            }
            Err(error) => error.to_string(),
        };
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "sshd on {address}:22 never sent its banner ({last}): {:#}\nhost's neighbour entry: {}; acc1's MAC: {}\n{}",
            host.node("acc1"),
            String::from_utf8_lossy(&Command::new("ip").args(["neigh", "show", address]).output().unwrap().stdout).trim(),
            host.exec_stdout("acc1", &["cat", "/sys/class/net/eth0/address"]).trim(),
            String::from_utf8_lossy(&host.try_cli(&["logs", "acc1", "-n", "60"]).stdout)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The SHA256 fingerprints of the host keys on acc1's volume, read in the node.
fn host_key_fingerprints(host: &TestHost) -> String {
    host.exec_stdout(
        "acc1",
        &[
            "sh",
            "-ec",
            "for k in /var/lib/ssh-host-keys/ssh_host_*_key.pub; do ssh-keygen -l -f \"$k\"; done",
        ],
    )
}

/// What the host's ssh client saw of acc1's host keys (`ssh-keyscan`'s fingerprints).
fn scanned_fingerprints(address: &str) -> String {
    let output = Command::new("sh")
        .args([
            "-c",
            &format!("ssh-keyscan -T 5 {address} 2>/dev/null | ssh-keygen -l -f - | sort"),
        ])
        .output()
        .expect("ssh-keyscan");
    stdout(&output)
}

#[test]
fn acc_role_lets_root_and_www_data_in_by_the_configured_keys() {
    let test_began = Instant::now();
    let keys = KeyDir::new();
    let dir = keys.0.clone();
    let ops = dir.join("ops_key");
    let deploy = dir.join("deploy_key");
    let stranger = dir.join("stranger_key");
    let ops_public = keypair(&ops);
    let deploy_public = keypair(&deploy);
    keypair(&stranger);

    let mut host = cached_host(
        "roleacc",
        &format!(
            "[nodes.acc1]\nrole = \"acc\"\n[roles.acc.ssh_keys]\nroot = [\"{ops_public}\"]\nwww-data = [\"{deploy_public}\", \"{ops_public}\"]\n"
        ),
    );
    build_images(&host, &["acc"]);

    let began = Instant::now();
    host.start_daemon();
    let running = wait_running(&host, "acc1", Duration::from_secs(60));
    let address = ip(&host, "acc1");
    let banner = wait_sshd(&host, &address);
    eprintln!(
        "timing: first start of acc1: running after {running:.2?}, sshd answering {banner:.2?} later (host keys generated), {:.2?} in all",
        began.elapsed()
    );
    wait_processes(&host, "acc1", &["sshd"]);
    let logs = host.cli(&["logs", "acc1", "sshd", "-n", "100"]);
    assert!(logs.contains("generating the ed25519 host key"), "{logs}");

    // sshd takes its rendered configuration without a word (no deprecated or unknown option).
    let test = host.exec("acc1", &["/usr/sbin/sshd", "-t"]);
    assert!(
        test.status.success() && test.stderr.is_empty(),
        "sshd -t: {test:?}"
    );

    // The rendered files: the configured keys, nothing else.
    let root_keys = host.exec_stdout("acc1", &["cat", "/etc/ssh/authorized_keys/root"]);
    assert!(root_keys.contains(&ops_public), "{root_keys}");
    assert!(!root_keys.contains(&deploy_public), "{root_keys}");

    // root and www-data by their keys, from the host.
    let began = Instant::now();
    let output = ssh(&ops, "root", &address, &["id", "-un"]);
    assert_eq!(stdout(&output), "root", "{output:?}\n{logs}");
    eprintln!("timing: ssh root@acc1 id -un: {:.2?}", began.elapsed());
    for key in [&deploy, &ops] {
        let output = ssh(key, "www-data", &address, &["id", "-un"]);
        assert_eq!(stdout(&output), "www-data", "{output:?}");
    }
    let output = ssh(
        &deploy,
        "www-data",
        &address,
        &["sh", "-c", "'echo $HOME $SHELL'"],
    );
    assert_eq!(stdout(&output), "/var/www /bin/bash", "{output:?}");
    // An interactive login gets a terminal.
    let output = ssh_with(&ops, "root", &address, &["-tt"], &["tty"]);
    assert_eq!(stdout(&output), "/dev/pts/0", "{output:?}");

    // A key given for www-data only does not open root; an unknown key opens neither; a user
    // without keys cannot log in.
    for (key, user) in [
        (&deploy, "root"),
        (&stranger, "root"),
        (&stranger, "www-data"),
        (&ops, "nobody"),
    ] {
        let output = ssh(key, user, &address, &["id", "-un"]);
        assert!(
            !output.status.success()
                && String::from_utf8_lossy(&output.stderr).contains("Permission denied"),
            "{} as {user} was let in: {output:?}",
            key.display()
        );
    }
    // Passwords are not offered at all.
    let output = Command::new("ssh")
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "PreferredAuthentications=password",
            "-F",
            "/dev/null",
        ])
        .arg(format!("root@{address}"))
        .arg("true")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Permission denied (publickey)"),
        "{output:?}"
    );

    // The host keys live on the volume and survive a restart: the same fingerprints, in the
    // node and as the host's client sees them.
    let keys_before = host_key_fingerprints(&host);
    let scanned_before = scanned_fingerprints(&address);
    assert_eq!(keys_before.lines().count(), 3, "{keys_before}");
    assert_eq!(scanned_before.lines().count(), 3, "{scanned_before}");
    let pid = host.node_pid("acc1");
    let began = Instant::now();
    host.cli(&["restart", "acc1"]);
    let restarted = began.elapsed();
    assert_ne!(host.node_pid("acc1"), pid, "acc1 was not restarted");
    // acc1 comes back with the same MAC address (it follows its IP), so the host's neighbour
    // entry stays right: no flush here.
    let banner = wait_sshd(&host, &address);
    eprintln!("timing: restart acc1: {restarted:.2?}, sshd answering {banner:.2?} later");
    wait_processes(&host, "acc1", &["sshd"]);
    assert_eq!(host_key_fingerprints(&host), keys_before);
    assert_eq!(scanned_fingerprints(&address), scanned_before);
    let logs = host.cli(&["logs", "acc1", "sshd", "-n", "1000"]);
    assert_eq!(
        logs.matches("generating the ed25519 host key").count(),
        1,
        "the host keys are made once: {logs}"
    );
    let output = ssh(&ops, "root", &address, &["id", "-un"]);
    assert_eq!(stdout(&output), "root", "{output:?}");

    // The health check (tcp 22) passes.
    wait_for("acc1 healthy", Duration::from_secs(40), || {
        host.node("acc1")["health"] == "healthy"
    });

    host.cli(&["stop", "acc1"]);
    host.assert_nothing_left();
    drop(host);
    drop(keys);
    eprintln!("timing: whole test {:.1?}", test_began.elapsed());
}

/// A private directory for the key pairs (ssh refuses a private key others can read), removed
/// when dropped, also when the test fails.
struct KeyDir(std::path::PathBuf);

impl KeyDir {
    fn new() -> KeyDir {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("role-acc-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        KeyDir(dir)
    }
}

impl Drop for KeyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
