//! `[host] <key>` read from a configuration that may not even be TOML (an operator in the middle
//! of an edit, a `]` missing): the CLI must still find the daemon's socket, so that `status`,
//! `stop` and `reload` reach a daemon that reports the error itself.

/// The string value of `[host] <key>`: from the parsed document when the text is TOML, else from
/// the first line of the `[host]` table that is `<key> = "..."` on its own. `None` when neither
/// has it.
pub fn host_string(text: &str, key: &str) -> Option<String> {
    match toml::from_str::<toml::Table>(text) {
        Ok(table) => table
            .get("host")
            .and_then(|host| host.get(key))
            .and_then(|value| value.as_str())
            .map(str::to_string),
        Err(_) => scan(text, key),
    }
}

/// Line by line: table headers decide where we are, and a `<key> = ...` line inside `[host]` (or
/// `host.<key> = ...` before any header) is parsed as TOML by itself.
fn scan(text: &str, key: &str) -> Option<String> {
    let mut table: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            table = header_path(header);
            continue;
        }
        let path = match table.as_slice() {
            [] => vec!["host", key],
            [host] if host == "host" => vec![key],
            _ => continue,
        };
        if let Some(value) = string_at(line, &path) {
            return Some(value);
        }
    }
    None
}

/// The dotted name of a table header, without its brackets, quotes and comment: `[ host ]`,
/// `["host"]` and an unclosed `[host` are all `host`.
fn header_path(header: &str) -> Vec<String> {
    let header = header.strip_prefix('[').unwrap_or(header);
    let end = header.find([']', '#']).unwrap_or(header.len());
    header[..end]
        .split('.')
        .map(|part| part.trim().trim_matches(['"', '\'']).to_string())
        .collect()
}

/// The string at `path` in `line` alone, when that one line is a TOML key/value pair.
fn string_at(line: &str, path: &[&str]) -> Option<String> {
    let document: toml::Table = toml::from_str(line).ok()?;
    let (last, tables) = path.split_last()?;
    let mut table = &document;
    for name in tables {
        table = table.get(*name)?.as_table()?;
    }
    table.get(*last)?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_valid_document_is_read_as_toml() {
        let text = "[host]\nrun_dir = \"/srv/run\" # here\n[nodes.a]\nrole = \"x\"\n";
        assert_eq!(host_string(text, "run_dir").as_deref(), Some("/srv/run"));
        assert_eq!(host_string(text, "log_dir"), None);
        assert_eq!(
            host_string("host.run_dir = '/r'\n", "run_dir").as_deref(),
            Some("/r")
        );
    }

    #[test]
    fn a_broken_document_is_scanned_line_by_line() {
        let broken = |tail: &str| format!("[host]\nname = \"h\"\nrun_dir = \"/srv/run\"\n{tail}");
        for tail in [
            "[nodes.r3\nrole = \"x\"\n",
            "[nodes.a]\nrole = \n",
            "x = [1,\n",
            "]]][",
        ] {
            let text = broken(tail);
            assert!(toml::from_str::<toml::Table>(&text).is_err(), "{text}");
            assert_eq!(
                host_string(&text, "run_dir").as_deref(),
                Some("/srv/run"),
                "{text}"
            );
        }
        let unclosed = "[ \"host\"\nrun_dir = 'C:\\x' # literal\nrun_dir = \"/second\"\n";
        assert_eq!(host_string(unclosed, "run_dir").as_deref(), Some("C:\\x"));
        let escaped = "[host]\nrun_dir = \"/a\\u0062\"\n[x\n";
        assert_eq!(host_string(escaped, "run_dir").as_deref(), Some("/ab"));
        let dotted = "host.run_dir = \"/dotted\"\n[nodes\n";
        assert_eq!(host_string(dotted, "run_dir").as_deref(), Some("/dotted"));
    }

    #[test]
    fn a_key_outside_host_or_not_a_string_is_not_taken() {
        for text in [
            "[nodes.host]\nrun_dir = \"/no\"\n[x\n",
            "[host.sub]\nrun_dir = \"/no\"\n[x\n",
            "[host]\nrun_dir = 5\n[x\n",
            "[host]\nrun_dir = \"\"\"\n/no\"\"\"\n[x\n",
            "[host]\n# run_dir = \"/no\"\n[x\n",
            "[host]\nstate_dir = \"/no\"\n[x\n",
        ] {
            assert_eq!(host_string(text, "run_dir"), None, "{text}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(text in "\\PC{0,200}", key in "[a-z_]{1,8}") {
            let _ = host_string(&text, &key);
        }

        #[test]
        fn never_panics_near_tables_and_strings(
            parts in proptest::collection::vec(
                prop::sample::select(vec!["[", "]", "[[", "host", ".", "\"", "'", "=", "run_dir", "\n", "#", " ", "/x", "\\"]),
                0..40,
            ),
        ) {
            let _ = host_string(&parts.concat(), "run_dir");
        }

        /// Whatever breaks after `[host]`, the run dir written there is found.
        #[test]
        fn a_break_after_host_keeps_the_run_dir(dir in "/[a-z0-9/_.-]{0,20}", tail in "\\PC{0,60}") {
            let text = format!("[host]\nrun_dir = \"{dir}\"\n[nodes.n1]\n{tail}");
            prop_assert_eq!(host_string(&text, "run_dir"), Some(dir));
        }
    }
}
