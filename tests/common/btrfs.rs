//! A btrfs filesystem of its own for a test host's state dir, and the commands the tests run
//! around it (btrfs-progs, util-linux: `scripts/setup.sh` installs them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// A btrfs filesystem on a loop device over a file, mounted at `mount`; dropping it unmounts it
/// (lazily if something still holds it), detaches the loop device and removes its directory,
/// whatever state a failed test left it in. Declare it before the `TestHost` on it, so it is
/// dropped after the host has stopped its daemon and nodes.
pub struct Btrfs {
    dir: PathBuf,
    pub mount: PathBuf,
    device: Option<String>,
    mounted: bool,
}

impl Btrfs {
    pub fn new(tag: &str) -> Btrfs {
        let dir = PathBuf::from(format!("/tmp/magestack-btrfs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut fs = Btrfs {
            mount: dir.join("mnt"),
            dir,
            device: None,
            mounted: false,
        };
        let image = fs.dir.join("fs.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        run("mkfs.btrfs", &["-q", image.to_str().unwrap()]);
        let device = run("losetup", &["--find", "--show", image.to_str().unwrap()]);
        fs.device = Some(String::from_utf8(device.stdout).unwrap().trim().to_owned());
        std::fs::create_dir(&fs.mount).unwrap();
        run(
            "mount",
            &[
                "-t",
                "btrfs",
                fs.device.as_deref().unwrap(),
                fs.mount.to_str().unwrap(),
            ],
        );
        fs.mounted = true;
        fs
    }
}

impl Drop for Btrfs {
    fn drop(&mut self) {
        if self.mounted {
            let mount = self.mount.to_str().unwrap();
            let unmounted = (0..50).any(|_| {
                let done = quiet("umount", &[mount]);
                if !done {
                    std::thread::sleep(Duration::from_millis(100));
                }
                done
            });
            if !unmounted {
                quiet("umount", &["--lazy", mount]);
            }
        }
        if let Some(device) = &self.device {
            // With the filesystem still held (a lazy unmount), the kernel detaches the device
            // once its last user is gone.
            quiet("losetup", &["--detach", device]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/setup.sh installs what tests need)"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn quiet(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `path` is on btrfs, as `stat --file-system` says.
pub fn is_btrfs(path: &Path) -> bool {
    let output = run(
        "stat",
        &["--file-system", "--format=%T", path.to_str().unwrap()],
    );
    String::from_utf8_lossy(&output.stdout).trim() == "btrfs"
}
