//! The image store: read-only root filesystems that nodes use as their overlay lower layer.
//!
//! An image lives at `<state_dir>/images/<name>/<digest>/rootfs`, where the digest names what is
//! in it, so a changed image never overwrites one a running node still uses. A build fills
//! `<name>/.tmp-<key>-<pid>` and renames it into place only once complete, so a crash leaves a
//! partial directory that [`ImageStore::sweep_partial`] removes, never a half-made image.
//!
//! Two kinds of image:
//! - the built-in `busybox`, assembled from the host's static busybox; its digest covers the
//!   binary and the layout;
//! - images from recipes (`images/<name>.toml`, see [`recipe`]), built with mmdebstrap, or
//!   debootstrap when mmdebstrap is missing or `[host] image_builder` says so ([`debian`]). Their
//!   digest covers the recipe and the package versions dpkg reports installed in the built
//!   rootfs, which are known only once the build ran, and for debootstrap the builder (its tree
//!   differs from mmdebstrap's with the same packages): an identical recipe is found by its
//!   recipe digest (kept in `image.json`) and never rebuilt, whichever builder made it; `refresh`
//!   builds it again against the mirror of the day, and if the digest came out the same the
//!   existing image is kept.
//!
//! Nothing ever writes into a finished image: nodes mount it read-only (idmapped), below their
//! own writable layer.

mod build_step;
mod busybox;
mod debian;
mod debootstrap;
mod elf;
pub mod recipe;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Config, Diagnostic, ImageBuilder};
pub use build_step::BuildStep;
pub use busybox::HOST_BUSYBOX;
pub use debian::{BuildProgress, Builder, LogProgress};
pub use elf::ElfError;
use recipe::{ImageRecipe, Recipes};

use busybox::{Fingerprint, Recipe};

/// Images the store can build by itself, without a recipe file.
pub const BUILT_IN: &[&str] = &[busybox::NAME];

/// The file written last into a build, holding the full digest; an image directory without it is
/// not an image.
const COMPLETE_MARKER: &str = "complete";
/// What an image is: name, digests, where it came from, size, packages (`ImageInfo`).
const INFO_FILE: &str = "image.json";
/// Prefix of the directories builds fill before renaming them into place.
const PARTIAL_PREFIX: &str = ".tmp-";
/// Hex digits of the digest used as the directory name: plenty to tell a host's images apart.
const SHORT_DIGEST: usize = 16;
/// The cancel flag of builds nobody can interrupt but by killing the process.
static NEVER_CANCELLED: AtomicBool = AtomicBool::new(false);

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image `{name}` does not exist: no recipe `images/{name}.toml` and no build; built-in images: {}", BUILT_IN.join(", "))]
    NotFound { name: String },
    #[error("image name `{name}` is not valid: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Recipe(Vec<Diagnostic>),
    #[error("image `{name}`: cannot read recipe {}: {source}", .path.display())]
    RecipeUnreadable {
        name: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("image `{name}` {}", missing_builder(*.choice))]
    BuilderMissing { name: String, choice: ImageBuilder },
    #[error("image `{name}`: cannot start the build: {source}")]
    BuilderSpawn { name: String, source: io::Error },
    #[error("{diagnostic}{}", tail_text(.tail))]
    BuildFailed {
        diagnostic: Diagnostic,
        tail: Vec<String>,
    },
    #[error("image `{name}`: {what}: {source}")]
    BuildIo {
        name: String,
        what: String,
        source: io::Error,
    },
    #[error("image `{name}`: the build was interrupted; nothing was left behind")]
    Interrupted { name: String },
    #[error("image `{name}` is in use by node(s) {}; stop them first", .nodes.join(", "))]
    InUse { name: String, nodes: Vec<String> },
    #[error(
        "image `busybox` needs a static busybox at {}: {source}; install it with \
         `apt-get install busybox-static`",
        .path.display()
    )]
    BusyboxUnreadable { path: PathBuf, source: io::Error },
    #[error(
        "image `busybox` needs a static busybox, but {} is dynamically linked (interpreter {}); \
         install a static one with `apt-get install busybox-static`",
        .path.display(),
        .interpreter.display()
    )]
    BusyboxDynamic { path: PathBuf, interpreter: PathBuf },
    #[error(
        "image `busybox` needs a static busybox, but {} is not a usable ELF binary: {source}; \
         install one with `apt-get install busybox-static`",
        .path.display()
    )]
    BusyboxNotElf { path: PathBuf, source: ElfError },
    #[error("image `busybox`: `{} --list-full` failed: {reason}", .path.display())]
    Applets { path: PathBuf, reason: String },
    #[error("image `{name}`: cannot {action} {}: {source}", .path.display())]
    Io {
        name: String,
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("image store: cannot read {}: {source}", .path.display())]
    Store { path: PathBuf, source: io::Error },
}

/// The error of one file operation on image `name`, for `map_err`.
fn io_error(name: &str, action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
    let (name, path) = (name.to_owned(), path.to_path_buf());
    move |source| ImageError::Io {
        name,
        action,
        path,
        source,
    }
}

/// Why no builder can build, and how to install one.
fn missing_builder(choice: ImageBuilder) -> String {
    let forced = |builder: Builder| {
        format!(
            "is built with {builder} (`[host] image_builder = \"{builder}\"`), which is not \
             installed; install it with `apt-get install {builder}`"
        )
    };
    match choice {
        ImageBuilder::Auto => "is built with mmdebstrap, or debootstrap when mmdebstrap is \
             missing, and neither is installed; install one with `apt-get install mmdebstrap` \
             (or `apt-get install debootstrap`)"
            .to_owned(),
        ImageBuilder::Mmdebstrap => forced(Builder::Mmdebstrap),
        ImageBuilder::Debootstrap => forced(Builder::Debootstrap),
    }
}

/// What one built image is, kept beside its rootfs as `image.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub name: String,
    /// Hex sha256 of everything the image holds (for recipes: the recipe digest and the installed
    /// package versions).
    pub digest: String,
    /// Hex sha256 of the recipe it was built from; `None` for built-in images.
    #[serde(default)]
    pub recipe_digest: Option<String>,
    /// The recipe file, or `built-in`.
    pub source: String,
    /// The tool that built it from its recipe (`mmdebstrap`, `debootstrap`); `None` for built-in
    /// images and for builds made before it was recorded.
    #[serde(default)]
    pub builder: Option<String>,
    /// Unix time the build finished.
    pub built_at: u64,
    /// Disk usage of the rootfs (hard links counted once).
    pub size_bytes: u64,
    /// `name version` of every installed package, sorted; empty for built-in images.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Where the rootfs is; not stored, it follows from where the file is.
    #[serde(skip)]
    pub rootfs: PathBuf,
}

/// The outcome of [`ImageStore::build`]: the image, and whether this call built it.
#[derive(Debug)]
pub struct Built {
    pub image: ImageInfo,
    pub fresh: bool,
}

/// The host's image store; cheap to ask for a built image, and safe to share between threads.
pub struct ImageStore {
    root: PathBuf,
    busybox: PathBuf,
    recipes: Recipes,
    /// Which tool builds recipes (`[host] image_builder`).
    builder: ImageBuilder,
    /// The digest of the busybox recipe, with the binary's fingerprint it was computed for, so
    /// node starts do not rehash the binary.
    busybox_digest: Mutex<Option<(Fingerprint, String)>>,
    /// Held while building or sweeping, so this process never sweeps its own build in progress
    /// nor runs two builds into the same partial directory.
    build_lock: Mutex<()>,
}

impl ImageStore {
    /// A store with the shipped recipes only.
    pub fn new(state_dir: &Path) -> Self {
        Self::with_busybox(state_dir, Path::new(HOST_BUSYBOX))
    }

    /// The store of a host configuration: its image dir (`state_dir/images` unless `[host]
    /// image_dir` is given), and the recipes in `images/` next to the configuration file before
    /// the shipped ones.
    pub fn for_config(config: &Config) -> Self {
        let dir = (config.origin != crate::config::DEFAULT_CONFIG_NAME)
            .then(|| Path::new(&config.origin).parent().map(|d| d.join("images")))
            .flatten();
        let mut store = Self::new(&config.host.state_dir)
            .with_recipe_dir(dir)
            .with_builder(config.host.image_builder);
        store.root = config.host.image_dir.clone();
        store
    }

    /// Looks for recipes in `dir` (`<dir>/<name>.toml`) before the shipped ones.
    pub fn with_recipe_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.recipes = Recipes { dir };
        self
    }

    /// Builds recipes with the tool `choice` names.
    pub fn with_builder(mut self, choice: ImageBuilder) -> Self {
        self.builder = choice;
        self
    }

    /// A store whose built-in `busybox` image copies `busybox` instead of the host's
    /// `/bin/busybox`.
    pub fn with_busybox(state_dir: &Path, busybox: &Path) -> Self {
        Self {
            root: state_dir.join("images"),
            busybox: busybox.to_path_buf(),
            recipes: Recipes::default(),
            builder: ImageBuilder::Auto,
            busybox_digest: Mutex::new(None),
            build_lock: Mutex::new(()),
        }
    }

    /// The rootfs of an image by name, building it first when it is missing (the built-in
    /// `busybox` in milliseconds; a recipe's in minutes, reported through the log). Blocking:
    /// the daemon calls it from a node's start, off its event loop.
    pub fn rootfs(&self, name: &str) -> Result<PathBuf, ImageError> {
        check_name(name)?;
        if name == busybox::NAME {
            return self.busybox_rootfs();
        }
        if self.recipe_source(name)?.is_some() {
            return self
                .build(name, false, &LogProgress, &NEVER_CANCELLED)
                .map(|built| built.image.rootfs);
        }
        self.newest_built(name)?
            .ok_or_else(|| ImageError::NotFound {
                name: name.to_owned(),
            })
    }

    /// Whether `name` is an image this store knows (built-in, with a recipe, or already built)
    /// without building it, so config validation stays cheap and side-effect free.
    pub fn knows(&self, name: &str) -> bool {
        check_name(name).is_ok()
            && (BUILT_IN.contains(&name)
                || matches!(self.recipe_source(name), Ok(Some(_)))
                || matches!(self.newest_built(name), Ok(Some(_))))
    }

    /// Every image name the store can give: built-in, recipes and builds.
    pub fn names(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = BUILT_IN.iter().map(|n| (*n).to_owned()).collect();
        names.extend(self.recipes.names());
        names.extend(self.list().unwrap_or_default().into_iter().map(|i| i.name));
        names.into_iter().collect()
    }

    /// The checked recipe of `name`.
    pub fn recipe(&self, name: &str) -> Result<ImageRecipe, ImageError> {
        check_name(name)?;
        let source = self
            .recipe_source(name)?
            .ok_or_else(|| ImageError::NotFound {
                name: name.to_owned(),
            })?;
        ImageRecipe::parse(name, &source).map_err(ImageError::Recipe)
    }

    /// What is wrong with the recipe of `name`, if it has one, so a configuration naming the
    /// image is refused before anything is built; empty for images without a recipe.
    pub fn recipe_problems(&self, name: &str) -> Vec<Diagnostic> {
        match self.recipe(name) {
            Err(ImageError::Recipe(problems)) => problems,
            Err(ImageError::RecipeUnreadable { name, path, source }) => vec![Diagnostic {
                file: path.display().to_string(),
                line: 1,
                column: 1,
                message: format!("image `{name}`: cannot read the recipe: {source}"),
            }],
            _ => Vec::new(),
        }
    }

    fn recipe_source(&self, name: &str) -> Result<Option<crate::config::Source>, ImageError> {
        self.recipes
            .find(name)
            .map_err(|(path, source)| ImageError::RecipeUnreadable {
                name: name.to_owned(),
                path,
                source,
            })
    }

    /// Builds image `name` unless an image of the same recipe exists (with `refresh`, builds it
    /// again and keeps the existing image if the package versions came out the same). The
    /// built-in `busybox` is built from the host binary. `cancel` interrupts a recipe build.
    pub fn build(
        &self,
        name: &str,
        refresh: bool,
        progress: &dyn BuildProgress,
        cancel: &AtomicBool,
    ) -> Result<Built, ImageError> {
        check_name(name)?;
        if name == busybox::NAME {
            let existing = self.list_of(name)?;
            let rootfs = self.busybox_rootfs()?;
            let image = self.info_at(name, rootfs.parent().expect("digest dir"))?;
            return Ok(Built {
                fresh: !existing.iter().any(|i| i.rootfs == image.rootfs),
                image,
            });
        }
        let recipe = self.recipe(name)?;
        let recipe_digest = recipe.digest();
        if !refresh {
            if let Some(image) = self.built_from(name, &recipe_digest)? {
                return Ok(Built {
                    image,
                    fresh: false,
                });
            }
        }
        let builder = Builder::choose(self.builder, Builder::installed).ok_or_else(|| {
            ImageError::BuilderMissing {
                name: name.to_owned(),
                choice: self.builder,
            }
        })?;
        let _building = self
            .build_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Another thread may have built it while this one waited for the lock.
        if !refresh {
            if let Some(image) = self.built_from(name, &recipe_digest)? {
                return Ok(Built {
                    image,
                    fresh: false,
                });
            }
        }
        let existing = self.list_of(name)?;
        let rootfs = self.publish(name, &recipe_digest, |partial, rootfs| {
            let work = partial.join("build");
            let packages = debian::build(&recipe, builder, rootfs, &work, progress, cancel)
                .map_err(|failure| build_error(name, failure))?;
            let mut hasher = Sha256::new();
            hasher.update(recipe_digest.as_bytes());
            // mmdebstrap's images keep the digest they had before there was a fallback; a
            // debootstrap tree differs from theirs even with the same package versions (device
            // nodes, debootstrap's own files), so it is another image. No package line holds a
            // NUL byte.
            if builder == Builder::Debootstrap {
                hasher.update(b"\0builder debootstrap");
            }
            for package in &packages {
                hasher.update(b"\n");
                hasher.update(package.as_bytes());
            }
            Ok(ImageInfo {
                name: name.to_owned(),
                digest: format!("{:x}", hasher.finalize()),
                recipe_digest: Some(recipe_digest.clone()),
                source: recipe.source.name.clone(),
                builder: Some(builder.to_string()),
                built_at: 0,
                size_bytes: 0,
                packages,
                rootfs: PathBuf::new(),
            })
        })?;
        let image = self.info_at(name, rootfs.parent().expect("digest dir"))?;
        Ok(Built {
            fresh: !existing.iter().any(|i| i.rootfs == image.rootfs),
            image,
        })
    }

    /// Every finished image, by name then age.
    pub fn list(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let mut images = Vec::new();
        for name in self.built_names()? {
            images.extend(self.list_of(&name)?);
        }
        Ok(images)
    }

    /// Removes every build of `name`; the caller has made sure no node uses it. Each build is
    /// first renamed to a partial directory, so a crash half-way leaves something the sweep
    /// removes, never a half-removed image that looks whole. Returns how many were removed.
    pub fn remove(&self, name: &str) -> Result<usize, ImageError> {
        check_name(name)?;
        let _building = self
            .build_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let image_dir = self.root.join(name);
        let builds = self.list_of(name)?;
        if builds.is_empty() {
            return Err(ImageError::NotFound {
                name: name.to_owned(),
            });
        }
        let failed = |action, path: &Path| io_error(name, action, path);
        for build in &builds {
            let dir = build.rootfs.parent().expect("digest dir");
            let doomed = image_dir.join(format!(
                "{PARTIAL_PREFIX}rm-{}-{}",
                short(&build.digest),
                std::process::id()
            ));
            fs::rename(dir, &doomed).map_err(failed("rename for removal", dir))?;
            remove_tree(&doomed).map_err(failed("remove", &doomed))?;
        }
        if let Err(e) = fs::remove_dir(&image_dir) {
            tracing::debug!(image = name, error = %e, "image dir kept");
        }
        tracing::info!(image = name, builds = builds.len(), "removed image");
        Ok(builds.len())
    }

    /// Names with a directory in the store.
    fn built_names(&self) -> Result<Vec<String>, ImageError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(ImageError::Store {
                    path: self.root.clone(),
                    source,
                })
            }
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|name| check_name(name).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// The finished builds of `name`, oldest first.
    fn list_of(&self, name: &str) -> Result<Vec<ImageInfo>, ImageError> {
        let image_dir = self.root.join(name);
        let entries = match fs::read_dir(&image_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(ImageError::Io {
                    name: name.to_owned(),
                    action: "read",
                    path: image_dir,
                    source,
                })
            }
        };
        let mut images = Vec::new();
        for entry in entries.flatten() {
            if entry.file_name().as_encoded_bytes().starts_with(b".") {
                continue;
            }
            let dir = entry.path();
            if dir.join(COMPLETE_MARKER).exists() {
                images.push(self.info_at(name, &dir)?);
            }
        }
        images.sort_by(|a, b| (a.built_at, &a.digest).cmp(&(b.built_at, &b.digest)));
        Ok(images)
    }

    /// The newest finished build of `name` from the recipe with `recipe_digest`.
    fn built_from(&self, name: &str, recipe_digest: &str) -> Result<Option<ImageInfo>, ImageError> {
        Ok(self
            .list_of(name)?
            .into_iter()
            .rev()
            .find(|i| i.recipe_digest.as_deref() == Some(recipe_digest)))
    }

    /// What the build in `dir` is: its `image.json`, or for builds made before there was one,
    /// what the directory itself tells.
    fn info_at(&self, name: &str, dir: &Path) -> Result<ImageInfo, ImageError> {
        let info_path = dir.join(INFO_FILE);
        let mut info = match fs::read(&info_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ImageError::Io {
                name: name.to_owned(),
                action: "parse",
                path: info_path.clone(),
                source: io::Error::other(e),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let marker = dir.join(COMPLETE_MARKER);
                let digest = fs::read_to_string(&marker)
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                let built_at = fs::metadata(&marker)
                    .and_then(|m| m.modified())
                    .map(unix_time)
                    .unwrap_or(0);
                ImageInfo {
                    name: name.to_owned(),
                    digest,
                    recipe_digest: None,
                    source: "built-in".into(),
                    builder: None,
                    built_at,
                    size_bytes: disk_usage(&dir.join("rootfs")).unwrap_or(0),
                    packages: Vec::new(),
                    rootfs: PathBuf::new(),
                }
            }
            Err(source) => {
                return Err(ImageError::Io {
                    name: name.to_owned(),
                    action: "read",
                    path: info_path,
                    source,
                })
            }
        };
        info.rootfs = dir.join("rootfs");
        Ok(info)
    }

    /// Removes the partial directories of builds that died, leaving those of live processes.
    pub fn sweep_partial(&self) -> Result<(), ImageError> {
        let _building = self
            .build_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let store_error = |source| ImageError::Store {
            path: self.root.clone(),
            source,
        };
        let images = match fs::read_dir(&self.root) {
            Ok(images) => images,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(store_error(e)),
        };
        for image in images {
            let image = image.map_err(store_error)?;
            let name = image.file_name().to_string_lossy().into_owned();
            if !image.file_type().map_err(store_error)?.is_dir() {
                continue;
            }
            let dir_error = |action, path: &Path| {
                let name = name.clone();
                let path = path.to_path_buf();
                move |source| ImageError::Io {
                    name,
                    action,
                    path,
                    source,
                }
            };
            let entries = fs::read_dir(image.path()).map_err(dir_error("read", &image.path()))?;
            for entry in entries {
                let entry = entry.map_err(dir_error("read", &image.path()))?;
                let Some(owner) = partial_owner(&entry.file_name()) else {
                    continue;
                };
                if owner.is_some_and(|pid| pid != std::process::id() && process_alive(pid)) {
                    continue;
                }
                let path = entry.path();
                tracing::info!(image = %name, path = %path.display(), "removing partial image build");
                remove_tree(&path).map_err(dir_error("remove partial build", &path))?;
            }
        }
        Ok(())
    }

    /// The hot path of node start: one stat of the host binary and one of the completion marker
    /// once the digest is cached.
    fn busybox_rootfs(&self) -> Result<PathBuf, ImageError> {
        let fingerprint = Fingerprint::of(&self.busybox)?;
        if let Some(digest) = self.cached_busybox_digest(fingerprint) {
            if let Some(rootfs) = self.completed(busybox::NAME, &digest) {
                return Ok(rootfs);
            }
        }
        let _building = self
            .build_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let recipe = Recipe::load(&self.busybox)?;
        let digest = recipe.digest();
        *self
            .busybox_digest
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((fingerprint, digest.clone()));
        match self.completed(busybox::NAME, &digest) {
            Some(rootfs) => Ok(rootfs),
            None => self.build_built_in(busybox::NAME, &digest, |rootfs| recipe.assemble(rootfs)),
        }
    }

    fn cached_busybox_digest(&self, fingerprint: Fingerprint) -> Option<String> {
        let cached = self
            .busybox_digest
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        cached
            .as_ref()
            .filter(|(seen, _)| *seen == fingerprint)
            .map(|(_, digest)| digest.clone())
    }

    /// The rootfs of a finished build of `name` with `digest`, if there is one.
    fn completed(&self, name: &str, digest: &str) -> Option<PathBuf> {
        let dir = self.root.join(name).join(short(digest));
        dir.join(COMPLETE_MARKER)
            .exists()
            .then(|| dir.join("rootfs"))
    }

    /// The most recently finished build of `name`, for images the store did not build itself.
    fn newest_built(&self, name: &str) -> Result<Option<PathBuf>, ImageError> {
        let image_dir = self.root.join(name);
        let read_error = |source| ImageError::Io {
            name: name.to_owned(),
            action: "read",
            path: image_dir.clone(),
            source,
        };
        let entries = match fs::read_dir(&image_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_error(e)),
        };
        let mut newest = None;
        for entry in entries {
            let entry = entry.map_err(read_error)?;
            if entry.file_name().as_encoded_bytes().starts_with(b".") {
                continue;
            }
            let dir = entry.path();
            let Ok(finished) = fs::metadata(dir.join(COMPLETE_MARKER)).and_then(|m| m.modified())
            else {
                continue;
            };
            if newest.as_ref().is_none_or(|(time, _)| finished > *time) {
                newest = Some((finished, dir.join("rootfs")));
            }
        }
        Ok(newest.map(|(_, rootfs)| rootfs))
    }

    /// Builds an image whose digest is known before it is built (the built-in ones): runs
    /// `assemble` on an empty rootfs and publishes it under `digest`. Callers hold `build_lock`.
    fn build_built_in(
        &self,
        name: &str,
        digest: &str,
        assemble: impl FnOnce(&Path) -> Result<(), ImageError>,
    ) -> Result<PathBuf, ImageError> {
        self.publish(name, digest, |_, rootfs| {
            assemble(rootfs)?;
            Ok(ImageInfo {
                name: name.to_owned(),
                digest: digest.to_owned(),
                recipe_digest: None,
                source: "built-in".into(),
                builder: None,
                built_at: 0,
                size_bytes: 0,
                packages: Vec::new(),
                rootfs: PathBuf::new(),
            })
        })
    }

    /// Runs `assemble` on an empty rootfs in a partial directory named after `key`, then
    /// renames it into place under the digest `assemble` reports, removing the partial
    /// directory if anything fails. Callers hold `build_lock`.
    fn publish(
        &self,
        name: &str,
        key: &str,
        assemble: impl FnOnce(&Path, &Path) -> Result<ImageInfo, ImageError>,
    ) -> Result<PathBuf, ImageError> {
        let image_dir = self.root.join(name);
        let partial = image_dir.join(format!(
            "{PARTIAL_PREFIX}{}-{}",
            short(key),
            std::process::id()
        ));
        let outcome = self.fill_and_publish(name, &image_dir, &partial, assemble);
        if outcome.is_err() {
            if let Err(e) = remove_tree(&partial) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(image = name, path = %partial.display(), error = %e,
                        "cannot remove failed image build; sweep_partial will retry");
                }
            }
        }
        outcome
    }

    fn fill_and_publish(
        &self,
        name: &str,
        image_dir: &Path,
        partial: &Path,
        assemble: impl FnOnce(&Path, &Path) -> Result<ImageInfo, ImageError>,
    ) -> Result<PathBuf, ImageError> {
        let failed = |action, path: &Path| io_error(name, action, path);
        fs::create_dir_all(image_dir).map_err(failed("create", image_dir))?;
        // Left by an earlier build of this process that could not clean up; never in progress,
        // since the caller holds the build lock.
        match remove_tree(partial) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(failed("remove stale partial build", partial)(e))
            }
            _ => {}
        }
        fs::create_dir(partial).map_err(failed("create", partial))?;
        let rootfs = partial.join("rootfs");
        fs::create_dir(&rootfs).map_err(failed("create", &rootfs))?;
        let mut info = assemble(partial, &rootfs)?;
        info.built_at = unix_time(SystemTime::now());
        info.size_bytes = disk_usage(&rootfs).map_err(failed("measure", &rootfs))?;
        let info_path = partial.join(INFO_FILE);
        let json = serde_json::to_vec_pretty(&info)
            .map_err(|e| failed("encode", &info_path)(io::Error::other(e)))?;
        fs::write(&info_path, json).map_err(failed("write", &info_path))?;
        let marker = partial.join(COMPLETE_MARKER);
        fs::write(&marker, format!("{}\n", info.digest)).map_err(failed("write", &marker))?;
        // One syncfs instead of an fsync per file: the image must be on disk before its name is.
        let partial_dir = File::open(partial).map_err(failed("open", partial))?;
        nix::unistd::syncfs(&partial_dir).map_err(|e| failed("sync", partial)(e.into()))?;
        let done = image_dir.join(short(&info.digest));
        if let Err(e) = fs::rename(partial, &done) {
            // Another process (or an earlier build with the same packages) finished the same
            // image first; its copy is as good as ours.
            if done.join(COMPLETE_MARKER).exists() {
                remove_tree(partial).map_err(failed("remove", partial))?;
                return Ok(done.join("rootfs"));
            }
            return Err(failed("rename into place", &done)(e));
        }
        File::open(image_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(failed("sync", image_dir))?;
        tracing::info!(image = name, path = %done.display(), "built image");
        Ok(done.join("rootfs"))
    }
}

/// Removes a build directory, first detaching anything mounted below it (a builder killed
/// half-way must never make this descend into a mounted /proc or /dev).
fn remove_tree(path: &Path) -> io::Result<()> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounted: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(unescape_mount_point(point)))
        .filter(|point| point.starts_with(path))
        .collect();
    // Deepest first.
    mounted.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    for point in mounted {
        nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| io::Error::other(format!("detach {}: {e}", point.display())))?;
    }
    fs::remove_dir_all(path)
}

/// Mount points in mountinfo escape space, tab, newline and backslash as `\ooo`.
fn unescape_mount_point(point: &str) -> String {
    let bytes = point.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let code =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Disk usage of a tree in bytes (allocated blocks), each hard-linked inode counted once, never
/// following symlinks.
fn disk_usage(root: &Path) -> io::Result<u64> {
    let mut seen = BTreeSet::new();
    let mut total = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = fs::symlink_metadata(&path)?;
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total += meta.blocks() * 512;
        if meta.is_dir() {
            for entry in fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(total)
}

fn unix_time(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The last lines of a failed build's output, indented under its error.
fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        return String::new();
    }
    let mut text = String::from("\n  last output of the build:");
    for line in tail {
        text.push_str("\n    ");
        text.push_str(line);
    }
    text
}

fn build_error(name: &str, failure: debian::BuildFailure) -> ImageError {
    match failure {
        debian::BuildFailure::Spawn(source) => ImageError::BuilderSpawn {
            name: name.to_owned(),
            source,
        },
        debian::BuildFailure::Failed { diagnostic, tail } => {
            ImageError::BuildFailed { diagnostic, tail }
        }
        debian::BuildFailure::Interrupted => ImageError::Interrupted {
            name: name.to_owned(),
        },
        debian::BuildFailure::Io { what, source } => ImageError::BuildIo {
            name: name.to_owned(),
            what,
            source,
        },
    }
}

/// Image names become directory names, so only plain lowercase names are allowed.
fn check_name(name: &str) -> Result<(), ImageError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        Some("it must start with a lowercase letter or a digit")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
    {
        Some("it may hold only lowercase letters, digits, `-`, `_` and `.`")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ImageError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn short(digest: &str) -> &str {
    &digest[..SHORT_DIGEST.min(digest.len())]
}

/// For a partial build's directory name, the pid that made it (`None` if unreadable); `None`
/// overall for anything that is not a partial build.
fn partial_owner(file_name: &OsStr) -> Option<Option<u32>> {
    let rest = file_name.to_str()?.strip_prefix(PARTIAL_PREFIX)?;
    Some(rest.rsplit_once('-').and_then(|(_, pid)| pid.parse().ok()))
}

fn process_alive(pid: u32) -> bool {
    match i32::try_from(pid) {
        Ok(pid) if pid > 0 => !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn partial_dirs(image_dir: &Path) -> Vec<PathBuf> {
        match fs::read_dir(image_dir) {
            Ok(entries) => entries
                .map(|e| e.unwrap())
                .filter(|e| partial_owner(&e.file_name()).is_some())
                .map(|e| e.path())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    #[test]
    fn builds_busybox_with_applets_and_accounts() {
        let state = tempfile::tempdir().unwrap();
        let store = ImageStore::new(state.path());
        let rootfs = store.rootfs("busybox").unwrap();

        let digest_dir = rootfs.parent().unwrap();
        assert_eq!(
            digest_dir.parent().unwrap(),
            state.path().join("images/busybox")
        );
        assert_eq!(digest_dir.file_name().unwrap().len(), SHORT_DIGEST);
        let marker = fs::read_to_string(digest_dir.join(COMPLETE_MARKER)).unwrap();
        assert!(marker.starts_with(digest_dir.file_name().unwrap().to_str().unwrap()));

        let binary = fs::metadata(rootfs.join("bin/busybox")).unwrap();
        assert_eq!(binary.mode() & 0o7777, 0o755);
        assert_eq!(binary.len(), fs::metadata(HOST_BUSYBOX).unwrap().len());
        for applet in [
            "bin/sh",
            "bin/ls",
            "usr/bin/wget",
            "sbin/ifconfig",
            "usr/sbin/httpd",
        ] {
            let target = fs::read_link(rootfs.join(applet)).unwrap();
            assert_eq!(target, Path::new("/bin/busybox"), "{applet}");
        }
        assert!(fs::symlink_metadata(rootfs.join("bin/busybox"))
            .unwrap()
            .is_file());

        for (dir, mode) in [
            ("proc", 0o555),
            ("sys", 0o555),
            ("dev", 0o755),
            ("tmp", 0o1777),
            ("run", 0o755),
            ("root", 0o700),
            ("var/log", 0o755),
            ("var/www", 0o755),
            ("home", 0o755),
            ("usr/sbin", 0o755),
        ] {
            let meta = fs::metadata(rootfs.join(dir)).unwrap();
            assert!(meta.is_dir(), "{dir}");
            assert_eq!(meta.mode() & 0o7777, mode, "{dir}");
        }

        let passwd = fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
        assert!(passwd.starts_with("root:x:0:0:root:/root:/bin/sh\n"));
        assert!(passwd.contains("\nwww-data:x:33:33:"));
        assert!(passwd.contains("\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"));
        let group = fs::read_to_string(rootfs.join("etc/group")).unwrap();
        assert_eq!(group, "root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n");
        let hosts = fs::read_to_string(rootfs.join("etc/hosts")).unwrap();
        assert_eq!(hosts, "127.0.0.1 localhost\n::1 localhost\n");
        assert_eq!(fs::read(rootfs.join("etc/hostname")).unwrap(), b"");
        let resolv = fs::read_to_string(rootfs.join("etc/resolv.conf")).unwrap();
        assert!(
            resolv.lines().all(|l| l.starts_with("nameserver ")),
            "{resolv}"
        );
        assert!(!fs::read_to_string(rootfs.join("var/www/index.html"))
            .unwrap()
            .is_empty());

        let owner = nix::unistd::geteuid().as_raw();
        for entry in ["bin/busybox", "bin/sh", "etc/passwd", "root", "tmp"] {
            let meta = fs::symlink_metadata(rootfs.join(entry)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (owner, owner), "{entry}");
        }
        assert!(partial_dirs(&state.path().join("images/busybox")).is_empty());
    }

    #[test]
    fn second_request_reuses_the_built_image() {
        let state = tempfile::tempdir().unwrap();
        let store = ImageStore::new(state.path());
        let first = store.rootfs("busybox").unwrap();
        let before = fs::metadata(first.parent().unwrap()).unwrap();
        let marker = fs::metadata(first.parent().unwrap().join(COMPLETE_MARKER)).unwrap();

        assert_eq!(store.rootfs("busybox").unwrap(), first);
        // A fresh store (a restarted daemon) hashes again but finds the same image.
        assert_eq!(
            ImageStore::new(state.path()).rootfs("busybox").unwrap(),
            first
        );

        let after = fs::metadata(first.parent().unwrap()).unwrap();
        assert_eq!(
            (after.ino(), after.mtime_nsec()),
            (before.ino(), before.mtime_nsec())
        );
        let marker_after = fs::metadata(first.parent().unwrap().join(COMPLETE_MARKER)).unwrap();
        assert_eq!(marker_after.ino(), marker.ino());
        let images: Vec<_> = fs::read_dir(state.path().join("images/busybox"))
            .unwrap()
            .collect();
        assert_eq!(images.len(), 1);
    }

    #[test]
    fn changed_busybox_gives_a_new_image() {
        let state = tempfile::tempdir().unwrap();
        let busybox = state.path().join("busybox");
        fs::copy(HOST_BUSYBOX, &busybox).unwrap();
        let store = ImageStore::with_busybox(state.path(), &busybox);
        let first = store.rootfs("busybox").unwrap();

        let mut bytes = fs::read(&busybox).unwrap();
        bytes.extend_from_slice(b"\0upgrade");
        fs::write(&busybox, bytes).unwrap();
        let second = store.rootfs("busybox").unwrap();

        assert_ne!(first, second);
        assert!(first.exists(), "a node may still run from the old image");
        assert_eq!(
            fs::read(second.join("bin/busybox")).unwrap(),
            fs::read(&busybox).unwrap()
        );
    }

    #[test]
    fn missing_busybox_names_the_path_and_the_package() {
        let state = tempfile::tempdir().unwrap();
        let missing = state.path().join("no-busybox");
        let store = ImageStore::with_busybox(state.path(), &missing);
        let message = store.rootfs("busybox").unwrap_err().to_string();
        assert!(message.contains(missing.to_str().unwrap()), "{message}");
        assert!(
            message.contains("apt-get install busybox-static"),
            "{message}"
        );
        assert!(partial_dirs(&state.path().join("images/busybox")).is_empty());
        assert!(store.knows("busybox"));
    }

    #[test]
    fn dynamic_busybox_is_refused() {
        let state = tempfile::tempdir().unwrap();
        let store = ImageStore::with_busybox(state.path(), Path::new("/bin/ls"));
        let err = store.rootfs("busybox").unwrap_err();
        assert!(matches!(err, ImageError::BusyboxDynamic { .. }), "{err}");
        assert!(err.to_string().contains("/bin/ls"));
    }

    #[test]
    fn failed_build_leaves_no_partial_directory() {
        let state = tempfile::tempdir().unwrap();
        let store = ImageStore::new(state.path());
        let digest = "0123456789abcdef0123456789abcdef";
        let err = store
            .build_built_in("broken", digest, |rootfs| {
                fs::create_dir(rootfs.join("etc")).unwrap();
                fs::write(rootfs.join("etc/half-written"), b"x").unwrap();
                Err(ImageError::Io {
                    name: "broken".to_owned(),
                    action: "write",
                    path: rootfs.join("etc/passwd"),
                    source: io::Error::from(io::ErrorKind::StorageFull),
                })
            })
            .unwrap_err();
        assert!(err.to_string().contains("etc/passwd"), "{err}");
        let image_dir = state.path().join("images/broken");
        assert_eq!(fs::read_dir(&image_dir).unwrap().count(), 0);
        assert!(!store.knows("broken"));
    }

    #[test]
    fn sweep_removes_partial_builds_of_dead_processes_only() {
        let state = tempfile::tempdir().unwrap();
        let store = ImageStore::new(state.path());
        let image_dir = state.path().join("images/busybox");
        let ours = image_dir.join(format!(".tmp-00-{}", std::process::id()));
        let dead = image_dir.join(format!(".tmp-00-{}", i32::MAX));
        let unreadable = image_dir.join(".tmp-garbage");
        let live = image_dir.join(".tmp-00-1");
        let image = image_dir.join("0123456789abcdef/rootfs");
        for dir in [&ours, &dead, &unreadable, &live, &image] {
            fs::create_dir_all(dir.join("etc")).unwrap();
        }

        store.sweep_partial().unwrap();

        assert!(!ours.exists() && !dead.exists() && !unreadable.exists());
        assert!(
            live.exists(),
            "pid 1 is alive, so its build may be in progress"
        );
        assert!(image.exists());
    }

    #[test]
    fn sweep_of_an_empty_store_is_fine() {
        let state = tempfile::tempdir().unwrap();
        ImageStore::new(state.path()).sweep_partial().unwrap();
    }

    #[test]
    fn unknown_and_invalid_names() {
        let state = tempfile::tempdir().unwrap();
        let store = ImageStore::new(state.path());
        assert!(store.knows("busybox"));
        assert!(!store.knows("debian"));
        assert_eq!(
            store.rootfs("debian").unwrap_err().to_string(),
            "image `debian` does not exist: no recipe `images/debian.toml` and no build; built-in \
             images: busybox"
        );
        for bad in ["", "../busybox", ".tmp-x", "Busybox", "a/b"] {
            assert!(!store.knows(bad), "{bad}");
            let err = store.rootfs(bad).unwrap_err();
            assert!(
                matches!(err, ImageError::InvalidName { .. }),
                "{bad}: {err}"
            );
        }
        assert!(
            !state.path().join("images").exists(),
            "asking builds nothing"
        );
    }

    #[test]
    fn images_built_elsewhere_are_known_by_their_newest_build() {
        let state = tempfile::tempdir().unwrap();
        let store = ImageStore::new(state.path());
        let older = store
            .build_built_in("shop", &"a".repeat(64), |_| Ok(()))
            .unwrap();
        let newer = store
            .build_built_in("shop", &"b".repeat(64), |_| Ok(()))
            .unwrap();
        let old_marker = older.parent().unwrap().join(COMPLETE_MARKER);
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        File::options()
            .write(true)
            .open(&old_marker)
            .unwrap()
            .set_modified(past)
            .unwrap();

        assert!(store.knows("shop"));
        assert_eq!(store.rootfs("shop").unwrap(), newer);
    }

    fn local_recipe(state: &Path, name: &str, text: &str) -> ImageStore {
        let recipes = state.join("images-src");
        fs::create_dir_all(&recipes).unwrap();
        fs::write(recipes.join(format!("{name}.toml")), text).unwrap();
        ImageStore::new(state).with_recipe_dir(Some(recipes))
    }

    #[test]
    fn an_image_of_the_same_recipe_is_not_rebuilt() {
        let state = tempfile::tempdir().unwrap();
        let store = local_recipe(
            state.path(),
            "web",
            "suite = \"bookworm\"\npackages = [\"procps\"]\n",
        );
        assert!(store.knows("web"), "a recipe is enough to be known");
        let recipe_digest = store.recipe("web").unwrap().digest();
        // What a finished build of this recipe leaves (no mmdebstrap needed to find it).
        let rootfs = store
            .publish("web", &recipe_digest, |_, rootfs| {
                fs::create_dir(rootfs.join("etc")).unwrap();
                Ok(ImageInfo {
                    name: "web".into(),
                    digest: "c".repeat(64),
                    recipe_digest: Some(recipe_digest.clone()),
                    source: "images/web.toml".into(),
                    builder: Some("mmdebstrap".into()),
                    built_at: 0,
                    size_bytes: 0,
                    packages: vec!["procps 2:4.0.2-3".into()],
                    rootfs: PathBuf::new(),
                })
            })
            .unwrap();

        let built = store
            .build("web", false, &LogProgress, &NEVER_CANCELLED)
            .unwrap();
        assert!(!built.fresh);
        assert_eq!(built.image.rootfs, rootfs);
        assert_eq!(built.image.packages, ["procps 2:4.0.2-3"]);
        assert!(built.image.size_bytes > 0, "measured when published");
        assert_eq!(store.rootfs("web").unwrap(), rootfs);

        // A changed recipe is another image: a node start would build it.
        let changed = local_recipe(
            state.path(),
            "web",
            "suite = \"bookworm\"\npackages = [\"nginx\"]\n",
        );
        assert_ne!(changed.recipe("web").unwrap().digest(), recipe_digest);
        assert!(changed
            .built_from("web", &changed.recipe("web").unwrap().digest())
            .unwrap()
            .is_none());
    }

    #[test]
    fn local_recipes_come_before_shipped_ones_and_errors_name_the_file() {
        let state = tempfile::tempdir().unwrap();
        let store = local_recipe(state.path(), "debian-base", "suite = \"trixie\"\n");
        assert_eq!(store.recipe("debian-base").unwrap().suite.value, "trixie");
        assert_eq!(
            ImageStore::new(state.path())
                .recipe("debian-base")
                .unwrap()
                .suite
                .value,
            "bookworm"
        );
        let broken = local_recipe(state.path(), "broken", "suite = 3\n");
        let message = broken.recipe("broken").unwrap_err().to_string();
        let file = state.path().join("images-src/broken.toml");
        assert!(
            message.starts_with(&format!("{}:1:9: ", file.display())),
            "{message}"
        );
        let err = broken
            .build("broken", false, &LogProgress, &NEVER_CANCELLED)
            .unwrap_err();
        assert!(matches!(err, ImageError::Recipe(_)), "{err}");
        assert!(!state.path().join("images/broken").exists());
        assert!(store.names().contains(&"debian-base".to_owned()));
        let problems = broken.recipe_problems("broken");
        assert_eq!((problems.len(), problems[0].line), (1, 1), "{problems:?}");
        assert!(broken.recipe_problems("busybox").is_empty());
        assert!(broken.recipe_problems("debian-base").is_empty());
    }

    #[test]
    fn list_and_remove() {
        let state = tempfile::tempdir().unwrap();
        let store = ImageStore::new(state.path());
        assert!(store.list().unwrap().is_empty());
        store.rootfs("busybox").unwrap();
        store
            .build_built_in("web", &"a".repeat(64), |rootfs| {
                fs::write(rootfs.join("file"), vec![7u8; 10_000]).map_err(|source| ImageError::Io {
                    name: "web".into(),
                    action: "write",
                    path: rootfs.join("file"),
                    source,
                })
            })
            .unwrap();
        store
            .build_built_in("web", &"b".repeat(64), |_| Ok(()))
            .unwrap();
        let images = store.list().unwrap();
        let names: Vec<_> = images.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["busybox", "web", "web"]);
        assert!(images[0].size_bytes > 1 << 20, "busybox with its binary");
        let with_file = images.iter().find(|i| i.digest == "a".repeat(64)).unwrap();
        assert!(with_file.size_bytes >= 10_000);
        assert_eq!(with_file.source, "built-in");

        assert_eq!(store.remove("web").unwrap(), 2);
        assert!(!state.path().join("images/web").exists());
        assert!(matches!(
            store.remove("web"),
            Err(ImageError::NotFound { .. })
        ));
        assert_eq!(store.list().unwrap().len(), 1);
        assert!(
            !store
                .build("busybox", false, &LogProgress, &NEVER_CANCELLED)
                .unwrap()
                .fresh
        );
    }

    #[test]
    fn a_missing_builder_is_named_with_how_to_install_it() {
        let missing = |choice| {
            ImageError::BuilderMissing {
                name: "web".into(),
                choice,
            }
            .to_string()
        };
        let auto = missing(ImageBuilder::Auto);
        assert!(auto.starts_with("image `web` is built with mmdebstrap, or debootstrap"));
        assert!(
            auto.contains("`apt-get install mmdebstrap` (or `apt-get install debootstrap`)"),
            "{auto}"
        );
        assert_eq!(
            missing(ImageBuilder::Debootstrap),
            "image `web` is built with debootstrap (`[host] image_builder = \"debootstrap\"`), \
             which is not installed; install it with `apt-get install debootstrap`"
        );
        assert!(missing(ImageBuilder::Mmdebstrap).ends_with("`apt-get install mmdebstrap`"));
    }

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape_mount_point("/a\\040b/c\\011d\\134"), "/a b/c\td\\");
        assert_eq!(unescape_mount_point("/plain\\04"), "/plain\\04");
    }
}
