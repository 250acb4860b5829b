//! What keeps two agents on one machine apart. An agent claims each setting through which a
//! second one would damage it (kill its nodes at a sweep, delete its links or writable layers,
//! replace its policy table) before it touches anything, and a second agent that overlaps is
//! refused with the setting and the agent holding it named.
//!
//! Every claim is held by something the kernel releases when the agent dies, so a killed agent
//! leaves no claim behind (and nodes, which outlive the agent, hold none: the daemon's
//! descriptors are close-on-exec and node inits close every other one):
//!
//! - state dir and run dir: an exclusive `flock` on `<dir>/agent.lock`;
//! - cgroup parent: an exclusive `flock` on the parent's own directory in the cgroup tree, which
//!   is the machine's: every mount namespace sees the same directory (a file under some `/run`
//!   would not be shared by an agent with a `/run` of its own). Nothing can be written there, so
//!   the holder is found in the kernel's list of locks (`/proc/locks`) and named by its pid and
//!   command line;
//! - bridge, link prefix, subnet: an abstract unix socket named after the setting and value,
//!   bound in the agent's network namespace. Abstract names are per network namespace, so
//!   agents in separate namespaces (the two hosts of a pair test) claim the same names apart.
//!
//! Who holds a claim is written down with it: into the lock file, and answered by a thread of
//! the holder on each connection to its socket.

use std::fs::File;
use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::runtime::cgroup::Cgroups;

/// How long a refused agent waits for the holder of a network claim to say who it is.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// The agent holding a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    /// `[host] name`.
    pub host: String,
    /// The configuration file it runs with.
    pub config: String,
}

impl Holder {
    /// This process, running `config`.
    pub fn of(config: &Config) -> Holder {
        Holder {
            pid: std::process::id(),
            host: config.host.name.clone(),
            config: std::fs::canonicalize(&config.origin)
                .map_or_else(|_| config.origin.clone(), |path| path.display().to_string()),
        }
    }

    fn record(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a holder serialises")
    }

    fn from_record(record: &[u8]) -> Option<Holder> {
        serde_json::from_slice(record).ok()
    }
}

/// The holder as a refusal names it: by its record, or by the process the kernel says holds
/// the lock.
#[derive(Debug)]
pub enum Named {
    Record(Holder),
    Process { pid: u32, command: String },
    Unknown,
}

impl std::fmt::Display for Named {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Named::Record(holder) => write!(
                f,
                "magestack-agent pid {}, host `{}`, config {}",
                holder.pid, holder.host, holder.config
            ),
            Named::Process { pid, command } => write!(f, "pid {pid} (`{command}`)"),
            Named::Unknown => write!(f, "another magestack-agent, which did not say who it is"),
        }
    }
}

impl From<Option<Holder>> for Named {
    fn from(holder: Option<Holder>) -> Named {
        holder.map_or(Named::Unknown, Named::Record)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "{setting} `{value}` is already used by {holder}; give each agent on a machine its own {setting}"
    )]
    Taken {
        setting: &'static str,
        value: String,
        holder: Named,
    },
    #[error("claiming {setting} `{value}`: {what}: {source}")]
    Io {
        setting: &'static str,
        value: String,
        what: String,
        source: std::io::Error,
    },
}

/// The claims of this agent, held until it exits.
#[derive(Debug)]
pub struct Claims {
    _locks: Vec<Flock<File>>,
}

/// One setting to claim: its name in the configuration and its value.
struct Setting {
    name: &'static str,
    value: String,
}

impl Setting {
    fn io(&self, what: String) -> impl FnOnce(std::io::Error) -> ClaimError + '_ {
        move |source| ClaimError::Io {
            setting: self.name,
            value: self.value.clone(),
            what,
            source,
        }
    }

    fn taken(&self, holder: Named) -> ClaimError {
        ClaimError::Taken {
            setting: self.name,
            value: self.value.clone(),
            holder,
        }
    }
}

impl Claims {
    /// Claims the state and run dirs, the network and the cgroup parent (as `cgroups` places
    /// it) of `config` for this process, or says which is taken and by whom. The parent's
    /// directory, made if missing, comes last: a refusal leaves no new directory behind.
    pub fn take(config: &Config, cgroups: &Cgroups) -> Result<Claims, ClaimError> {
        let holder = Holder::of(config);
        let host = &config.host;
        let mut locks = Vec::new();
        for (name, dir) in [
            ("host.run_dir", &host.run_dir),
            ("host.state_dir", &host.state_dir),
        ] {
            let setting = Setting {
                name,
                value: dir.display().to_string(),
            };
            locks.push(lock(&setting, &dir.join("agent.lock"), &holder)?);
        }
        let network = &config.network;
        for (name, value) in [
            ("network.bridge", network.bridge.clone()),
            ("network.link_prefix", network.link_prefix.clone()),
            ("network.subnet", network.subnet.to_string()),
        ] {
            bind(&Setting { name, value }, &holder)?;
        }
        let cgroup = Setting {
            name: "host.cgroup",
            value: host.cgroup.clone(),
        };
        let parent_dir = cgroups.node_roots().first().map_or_else(
            || PathBuf::from(&host.cgroup),
            |root| root.join(&host.cgroup),
        );
        std::fs::create_dir_all(&parent_dir)
            .map_err(cgroup.io(format!("creating {}", parent_dir.display())))?;
        locks.push(lock_cgroup(&cgroup, &parent_dir)?);
        Ok(Claims { _locks: locks })
    }
}

/// Takes the exclusive lock on the cgroup directory `dir`, or names the process holding it.
fn lock_cgroup(setting: &Setting, dir: &Path) -> Result<Flock<File>, ClaimError> {
    let file = File::open(dir).map_err(setting.io(format!("opening {}", dir.display())))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => Ok(locked),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let locks = std::fs::read_to_string(PROC_LOCKS).unwrap_or_default();
            let holder = std::fs::metadata(dir)
                .ok()
                .and_then(|metadata| flock_holder(&locks, metadata.dev(), metadata.ino()))
                .map_or(Named::Unknown, |pid| Named::Process {
                    pid,
                    command: command_line(pid),
                });
            Err(setting.taken(holder))
        }
        Err((_, errno)) => Err(setting.io(format!("locking {}", dir.display()))(
            errno.into(),
        )),
    }
}

/// Where the kernel lists the file locks held, with the pid holding each.
const PROC_LOCKS: &str = "/proc/locks";

/// The pid holding a `flock` on the file `dev`/`ino`, from a `/proc/locks` text: lines like
/// `1: FLOCK  ADVISORY  WRITE 25891 fe:00:10022056 0 EOF`; waiters (`1: -> FLOCK ...`) are not
/// holders.
fn flock_holder(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let file = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&file.as_str()))
            .then(|| fields.get(4)?.parse().ok())
            .flatten()
    })
}

/// A process's command line, its arguments separated by spaces.
fn command_line(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|byte| *byte == 0)
        .filter(|arg| !arg.is_empty())
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Takes the exclusive lock on `path` and writes `holder` into it, or reads who holds it.
fn lock(setting: &Setting, path: &Path, holder: &Holder) -> Result<Flock<File>, ClaimError> {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(setting.io(format!("opening {}", path.display())))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => {
            let record = holder.record();
            locked
                .set_len(0)
                .and_then(|()| locked.write_all_at(&record, 0))
                .map_err(setting.io(format!("writing {}", path.display())))?;
            Ok(locked)
        }
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut record = Vec::new();
            let _ = file.read_to_end(&mut record);
            Err(setting.taken(Holder::from_record(&record).into()))
        }
        Err((_, errno)) => Err(setting.io(format!("locking {}", path.display()))(
            errno.into(),
        )),
    }
}

/// Binds the abstract socket of a network setting and answers who holds it on every connection,
/// or asks the holder who it is.
fn bind(setting: &Setting, holder: &Holder) -> Result<(), ClaimError> {
    let name = format!("magestack-agent/{}={}", setting.name, setting.value);
    let address = SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(setting.io(format!("naming the socket {name}")))?;
    match UnixListener::bind_addr(&address) {
        Ok(listener) => {
            let record = holder.record();
            std::thread::Builder::new()
                .name("claim".into())
                .spawn(move || {
                    for mut stream in listener.incoming().flatten() {
                        let _ = stream.write_all(&record);
                    }
                })
                .map_err(setting.io("starting the thread that answers for it".into()))?;
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
            Err(setting.taken(ask_holder(&address).into()))
        }
        Err(error) => Err(setting.io(format!("binding the socket {name}"))(error)),
    }
}

fn ask_holder(address: &SocketAddr) -> Option<Holder> {
    let mut stream = UnixStream::connect_addr(address).ok()?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).ok()?;
    let mut record = Vec::new();
    stream.read_to_end(&mut record).ok()?;
    Holder::from_record(&record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(pid: u32) -> Holder {
        Holder {
            pid,
            host: "dh1".into(),
            config: "/etc/magestack/agent.toml".into(),
        }
    }

    #[test]
    fn a_locked_file_names_its_holder_and_is_free_again_once_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.lock");
        let setting = Setting {
            name: "host.state_dir",
            value: dir.path().display().to_string(),
        };
        let first = lock(&setting, &path, &holder(10)).unwrap();
        let refused = lock(&setting, &path, &holder(11)).unwrap_err();
        assert_eq!(
            refused.to_string(),
            format!(
                "host.state_dir `{}` is already used by magestack-agent pid 10, host `dh1`, config /etc/magestack/agent.toml; give each agent on a machine its own host.state_dir",
                dir.path().display()
            )
        );
        drop(first);
        let _second = lock(&setting, &path, &holder(11)).unwrap();
        assert_eq!(
            Holder::from_record(&std::fs::read(&path).unwrap()),
            Some(holder(11))
        );
    }

    #[test]
    fn a_bound_socket_answers_for_its_holder() {
        let setting = Setting {
            name: "network.bridge",
            value: format!("unit{}", std::process::id()),
        };
        bind(&setting, &holder(20)).unwrap();
        match bind(&setting, &holder(21)).unwrap_err() {
            ClaimError::Taken {
                holder: Named::Record(named),
                ..
            } => assert_eq!(named, holder(20)),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_locked_directory_names_the_process_holding_it() {
        let dir = tempfile::tempdir().unwrap();
        let setting = Setting {
            name: "host.cgroup",
            value: "magestack".into(),
        };
        let _held = lock_cgroup(&setting, dir.path()).unwrap();
        let refused = lock_cgroup(&setting, dir.path()).unwrap_err().to_string();
        assert!(
            refused.starts_with(&format!(
                "host.cgroup `magestack` is already used by pid {} (`",
                std::process::id()
            )),
            "{refused}"
        );
    }

    #[test]
    fn flock_holders_are_read_from_the_kernel_s_list() {
        let locks = "1: FLOCK  ADVISORY  WRITE 25891 fe:00:10022056 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 300 fe:00:10022056 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 77 00:24:14570 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 24854 00:24:14570 0 EOF\n";
        let dev = libc::makedev(0xfe, 0);
        assert_eq!(flock_holder(locks, dev, 10022056), Some(25891));
        assert_eq!(
            flock_holder(locks, libc::makedev(0, 0x24), 14570),
            Some(24854)
        );
        assert_eq!(flock_holder(locks, dev, 1), None);
    }
}
