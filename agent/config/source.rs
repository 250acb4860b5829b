//! Where a piece of configuration came from, so every error can name file, line and column.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// One configuration text and the name it is reported under.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
    /// The directory of the file it was read from, where `templates/` is looked for; `None` for
    /// embedded texts.
    pub dir: Option<PathBuf>,
    /// Texts appended to `text` from other files (the stack beside agent.toml), each from its
    /// byte offset in `text` on: a span there is reported in that file, at its own line.
    pub appended: Vec<Appended>,
}

/// A file whose text follows the first one's in a [`Source`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub name: String,
    pub start: usize,
}

impl Source {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        Source {
            name: name.into(),
            text: text.into(),
            dir: None,
            appended: Vec::new(),
        }
    }

    /// This text followed by `other`'s, on a line of its own; errors in `other`'s part name
    /// `other`'s file and line. `other` must begin with a table header (checked by the caller),
    /// so none of its keys fall into this text's last table.
    pub fn followed_by(mut self, other: Source) -> Source {
        if !self.text.ends_with('\n') {
            self.text.push('\n');
        }
        let start = self.text.len();
        self.text.push_str(&other.text);
        self.appended.push(Appended {
            name: other.name,
            start,
        });
        self
    }

    pub fn from_file(path: &std::path::Path) -> Result<Self, super::ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| super::ConfigError::Read {
            path: PathBuf::from(path),
            source,
        })?;
        let dir = path.parent().map(|dir| match dir.as_os_str().is_empty() {
            true => PathBuf::from("."),
            false => dir.to_path_buf(),
        });
        Ok(Source {
            dir,
            ..Source::new(path.display().to_string(), text)
        })
    }

    /// A diagnostic pointing at a byte span of this source.
    pub fn at(&self, span: Option<Range<usize>>, message: impl Into<String>) -> Diagnostic {
        let offset = span.map(|span| span.start);
        let part =
            offset.and_then(|offset| self.appended.iter().rev().find(|part| part.start <= offset));
        let (file, start) = match part {
            Some(part) => (&part.name, part.start),
            None => (&self.name, 0),
        };
        let (line, column) = offset
            .map(|offset| line_column(&self.text[start..], offset - start))
            .unwrap_or((1, 1));
        Diagnostic {
            file: file.clone(),
            line,
            column,
            message: message.into(),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// One problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn first_character_is_line_one_column_one() {
        assert_eq!(line_column("abc", 0), (1, 1));
    }

    #[test]
    fn columns_count_characters_after_the_last_newline() {
        assert_eq!(line_column("ab\ncdé\nx", 7), (2, 4));
        assert_eq!(line_column("ab\ncdé\nx", 8), (3, 1));
    }

    #[test]
    fn a_span_in_an_appended_text_names_its_file_and_line() {
        let joined = Source::new("agent.toml", "[host]\nname = \"a\"")
            .followed_by(Source::new("stack.toml", "[nodes.web1]\nrole = \"web\"\n"));
        let role = joined.text.find("role").unwrap();
        let diagnostic = joined.at(Some(role..role + 4), "bad");
        assert_eq!(
            (diagnostic.file.as_str(), diagnostic.line, diagnostic.column),
            ("stack.toml", 2, 1)
        );
        let name = joined.text.find("name").unwrap();
        assert_eq!(joined.at(Some(name..name + 1), "x").file, "agent.toml");
    }

    proptest! {
        #[test]
        fn any_offset_maps_inside_the_text(text in "\\PC{0,64}", offset in 0usize..80) {
            let (line, column) = line_column(&text, offset);
            prop_assert!(line >= 1 && line <= text.matches('\n').count() + 1);
            prop_assert!(column >= 1);
        }
    }
}
