//! What both builders (mmdebstrap's hooks, debootstrap's script) share: the steps of a build as
//! the progress display names them, the mark a hook prints when one begins, and the shell words
//! they run chrooted in the image with.

use std::fmt;

/// Marks the start of one of our hooks in the builder's output.
pub(super) const STEP_MARK: &str = "magestack-step ";
/// The environment of every command run chrooted in the image.
pub(super) const CHROOT_ENV: &str =
    "env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
     HOME=/root LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive";

/// The steps of a build, in order, as the progress display names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildStep {
    Update,
    Download,
    Extract,
    Essential,
    Packages,
    File(usize),
    Run(usize),
    Versions,
    Cleanup,
}

impl fmt::Display for BuildStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildStep::Update => write!(f, "reading the package lists"),
            BuildStep::Download => write!(f, "downloading packages"),
            BuildStep::Extract => write!(f, "extracting packages"),
            BuildStep::Essential => write!(f, "installing essential packages"),
            BuildStep::Packages => write!(f, "installing the recipe's packages"),
            BuildStep::File(i) => write!(f, "writing file[{i}]"),
            BuildStep::Run(i) => write!(f, "running run[{i}]"),
            BuildStep::Versions => write!(f, "recording package versions"),
            BuildStep::Cleanup => write!(f, "cleaning up"),
        }
    }
}

/// Quotes one word for `sh`.
pub(super) fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}
