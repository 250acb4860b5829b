//! The built-in image `busybox`: the host's static busybox, a link for each of its applets and the
//! few files a shell, a web server and `ps` expect, so tests and demos need no image recipe.

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::{elf, ImageError};

/// The image's name in role definitions.
pub const NAME: &str = "busybox";

/// Where Debian's busybox-static puts the binary.
pub const HOST_BUSYBOX: &str = "/bin/busybox";

/// Bump when the layout, the file contents or the way applets are linked changes, so hosts
/// rebuild instead of reusing an image made by the old recipe.
const RECIPE_VERSION: &str = "magestack busybox image 1";

/// The host's resolver configuration, the source of the image's nameservers.
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// Where the binary sits in the image, and what every applet link points to.
const BUSYBOX_IN_IMAGE: &str = "bin/busybox";
const APPLET_TARGET: &str = "/bin/busybox";

/// Everything in the image that does not come from the host, in creation order (parents first).
const LAYOUT: &[Entry] = &[
    Entry::Dir("bin", 0o755),
    Entry::Dir("sbin", 0o755),
    Entry::Dir("usr", 0o755),
    Entry::Dir("usr/bin", 0o755),
    Entry::Dir("usr/sbin", 0o755),
    Entry::Dir("proc", 0o555),
    Entry::Dir("sys", 0o555),
    Entry::Dir("dev", 0o755),
    Entry::Dir("tmp", 0o1777),
    Entry::Dir("run", 0o755),
    Entry::Dir("etc", 0o755),
    Entry::Dir("root", 0o700),
    Entry::Dir("home", 0o755),
    Entry::Dir("var", 0o755),
    Entry::Dir("var/log", 0o755),
    Entry::Dir("var/www", 0o755),
    Entry::File(
        "etc/passwd",
        0o644,
        "root:x:0:0:root:/root:/bin/sh\n\
         www-data:x:33:33:www-data:/var/www:/bin/false\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    ),
    Entry::File(
        "etc/group",
        0o644,
        "root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n",
    ),
    Entry::File("etc/hosts", 0o644, "127.0.0.1 localhost\n::1 localhost\n"),
    Entry::File("etc/hostname", 0o644, ""),
    Entry::File(
        "var/www/index.html",
        0o644,
        "<!doctype html>\n<title>magestack</title>\n<p>Served by a MageStack busybox node.</p>\n",
    ),
];

/// One fixed item of the image: a directory or a file, with its mode.
enum Entry {
    Dir(&'static str, u32),
    File(&'static str, u32, &'static str),
}

/// What identifies the host binary cheaply, so the hot path can tell it is unchanged with one stat
/// instead of rehashing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Fingerprint {
    pub fn of(busybox: &Path) -> Result<Self, ImageError> {
        let meta = fs::metadata(busybox).map_err(|source| ImageError::BusyboxUnreadable {
            path: busybox.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })
    }
}

/// The inputs of one build: the checked bytes of a static busybox and where they came from.
pub struct Recipe {
    path: PathBuf,
    binary: Vec<u8>,
}

impl Recipe {
    /// Reads the binary once and refuses a dynamic one, which would not start in an image
    /// without its libraries.
    pub fn load(busybox: &Path) -> Result<Self, ImageError> {
        let path = busybox.to_path_buf();
        let binary = match fs::read(busybox) {
            Ok(binary) => binary,
            Err(source) => return Err(ImageError::BusyboxUnreadable { path, source }),
        };
        match elf::interpreter(&binary) {
            Ok(None) => Ok(Self { path, binary }),
            Ok(Some(interpreter)) => Err(ImageError::BusyboxDynamic { path, interpreter }),
            Err(source) => Err(ImageError::BusyboxNotElf { path, source }),
        }
    }

    /// The hex sha256 of everything that decides the image's contents; the applet list is left
    /// out because the binary's bytes already decide it, and resolv.conf because it is a snapshot
    /// of the host that the runtime replaces.
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
        field(RECIPE_VERSION.as_bytes());
        for entry in LAYOUT {
            match entry {
                Entry::Dir(path, mode) => {
                    field(b"dir");
                    field(path.as_bytes());
                    field(&mode.to_le_bytes());
                }
                Entry::File(path, mode, contents) => {
                    field(b"file");
                    field(path.as_bytes());
                    field(&mode.to_le_bytes());
                    field(contents.as_bytes());
                }
            }
        }
        field(b"binary");
        field(BUSYBOX_IN_IMAGE.as_bytes());
        field(&self.binary);
        field(b"applets");
        field(APPLET_TARGET.as_bytes());
        field(b"nameservers");
        field(b"etc/resolv.conf");
        format!("{:x}", hasher.finalize())
    }

    /// Fills an empty `rootfs` directory with the image.
    pub fn assemble(&self, rootfs: &Path) -> Result<(), ImageError> {
        for entry in LAYOUT {
            match *entry {
                Entry::Dir(path, mode) => make_dir(&rootfs.join(path), mode)?,
                Entry::File(path, mode, contents) => {
                    write_file(&rootfs.join(path), mode, contents.as_bytes())?
                }
            }
        }
        write_file(&rootfs.join(BUSYBOX_IN_IMAGE), 0o755, &self.binary)?;
        for applet in self.applets()? {
            if applet == Path::new(BUSYBOX_IN_IMAGE) {
                continue;
            }
            let link = rootfs.join(&applet);
            if let Some(parent) = applet.parent() {
                make_parents(rootfs, parent)?;
            }
            std::os::unix::fs::symlink(APPLET_TARGET, &link)
                .map_err(|source| io_error("link applet", &link, source))?;
        }
        let nameservers = match fs::read_to_string(HOST_RESOLV_CONF) {
            Ok(host) => nameservers(&host),
            Err(_) => String::new(),
        };
        write_file(
            &rootfs.join("etc/resolv.conf"),
            0o644,
            nameservers.as_bytes(),
        )
    }

    /// The applets as image-relative paths (`usr/bin/wget`), from `busybox --list-full`.
    fn applets(&self) -> Result<BTreeSet<PathBuf>, ImageError> {
        let failed = |reason: String| ImageError::Applets {
            path: self.path.clone(),
            reason,
        };
        let output = Command::new(&self.path)
            .arg("--list-full")
            .output()
            .map_err(|e| failed(e.to_string()))?;
        if !output.status.success() {
            return Err(failed(format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let listing = String::from_utf8(output.stdout)
            .map_err(|_| failed("the list is not UTF-8".to_owned()))?;
        let applets = parse_applets(&listing).map_err(failed)?;
        if applets.is_empty() {
            return Err(failed("it lists no applets".to_owned()));
        }
        Ok(applets)
    }
}

/// Parses `busybox --list-full`, refusing any path that could land outside the image.
fn parse_applets(listing: &str) -> Result<BTreeSet<PathBuf>, String> {
    let mut applets = BTreeSet::new();
    for line in listing.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = Path::new(line);
        if !path.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(format!("applet path `{line}` is not a plain relative path"));
        }
        applets.insert(path.to_path_buf());
    }
    Ok(applets)
}

/// The host's `nameserver` lines, less loopback resolvers (systemd-resolved's 127.0.0.53), which
/// a node in its own network namespace cannot reach.
fn nameservers(resolv_conf: &str) -> String {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter(|address| address.parse::<IpAddr>().is_ok_and(|ip| !ip.is_loopback()))
        .map(|address| format!("nameserver {address}\n"))
        .collect()
}

/// Creates the missing directories of `relative` under `rootfs` as 0755.
fn make_parents(rootfs: &Path, relative: &Path) -> Result<(), ImageError> {
    let mut dir = rootfs.to_path_buf();
    for component in relative.components() {
        dir.push(component);
        if !dir.is_dir() {
            make_dir(&dir, 0o755)?;
        }
    }
    Ok(())
}

/// Creates one directory with exactly `mode`, whatever the umask.
fn make_dir(path: &Path, mode: u32) -> Result<(), ImageError> {
    DirBuilder::new()
        .mode(mode)
        .create(path)
        .and_then(|()| fs::set_permissions(path, Permissions::from_mode(mode)))
        .map_err(|source| io_error("create directory", path, source))
}

/// Creates one new file with exactly `mode`, whatever the umask.
fn write_file(path: &Path, mode: u32, contents: &[u8]) -> Result<(), ImageError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut file| {
            file.write_all(contents)?;
            file.set_permissions(Permissions::from_mode(mode))
        })
        .map_err(|source| io_error("write", path, source))
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> ImageError {
    ImageError::Io {
        name: NAME.to_owned(),
        action,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applet_list_keeps_plain_relative_paths() {
        let applets = parse_applets("usr/bin/[\nbin/sh\n\nlinuxrc\nbin/sh\n").unwrap();
        let applets: Vec<_> = applets.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(applets, ["bin/sh", "linuxrc", "usr/bin/["]);
    }

    #[test]
    fn applet_list_refuses_paths_leaving_the_image() {
        for bad in ["/bin/sh", "../etc/passwd", "usr/../../x", "./bin/sh"] {
            let err = parse_applets(bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn nameservers_are_copied_without_loopback_or_options() {
        let host = "# generated\nsearch example.com\nnameserver 10.0.0.2\nnameserver 127.0.0.53\n\
                    nameserver ::1\n  nameserver   2001:db8::53  \noptions edns0\nnameserver\n\
                    nameserver fe80::1%eth0\n";
        assert_eq!(
            nameservers(host),
            "nameserver 10.0.0.2\nnameserver 2001:db8::53\n"
        );
    }

    #[test]
    fn dynamic_busybox_is_refused_with_the_fix() {
        let err = Recipe::load(Path::new("/bin/ls"))
            .err()
            .expect("/bin/ls is dynamic");
        let message = err.to_string();
        assert!(message.contains("/bin/ls"), "{message}");
        assert!(
            message.contains("apt-get install busybox-static"),
            "{message}"
        );
    }

    #[test]
    fn digest_follows_the_binary() {
        let recipe = Recipe::load(Path::new(HOST_BUSYBOX)).unwrap();
        let digest = recipe.digest();
        assert_eq!(digest.len(), 64);
        assert_eq!(digest, recipe.digest());
        let mut changed = recipe.binary.clone();
        changed.push(0);
        let other = Recipe {
            path: recipe.path.clone(),
            binary: changed,
        };
        assert_ne!(digest, other.digest());
    }
}
