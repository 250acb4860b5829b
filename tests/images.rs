//! Images from recipes, built for real with mmdebstrap against the Debian mirror (as root): the
//! shipped `debian-base` recipe built by `run` for a node that needs it, rebuilt as a no-op,
//! listed, refused removal while in use; failed and interrupted builds leaving nothing and naming
//! the recipe field. One real build is shared by the checks that need it; timings are printed.
//! debootstrap, the fallback builder, forced by `[host] image_builder`: a small recipe built,
//! listed and checked in its rootfs; an unknown package and an interrupted build leave nothing.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestHost, AGENT};
use serde_json::Value;

/// A cold build of `debian-base` takes 20-40 s here; the mirror may be slower elsewhere.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

const DEBIAN_ROLE: &str = r#"
[nodes.deb1]
role = "deb"

[roles.deb]
image = "debian-base"
[[roles.deb.process]]
name = "sleep"
command = ["sleep", "1000000"]
"#;

fn image_dir(host: &TestHost, name: &str) -> PathBuf {
    host.state_dir().join("images").join(name)
}

/// Entries under `state_dir/images/<name>`, partial builds included.
fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn image_list(host: &TestHost) -> Vec<Value> {
    let listed: Value = serde_json::from_str(&host.cli(&["image", "list", "--json"])).unwrap();
    listed.as_array().unwrap().clone()
}

#[test]
fn recipe_image_is_built_by_run_reused_listed_and_guarded() {
    let test_began = Instant::now();
    let mut host = TestHost::new("img", DEBIAN_ROLE);
    assert!(
        host.cli(&["config", "check"]).contains("ok, 1 nodes"),
        "a role may name an image that only has a recipe"
    );

    // `run` builds the missing image for the node, which stays `starting` meanwhile while the
    // daemon keeps answering.
    let began = Instant::now();
    host.start_daemon();
    let answered = began.elapsed();
    assert!(
        answered < Duration::from_secs(10),
        "the daemon answers while the image builds ({answered:?})"
    );
    assert_eq!(host.node("deb1")["state"], "starting");
    let deadline = Instant::now() + BUILD_TIMEOUT;
    loop {
        let node = host.node("deb1");
        match node["state"].as_str().unwrap() {
            "running" => break,
            "starting" if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(250))
            }
            _ => panic!("deb1 did not start: {node:#}\n{}", host.daemon_log()),
        }
    }
    let build_time = began.elapsed();
    eprintln!("timing: cold build of debian-base by `run` + node start: {build_time:.1?}");
    assert!(host.daemon_log().contains("building image"));

    // The node runs processes from the image.
    let version = host.exec_stdout("deb1", &["cat", "/etc/debian_version"]);
    assert!(version.starts_with("12."), "{version:?}");
    let motd = host.exec_stdout("deb1", &["cat", "/etc/motd", "/etc/magestack-image"]);
    assert_eq!(motd, "MageStack node (image debian-base)\ndebian-base\n");
    let ps = host.exec_stdout("deb1", &["ps", "-e", "-o", "comm="]);
    assert!(
        ps.lines().any(|l| l == "sleep"),
        "procps' ps from the image: {ps}"
    );

    // The rootfs holds the recipe's packages, installed.
    let images = image_list(&host);
    assert_eq!(images.len(), 1, "{images:#?}");
    let image = &images[0];
    assert_eq!(image["name"], "debian-base");
    let digest = image["digest"].as_str().unwrap().to_owned();
    assert_eq!(digest.len(), 64);
    assert_eq!(image["used_by"], serde_json::json!(["deb1"]));
    assert!(
        image["size_bytes"].as_u64().unwrap() > 50 << 20,
        "{image:#}"
    );
    let rootfs = PathBuf::from(image["rootfs"].as_str().unwrap());
    assert_eq!(
        rootfs,
        image_dir(&host, "debian-base")
            .join(&digest[..16])
            .join("rootfs")
    );
    let status = std::fs::read_to_string(rootfs.join("var/lib/dpkg/status")).unwrap();
    for package in ["procps", "ca-certificates", "dpkg", "apt"] {
        let stanza = status
            .split("\n\n")
            .find(|s| s.starts_with(&format!("Package: {package}\n")))
            .unwrap_or_else(|| panic!("{package} not in the image's dpkg status"));
        assert!(stanza.contains("Status: install ok installed"), "{stanza}");
        let version = stanza
            .lines()
            .find_map(|l| l.strip_prefix("Version: "))
            .unwrap();
        let packages = package_lines(image);
        assert!(
            packages.contains(&format!("{package} {version}").as_str()),
            "{package} {version} is part of the digest's input"
        );
    }

    // An identical recipe is not rebuilt.
    let began = Instant::now();
    let again = host.cli(&["image", "build", "debian-base"]);
    let rebuild_time = began.elapsed();
    eprintln!("timing: second `image build debian-base`: {rebuild_time:.2?}");
    assert!(
        again.contains("up to date") && again.contains(&digest[..16]),
        "{again}"
    );
    assert!(rebuild_time < Duration::from_secs(3), "{rebuild_time:?}");
    assert_eq!(entries(&image_dir(&host, "debian-base")), [&digest[..16]]);

    // The human listing shows name, digest, size and users.
    let table = host.cli(&["image", "list"]);
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with("debian-base "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains(&digest[..16]), "{row}");
    assert!(row.contains(" MiB"), "{row}");
    assert!(row.trim_end().ends_with("deb1"), "{row}");

    // Removal is refused while deb1 runs from it, and works once it stopped.
    let refused = host.try_cli(&["image", "rm", "debian-base"]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("image `debian-base` is in use by node(s) deb1"),
        "{message}"
    );
    assert!(rootfs.join("etc/debian_version").exists());

    host.cli(&["stop", "deb1"]);
    let removed = host.cli(&["image", "rm", "debian-base"]);
    assert!(removed.contains("removed 1 build"), "{removed}");
    assert!(!image_dir(&host, "debian-base").exists());
    assert!(image_list(&host).is_empty());
    eprintln!(
        "timing: whole test {:.1?} (cold build {build_time:.1?}, rebuild {rebuild_time:.2?})",
        test_began.elapsed()
    );
}

#[test]
fn failed_and_interrupted_builds_leave_nothing_and_name_the_field() {
    let host = TestHost::new("imgfail", "");
    let recipes = host.dir.join("images");
    std::fs::create_dir_all(&recipes).unwrap();
    std::fs::write(
        recipes.join("no-package.toml"),
        "suite = \"bookworm\"\npackages = [\"procps\", \"magestack-no-such-package\"]\n\
         variant = \"essential\"\n",
    )
    .unwrap();
    std::fs::write(
        recipes.join("bad-run.toml"),
        "suite = \"bookworm\"\nrun = [\"true\",\n  \"echo half-way > /half && exit 3\"]\n\
         variant = \"essential\"\n",
    )
    .unwrap();
    std::fs::write(
        recipes.join("slow.toml"),
        "suite = \"bookworm\"\nvariant = \"essential\"\n",
    )
    .unwrap();
    std::fs::write(
        recipes.join("invalid.toml"),
        "suite = \"bookworm\"\npackages = [\"Not A Package\"]\n",
    )
    .unwrap();

    // A recipe error is found before anything is built.
    let output = host.try_cli(&["image", "build", "invalid"]);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    let file = recipes.join("invalid.toml");
    assert!(
        message.contains(&format!(
            "{}:2:13: image `invalid`: `packages`: `Not A Package` is not a Debian package name",
            file.display()
        )),
        "{message}"
    );
    assert!(!image_dir(&host, "invalid").exists());
    // ... and a configuration whose node needs that image is refused the same way.
    host.write_config(
        "[nodes.bad1]\nrole = \"bad\"\n[roles.bad]\nimage = \"invalid\"\n\
         [[roles.bad.process]]\nname = \"sleep\"\ncommand = [\"sleep\", \"1\"]\n",
    );
    let output = host.try_cli(&["config", "check"]);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains(&format!("{}:2:13: image `invalid`", file.display())),
        "{message}"
    );

    // A leftover of a build whose process died is swept by the next build.
    let dead = image_dir(&host, "no-package").join(format!(".tmp-0123-{}", i32::MAX));
    std::fs::create_dir_all(dead.join("rootfs/etc")).unwrap();

    let message = failed_build(&host, "no-package", "build failing on a missing package");
    let file = recipes.join("no-package.toml");
    assert!(
        message.contains(&format!(
            "{}:2:23: image `no-package`: `packages`: `magestack-no-such-package` is not a \
             package of `bookworm`",
            file.display()
        )),
        "{message}"
    );
    assert!(message.contains("Unable to locate package"), "{message}");
    assert_eq!(
        entries(&image_dir(&host, "no-package")),
        Vec::<String>::new()
    );

    let began = Instant::now();
    let output = host.try_cli(&["image", "build", "bad-run"]);
    eprintln!("timing: build failing on run[1]: {:.1?}", began.elapsed());
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    let file = recipes.join("bad-run.toml");
    assert!(
        message.contains(&format!(
            "{}:3:3: image `bad-run`: `run[1]` (`echo half-way > /half && exit 3`) failed",
            file.display()
        )),
        "{message}"
    );
    assert_eq!(entries(&image_dir(&host, "bad-run")), Vec::<String>::new());

    // SIGTERM half-way: the builder is stopped and the partial build removed.
    let build = Build::until(&host, "slow", |line| {
        line.contains("downloading packages") || line.contains("extracting")
    });
    assert!(
        entries(&image_dir(&host, "slow"))
            .iter()
            .any(|e| e.starts_with(".tmp-")),
        "a partial build exists half-way: {}",
        build.seen
    );
    build.interrupt(&host, "slow");
}

/// The `name version` lines of an image's listing (part of its digest's input).
fn package_lines(image: &Value) -> Vec<&str> {
    image["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect()
}

/// `image build IMAGE`, which must fail: its error output, its time printed as `what`.
fn failed_build(host: &TestHost, image: &str, what: &str) -> String {
    let began = Instant::now();
    let output = host.try_cli(&["image", "build", image]);
    eprintln!("timing: {what}: {:.1?}", began.elapsed());
    assert!(!output.status.success(), "building {image} succeeded");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `image build` running in the background, its output read up to a line.
struct Build {
    child: std::process::Child,
    stderr: BufReader<std::process::ChildStderr>,
    /// The output read so far.
    seen: String,
}

impl Build {
    /// Starts building `image` and reads its output until `wanted` accepts a line.
    fn until(host: &TestHost, image: &str, wanted: impl Fn(&str) -> bool) -> Build {
        let mut child = Command::new(AGENT)
            .arg("--config")
            .arg(&host.config)
            .args(["image", "build", image])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        let mut line = String::new();
        while stderr.read_line(&mut line).unwrap() > 0 {
            seen.push_str(&line);
            if wanted(&line) {
                break;
            }
            line.clear();
        }
        Build {
            child,
            stderr,
            seen,
        }
    }

    /// SIGTERM: the build must say it was interrupted, fail, and leave nothing of `image`.
    fn interrupt(mut self, host: &TestHost, image: &str) {
        // SAFETY: kill on the pid of a child we have not reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.stderr, &mut rest).unwrap();
        let status = self.child.wait().unwrap();
        assert!(!status.success());
        assert!(
            rest.contains("the build was interrupted"),
            "{}{rest}",
            self.seen
        );
        assert_eq!(entries(&image_dir(host, image)), Vec::<String>::new());
    }
}

/// Sets `[host] image_builder` in the host's configuration file.
fn force_builder(host: &TestHost, builder: &str) {
    let text = std::fs::read_to_string(&host.config).unwrap();
    let text = text.replacen(
        "[host]\n",
        &format!("[host]\nimage_builder = \"{builder}\"\n"),
        1,
    );
    std::fs::write(&host.config, text).unwrap();
}

/// Mount points under `dir` in the host's mount namespace.
fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|point| Path::new(point).starts_with(dir))
        .map(str::to_owned)
        .collect()
}

#[test]
fn debootstrap_builds_a_recipe_when_forced_and_failures_leave_nothing() {
    let test_began = Instant::now();
    let host = TestHost::new("imgdeb", "");
    let recipes = host.dir.join("images");
    std::fs::create_dir_all(&recipes).unwrap();
    // minbase and one small package of priority important (not in minbase): the fastest build
    // that still shows a package of the recipe's own installed.
    std::fs::write(
        recipes.join("small.toml"),
        "suite = \"bookworm\"\npackages = [\"netbase\"]\n\
         run = [\"cp /etc/magestack-test /etc/magestack-copied\"]\n\
         [[file]]\npath = \"/etc/magestack-test\"\ncontent = \"built by debootstrap\\n\"\n",
    )
    .unwrap();
    std::fs::write(
        recipes.join("missing.toml"),
        "suite = \"bookworm\"\npackages = [\"netbase\", \"magestack-no-such-package\"]\n",
    )
    .unwrap();

    // Without either builder on PATH, the error names both and how to install them.
    let output = Command::new(AGENT)
        .arg("--config")
        .arg(&host.config)
        .args(["image", "build", "small"])
        .env("PATH", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains(
            "image `small` is built with mmdebstrap, or debootstrap when mmdebstrap is missing, \
             and neither is installed; install one with `apt-get install mmdebstrap` (or \
             `apt-get install debootstrap`)"
        ),
        "{message}"
    );
    assert_eq!(entries(&image_dir(&host, "small")), Vec::<String>::new());

    force_builder(&host, "debootstrap");
    assert!(host.cli(&["config", "check"]).contains("ok"));

    // An unknown package is blamed on its `packages` entry.
    let message = failed_build(
        &host,
        "missing",
        "debootstrap build failing on a missing package",
    );
    let file = recipes.join("missing.toml");
    assert!(
        message.contains(&format!(
            "{}:2:24: image `missing`: `packages`: `magestack-no-such-package` is not a \
             package of `bookworm`",
            file.display()
        )),
        "{message}"
    );
    assert!(
        message.contains("Couldn't find these debs: magestack-no-such-package"),
        "{message}"
    );
    assert_eq!(entries(&image_dir(&host, "missing")), Vec::<String>::new());

    // SIGTERM half-way: debootstrap is stopped and the partial build removed.
    let began = Instant::now();
    let build = Build::until(&host, "small", |line| {
        line.contains("reading the package lists (1/9)")
    });
    let seen = &build.seen;
    let partial: Vec<PathBuf> = entries(&image_dir(&host, "small"))
        .iter()
        .filter(|e| e.starts_with(".tmp-"))
        .map(|e| image_dir(&host, "small").join(e))
        .collect();
    assert_eq!(partial.len(), 1, "a partial build exists half-way: {seen}");
    // debootstrap is at work in the rootfs once the package index it downloaded is there.
    let lists = partial[0].join("rootfs/var/lib/apt/lists");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !entries(&lists).iter().any(|e| e.ends_with("_Packages")) {
        assert!(
            Instant::now() < deadline,
            "debootstrap did not start: {seen}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    build.interrupt(&host, "small");
    eprintln!(
        "timing: interrupted debootstrap build: {:.1?}",
        began.elapsed()
    );

    // The whole build: every step reported, the image listed with its builder.
    let began = Instant::now();
    let output = host.try_cli(&["image", "build", "small"]);
    let build_time = began.elapsed();
    eprintln!("timing: debootstrap build of `small` (minbase + netbase): {build_time:.1?}");
    let progress = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{progress}");
    for step in [
        "reading the package lists (1/9)",
        "downloading packages (2/9)",
        "extracting packages (3/9)",
        "installing essential packages (4/9)",
        "installing the recipe's packages (5/9)",
        "writing file[0] (6/9)",
        "running run[0] (7/9)",
        "recording package versions (8/9)",
        "cleaning up (9/9)",
    ] {
        assert!(progress.contains(&format!("small: {step}")), "{progress}");
    }
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("small: built in"),
        "{output:?}"
    );
    let images = image_list(&host);
    assert_eq!(images.len(), 1, "{images:#?}");
    let image = &images[0];
    assert_eq!(image["name"], "small");
    assert_eq!(image["builder"], "debootstrap");
    let digest = image["digest"].as_str().unwrap();
    assert_eq!(entries(&image_dir(&host, "small")), [&digest[..16]]);
    let packages = package_lines(image);
    let netbase = packages
        .iter()
        .find(|p| p.starts_with("netbase "))
        .unwrap_or_else(|| panic!("netbase not among {packages:?}"));

    // The rootfs: the recipe's file, what its command made of it, the package, installed.
    let rootfs = PathBuf::from(image["rootfs"].as_str().unwrap());
    let read = |path: &str| std::fs::read_to_string(rootfs.join(path)).unwrap();
    assert_eq!(read("etc/magestack-test"), "built by debootstrap\n");
    assert_eq!(read("etc/magestack-copied"), "built by debootstrap\n");
    assert!(read("etc/debian_version").starts_with("12."));
    assert!(read("etc/protocols").contains("tcp"), "netbase's file");
    let stanza = read("var/lib/dpkg/status")
        .split("\n\n")
        .find(|s| s.starts_with("Package: netbase\n"))
        .map(str::to_owned)
        .expect("netbase in the image's dpkg status");
    assert!(stanza.contains("Status: install ok installed"), "{stanza}");
    let version = stanza
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .unwrap();
    assert_eq!(*netbase, format!("netbase {version}"));
    // Cleaned like mmdebstrap's images: no package lists, no cached debs, no build log; and
    // nothing it mounted is left on the host.
    let listed = |dir: &str| entries(&rootfs.join(dir));
    assert!(
        listed("var/lib/apt/lists")
            .iter()
            .all(|e| e == "lock" || e == "partial"),
        "{:?}",
        listed("var/lib/apt/lists")
    );
    assert!(
        !listed("var/cache/apt/archives")
            .iter()
            .any(|e| e.ends_with(".deb")),
        "{:?}",
        listed("var/cache/apt/archives")
    );
    assert!(!rootfs.join("var/log/bootstrap.log").exists());
    assert_eq!(mounts_under(&host.dir), Vec::<String>::new());

    // An identical recipe is not rebuilt.
    let again = host.cli(&["image", "build", "small"]);
    assert!(
        again.contains("up to date") && again.contains(&digest[..16]),
        "{again}"
    );
    eprintln!(
        "timing: whole debootstrap test {:.1?} (build {build_time:.1?})",
        test_began.elapsed()
    );
}
