//! `logs NODE [PROCESS] [-f] [-n N]`: a node's process output, read straight from
//! `log_dir/<node>/<process>.log`, so it works while the daemon is down.
//!
//! The init rotates a file by renaming it to `<process>.log.1` and starting a new one. A follower
//! keeps the old file open until it has read it to the end, then moves on to the new one, so no
//! line is lost or shown twice across a rotation.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// How often `-f` looks for new output, rotation and new processes.
const POLL: Duration = Duration::from_millis(200);
/// How much of a file is read at a time when looking for its last lines.
const TAIL_CHUNK: u64 = 64 << 10;

pub struct LogsRequest {
    pub log_dir: PathBuf,
    pub node: String,
    /// Every process of the node (and its init) when `None`.
    pub process: Option<String>,
    pub follow: bool,
    /// Lines shown per process before following.
    pub lines: usize,
}

pub fn show(request: &LogsRequest) -> Result<()> {
    let node_dir = request.log_dir.join(&request.node);
    if !node_dir.is_dir() {
        bail!(
            "no logs for node {} in {}{}",
            request.node,
            request.log_dir.display(),
            listing(" (nodes with logs: {})", &nodes_with_logs(&request.log_dir))
        );
    }
    let names = match &request.process {
        Some(process) => {
            let known = processes(&node_dir)?;
            if !known.contains(process) {
                bail!(
                    "node {} has no process {process}{}",
                    request.node,
                    listing(" (processes with logs: {})", &known)
                );
            }
            vec![process.clone()]
        }
        None => processes(&node_dir)?,
    };
    let prefixed = request.process.is_none();
    let width = names.iter().map(String::len).max().unwrap_or(0);
    let prefix = |name: &str| {
        if prefixed {
            format!("{name:>width$} | ")
        } else {
            String::new()
        }
    };

    let stdout = io::stdout();
    let escape = io::IsTerminal::is_terminal(&stdout);
    let mut out = io::BufWriter::new(stdout.lock());
    let mut followers = Vec::new();
    for name in &names {
        let path = node_dir.join(format!("{name}.log"));
        let mut follower = Follower::new(prefix(name), path, escape);
        follower.print_last(request.lines, &mut out)?;
        followers.push(follower);
    }
    out.flush()?;
    if !request.follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(POLL);
        if prefixed {
            // A process added by a reload, or one that has only now written its first line.
            for name in processes(&node_dir)? {
                let path = node_dir.join(format!("{name}.log"));
                if !followers.iter().any(|f| f.path == path) {
                    followers.push(Follower::new(prefix(&name), path, escape));
                }
            }
        }
        for follower in &mut followers {
            follower.poll(&mut out)?;
        }
        out.flush()?;
    }
}

fn listing(template: &str, names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        template.replace("{}", &names.join(", "))
    }
}

fn nodes_with_logs(log_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(log_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// The processes with a `<name>.log` in the node's log dir, sorted.
fn processes(node_dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(node_dir)
        .with_context(|| format!("reading {}", node_dir.display()))?
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter_map(|file| file.strip_suffix(".log").map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

/// One process's log file, read from where the last read stopped.
struct Follower {
    prefix: String,
    /// Control characters are shown escaped: a node writes its logs, and a terminal would obey
    /// its escape sequences (retitle, clear, forge lines).
    escape: bool,
    path: PathBuf,
    file: Option<File>,
    /// The start of a line whose end has not been written yet.
    partial: Vec<u8>,
}

impl Follower {
    fn new(prefix: String, path: PathBuf, escape: bool) -> Follower {
        Follower {
            prefix,
            escape,
            path,
            file: None,
            partial: Vec::new(),
        }
    }

    /// Prints the last `count` lines (taking the ends of the rotated files, newest first, when
    /// the current one has fewer) and leaves the file open at its end for [`Follower::poll`].
    fn print_last(&mut self, count: usize, out: &mut impl Write) -> Result<()> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => {
                return Err(error).with_context(|| format!("opening {}", self.path.display()))
            }
        };
        let current = last_lines(&mut file, count)
            .with_context(|| format!("reading {}", self.path.display()))?;
        let mut missing = count.saturating_sub(line_count(&current));
        let mut earlier: Vec<Vec<u8>> = Vec::new();
        for generation in 1.. {
            if missing == 0 {
                break;
            }
            let rotated = self.path.with_extension(format!("log.{generation}"));
            let Ok(mut old) = File::open(&rotated) else {
                break;
            };
            let mut lines = last_lines(&mut old, missing)
                .with_context(|| format!("reading {}", rotated.display()))?;
            if !lines.is_empty() && !lines.ends_with(b"\n") {
                lines.push(b'\n');
            }
            missing -= line_count(&lines).min(missing);
            earlier.push(lines);
        }
        for lines in earlier.iter().rev() {
            self.emit(lines, out)?;
        }
        self.emit(&current, out)?;
        file.seek(SeekFrom::End(0))?;
        self.file = Some(file);
        Ok(())
    }

    /// Prints what was appended since the last call, following a rotation or truncation.
    fn poll(&mut self, out: &mut impl Write) -> Result<()> {
        self.drain(out)?;
        let on_disk = match fs::metadata(&self.path) {
            Ok(meta) => meta,
            // Renamed away and not made again yet: what the old file had is read already.
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error).with_context(|| format!("{}", self.path.display())),
        };
        let open = self.file.as_ref().and_then(|f| f.metadata().ok());
        let same_file = open
            .as_ref()
            .is_some_and(|m| (m.dev(), m.ino()) == (on_disk.dev(), on_disk.ino()));
        if !same_file {
            self.file = File::open(&self.path).ok();
            self.drain(out)?;
        } else if let Some(file) = &mut self.file {
            if on_disk.len() < file.stream_position()? {
                file.seek(SeekFrom::Start(0))?;
                self.drain(out)?;
            }
        }
        Ok(())
    }

    fn drain(&mut self, out: &mut impl Write) -> Result<()> {
        let Some(file) = &mut self.file else {
            return Ok(());
        };
        let mut data = Vec::new();
        file.read_to_end(&mut data)
            .with_context(|| format!("reading {}", self.path.display()))?;
        self.emit(&data, out)
    }

    /// Writes every complete line of `data` (after what an earlier call left unfinished) with
    /// the prefix; keeps the unfinished rest.
    fn emit(&mut self, data: &[u8], out: &mut impl Write) -> Result<()> {
        self.partial.extend_from_slice(data);
        let Some(last_newline) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return Ok(());
        };
        let rest = self.partial.split_off(last_newline + 1);
        for line in self.partial.split_inclusive(|b| *b == b'\n') {
            out.write_all(self.prefix.as_bytes())?;
            if self.escape {
                out.write_all(&escape_controls(line))?;
            } else {
                out.write_all(line)?;
            }
        }
        self.partial = rest;
        Ok(())
    }
}

/// `line` with every control character but tab and the final newline written as `\xNN`.
fn escape_controls(line: &[u8]) -> Vec<u8> {
    let mut shown = Vec::with_capacity(line.len());
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    for &byte in body {
        if (byte < 0x20 && byte != b'\t') || byte == 0x7f {
            shown.extend_from_slice(format!("\\x{byte:02x}").as_bytes());
        } else {
            shown.push(byte);
        }
    }
    if body.len() < line.len() {
        shown.push(b'\n');
    }
    shown
}

/// Lines in `text`, counting an unfinished last line.
fn line_count(text: &[u8]) -> usize {
    let newlines = text.iter().filter(|b| **b == b'\n').count();
    newlines + usize::from(!text.is_empty() && !text.ends_with(b"\n"))
}

/// The last `count` lines of `file` (an unfinished last line counts), read backwards in chunks
/// so a large log costs only its tail.
fn last_lines(file: &mut (impl Read + Seek), count: usize) -> io::Result<Vec<u8>> {
    let end = file.seek(SeekFrom::End(0))?;
    if count == 0 || end == 0 {
        return Ok(Vec::new());
    }
    let mut tail: Vec<u8> = Vec::new();
    let mut start = end;
    loop {
        let chunk = TAIL_CHUNK.min(start);
        start -= chunk;
        file.seek(SeekFrom::Start(start))?;
        let mut buffer = vec![0; chunk as usize];
        file.read_exact(&mut buffer)?;
        buffer.extend_from_slice(&tail);
        tail = buffer;
        // Newlines that end a line before the last `count` lines; a final newline ends the last.
        let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
        let newlines: Vec<usize> = body
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i)
            .collect();
        if newlines.len() >= count {
            let cut = newlines[newlines.len() - count] + 1;
            return Ok(tail.split_off(cut));
        }
        if start == 0 {
            return Ok(tail);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(
            escape_controls(b"\x1b]0;PWNED\x07\x1b[2Jfake\tline\r\n"),
            b"\\x1b]0;PWNED\\x07\\x1b[2Jfake\tline\\x0d\n".to_vec()
        );
        assert_eq!(escape_controls(b"plain"), b"plain".to_vec());
        assert_eq!(
            escape_controls("caf\u{e9} \u{2713}\n".as_bytes()),
            "caf\u{e9} \u{2713}\n".as_bytes()
        );
    }

    fn last(text: &str, count: usize) -> String {
        String::from_utf8(last_lines(&mut Cursor::new(text.as_bytes()), count).unwrap()).unwrap()
    }

    #[test]
    fn last_lines_counts_an_unfinished_line_and_stops_at_the_start() {
        assert_eq!(last("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(last("a\nb\nc", 2), "b\nc");
        assert_eq!(last("a\nb\n", 5), "a\nb\n");
        assert_eq!(last("a\nb\n", 0), "");
        assert_eq!(last("", 3), "");
        assert_eq!(last("\n\n", 1), "\n");
    }

    #[test]
    fn last_lines_reads_across_chunks() {
        let lines: Vec<String> = (0..40_000).map(|i| format!("line {i}\n")).collect();
        let text = lines.concat();
        assert!(text.len() as u64 > 3 * TAIL_CHUNK);
        assert_eq!(last(&text, 3), lines[39_997..].concat());
        assert_eq!(last(&text, 30_000), lines[10_000..].concat());
    }

    #[test]
    fn emit_prefixes_whole_lines_and_keeps_the_unfinished_rest() {
        let mut follower = Follower::new("web | ".into(), PathBuf::from("x.log"), false);
        let mut out = Vec::new();
        follower.emit(b"one\ntw", &mut out).unwrap();
        follower.emit(b"o\nthree", &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "web | one\nweb | two\n");
        assert_eq!(follower.partial, b"three");
    }

    #[test]
    fn a_follower_reads_on_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sh.log");
        fs::write(&path, "old 1\nold 2\n").unwrap();
        let mut follower = Follower::new(String::new(), path.clone(), false);
        let mut out = Vec::new();
        follower.print_last(1, &mut out).unwrap();
        assert_eq!(out, b"old 2\n");

        let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"old 3\nhalf").unwrap();
        fs::rename(&path, dir.path().join("sh.log.1")).unwrap();
        file.write_all(b" line\n").unwrap();
        fs::write(&path, "new 1\n").unwrap();
        out.clear();
        follower.poll(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "old 3\nhalf line\nnew 1\n"
        );

        // Truncated in place: read again from its start.
        fs::write(&path, "").unwrap();
        follower.poll(&mut out).unwrap();
        fs::write(&path, "again\n").unwrap();
        out.clear();
        follower.poll(&mut out).unwrap();
        assert_eq!(out, b"again\n");
    }

    #[test]
    fn too_few_lines_are_completed_from_the_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("sh.log.2"), "s1\ns2\n").unwrap();
        fs::write(dir.path().join("sh.log.1"), "r1\nr2\n").unwrap();
        fs::write(dir.path().join("sh.log"), "c1\n").unwrap();
        let print = |count: usize| {
            let mut follower = Follower::new(String::new(), dir.path().join("sh.log"), false);
            let mut out = Vec::new();
            follower.print_last(count, &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(print(3), "r1\nr2\nc1\n");
        assert_eq!(print(4), "s2\nr1\nr2\nc1\n");
        assert_eq!(print(9), "s1\ns2\nr1\nr2\nc1\n");
    }
}
