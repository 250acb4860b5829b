//! The stack's history: a bare git repository at `state_dir/stack.git` whose branch `main`
//! holds one commit per version, each a tree of one file, `stack.toml`. Written with the git
//! command line (plumbing only: no work tree, no index, no user configuration), so operators
//! can read it with any git tool.
//!
//! A commit's message is the version's summary, then trailers naming the version:
//!
//! ```text
//! web3 added; roles.app changed
//!
//! Stack-Version: 7
//! Stack-Host: dh1
//! Stack-Id: 5d41402abc4b2a76b9719d911017c592aa0e2c11   (only on a version made by the partner)
//! ```
//!
//! A version this host made is named by its own commit id; one taken from the partner keeps
//! the partner's (`Stack-Id`), so `config log` shows the same names on both hosts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::version::{Version, VersionId};

/// The file every version's tree holds.
pub const STACK_IN_TREE: &str = "stack.toml";
const BRANCH: &str = "refs/heads/main";

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot run git for {repo}: {source}")]
    Spawn {
        repo: PathBuf,
        source: std::io::Error,
    },
    #[error("git {args} in {repo}: {stderr}")]
    Git {
        repo: PathBuf,
        args: String,
        stderr: String,
    },
    #[error("{repo}: commit {commit} has no {trailer} trailer: not a version of the stack")]
    NotAVersion {
        repo: PathBuf,
        commit: String,
        trailer: &'static str,
    },
    #[error("no version `{0}` in the stack's history (a counter from `config log`, or an id)")]
    UnknownVersion(String),
    #[error("the stack has no version yet")]
    Empty,
}

/// One version as this host's history holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub version: Version,
    /// This host's commit of it.
    pub commit: String,
}

pub struct History {
    repo: PathBuf,
}

impl History {
    /// The history under `state_dir`, created empty when missing.
    pub fn open(state_dir: &Path) -> Result<History, HistoryError> {
        let history = History {
            repo: state_dir.join("stack.git"),
        };
        if !history.repo.join("HEAD").exists() {
            let parent = state_dir.to_path_buf();
            history.run_in(
                &parent,
                &["init", "--quiet", "--bare", "-b", "main", "stack.git"],
                None,
            )?;
        }
        Ok(history)
    }

    /// The history under `state_dir` if there is one, for readers that must change nothing.
    pub fn existing(state_dir: &Path) -> Option<History> {
        let repo = state_dir.join("stack.git");
        repo.join("HEAD").exists().then_some(History { repo })
    }

    pub fn path(&self) -> &Path {
        &self.repo
    }

    /// The version in force: the newest commit of `main`.
    pub fn head(&self) -> Result<Option<Entry>, HistoryError> {
        Ok(self.log(Some(1))?.into_iter().next())
    }

    /// Commits `text` as the next version, made by `host` at `time_unix`.
    pub fn commit_local(
        &self,
        text: &str,
        host: &str,
        time_unix: u64,
        summary: &str,
    ) -> Result<Entry, HistoryError> {
        let counter = self.head()?.map_or(1, |head| head.version.name.counter + 1);
        let commit = self.commit(text, host, time_unix, summary, counter, None)?;
        Ok(Entry {
            version: Version {
                name: VersionId {
                    counter,
                    id: commit.clone(),
                },
                host: host.to_string(),
                time_unix,
                summary: one_line(summary),
            },
            commit,
        })
    }

    /// Commits `text` as `version`, made by the partner.
    pub fn commit_received(&self, text: &str, version: &Version) -> Result<Entry, HistoryError> {
        let commit = self.commit(
            text,
            &version.host,
            version.time_unix,
            &version.summary,
            version.name.counter,
            Some(&version.name.id),
        )?;
        Ok(Entry {
            version: Version {
                summary: one_line(&version.summary),
                ..version.clone()
            },
            commit,
        })
    }

    fn commit(
        &self,
        text: &str,
        host: &str,
        time_unix: u64,
        summary: &str,
        counter: u64,
        origin: Option<&str>,
    ) -> Result<String, HistoryError> {
        let blob = self.run(&["hash-object", "-w", "--stdin"], Some(text))?;
        let tree = self.run(
            &["mktree"],
            Some(&format!("100644 blob {blob}\t{STACK_IN_TREE}\n")),
        )?;
        let parent = self.run_optional(&["rev-parse", "--verify", "--quiet", BRANCH])?;
        let mut message = format!(
            "{}\n\nStack-Version: {counter}\nStack-Host: {host}\n",
            one_line(summary)
        );
        if let Some(origin) = origin {
            message.push_str(&format!("Stack-Id: {origin}\n"));
        }
        let mut args = vec!["commit-tree", tree.as_str()];
        if let Some(parent) = &parent {
            args.extend(["-p", parent.as_str()]);
        }
        args.extend(["-F", "-"]);
        let date = format!("{time_unix} +0000");
        let commit = self
            .run_as(&args, Some(&message), Some((host, &date)))?
            .trim()
            .to_string();
        let zero = "0".repeat(40);
        let old = parent.as_deref().unwrap_or(&zero);
        self.run(&["update-ref", BRANCH, &commit, old], None)?;
        Ok(commit)
    }

    /// Every version, newest first (at most `limit`).
    pub fn log(&self, limit: Option<usize>) -> Result<Vec<Entry>, HistoryError> {
        if self
            .run_optional(&["rev-parse", "--verify", "--quiet", BRANCH])?
            .is_none()
        {
            return Ok(Vec::new());
        }
        let count = limit.map(|limit| format!("--max-count={limit}"));
        let mut args = vec!["log", "--format=%H%x1f%at%x1f%B%x1e"];
        args.extend(count.as_deref());
        args.push(BRANCH);
        let out = self.run(&args, None)?;
        out.split('\x1e')
            .map(str::trim)
            .filter(|record| !record.is_empty())
            .map(|record| self.entry(record))
            .collect()
    }

    fn entry(&self, record: &str) -> Result<Entry, HistoryError> {
        let mut fields = record.splitn(3, '\x1f');
        let commit = fields.next().unwrap_or_default().to_string();
        let time_unix = fields.next().and_then(|t| t.parse().ok()).unwrap_or(0);
        let message = fields.next().unwrap_or_default();
        let summary = message.lines().next().unwrap_or_default().to_string();
        let trailer = |name: &'static str| {
            message
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
                .map(str::trim)
        };
        let missing = |trailer| HistoryError::NotAVersion {
            repo: self.repo.clone(),
            commit: commit.clone(),
            trailer,
        };
        let counter = trailer("Stack-Version")
            .and_then(|counter| counter.parse().ok())
            .ok_or_else(|| missing("Stack-Version"))?;
        let host = trailer("Stack-Host").ok_or_else(|| missing("Stack-Host"))?;
        let id = trailer("Stack-Id").unwrap_or(&commit).to_string();
        Ok(Entry {
            version: Version {
                name: VersionId { counter, id },
                host: host.to_string(),
                time_unix,
                summary,
            },
            commit,
        })
    }

    /// The version `rev` names: a counter (the newest commit with it), or a prefix of a
    /// version's id or of this host's commit.
    pub fn find(&self, rev: &str) -> Result<Entry, HistoryError> {
        let log = self.log(None)?;
        let found = match rev.parse::<u64>() {
            Ok(counter) if rev.len() < 7 => log
                .into_iter()
                .find(|entry| entry.version.name.counter == counter),
            _ => {
                let rev = rev.to_ascii_lowercase();
                log.into_iter().find(|entry| {
                    !rev.is_empty()
                        && (entry.version.name.id.starts_with(&rev)
                            || entry.commit.starts_with(&rev))
                })
            }
        };
        found.ok_or_else(|| HistoryError::UnknownVersion(rev.to_string()))
    }

    /// The stack's text at `entry`.
    pub fn text(&self, entry: &Entry) -> Result<String, HistoryError> {
        self.run_raw(
            &[
                "cat-file",
                "blob",
                &format!("{}:{STACK_IN_TREE}", entry.commit),
            ],
            None,
        )
    }

    /// A unified diff from `old` to `new` (texts), labelled with their names.
    pub fn diff(&self, old: (&str, &str), new: (&str, &str)) -> Result<String, HistoryError> {
        let blob = |text: &str| self.run(&["hash-object", "-w", "--stdin"], Some(text));
        let (old_blob, new_blob) = (blob(old.1)?, blob(new.1)?);
        let src = format!("--src-prefix={}:", old.0);
        let dst = format!("--dst-prefix={}:", new.0);
        self.run_raw(
            &["diff", "--no-color", &src, &dst, &old_blob, &new_blob],
            None,
        )
    }

    fn run(&self, args: &[&str], input: Option<&str>) -> Result<String, HistoryError> {
        Ok(self.run_raw(args, input)?.trim().to_string())
    }

    fn run_raw(&self, args: &[&str], input: Option<&str>) -> Result<String, HistoryError> {
        self.run_as(args, input, None)
    }

    /// `args`' output, or `None` when git exits 1 with nothing on stderr (a `--verify
    /// --quiet` that found nothing).
    fn run_optional(&self, args: &[&str]) -> Result<Option<String>, HistoryError> {
        match self.spawn(&self.repo, args, None, None)? {
            (true, out, _) => Ok(Some(out.trim().to_string())),
            (false, _, err) if err.trim().is_empty() => Ok(None),
            (false, _, stderr) => Err(self.failed(args, stderr)),
        }
    }

    fn run_in(&self, dir: &Path, args: &[&str], input: Option<&str>) -> Result<(), HistoryError> {
        match self.spawn(dir, args, input, None)? {
            (true, _, _) => Ok(()),
            (false, _, stderr) => Err(self.failed(args, stderr)),
        }
    }

    fn run_as(
        &self,
        args: &[&str],
        input: Option<&str>,
        author: Option<(&str, &str)>,
    ) -> Result<String, HistoryError> {
        match self.spawn(&self.repo, args, input, author)? {
            (true, out, _) => Ok(out),
            (false, _, stderr) => Err(self.failed(args, stderr)),
        }
    }

    fn failed(&self, args: &[&str], stderr: String) -> HistoryError {
        HistoryError::Git {
            repo: self.repo.clone(),
            args: args.join(" "),
            stderr: stderr.trim().to_string(),
        }
    }

    /// Runs git with no user or system configuration, `GIT_DIR` set unless `init`.
    fn spawn(
        &self,
        dir: &Path,
        args: &[&str],
        input: Option<&str>,
        author: Option<(&str, &str)>,
    ) -> Result<(bool, String, String), HistoryError> {
        let mut command = Command::new("git");
        command
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE")
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if args[0] == "init" {
            command.env_remove("GIT_DIR");
        } else {
            command.env("GIT_DIR", &self.repo);
        }
        if let Some((host, date)) = author {
            let email = format!("{host}@magestack");
            for (name, value) in [
                ("GIT_AUTHOR_NAME", host),
                ("GIT_AUTHOR_EMAIL", &email),
                ("GIT_AUTHOR_DATE", date),
                ("GIT_COMMITTER_NAME", host),
                ("GIT_COMMITTER_EMAIL", &email),
                ("GIT_COMMITTER_DATE", date),
            ] {
                command.env(name, value);
            }
        }
        let spawn_error = |source| HistoryError::Spawn {
            repo: self.repo.clone(),
            source,
        };
        let mut child = command.spawn().map_err(spawn_error)?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin.write_all(input.as_bytes()).map_err(spawn_error)?;
        }
        let output = child.wait_with_output().map_err(spawn_error)?;
        Ok((
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }
}

/// A summary on one line (the commit's subject).
fn one_line(summary: &str) -> String {
    let line = summary.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        "no change to nodes or roles".to_string()
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_committed_logged_found_and_diffed() {
        let dir = tempfile::tempdir().unwrap();
        let history = History::open(dir.path()).unwrap();
        assert_eq!(history.head().unwrap(), None);
        let first = history
            .commit_local(
                "[nodes.web1]\nrole = \"web\"\n",
                "dh1",
                1_700_000_000,
                "first version",
            )
            .unwrap();
        let received = Version {
            name: VersionId {
                counter: 2,
                id: "ab".repeat(20),
            },
            host: "dh2".into(),
            time_unix: 1_700_000_100,
            summary: "web2 added".into(),
        };
        let second = history
            .commit_received(
                "[nodes.web1]\nrole = \"web\"\n[nodes.web2]\nrole = \"web\"\n",
                &received,
            )
            .unwrap();
        let log = history.log(None).unwrap();
        assert_eq!(log, vec![second.clone(), first.clone()]);
        assert_eq!(first.version.name.id, first.commit);
        assert_eq!(log[0].version, received);
        assert_eq!(history.find("1").unwrap(), first);
        assert_eq!(history.find("abab").unwrap(), second);
        assert_eq!(history.find(&second.commit[..8]).unwrap(), second);
        assert!(matches!(
            history.find("9"),
            Err(HistoryError::UnknownVersion(_))
        ));
        assert_eq!(
            history.text(&first).unwrap(),
            "[nodes.web1]\nrole = \"web\"\n"
        );
        let diff = history
            .diff(
                ("1", &history.text(&first).unwrap()),
                ("2", &history.text(&second).unwrap()),
            )
            .unwrap();
        assert!(diff.contains("+[nodes.web2]"), "{diff}");
        let third = history.commit_local("", "dh1", 1_700_000_200, "").unwrap();
        assert_eq!(third.version.name.counter, 3);
        assert_eq!(
            History::existing(dir.path()).unwrap().head().unwrap(),
            Some(third)
        );
    }

    #[test]
    fn the_same_version_committed_on_two_hosts_has_the_same_content() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (
            History::open(a.path()).unwrap(),
            History::open(b.path()).unwrap(),
        );
        let text = "[nodes.web1]\nrole = \"web\"\n";
        let made = a
            .commit_local(text, "dh1", 1_700_000_000, "first version")
            .unwrap();
        let taken = b.commit_received(text, &made.version).unwrap();
        assert_eq!(taken.version, made.version);
        assert_eq!(b.text(&taken).unwrap(), a.text(&made).unwrap());
    }
}
