//! Image recipes: `images/<name>.toml`, the Debian release, packages, files and build commands of
//! one image, checked whole before anything is built, with every problem named by file, line,
//! column and field.
//!
//! ```toml
//! description = "Debian bookworm with a shell's basics"
//! suite = "bookworm"                          # Debian release (codename or suite)
//! mirror = "http://deb.debian.org/debian"     # optional, this is the default
//! variant = "minbase"                         # optional: mmdebstrap's --variant (debootstrap
//!                                             # gets the closest: minbase, or its default)
//! packages = ["ca-certificates", "procps"]
//! run = ["echo built > /etc/magestack-image"] # each in `/bin/sh -ec`, chrooted in the image,
//!                                             # after the files are written
//! [[file]]
//! path = "/etc/motd"
//! content = "Welcome\n"
//! mode = "0644"                               # optional, this is the default
//! ```

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::config::{Diagnostic, Source};

/// The recipes shipped inside the binary (`images/*.toml`), by image name.
pub const SHIPPED: &[(&str, &str)] = &[
    ("debian-base", include_str!("../../images/debian-base.toml")),
    ("acc", include_str!("../../images/acc.toml")),
    ("db", include_str!("../../images/db.toml")),
    ("lb", include_str!("../../images/lb.toml")),
    ("mail", include_str!("../../images/mail.toml")),
    ("monitor", include_str!("../../images/monitor.toml")),
    ("web", include_str!("../../images/web.toml")),
];

/// Where the recipes of images nobody configured come from when a recipe does not say.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
pub const DEFAULT_VARIANT: &str = "minbase";
/// mmdebstrap's variants that give a usable system to add packages to (debootstrap gets the
/// closest of its own, see [`super::debootstrap::variant`]).
pub const VARIANTS: &[&str] = &[
    "essential",
    "apt",
    "required",
    "minbase",
    "important",
    "standard",
];

/// Bump when the way a recipe becomes an image changes (the mmdebstrap invocation, the hooks), so
/// hosts rebuild instead of reusing an image made the old way.
const RECIPE_FORMAT: &str = "magestack image recipe 1";

/// One checked recipe, with the spans of its fields kept so a failed build can point at the
/// field it failed on.
#[derive(Debug, Clone)]
pub struct ImageRecipe {
    pub name: String,
    pub source: Source,
    pub suite: Located<String>,
    pub mirror: String,
    pub variant: String,
    pub packages: Vec<Located<String>>,
    pub files: Vec<Located<FileToAdd>>,
    pub run: Vec<Located<String>>,
}

/// A value with the byte span of where it is written in the recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub span: Range<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileToAdd {
    /// Absolute path inside the image.
    pub path: PathBuf,
    pub content: String,
    pub mode: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipe {
    /// For people reading the recipe; part of nothing the build uses.
    #[serde(default, rename = "description")]
    _description: Option<String>,
    suite: Option<Spanned<String>>,
    mirror: Option<Spanned<String>>,
    variant: Option<Spanned<String>>,
    #[serde(default)]
    packages: Vec<Spanned<String>>,
    #[serde(default)]
    file: Vec<Spanned<RawFile>>,
    #[serde(default)]
    run: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    path: Spanned<String>,
    content: String,
    mode: Option<Spanned<String>>,
}

impl ImageRecipe {
    /// Checks a recipe text; `Err` holds every problem found, each located.
    pub fn parse(name: &str, source: &Source) -> Result<ImageRecipe, Vec<Diagnostic>> {
        let raw: RawRecipe = toml::from_str(&source.text)
            .map_err(|error| vec![source.at(error.span(), error.message().trim())])?;
        let mut problems = Vec::new();
        let mut problem = |span: Range<usize>, message: String| {
            problems.push(source.at(Some(span), format!("image `{name}`: {message}")));
        };

        let suite = match raw.suite {
            Some(suite) => {
                let span = suite.span();
                let suite = suite.into_inner();
                if !is_suite(&suite) {
                    problem(
                        span.clone(),
                        format!(
                            "`suite` `{suite}` is not a Debian release name (like `bookworm` or \
                             `stable`)"
                        ),
                    );
                }
                Located { value: suite, span }
            }
            None => {
                problem(
                    0..0,
                    "has no `suite` (the Debian release, like `bookworm`)".to_owned(),
                );
                Located {
                    value: String::new(),
                    span: 0..0,
                }
            }
        };
        let mirror = match raw.mirror {
            Some(mirror) => {
                let span = mirror.span();
                let mirror = mirror.into_inner();
                if !is_mirror(&mirror) {
                    problem(
                        span,
                        format!(
                            "`mirror` `{mirror}` is not an http://, https:// or file:/ URL \
                             without spaces"
                        ),
                    );
                }
                mirror
            }
            None => DEFAULT_MIRROR.to_owned(),
        };
        let variant = match raw.variant {
            Some(variant) => {
                let span = variant.span();
                let variant = variant.into_inner();
                if !VARIANTS.contains(&variant.as_str()) {
                    problem(
                        span,
                        format!(
                            "`variant` `{variant}` is not one of {}",
                            VARIANTS.join(", ")
                        ),
                    );
                }
                variant
            }
            None => DEFAULT_VARIANT.to_owned(),
        };

        let mut packages: Vec<Located<String>> = Vec::new();
        for package in raw.packages {
            let span = package.span();
            let package = package.into_inner();
            if !is_package_name(&package) {
                problem(
                    span,
                    format!("`packages`: `{package}` is not a Debian package name"),
                );
            } else if packages.iter().any(|p| p.value == package) {
                problem(span, format!("`packages`: `{package}` is listed twice"));
            } else {
                packages.push(Located {
                    value: package,
                    span,
                });
            }
        }

        let mut files: Vec<Located<FileToAdd>> = Vec::new();
        for (index, file) in raw.file.into_iter().enumerate() {
            let span = file.span();
            let file = file.into_inner();
            let path_span = file.path.span();
            let path = PathBuf::from(file.path.into_inner());
            if !is_image_path(&path) {
                problem(
                    path_span.clone(),
                    format!(
                        "`file[{index}].path` `{}` is not an absolute path of plain names \
                         inside the image",
                        path.display()
                    ),
                );
            } else if files.iter().any(|f| f.value.path == path) {
                problem(
                    path_span,
                    format!("`file[{index}].path` `{}` is added twice", path.display()),
                );
            }
            let mode = match file.mode {
                Some(mode) => {
                    let mode_span = mode.span();
                    let text = mode.into_inner();
                    match parse_mode(&text) {
                        Some(mode) => mode,
                        None => {
                            problem(
                                mode_span,
                                format!(
                                    "`file[{index}].mode` `{text}` is not an octal mode like \
                                     \"0644\""
                                ),
                            );
                            0o644
                        }
                    }
                }
                None => 0o644,
            };
            files.push(Located {
                value: FileToAdd {
                    path,
                    content: file.content,
                    mode,
                },
                span,
            });
        }

        let mut run = Vec::new();
        for (index, command) in raw.run.into_iter().enumerate() {
            let span = command.span();
            let command = command.into_inner();
            if command.trim().is_empty() {
                problem(span.clone(), format!("`run[{index}]` is empty"));
            }
            if command.contains('\0') {
                problem(span.clone(), format!("`run[{index}]` holds a NUL byte"));
            }
            run.push(Located {
                value: command,
                span,
            });
        }

        if !problems.is_empty() {
            problems.sort_by_key(|d| (d.line, d.column));
            return Err(problems);
        }
        Ok(ImageRecipe {
            name: name.to_owned(),
            source: source.clone(),
            suite,
            mirror,
            variant,
            packages,
            files,
            run,
        })
    }

    /// The hex sha256 of everything in the recipe that decides the image: not its description,
    /// comments or layout, nor the order of `packages` (apt installs a set).
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
        field(RECIPE_FORMAT.as_bytes());
        field(self.suite.value.as_bytes());
        field(self.mirror.as_bytes());
        field(self.variant.as_bytes());
        let mut packages: Vec<&str> = self.packages.iter().map(|p| p.value.as_str()).collect();
        packages.sort_unstable();
        field(&(packages.len() as u64).to_le_bytes());
        for package in packages {
            field(package.as_bytes());
        }
        field(&(self.files.len() as u64).to_le_bytes());
        for file in &self.files {
            field(file.value.path.as_os_str().as_encoded_bytes());
            field(&file.value.mode.to_le_bytes());
            field(file.value.content.as_bytes());
        }
        field(&(self.run.len() as u64).to_le_bytes());
        for command in &self.run {
            field(command.value.as_bytes());
        }
        format!("{:x}", hasher.finalize())
    }

    /// A diagnostic at `span` of this recipe.
    pub fn at(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        self.source.at(Some(span), message)
    }
}

/// Where recipes come from: `<dir>/<name>.toml` first (operators' own, next to the host
/// configuration), then the shipped ones.
#[derive(Debug, Clone, Default)]
pub struct Recipes {
    pub dir: Option<PathBuf>,
}

impl Recipes {
    /// The recipe text of `name`, if any; `Err` when a local recipe exists but cannot be read.
    pub fn find(&self, name: &str) -> Result<Option<Source>, (PathBuf, std::io::Error)> {
        if let Some(dir) = &self.dir {
            let path = dir.join(format!("{name}.toml"));
            match std::fs::read_to_string(&path) {
                Ok(text) => return Ok(Some(Source::new(path.display().to_string(), text))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err((path, e)),
            }
        }
        Ok(SHIPPED
            .iter()
            .find(|(shipped, _)| *shipped == name)
            .map(|(name, text)| Source::new(format!("images/{name}.toml"), *text)))
    }

    /// Names of every recipe, local and shipped, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = SHIPPED.iter().map(|(n, _)| (*n).to_owned()).collect();
        if let Some(Ok(entries)) = self.dir.as_ref().map(std::fs::read_dir) {
            for entry in entries.flatten() {
                let file = entry.file_name();
                if let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".toml")) {
                    names.push(name.to_owned());
                }
            }
        }
        names.sort();
        names.dedup();
        names
    }
}

fn is_suite(suite: &str) -> bool {
    suite.starts_with(|c: char| c.is_ascii_lowercase())
        && suite
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_mirror(mirror: &str) -> bool {
    ["http://", "https://", "file:/"]
        .iter()
        .any(|scheme| mirror.len() > scheme.len() && mirror.starts_with(scheme))
        && !mirror
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\'')
}

/// Debian policy 5.6.7: lowercase letters, digits, `+`, `-`, `.`; at least two characters,
/// starting with a letter or digit.
pub fn is_package_name(name: &str) -> bool {
    name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
}

/// An absolute path of plain names (no `.`, `..` or empty segments), so it cannot climb out of the
/// image and names exactly one file.
fn is_image_path(path: &Path) -> bool {
    let Some(text) = path.to_str() else {
        return false;
    };
    let Some(relative) = text.strip_prefix('/') else {
        return false;
    };
    !relative.is_empty()
        && !text.chars().any(|c| c.is_control())
        && relative
            .split('/')
            .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
}

fn parse_mode(text: &str) -> Option<u32> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    if digits.is_empty() || digits.len() > 4 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Result<ImageRecipe, Vec<Diagnostic>> {
        ImageRecipe::parse("t", &Source::new("images/t.toml", text))
    }

    fn messages(text: &str) -> Vec<String> {
        parse(text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn shipped_recipes_parse() {
        for (name, text) in SHIPPED {
            let source = Source::new(format!("images/{name}.toml"), *text);
            let recipe = ImageRecipe::parse(name, &source).unwrap();
            assert!(!recipe.packages.is_empty(), "{name}");
        }
    }

    #[test]
    fn full_recipe_with_defaults() {
        let recipe = parse(
            "suite = \"bookworm\"\npackages = [\"procps\", \"ca-certificates\"]\n\
             [[file]]\npath = \"/etc/motd\"\ncontent = \"hi\\n\"\nmode = \"0600\"\n\
             [[file]]\npath = \"/usr/local/bin/x\"\ncontent = \"\"\n",
        )
        .unwrap();
        assert_eq!(recipe.suite.value, "bookworm");
        assert_eq!(recipe.mirror, DEFAULT_MIRROR);
        assert_eq!(recipe.variant, "minbase");
        assert_eq!(recipe.packages.len(), 2);
        assert_eq!(recipe.files[0].value.mode, 0o600);
        assert_eq!(recipe.files[1].value.mode, 0o644);
        assert_eq!(recipe.files[1].value.path, Path::new("/usr/local/bin/x"));
        assert!(recipe.run.is_empty());
    }

    #[test]
    fn run_commands_keep_their_spans() {
        let recipe = parse("suite = \"bookworm\"\nrun = [\"true\", \"echo x\"]\n").unwrap();
        assert_eq!(recipe.run.len(), 2);
        assert_eq!(
            &recipe.source.text[recipe.run[1].span.clone()],
            "\"echo x\""
        );
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let errors = messages(
            "suite = \"Bookworm\"\nmirror = \"ftp://x\"\nvariant = \"huge\"\n\
             packages = [\"ok-pkg\", \"Bad_Pkg\", \"ok-pkg\"]\nrun = [\"  \"]\n\
             [[file]]\npath = \"etc/motd\"\ncontent = \"\"\nmode = \"999\"\n",
        );
        let expected = [
            "images/t.toml:1:9: image `t`: `suite` `Bookworm`",
            "images/t.toml:2:10: image `t`: `mirror` `ftp://x`",
            "images/t.toml:3:11: image `t`: `variant` `huge` is not one of",
            "images/t.toml:4:23: image `t`: `packages`: `Bad_Pkg` is not",
            "images/t.toml:4:34: image `t`: `packages`: `ok-pkg` is listed twice",
            "images/t.toml:5:8: image `t`: `run[0]` is empty",
            "images/t.toml:7:8: image `t`: `file[0].path` `etc/motd`",
            "images/t.toml:9:8: image `t`: `file[0].mode` `999`",
        ];
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        for (error, expected) in errors.iter().zip(expected) {
            assert!(error.starts_with(expected), "{error}\nexpected {expected}");
        }
    }

    #[test]
    fn missing_suite_and_unknown_fields_are_refused() {
        assert!(messages("packages = []\n")[0].contains("has no `suite`"));
        let unknown = messages("suite = \"bookworm\"\npackage = [\"x\"]\n");
        assert!(unknown[0].starts_with("images/t.toml:2:1: "), "{unknown:?}");
        assert!(
            unknown[0].contains("unknown field `package`"),
            "{unknown:?}"
        );
    }

    #[test]
    fn file_paths_must_stay_inside_the_image() {
        for bad in [
            "/",
            "relative",
            "/etc/../../x",
            "/etc/./x",
            "/etc/",
            "/a\nb",
        ] {
            let text = format!(
                "suite = \"bookworm\"\n[[file]]\npath = {}\ncontent = \"\"\n",
                toml::Value::String(bad.to_owned())
            );
            let errors = messages(&text);
            assert!(errors[0].contains("file[0].path"), "{bad:?}: {errors:?}");
        }
    }

    #[test]
    fn digest_ignores_layout_and_package_order_but_not_content() {
        let a = parse("suite = \"bookworm\"\npackages = [\"aa\", \"bb\"]\n").unwrap();
        let b = parse(
            "# same\nsuite    = \"bookworm\"\ndescription = \"x\"\npackages = [\"bb\", \"aa\"]\n",
        )
        .unwrap();
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.digest().len(), 64);
        for changed in [
            "suite = \"trixie\"\npackages = [\"aa\", \"bb\"]\n",
            "suite = \"bookworm\"\npackages = [\"aa\"]\n",
            "suite = \"bookworm\"\npackages = [\"aa\", \"bb\"]\nvariant = \"apt\"\n",
            "suite = \"bookworm\"\npackages = [\"aa\", \"bb\"]\nmirror = \"http://m/debian\"\n",
            "suite = \"bookworm\"\npackages = [\"aa\", \"bb\"]\nrun = [\"true\"]\n",
        ] {
            assert_ne!(a.digest(), parse(changed).unwrap().digest(), "{changed}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics_and_errors_are_located(text in "\\PC{0,300}") {
            if let Err(errors) = parse(&text) {
                prop_assert!(!errors.is_empty());
                let lines = text.lines().count().max(1) + 1;
                for error in errors {
                    prop_assert!(error.line >= 1 && error.line <= lines, "{}", error);
                    prop_assert!(error.file == "images/t.toml");
                }
            }
        }

        #[test]
        fn package_lists_parse_or_name_the_bad_entry(
            packages in prop::collection::vec("[a-zA-Z0-9+._-]{1,12}", 0..6),
        ) {
            let list = packages.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ");
            let text = format!("suite = \"bookworm\"\npackages = [{list}]\n");
            let mut seen = std::collections::BTreeSet::new();
            let all_good = packages.iter().all(|p| is_package_name(p) && seen.insert(p.clone()));
            match parse(&text) {
                Ok(recipe) => {
                    prop_assert!(all_good);
                    prop_assert_eq!(recipe.packages.len(), packages.len());
                }
                Err(errors) => {
                    prop_assert!(!all_good);
                    for error in errors {
                        prop_assert_eq!(error.line, 2);
                        prop_assert!(error.message.contains("`packages`"), "{}", error);
                    }
                }
            }
        }

        #[test]
        fn modes_round_trip(mode in 0u32..=0o7777) {
            let text = format!(
                "suite = \"bookworm\"\n[[file]]\npath = \"/x\"\ncontent = \"\"\nmode = \"{mode:04o}\"\n"
            );
            prop_assert_eq!(parse(&text).unwrap().files[0].value.mode, mode);
        }

        #[test]
        fn digest_is_stable_under_package_permutation(
            packages in prop::collection::btree_set("[a-z][a-z0-9]{1,8}", 1..6),
            seed in any::<u64>(),
        ) {
            let mut shuffled: Vec<_> = packages.iter().cloned().collect();
            let n = shuffled.len();
            shuffled.rotate_left((seed as usize) % n);
            let text = |list: &[String]| format!(
                "suite = \"bookworm\"\npackages = [{}]\n",
                list.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ")
            );
            let sorted: Vec<_> = packages.into_iter().collect();
            prop_assert_eq!(parse(&text(&sorted)).unwrap().digest(), parse(&text(&shuffled)).unwrap().digest());
        }
    }
}
