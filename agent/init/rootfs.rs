//! The node's root filesystem, built by the init inside its own mount namespace: overlay root,
//! kernel filesystems, a minimal /dev, tmpfs /run and /tmp, volumes, hosts, then pivot_root.
//!
//! The steps are planned as data first ([`plan`]) so the order and flags are unit-tested without
//! root; [`apply`] then performs them.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::pivot_root;

use crate::api::init::InitPlan;

/// Device nodes bind-mounted from the host into the node's /dev.
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Kernel files and directories that tell about or act on the host rather than the node: hidden
/// behind /dev/null (files) or an empty read-only tmpfs (directories), where the kernel has them.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/diskstats",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/partitions",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/sysrq-trigger",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    // The host's disks: a node's storage is its overlay and volumes, never a block device.
    "/sys/block",
    "/sys/class/block",
    "/sys/dev/block",
    "/sys/devices/virtual/block",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Stop mount events from propagating back to the host.
    MakePrivate,
    Mount {
        fstype: &'static str,
        source: String,
        target: PathBuf,
        flags: MsFlags,
        data: String,
    },
    /// Bind a host directory (or file, when `file`) onto a path in the new root.
    Bind {
        source: PathBuf,
        target: PathBuf,
        file: bool,
    },
    Symlink {
        target: &'static str,
        link: PathBuf,
    },
    /// Make a bind mount read-only, keeping the flags it has (a user namespace may not clear
    /// them).
    RemountReadOnly(PathBuf),
    /// A symlink at `link` (replacing a file or link there, never a directory) to `target`:
    /// a template's `dest` pointing into the rendered files.
    TemplateLink {
        target: String,
        link: PathBuf,
    },
    /// Hide a kernel path (see [`MASKED_PATHS`]); nothing to do where it does not exist.
    Mask(PathBuf),
    PivotRoot(PathBuf),
}

#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct RootfsError {
    pub step: String,
    pub source: std::io::Error,
}

/// The whole list of steps for one node, in order.
pub fn plan(node: &InitPlan) -> Result<Vec<Step>, String> {
    let root = node.root_mount.clone();
    let at = |path: &str| root.join(path.trim_start_matches('/'));
    for path in [&node.image_rootfs, &node.upper_dir, &node.work_dir] {
        let text = path.to_string_lossy();
        if text.contains([',', ':', '\\']) {
            return Err(format!("overlay path {text} contains ',', ':' or '\\'"));
        }
    }
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mut steps = vec![
        Step::MakePrivate,
        Step::Mount {
            fstype: "overlay",
            source: "overlay".into(),
            target: root.clone(),
            flags: MsFlags::empty(),
            // In a user namespace overlay keeps its own metadata in user.* xattrs: trusted.*
            // needs privileges the node does not have.
            data: format!(
                "lowerdir={},upperdir={},workdir={}{}",
                node.image_rootfs.display(),
                node.upper_dir.display(),
                node.work_dir.display(),
                if node.user_namespace {
                    ",userxattr"
                } else {
                    ""
                }
            ),
        },
        Step::Mount {
            fstype: "proc",
            source: "proc".into(),
            target: at("/proc"),
            flags: hardened | MsFlags::MS_RDONLY,
            data: String::new(),
        },
        Step::Mount {
            fstype: "sysfs",
            source: "sysfs".into(),
            target: at("/sys"),
            flags: hardened | MsFlags::MS_RDONLY,
            data: String::new(),
        },
        Step::Mount {
            fstype: "tmpfs",
            source: "tmpfs".into(),
            target: at("/dev"),
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: "mode=755,size=65536k".into(),
        },
    ];
    steps.extend(MASKED_PATHS.iter().map(|path| Step::Mask(at(path))));
    for device in DEVICES {
        steps.push(Step::Bind {
            source: Path::new("/dev").join(device),
            target: at(&format!("/dev/{device}")),
            file: true,
        });
    }
    steps.push(Step::Mount {
        fstype: "devpts",
        source: "devpts".into(),
        target: at("/dev/pts"),
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        data: "newinstance,ptmxmode=0666,mode=0620".into(),
    });
    for (target, link) in [
        ("pts/ptmx", "/dev/ptmx"),
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ] {
        steps.push(Step::Symlink {
            target,
            link: at(link),
        });
    }
    let tmpfs = |target: &str, mode: &str| Step::Mount {
        fstype: "tmpfs",
        source: "tmpfs".into(),
        target: at(target),
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        data: format!("mode={mode}"),
    };
    steps.push(tmpfs("/dev/shm", "1777"));
    steps.push(tmpfs("/run", "755"));
    steps.push(tmpfs("/tmp", "1777"));
    for volume in &node.volumes {
        steps.push(Step::Bind {
            source: volume.source.clone(),
            target: at(&volume.target),
            file: false,
        });
    }
    steps.push(Step::Bind {
        source: node.hosts_file.clone(),
        target: at("/etc/hosts"),
        file: true,
    });
    steps.push(Step::Bind {
        source: node.resolv_file.clone(),
        target: at("/etc/resolv.conf"),
        file: true,
    });
    if let Some(dir) = &node.templates_dir {
        let mounted = at(crate::template::IN_NODE);
        steps.push(Step::Bind {
            source: dir.clone(),
            target: mounted.clone(),
            file: false,
        });
        steps.push(Step::RemountReadOnly(mounted));
        for template in &node.spec.definition.templates {
            steps.push(Step::TemplateLink {
                target: format!("{}{}", crate::template::IN_NODE, template.dest),
                link: at(&template.dest),
            });
        }
    }
    steps.push(Step::PivotRoot(root));
    Ok(steps)
}

/// Performs the steps; the first failure stops and names its step. Nothing needs undoing on the
/// host: every mount lives in the node's mount namespace and dies with it.
pub fn apply(steps: &[Step], root: &Path) -> Result<(), RootfsError> {
    for step in steps {
        apply_step(step, root).map_err(|source| RootfsError {
            step: describe(step),
            source,
        })?;
    }
    Ok(())
}

fn apply_step(step: &Step, root: &Path) -> std::io::Result<()> {
    match step {
        Step::MakePrivate => mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(Into::into),
        Step::Mount {
            fstype,
            source,
            target,
            flags,
            data,
        } => {
            if target != root {
                ensure_dir_in_root(root, target)?;
            }
            let data = (!data.is_empty()).then_some(data.as_str());
            mount(Some(source.as_str()), target, Some(*fstype), *flags, data)?;
            Ok(())
        }
        Step::Bind {
            source,
            target,
            file,
        } => {
            if *file {
                ensure_file_in_root(root, target)?;
            } else {
                ensure_dir_in_root(root, target)?;
            }
            mount(
                Some(source),
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )?;
            Ok(())
        }
        Step::Symlink { target, link } => std::os::unix::fs::symlink(target, link),
        Step::RemountReadOnly(target) => remount_read_only(target),
        Step::TemplateLink { target, link } => template_link(root, target, link),
        Step::Mask(path) => mask(path),
        Step::PivotRoot(new_root) => enter_root(new_root),
    }
}

fn remount_read_only(target: &Path) -> std::io::Result<()> {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let current = statvfs(target)?.flags();
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    for (has, keep) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if current.contains(has) {
            flags |= keep;
        }
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)?;
    Ok(())
}

/// Points `link` at `target`, replacing whatever file or link the image or an earlier start
/// left there; a directory in the way is an error.
fn template_link(root: &Path, target: &str, link: &Path) -> std::io::Result<()> {
    ensure_dir_in_root(root, link.parent().unwrap_or(root))?;
    match fs::symlink_metadata(link) {
        Ok(meta) if meta.file_type().is_symlink() => {
            if fs::read_link(link)? == Path::new(target) {
                return Ok(());
            }
            fs::remove_file(link)?;
        }
        Ok(meta) if meta.is_dir() => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} is a directory", link.display()),
            ))
        }
        Ok(_) => fs::remove_file(link)?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    std::os::unix::fs::symlink(target, link)
}

fn mask(path: &Path) -> std::io::Result<()> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    if metadata.is_dir() {
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=0,mode=555"),
        )?;
    } else {
        mount(
            Some("/dev/null"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
    }
    Ok(())
}

/// pivot_root with the new root as both arguments, then detach the old root stacked beneath:
/// no directory for the old root is needed and nothing of the host stays reachable.
fn enter_root(new_root: &Path) -> std::io::Result<()> {
    std::env::set_current_dir(new_root)?;
    pivot_root(".", ".")?;
    umount2(".", MntFlags::MNT_DETACH)?;
    std::env::set_current_dir("/")
}

fn describe(step: &Step) -> String {
    match step {
        Step::MakePrivate => "make mounts private".into(),
        Step::Mount { fstype, target, .. } => format!("mount {fstype} on {}", target.display()),
        Step::Bind { source, target, .. } => {
            format!("bind {} on {}", source.display(), target.display())
        }
        Step::Symlink { link, .. } => format!("symlink {}", link.display()),
        Step::RemountReadOnly(target) => format!("remount {} read-only", target.display()),
        Step::TemplateLink { target, link } => {
            format!("link template {} to {target}", link.display())
        }
        Step::Mask(path) => format!("mask {}", path.display()),
        Step::PivotRoot(root) => format!("pivot_root into {}", root.display()),
    }
}

/// Creates `path` (inside `root`) as a directory, refusing to follow symlinks so an image cannot
/// redirect a mount outside its root.
pub fn ensure_dir_in_root(root: &Path, path: &Path) -> std::io::Result<()> {
    let relative = path.strip_prefix(root).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is outside {}", path.display(), root.display()),
        )
    })?;
    let mut current = root.to_path_buf();
    for component in relative.components() {
        let Component::Normal(name) = component else {
            return Err(not_normal(path));
        };
        current.push(name);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => return Err(symlink_refused(&current)),
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a directory", current.display()),
                ))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                fs::DirBuilder::new().mode(0o755).create(&current)?;
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Creates an empty file at `path` (parents as directories) to bind a file onto.
fn ensure_file_in_root(root: &Path, path: &Path) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(root);
    ensure_dir_in_root(root, parent)?;
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            // An image's /etc/hosts may be a symlink: replace the link, never follow it.
            fs::remove_file(path)?;
        }
        Ok(_) => return Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map(drop)
}

fn not_normal(path: &Path) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{} has `.`, `..` or root parts", path.display()),
    )
}

fn symlink_refused(path: &Path) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{} is a symlink; mounts never follow links", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::init::VolumeMount;
    use std::time::Duration;

    fn node_plan() -> InitPlan {
        InitPlan {
            freeze_value: None,
            network_configured: false,
            spec: crate::config::load(None).unwrap().nodes["web1"].clone(),
            image_rootfs: "/s/images/busybox/abc/rootfs".into(),
            user_namespace: false,
            upper_dir: "/s/nodes/web1/upper".into(),
            work_dir: "/s/nodes/web1/work".into(),
            root_mount: "/r/nodes/web1/root".into(),
            volumes: vec![VolumeMount {
                source: "/s/volumes/web1/www".into(),
                target: "/var/www".into(),
            }],
            hosts_file: "/r/nodes/web1/hosts".into(),
            resolv_file: "/r/nodes/web1/resolv.conf".into(),
            templates_dir: None,
            stop_timeout: Duration::from_secs(10),
            log_rotation: Default::default(),
            join_cgroup: vec![],
        }
    }

    #[test]
    fn plan_starts_private_mounts_overlay_and_ends_with_pivot() {
        let steps = plan(&node_plan()).unwrap();
        assert_eq!(steps[0], Step::MakePrivate);
        let Step::Mount {
            fstype,
            data,
            target,
            ..
        } = &steps[1]
        else {
            panic!("overlay first")
        };
        assert_eq!(*fstype, "overlay");
        assert_eq!(target, Path::new("/r/nodes/web1/root"));
        assert!(data.contains("lowerdir=/s/images/busybox/abc/rootfs"));
        assert_eq!(
            steps.last(),
            Some(&Step::PivotRoot("/r/nodes/web1/root".into()))
        );
    }

    #[test]
    fn proc_and_sys_are_read_only() {
        let steps = plan(&node_plan()).unwrap();
        for wanted in ["proc", "sysfs"] {
            let flags = steps
                .iter()
                .find_map(|step| match step {
                    Step::Mount { fstype, flags, .. } if *fstype == wanted => Some(*flags),
                    _ => None,
                })
                .unwrap();
            assert!(flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        }
    }

    #[test]
    fn host_facing_kernel_paths_are_masked_after_proc_and_sys_are_mounted() {
        let steps = plan(&node_plan()).unwrap();
        let position = |wanted: &Step| steps.iter().position(|step| step == wanted).unwrap();
        let mounted = |fstype: &str| {
            steps
                .iter()
                .position(|step| matches!(step, Step::Mount { fstype: f, .. } if *f == fstype))
                .unwrap()
        };
        let pivot = position(&Step::PivotRoot("/r/nodes/web1/root".into()));
        for path in [
            "/proc/kcore",
            "/proc/keys",
            "/proc/sysrq-trigger",
            "/sys/firmware",
        ] {
            let mask = position(&Step::Mask(
                Path::new("/r/nodes/web1/root").join(&path[1..]),
            ));
            let filesystem = if path.starts_with("/proc") {
                "proc"
            } else {
                "sysfs"
            };
            assert!(mounted(filesystem) < mask && mask < pivot, "{path}");
        }
    }

    #[test]
    fn dev_has_only_the_minimal_devices_and_its_own_devpts() {
        let steps = plan(&node_plan()).unwrap();
        let binds: Vec<_> = steps
            .iter()
            .filter_map(|step| match step {
                Step::Bind { source, .. } if source.starts_with("/dev") => Some(source.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(binds.len(), DEVICES.len());
        assert!(steps.iter().any(|step| matches!(step,
            Step::Mount { fstype: "devpts", data, .. } if data.contains("newinstance"))));
    }

    #[test]
    fn volumes_bind_under_the_new_root_before_pivot() {
        let steps = plan(&node_plan()).unwrap();
        let position = steps
            .iter()
            .position(|step| matches!(step, Step::Bind { target, .. } if target == Path::new("/r/nodes/web1/root/var/www")))
            .unwrap();
        assert!(position < steps.len() - 1);
    }

    #[test]
    fn templates_are_a_read_only_bind_under_run_with_each_dest_linked_into_it() {
        let mut node = node_plan();
        assert!(!plan(&node)
            .unwrap()
            .iter()
            .any(|step| matches!(step, Step::TemplateLink { .. })));
        node.templates_dir = Some("/r/nodes/web1/templates".into());
        node.spec.definition.templates = vec![crate::config::TemplateSpec {
            source: "web.conf".into(),
            dest: "/etc/web/web.conf".into(),
            reload: None,
        }];
        let steps = plan(&node).unwrap();
        let position = |wanted: &Step| steps.iter().position(|step| step == wanted).unwrap();
        let mounted = PathBuf::from("/r/nodes/web1/root/run/magestack/templates");
        let run = steps
            .iter()
            .position(|step| matches!(step, Step::Mount { target, .. } if target == Path::new("/r/nodes/web1/root/run")))
            .unwrap();
        let bind = position(&Step::Bind {
            source: "/r/nodes/web1/templates".into(),
            target: mounted.clone(),
            file: false,
        });
        let read_only = position(&Step::RemountReadOnly(mounted));
        let link = position(&Step::TemplateLink {
            target: "/run/magestack/templates/etc/web/web.conf".into(),
            link: "/r/nodes/web1/root/etc/web/web.conf".into(),
        });
        assert!(run < bind && bind < read_only && read_only < link);
        assert!(matches!(steps.last(), Some(Step::PivotRoot(_))));
    }

    #[test]
    fn a_template_link_replaces_a_file_or_link_but_not_a_directory() {
        let root = tempfile::tempdir().unwrap();
        let link = root.path().join("etc/web/web.conf");
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::fs::write(&link, "from the image").unwrap();
        template_link(
            root.path(),
            "/run/magestack/templates/etc/web/web.conf",
            &link,
        )
        .unwrap();
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            Path::new("/run/magestack/templates/etc/web/web.conf")
        );
        template_link(root.path(), "/elsewhere", &link).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/elsewhere"));
        let dir = root.path().join("etc/web/conf.d");
        std::fs::create_dir(&dir).unwrap();
        assert!(template_link(root.path(), "/x", &dir).is_err());
    }

    #[test]
    fn overlay_paths_with_separators_are_refused() {
        let mut node = node_plan();
        node.upper_dir = "/s/a,b".into();
        assert!(plan(&node).is_err());
    }

    #[test]
    fn directories_are_created_without_following_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("var")).unwrap();
        let error = ensure_dir_in_root(root.path(), &root.path().join("var/www")).unwrap_err();
        assert!(error.to_string().contains("symlink"), "{error}");
        ensure_dir_in_root(root.path(), &root.path().join("srv/data")).unwrap();
        assert!(root.path().join("srv/data").is_dir());
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    }
}
