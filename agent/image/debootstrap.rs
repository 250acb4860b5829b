//! debootstrap, the fallback builder of recipe images when mmdebstrap is not installed.
//!
//! debootstrap has no hooks, so one `sh -ec` script does what mmdebstrap does around them:
//! debootstrap installs the release and the recipe's packages, then the script mounts /proc and
//! /sys and binds /dev into the rootfs, runs the same hooks as mmdebstrap's customize hooks (with
//! `$1` the rootfs), records the versions, cleans what mmdebstrap cleans and unmounts. The caller
//! runs the script inside `unshare --mount`, so the mounts also vanish when it is killed.
//!
//! Variants: debootstrap's smallest system is `minbase` (Priority: required and apt), so
//! mmdebstrap's `essential`, `apt`, `required` and `minbase` all become `--variant=minbase` (the
//! first two give a larger tree than mmdebstrap would); `important`, `standard` and
//! `debootstrap` become debootstrap's default (required and important; `standard` does not add
//! the packages of priority standard).

use super::build_step::{quote, BuildStep, CHROOT_ENV, STEP_MARK};
use super::recipe::ImageRecipe;

/// The program run on the host.
pub const PROGRAM: &str = "debootstrap";

/// Files mmdebstrap removes so that two builds of the same packages come out alike (its
/// `cleanup/reproducible`), plus the log debootstrap keeps in the image.
const UNREPRODUCIBLE: &[&str] = &[
    "/var/log/dpkg.log",
    "/var/log/apt/history.log",
    "/var/log/apt/term.log",
    "/var/log/alternatives.log",
    "/var/cache/ldconfig/aux-cache",
    "/var/log/apt/eipp.log.xz",
    "/var/lib/dbus/machine-id",
    "/var/log/bootstrap.log",
];

/// debootstrap's `--variant` for a recipe's (mmdebstrap) variant; `None` for its default.
pub fn variant(recipe_variant: &str) -> Option<&'static str> {
    match recipe_variant {
        "important" | "standard" | "debootstrap" => None,
        // essential, apt, required, minbase: nothing smaller exists in debootstrap.
        _ => Some("minbase"),
    }
}

/// The script that builds `recipe` into the rootfs given as `$1`, running `hooks` (shell
/// commands using `"$1"`, the last one recording the versions) after debootstrap.
pub fn script(recipe: &ImageRecipe, hooks: &[String]) -> String {
    let mut debootstrap = vec![PROGRAM.to_owned()];
    if let Some(variant) = variant(&recipe.variant) {
        debootstrap.push(format!("--variant={variant}"));
    }
    if !recipe.packages.is_empty() {
        let packages: Vec<&str> = recipe.packages.iter().map(|p| p.value.as_str()).collect();
        debootstrap.push(quote(&format!("--include={}", packages.join(","))));
    }
    debootstrap.extend([
        quote(&recipe.suite.value),
        "\"$1\"".to_owned(),
        quote(&recipe.mirror),
    ]);
    let mut lines = vec![
        // dpkg's own output of a failed step is only in debootstrap's log inside the target.
        format!(
            "{} || {{ status=$?; log=\"$1/debootstrap/debootstrap.log\"; \
             if [ -f \"$log\" ]; then tail -n 20 \"$log\" >&2; fi; exit $status; }}",
            debootstrap.join(" ")
        ),
        "mount -t proc proc \"$1/proc\"".to_owned(),
        "mount -t sysfs sysfs \"$1/sys\"".to_owned(),
        "mount --rbind /dev \"$1/dev\"".to_owned(),
    ];
    lines.extend(hooks.iter().cloned());
    lines.extend([
        format!("echo '{STEP_MARK}cleanup' >&2"),
        // What mmdebstrap's `cleanup/apt` does: forget the package lists, empty the cache.
        format!(
            "{CHROOT_ENV} chroot \"$1\" apt-get -qq -o Dir::Etc::SourceList=/dev/null \
             -o Dir::Etc::SourceParts=/dev/null update"
        ),
        format!("{CHROOT_ENV} chroot \"$1\" apt-get clean"),
        "umount -R \"$1/dev\" \"$1/sys\" \"$1/proc\"".to_owned(),
        "rm -rf \"$1/var/lib/apt/lists/auxfiles\"".to_owned(),
    ]);
    lines.extend(
        UNREPRODUCIBLE
            .iter()
            .map(|path| format!("rm -f \"$1\"{}", quote(path))),
    );
    lines.extend([
        "if [ -e \"$1/etc/machine-id\" ]; then : > \"$1/etc/machine-id\"; fi".to_owned(),
        // Leftovers in /run (but /run/lock, which /var/lock points to) and /tmp.
        "find \"$1/run\" -mindepth 1 -maxdepth 1 ! -name lock -exec rm -rf {} +".to_owned(),
        "find \"$1/tmp\" -mindepth 1 -maxdepth 1 -exec rm -rf {} +".to_owned(),
    ]);
    lines.join("\n")
}

/// The step an `I: ` line of debootstrap announces (`info` is the text after `I: `). Several
/// lines announce the same step (one `Retrieving` per package); the caller reports a step once.
pub fn step_of(info: &str) -> Option<BuildStep> {
    if let Some(what) = info.strip_prefix("Retrieving ") {
        let index = ["InRelease", "Release", "Release.gpg", "Packages"]
            .iter()
            .any(|file| what.split_whitespace().next() == Some(file));
        return Some(if index {
            BuildStep::Update
        } else {
            BuildStep::Download
        });
    }
    [
        ("Chosen extractor", BuildStep::Extract),
        ("Extracting ", BuildStep::Extract),
        ("Installing core packages", BuildStep::Essential),
        ("Unpacking the base system", BuildStep::Packages),
    ]
    .into_iter()
    .find(|(start, _)| info.starts_with(start))
    .map(|(_, step)| step)
}

/// The packages debootstrap says it cannot find, from a line of its output
/// (`E: Couldn't find these debs: a b`).
pub fn missing_packages(line: &str) -> Vec<String> {
    line.strip_prefix("E: Couldn't find these debs:")
        .map(|list| list.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;
    use crate::image::recipe::VARIANTS;
    use proptest::prelude::*;

    fn recipe(text: &str) -> ImageRecipe {
        ImageRecipe::parse("t", &Source::new("images/t.toml", text)).unwrap()
    }

    #[test]
    fn every_recipe_variant_maps_to_a_debootstrap_variant() {
        let mapped: Vec<_> = VARIANTS.iter().map(|v| (*v, variant(v))).collect();
        assert_eq!(
            mapped,
            [
                ("essential", Some("minbase")),
                ("apt", Some("minbase")),
                ("required", Some("minbase")),
                ("minbase", Some("minbase")),
                ("important", None),
                ("standard", None),
            ]
        );
        assert_eq!(variant("debootstrap"), None);
    }

    /// Lines of a real `debootstrap --variant=minbase --include=procps bookworm` (1.0.128),
    /// shortened where they repeat.
    const REAL_OUTPUT: &[&str] = &[
        "I: Target architecture can be executed",
        "I: Retrieving InRelease ",
        "I: Checking Release signature",
        "I: Valid Release signature (key id 4D64FEC119C2029067D6E791F8D2585B8783D481)",
        "I: Retrieving Packages ",
        "I: Validating Packages ",
        "I: Resolving dependencies of required packages...",
        "I: Resolving dependencies of base packages...",
        "I: Checking component main on http://deb.debian.org/debian...",
        "I: Retrieving adduser 3.134",
        "I: Validating adduser 3.134",
        "I: Retrieving apt 2.6.1",
        "I: Validating apt 2.6.1",
        "I: Chosen extractor for .deb packages: dpkg-deb",
        "I: Extracting base-files...",
        "I: Extracting base-passwd...",
        "I: Installing core packages...",
        "I: Unpacking required packages...",
        "I: Unpacking adduser...",
        "I: Configuring required packages...",
        "I: Configuring adduser...",
        "I: Unpacking the base system...",
        "I: Unpacking procps...",
        "I: Configuring the base system...",
        "I: Configuring procps...",
        "I: Base system installed successfully.",
    ];

    #[test]
    fn real_output_goes_through_the_first_five_steps_in_order() {
        let mut seen: Vec<BuildStep> = Vec::new();
        for line in REAL_OUTPUT {
            let step = line.strip_prefix("I: ").and_then(step_of);
            if let Some(step) = step.filter(|s| seen.last() != Some(s)) {
                seen.push(step);
            }
        }
        assert_eq!(
            seen,
            [
                BuildStep::Update,
                BuildStep::Download,
                BuildStep::Extract,
                BuildStep::Essential,
                BuildStep::Packages,
            ]
        );
        assert_eq!(step_of("Retrieving Release "), Some(BuildStep::Update));
        assert_eq!(step_of("Base system installed successfully."), None);
    }

    #[test]
    fn missing_debs_are_read_from_the_error() {
        assert_eq!(
            missing_packages("E: Couldn't find these debs: nope also-nope"),
            ["nope", "also-nope"]
        );
        assert!(missing_packages("E: Couldn't download packages: procps").is_empty());
        assert!(missing_packages("I: Retrieving procps 2:4.0.2-3").is_empty());
    }

    #[test]
    fn the_script_runs_debootstrap_then_the_hooks_then_cleans_up() {
        let recipe = recipe(
            "suite = \"bookworm\"\nvariant = \"essential\"\npackages = [\"procps\", \"netbase\"]\n",
        );
        let hooks = ["echo hook-0".to_owned(), "echo hook-1".to_owned()];
        let text = script(&recipe, &hooks);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with(
                "debootstrap --variant=minbase '--include=procps,netbase' 'bookworm' \"$1\" \
                 'http://deb.debian.org/debian' || {"
            ),
            "{text}"
        );
        let at = |needle: &str| {
            lines
                .iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("{needle} missing in:\n{text}"))
        };
        assert!(at("mount -t proc") < at("echo hook-0"));
        assert!(at("mount --rbind /dev") < at("echo hook-0"));
        assert!(at("echo hook-0") < at("echo hook-1"));
        assert!(at("echo hook-1") < at("magestack-step cleanup"));
        assert!(at("magestack-step cleanup") < at("apt-get clean"));
        assert!(at("apt-get clean") < at("umount -R"));
        assert!(at("umount -R") < at("/var/log/bootstrap.log"));

        let standard = script(
            &self::recipe("suite = \"bookworm\"\nvariant = \"standard\"\n"),
            &[],
        );
        assert!(
            standard.starts_with("debootstrap 'bookworm' \"$1\" "),
            "{standard}"
        );
    }

    #[test]
    fn the_script_is_valid_shell() {
        let script = script(
            &recipe("suite = \"bookworm\"\npackages = [\"procps\"]\nrun = [\"echo 'it''s'\"]\n"),
            &["echo \"$1\"".to_owned()],
        );
        let status = std::process::Command::new("sh")
            .args(["-n", "-c", &script])
            .status()
            .unwrap();
        assert!(status.success(), "{script}");
    }

    proptest! {
        #[test]
        fn only_info_lines_of_debootstrap_announce_steps(line in "\\PC{0,60}") {
            // Whatever the line, parsing never panics, and a package's name never makes an
            // update step.
            let _ = step_of(&line);
            if let Some(name) = line.strip_prefix("Retrieving ") {
                let first = name.split_whitespace().next();
                if !matches!(first, Some("InRelease" | "Release" | "Release.gpg" | "Packages")) {
                    prop_assert_eq!(step_of(&line), Some(BuildStep::Download));
                }
            }
        }

        #[test]
        fn missing_debs_round_trip(
            packages in prop::collection::vec("[a-z0-9][a-z0-9+.-]{1,12}", 1..5),
        ) {
            let line = format!("E: Couldn't find these debs: {}", packages.join(" "));
            prop_assert_eq!(missing_packages(&line), packages);
        }
    }
}
