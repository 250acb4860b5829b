//! One recipe becomes a Debian root filesystem: mmdebstrap installs the release and packages,
//! then customize hooks write the recipe's files and run its commands chrooted in the image, and
//! a last hook asks dpkg which package versions ended up installed (part of the image digest).
//! Without mmdebstrap (or when the operator says so) debootstrap does the installing and a script
//! runs the same hooks after it ([`super::debootstrap`]).
//!
//! The builder runs as root inside a private mount namespace (`unshare --mount`), so the
//! /proc, /sys and /dev it mounts for the hooks vanish with it even when it is killed, and never
//! appear on the host under the build directory. It runs in its own process group, so the build
//! can be interrupted as a whole, and dies with the thread that started it.

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::build_step::{quote, BuildStep, CHROOT_ENV, STEP_MARK};
use super::debootstrap;
use super::recipe::ImageRecipe;
use crate::config::{Diagnostic, ImageBuilder};

/// Lines of the builder's output kept to explain a failure.
const TAIL_LINES: usize = 20;
/// How long an interrupted builder may take to clean up before it is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(10);
/// The tool that builds an image from a recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builder {
    /// mmdebstrap in root mode, the recipe's steps as its customize hooks.
    Mmdebstrap,
    /// debootstrap, then a script running the same hooks.
    Debootstrap,
}

impl Builder {
    /// The program, also the Debian package that installs it.
    pub fn program(self) -> &'static str {
        match self {
            Builder::Mmdebstrap => "mmdebstrap",
            Builder::Debootstrap => debootstrap::PROGRAM,
        }
    }

    /// The builder the operator's `choice` names, given which builders are `installed`:
    /// mmdebstrap when there is a choice, debootstrap as the fallback; `None` when the one
    /// needed is missing.
    pub fn choose(choice: ImageBuilder, installed: impl Fn(Builder) -> bool) -> Option<Builder> {
        let candidates: &[Builder] = match choice {
            ImageBuilder::Auto => &[Builder::Mmdebstrap, Builder::Debootstrap],
            ImageBuilder::Mmdebstrap => &[Builder::Mmdebstrap],
            ImageBuilder::Debootstrap => &[Builder::Debootstrap],
        };
        candidates.iter().copied().find(|b| installed(*b))
    }

    /// Whether the builder's program is on PATH, for a clear error before a build starts.
    pub fn installed(self) -> bool {
        std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .unwrap_or_else(|| {
                ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                    .map(PathBuf::from)
                    .to_vec()
            })
            .into_iter()
            .map(|dir| dir.join(self.program()))
            .any(|candidate| candidate.is_file())
    }
}

impl fmt::Display for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.program())
    }
}

/// Where a build reports what it is doing: a progress bar on a terminal, log lines elsewhere.
pub trait BuildProgress: Sync {
    /// Step `number` (1-based) of `total` began.
    fn step(&self, image: &str, step: BuildStep, number: usize, total: usize);
    /// One line of the builder's output (apt, dpkg, the recipe's commands).
    fn output(&self, image: &str, line: &str);
}

/// Reports a build through the daemon's log.
pub struct LogProgress;

impl BuildProgress for LogProgress {
    fn step(&self, image: &str, step: BuildStep, number: usize, total: usize) {
        tracing::info!(image, "building image: {step} ({number}/{total})");
    }

    fn output(&self, image: &str, line: &str) {
        tracing::debug!(image, "{line}");
    }
}

/// Why a build failed.
#[derive(Debug)]
pub enum BuildFailure {
    /// The builder or unshare could not be started.
    Spawn(io::Error),
    /// The build ran and failed; the diagnostic points at the recipe field it failed on.
    Failed {
        diagnostic: Diagnostic,
        tail: Vec<String>,
    },
    Interrupted,
    Io {
        what: String,
        source: io::Error,
    },
}

/// The steps a recipe's build with `builder` goes through, in order.
pub fn steps(recipe: &ImageRecipe, builder: Builder) -> Vec<BuildStep> {
    let mut steps = vec![
        BuildStep::Update,
        BuildStep::Download,
        BuildStep::Extract,
        BuildStep::Essential,
    ];
    // mmdebstrap has nothing left to install after the essential packages only for the
    // `essential` variant without packages of the recipe's own; debootstrap always unpacks a
    // base system (at least apt) after its core.
    if builder == Builder::Debootstrap
        || recipe.variant != "essential"
        || !recipe.packages.is_empty()
    {
        steps.push(BuildStep::Packages);
    }
    steps.extend((0..recipe.files.len()).map(BuildStep::File));
    steps.extend((0..recipe.run.len()).map(BuildStep::Run));
    steps.extend([BuildStep::Versions, BuildStep::Cleanup]);
    steps
}

/// Builds `recipe` with `builder` into the empty directory `rootfs`, using `work` (outside it)
/// for staging, and returns the installed packages as sorted `name version` lines.
pub fn build(
    recipe: &ImageRecipe,
    builder: Builder,
    rootfs: &Path,
    work: &Path,
    progress: &dyn BuildProgress,
    cancel: &AtomicBool,
) -> Result<Vec<String>, BuildFailure> {
    let io = |what: String| move |source| BuildFailure::Io { what, source };
    fs::create_dir_all(work).map_err(io(format!("create {}", work.display())))?;
    let mut hooks = Vec::new();
    for (index, file) in recipe.files.iter().enumerate() {
        let staged = work.join(format!("file-{index}"));
        fs::write(&staged, &file.value.content)
            .map_err(io(format!("write {}", staged.display())))?;
        let path = file.value.path.to_string_lossy();
        let dir = file
            .value
            .path
            .parent()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into());
        let script = format!(
            "mkdir -p -- {dir} && cat > {path} && chmod {mode:o} -- {path}",
            dir = quote(&dir),
            path = quote(&path),
            mode = file.value.mode,
        );
        hooks.push(format!(
            "echo '{STEP_MARK}file {index}' >&2 && {CHROOT_ENV} chroot \"$1\" /bin/sh -ec {} < {}",
            quote(&script),
            quote(&staged.to_string_lossy()),
        ));
    }
    for (index, command) in recipe.run.iter().enumerate() {
        hooks.push(format!(
            "echo '{STEP_MARK}run {index}' >&2 && {CHROOT_ENV} chroot \"$1\" /bin/sh -ec {}",
            quote(&command.value),
        ));
    }
    let versions = work.join("packages");
    hooks.push(format!(
        "echo '{STEP_MARK}versions' >&2 && {CHROOT_ENV} chroot \"$1\" dpkg-query -W \
         -f='${{binary:Package}} ${{Version}}\\n' > {}",
        quote(&versions.to_string_lossy()),
    ));

    let mut command = Command::new("unshare");
    command.args(["--mount", "--propagation", "private", "--"]);
    match builder {
        Builder::Mmdebstrap => {
            command
                .arg(builder.program())
                .arg("--mode=root")
                .arg(format!("--variant={}", recipe.variant))
                .arg("--format=directory");
            if !recipe.packages.is_empty() {
                let packages: Vec<&str> =
                    recipe.packages.iter().map(|p| p.value.as_str()).collect();
                command.arg(format!("--include={}", packages.join(",")));
            }
            for hook in &hooks {
                command.arg(format!("--customize-hook={hook}"));
            }
            command
                .arg(&recipe.suite.value)
                .arg(rootfs)
                .arg(&recipe.mirror);
        }
        Builder::Debootstrap => {
            // `$0` names the script in its own error messages; `$1` is the rootfs, as for
            // mmdebstrap's hooks.
            command
                .args(["sh", "-ec", &debootstrap::script(recipe, &hooks)])
                .arg("magestack-debootstrap")
                .arg(rootfs);
        }
    }
    let (child, output) = spawn(command)?;
    let run = watch(child, output, recipe, builder, progress, cancel)?;
    if run.interrupted {
        return Err(BuildFailure::Interrupted);
    }
    if !run.status.success() {
        return Err(BuildFailure::Failed {
            diagnostic: blame(recipe, run.last_step, &run.tail, run.status),
            tail: run.tail,
        });
    }
    let listing =
        fs::read_to_string(&versions).map_err(io(format!("read {}", versions.display())))?;
    let mut packages: Vec<String> = listing
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    packages.sort();
    fs::remove_dir_all(work).map_err(io(format!("remove {}", work.display())))?;
    Ok(packages)
}

/// Starts the builder with stdout and stderr on one pipe, in its own process group, dying with
/// the thread that started it.
fn spawn(mut command: Command) -> Result<(Child, OwnedFd), BuildFailure> {
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| BuildFailure::Io {
            what: "create the build's output pipe".into(),
            source: e.into(),
        })?;
    let stderr = write.try_clone().map_err(|source| BuildFailure::Io {
        what: "duplicate the build's output pipe".into(),
        source,
    })?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::from(stderr))
        .process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(BuildFailure::Spawn)?;
    // The command still holds the write ends; dropping them lets the pipe reach end of file when
    // the builder exits.
    drop(command);
    Ok((child, read))
}

struct Finished {
    status: ExitStatus,
    last_step: Option<BuildStep>,
    tail: Vec<String>,
    interrupted: bool,
}

/// Follows the builder's output until it exits, reporting steps, and stops it when `cancel` is
/// set.
fn watch(
    mut child: Child,
    output: OwnedFd,
    recipe: &ImageRecipe,
    builder: Builder,
    progress: &dyn BuildProgress,
    cancel: &AtomicBool,
) -> Result<Finished, BuildFailure> {
    let steps = steps(recipe, builder);
    let mut seen = Seen {
        recipe,
        builder,
        steps: &steps,
        progress,
        last_step: None,
        tail: Vec::new(),
    };
    let mut lines = LineSplitter::default();
    let mut interrupted_at: Option<Instant> = None;
    let group = Pid::from_raw(child.id() as i32);
    let mut file = fs::File::from(output);
    let mut buffer = [0u8; 8192];
    loop {
        if cancel.load(Ordering::Relaxed) && interrupted_at.is_none() {
            interrupted_at = Some(Instant::now());
            let _ = killpg(group, Signal::SIGTERM);
        }
        if interrupted_at.is_some_and(|at| at.elapsed() > INTERRUPT_GRACE) {
            let _ = killpg(group, Signal::SIGKILL);
        }
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                return Err(BuildFailure::Io {
                    what: "wait for the build's output".into(),
                    source: e.into(),
                })
            }
        }
        let read = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(BuildFailure::Io {
                    what: "read the build's output".into(),
                    source,
                })
            }
        };
        for line in lines.push(&buffer[..read]) {
            seen.line(&line);
        }
    }
    if let Some(line) = lines.finish() {
        seen.line(&line);
    }
    let status = child.wait().map_err(|source| BuildFailure::Io {
        what: format!("wait for {builder}"),
        source,
    })?;
    Ok(Finished {
        status,
        last_step: seen.last_step,
        tail: seen.tail,
        interrupted: interrupted_at.is_some(),
    })
}

/// What the build's output told so far: the step it is at and its last lines.
struct Seen<'a> {
    recipe: &'a ImageRecipe,
    builder: Builder,
    steps: &'a [BuildStep],
    progress: &'a dyn BuildProgress,
    last_step: Option<BuildStep>,
    tail: Vec<String>,
}

impl Seen<'_> {
    fn line(&mut self, line: &str) {
        let name = &self.recipe.name;
        if let Some(step) = step_of(self.builder, line) {
            // debootstrap announces some steps once per package.
            if self.last_step != Some(step) {
                self.last_step = Some(step);
                let total = self.steps.len();
                let number = self
                    .steps
                    .iter()
                    .position(|s| *s == step)
                    .map_or(total, |i| i + 1);
                self.progress.step(name, step, number, total);
            }
            if line.starts_with(STEP_MARK) {
                return;
            }
        }
        self.progress.output(name, line);
        if self.tail.len() == TAIL_LINES {
            self.tail.remove(0);
        }
        self.tail.push(line.to_owned());
    }
}

/// The step a line of the builder's output (or of our hooks) announces.
fn step_of(builder: Builder, line: &str) -> Option<BuildStep> {
    if let Some(mark) = line.strip_prefix(STEP_MARK) {
        let mut words = mark.split_whitespace();
        let kind = words.next()?;
        let index = words.next().and_then(|i| i.parse().ok());
        return match (kind, index) {
            ("file", Some(i)) => Some(BuildStep::File(i)),
            ("run", Some(i)) => Some(BuildStep::Run(i)),
            ("versions", None) => Some(BuildStep::Versions),
            ("cleanup", None) => Some(BuildStep::Cleanup),
            _ => None,
        };
    }
    let info = line.strip_prefix("I: ")?;
    if builder == Builder::Debootstrap {
        return debootstrap::step_of(info);
    }
    [
        ("running apt-get update", BuildStep::Update),
        ("downloading packages", BuildStep::Download),
        ("extracting archives", BuildStep::Extract),
        ("installing essential packages", BuildStep::Essential),
        ("installing remaining packages", BuildStep::Packages),
        ("cleaning package lists", BuildStep::Cleanup),
    ]
    .into_iter()
    .find(|(start, _)| info.starts_with(start))
    .map(|(_, step)| step)
}

/// The recipe field a failed build failed on, with why.
fn blame(
    recipe: &ImageRecipe,
    step: Option<BuildStep>,
    tail: &[String],
    status: ExitStatus,
) -> Diagnostic {
    let name = &recipe.name;
    let missing: Vec<String> = tail
        .iter()
        .flat_map(|line| missing_packages(line))
        .collect();
    // Of several, one the recipe lists (apt may also miss a dependency of it).
    let missing = missing
        .iter()
        .find(|m| recipe.packages.iter().any(|p| p.value == **m))
        .or(missing.first())
        .cloned();
    match (step, missing) {
        (_, Some(package)) => {
            let span = recipe
                .packages
                .iter()
                .find(|p| p.value == package)
                .map_or(recipe.suite.span.clone(), |p| p.span.clone());
            recipe.at(
                span,
                format!(
                    "image `{name}`: `packages`: `{package}` is not a package of `{}` at {}",
                    recipe.suite.value, recipe.mirror
                ),
            )
        }
        (None | Some(BuildStep::Update), None) => recipe.at(
            recipe.suite.span.clone(),
            format!(
                "image `{name}`: `suite` `{}`: reading the package lists from {} failed ({status})",
                recipe.suite.value, recipe.mirror
            ),
        ),
        (
            Some(
                BuildStep::Download
                | BuildStep::Extract
                | BuildStep::Essential
                | BuildStep::Packages,
            ),
            None,
        ) => recipe.at(
            recipe
                .packages
                .first()
                .map_or(recipe.suite.span.clone(), |p| p.span.clone()),
            format!("image `{name}`: `packages`: installing the packages failed ({status})"),
        ),
        (Some(BuildStep::File(i)), None) => recipe.at(
            recipe.files[i].span.clone(),
            format!(
                "image `{name}`: `file[{i}]` ({}): writing it into the image failed ({status})",
                recipe.files[i].value.path.display()
            ),
        ),
        (Some(BuildStep::Run(i)), None) => recipe.at(
            recipe.run[i].span.clone(),
            format!(
                "image `{name}`: `run[{i}]` (`{}`) failed ({status})",
                recipe.run[i].value
            ),
        ),
        (Some(BuildStep::Versions | BuildStep::Cleanup), None) => recipe.at(
            0..0,
            format!("image `{name}`: the build failed after the recipe's steps ({status})"),
        ),
    }
}

/// The packages the builder says it cannot find, from a line of its output (apt's for
/// mmdebstrap, debootstrap's own).
fn missing_packages(line: &str) -> Vec<String> {
    let mut missing = debootstrap::missing_packages(line);
    missing.extend(missing_package(line));
    missing
}

/// The package apt says it cannot find, from a line of its output.
fn missing_package(line: &str) -> Option<String> {
    let line = line.trim_start_matches("E: ");
    if let Some(rest) = line.strip_prefix("Unable to locate package ") {
        return Some(rest.trim().to_owned());
    }
    let rest = line.strip_prefix("Package ")?;
    let (package, why) = rest.split_once(' ')?;
    why.starts_with("has no installation candidate")
        .then(|| package.trim_matches('\'').to_owned())
}

/// Cuts a byte stream into lines, lossily decoded, with carriage-return progress lines split too.
#[derive(Default)]
struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &byte in bytes {
            if byte == b'\n' || byte == b'\r' {
                if !self.pending.is_empty() {
                    lines.push(String::from_utf8_lossy(&self.pending).into_owned());
                    self.pending.clear();
                }
            } else {
                self.pending.push(byte);
            }
        }
        lines
    }

    fn finish(&mut self) -> Option<String> {
        (!self.pending.is_empty())
            .then(|| String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;
    use proptest::prelude::*;

    fn recipe() -> ImageRecipe {
        ImageRecipe::parse(
            "t",
            &Source::new(
                "images/t.toml",
                "suite = \"bookworm\"\npackages = [\"procps\", \"nope\"]\nrun = [\"true\", \"false\"]\n\
                 [[file]]\npath = \"/etc/x\"\ncontent = \"\"\n",
            ),
        )
        .unwrap()
    }

    fn failed() -> ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        ExitStatus::from_raw(25 << 8)
    }

    #[test]
    fn steps_follow_mmdebstrap_and_our_hooks() {
        let lines = [
            "I: running apt-get update...",
            "I: downloading packages with apt...",
            "I: extracting archives...",
            "I: installing essential packages...",
            "I: installing remaining packages inside the chroot...",
            "magestack-step file 0",
            "magestack-step run 1",
            "magestack-step versions",
            "I: cleaning package lists and apt cache...",
        ];
        let steps: Vec<_> = lines
            .iter()
            .filter_map(|l| step_of(Builder::Mmdebstrap, l))
            .collect();
        assert_eq!(
            steps,
            [
                BuildStep::Update,
                BuildStep::Download,
                BuildStep::Extract,
                BuildStep::Essential,
                BuildStep::Packages,
                BuildStep::File(0),
                BuildStep::Run(1),
                BuildStep::Versions,
                BuildStep::Cleanup,
            ]
        );
        assert_eq!(
            step_of(Builder::Mmdebstrap, "I: success in 3 seconds"),
            None
        );
        assert_eq!(step_of(Builder::Mmdebstrap, "magestack-step run x"), None);
        assert_eq!(
            steps.len(),
            super::steps(&recipe(), Builder::Mmdebstrap).len() - 1
        );
        // debootstrap's own lines mean nothing coming from mmdebstrap.
        assert_eq!(
            step_of(Builder::Mmdebstrap, "I: Installing core packages..."),
            None
        );
    }

    #[test]
    fn steps_follow_debootstrap_and_our_script() {
        let lines = [
            "I: Retrieving InRelease ",
            "I: Retrieving Packages ",
            "I: Resolving dependencies of base packages...",
            "I: Retrieving adduser 3.134",
            "I: Chosen extractor for .deb packages: dpkg-deb",
            "I: Installing core packages...",
            "I: Unpacking the base system...",
            "magestack-step file 0",
            "magestack-step run 0",
            "magestack-step run 1",
            "magestack-step versions",
            "magestack-step cleanup",
        ];
        let mut steps: Vec<BuildStep> = Vec::new();
        for step in lines
            .iter()
            .filter_map(|l| step_of(Builder::Debootstrap, l))
        {
            if steps.last() != Some(&step) {
                steps.push(step);
            }
        }
        assert_eq!(steps, super::steps(&recipe(), Builder::Debootstrap));
        assert_eq!(
            step_of(Builder::Debootstrap, "I: running apt-get update..."),
            None
        );
    }

    #[test]
    fn the_builder_is_mmdebstrap_when_installed_else_debootstrap_unless_forced() {
        use Builder::{Debootstrap, Mmdebstrap};
        let both = |_: Builder| true;
        let only = |which: Builder| move |b: Builder| b == which;
        let neither = |_: Builder| false;
        assert_eq!(Builder::choose(ImageBuilder::Auto, both), Some(Mmdebstrap));
        assert_eq!(
            Builder::choose(ImageBuilder::Auto, only(Debootstrap)),
            Some(Debootstrap)
        );
        assert_eq!(
            Builder::choose(ImageBuilder::Auto, only(Mmdebstrap)),
            Some(Mmdebstrap)
        );
        assert_eq!(Builder::choose(ImageBuilder::Auto, neither), None);
        assert_eq!(
            Builder::choose(ImageBuilder::Debootstrap, both),
            Some(Debootstrap)
        );
        assert_eq!(
            Builder::choose(ImageBuilder::Debootstrap, only(Mmdebstrap)),
            None
        );
        assert_eq!(
            Builder::choose(ImageBuilder::Mmdebstrap, only(Debootstrap)),
            None
        );
        assert_eq!(
            Builder::choose(ImageBuilder::Mmdebstrap, both),
            Some(Mmdebstrap)
        );
        assert_eq!(Debootstrap.to_string(), "debootstrap");
    }

    #[test]
    fn the_essential_variant_without_packages_has_no_package_step() {
        let bare = ImageRecipe::parse(
            "t",
            &Source::new("t.toml", "suite = \"bookworm\"\nvariant = \"essential\"\n"),
        )
        .unwrap();
        assert!(!super::steps(&bare, Builder::Mmdebstrap).contains(&BuildStep::Packages));
        assert_eq!(super::steps(&bare, Builder::Mmdebstrap).len(), 6);
        assert!(super::steps(&recipe(), Builder::Mmdebstrap).contains(&BuildStep::Packages));
        // debootstrap always unpacks a base system after its core.
        assert!(super::steps(&bare, Builder::Debootstrap).contains(&BuildStep::Packages));
    }

    #[test]
    fn a_missing_package_is_blamed_on_its_entry() {
        let recipe = recipe();
        let tail = [
            "Building dependency tree...".to_owned(),
            "E: Unable to locate package nope".to_owned(),
        ];
        let d = blame(&recipe, Some(BuildStep::Packages), &tail, failed());
        assert_eq!(
            (d.file.as_str(), d.line, d.column),
            ("images/t.toml", 2, 23)
        );
        assert!(
            d.message
                .contains("`packages`: `nope` is not a package of `bookworm`"),
            "{d}"
        );
        assert_eq!(
            missing_package("E: Package 'foo' has no installation candidate").as_deref(),
            Some("foo")
        );
    }

    #[test]
    fn a_package_debootstrap_cannot_find_is_blamed_on_its_entry() {
        let recipe = recipe();
        let tail = [
            "I: Checking component main on http://deb.debian.org/debian...".to_owned(),
            "E: Couldn't find these debs: nope".to_owned(),
        ];
        let d = blame(&recipe, Some(BuildStep::Update), &tail, failed());
        assert_eq!((d.line, d.column), (2, 23), "{d}");
        assert!(
            d.message
                .contains("`packages`: `nope` is not a package of `bookworm`"),
            "{d}"
        );
        // A suite debootstrap has no script for is the suite's fault.
        let tail = ["E: No such script: /usr/share/debootstrap/scripts/bookwormx".to_owned()];
        let d = blame(&recipe, None, &tail, failed());
        assert!(d.message.contains("`suite` `bookworm`"), "{d}");
    }

    #[test]
    fn a_failing_command_or_file_is_blamed_on_its_entry() {
        let recipe = recipe();
        let d = blame(&recipe, Some(BuildStep::Run(1)), &[], failed());
        assert_eq!(d.line, 3);
        assert!(d.message.contains("`run[1]` (`false`) failed"), "{d}");
        let d = blame(&recipe, Some(BuildStep::File(0)), &[], failed());
        assert!(d.message.contains("`file[0]` (/etc/x)"), "{d}");
        assert_eq!(d.line, 4);
        let d = blame(&recipe, Some(BuildStep::Update), &[], failed());
        assert!(d.message.contains("`suite` `bookworm`"), "{d}");
        assert_eq!(d.line, 1);
    }

    #[test]
    fn quoting_survives_the_shell() {
        for word in ["plain", "it's", "a b", "$HOME", "\"'\\", ""] {
            let output = Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", quote(word)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(output.stdout).unwrap(), word);
        }
    }

    proptest! {
        #[test]
        fn lines_split_the_same_however_the_stream_is_cut(
            text in "[a-z \n\r]{0,80}",
            cut in 0usize..80,
        ) {
            let bytes = text.as_bytes();
            let cut = cut.min(bytes.len());
            let mut whole = LineSplitter::default();
            let mut expected = whole.push(bytes);
            expected.extend(whole.finish());
            let mut parts = LineSplitter::default();
            let mut got = parts.push(&bytes[..cut]);
            got.extend(parts.push(&bytes[cut..]));
            got.extend(parts.finish());
            prop_assert_eq!(got, expected);
        }
    }
}
