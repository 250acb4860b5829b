//! `/proc/self/mountinfo` lines, reduced to what cgroup detection needs.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use super::CgroupError;

/// One mount: where it is, its filesystem type and its superblock options (where cgroup v1 names
/// its controllers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Mount {
    pub(super) mount_point: PathBuf,
    pub(super) fs_type: String,
    pub(super) super_options: Vec<String>,
}

/// Parses every line, in order, because a later mount on the same point hides an earlier one.
pub(super) fn parse(text: &str) -> Result<Vec<Mount>, CgroupError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            parse_line(line).ok_or_else(|| CgroupError::Mountinfo {
                line: index + 1,
                text: line.to_string(),
            })
        })
        .collect()
}

/// Reads `id parent major:minor root mount_point options [optional...] - fs_type source
/// super_options`; the optional fields vary in number, so the `-` separator anchors the tail.
fn parse_line(line: &str) -> Option<Mount> {
    let fields: Vec<&str> = line.split(' ').collect();
    let separator = fields.iter().skip(6).position(|field| *field == "-")? + 6;
    let tail = &fields[separator + 1..];
    if tail.len() < 3 {
        return None;
    }
    Some(Mount {
        mount_point: unescape(fields[4])?,
        fs_type: tail[0].to_string(),
        super_options: tail[2].split(',').map(str::to_string).collect(),
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space) so the path names the real directory.
fn unescape(field: &str) -> Option<PathBuf> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\' {
            let digits = std::str::from_utf8(bytes.get(index + 1..index + 4)?).ok()?;
            out.push(u8::from_str_radix(digits, 8).ok()?);
            index += 4;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    if out.first() != Some(&b'/') {
        return None;
    }
    Some(PathBuf::from(OsString::from_vec(out)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_mount_point_type_and_super_options() {
        let mounts = parse(
            "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
             25 30 0:22 / /sys/fs/cgroup rw shared:4 master:1 - cgroup2 cgroup2 rw,nsdelegate\n",
        )
        .unwrap();
        assert_eq!(
            mounts,
            [
                Mount {
                    mount_point: "/sys/fs/cgroup/cpu".into(),
                    fs_type: "cgroup".into(),
                    super_options: vec!["rw".into(), "cpu".into()],
                },
                Mount {
                    mount_point: "/sys/fs/cgroup".into(),
                    fs_type: "cgroup2".into(),
                    super_options: vec!["rw".into(), "nsdelegate".into()],
                },
            ]
        );
    }

    #[test]
    fn unescapes_octal_sequences_in_mount_points() {
        let mounts = parse("40 31 0:37 / /mnt/my\\040cgroups rw - cgroup cgroup rw,pids").unwrap();
        assert_eq!(mounts[0].mount_point, PathBuf::from("/mnt/my cgroups"));
    }

    #[test]
    fn malformed_lines_are_named_by_number() {
        let error = parse("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\nnonsense\n")
            .unwrap_err();
        assert!(
            matches!(error, CgroupError::Mountinfo { line: 2, .. }),
            "{error}"
        );
        assert!(parse("1 2 3:4 / /a rw - cgroup").is_err());
        assert!(parse("1 2 3:4 / relative rw - cgroup cgroup rw").is_err());
        assert!(parse("1 2 3:4 / /bad\\9 rw - cgroup cgroup rw").is_err());
    }

    proptest! {
        #[test]
        fn never_panics(text in "\\PC{0,120}") {
            let _ = parse(&text);
        }

        #[test]
        fn never_panics_on_near_mountinfo(
            head in "[0-9 :/\\\\a-z-]{0,40}",
            tail in "[ -~]{0,40}",
        ) {
            let _ = parse(&format!("{head} - {tail}"));
        }
    }
}
