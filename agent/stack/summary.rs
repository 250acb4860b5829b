//! A version's summary: which nodes and roles a change adds, removes or changes, on one line.

use std::collections::BTreeMap;

/// What changed from `old` to `new` (stack texts; `None`: no version before), like
/// `web3 added; db1 changed; role app removed`. A text that does not parse counts as empty:
/// both were checked before they got here.
pub fn summarize(old: Option<&str>, new: &str) -> String {
    let Some(old) = old else {
        return "first version".to_string();
    };
    let (old, new) = (tables(old), tables(new));
    let mut changes = Vec::new();
    for (section, label) in [("nodes", ""), ("roles", "role ")] {
        let empty = BTreeMap::new();
        let before = old.get(section).unwrap_or(&empty);
        let after = new.get(section).unwrap_or(&empty);
        for (name, value) in after {
            match before.get(name) {
                None => changes.push(format!("{label}{name} added")),
                Some(previous) if previous != value => {
                    changes.push(format!("{label}{name} changed"))
                }
                Some(_) => {}
            }
        }
        for name in before.keys().filter(|name| !after.contains_key(*name)) {
            changes.push(format!("{label}{name} removed"));
        }
    }
    if changes.is_empty() {
        "no change to nodes or roles (layout or comments)".to_string()
    } else {
        changes.join("; ")
    }
}

type Sections = BTreeMap<String, BTreeMap<String, toml::Value>>;

fn tables(text: &str) -> Sections {
    let table: toml::Table = toml::from_str(text).unwrap_or_default();
    table
        .into_iter()
        .filter_map(|(section, value)| match value {
            toml::Value::Table(entries) => Some((section, entries.into_iter().collect())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_was_added_changed_and_removed() {
        let old = "[nodes.web1]\nrole = \"web\"\n[nodes.db1]\nrole = \"db\"\n[roles.app]\nimage = \"busybox\"\n";
        let new = "[nodes.web1]\nrole = \"web\"\n[nodes.db1]\nrole = \"db\"\nip = \"172.16.0.45\"\n[nodes.web2]\nrole = \"web\"\n";
        assert_eq!(
            summarize(Some(old), new),
            "db1 changed; web2 added; role app removed"
        );
    }

    #[test]
    fn a_change_of_comments_alone_says_so() {
        let old = "[nodes.web1]\nrole = \"web\"\n";
        let new = "# web\n[nodes.web1]\nrole = \"web\" # the shop\n";
        assert_eq!(
            summarize(Some(old), new),
            "no change to nodes or roles (layout or comments)"
        );
        assert_eq!(summarize(None, new), "first version");
    }
}
