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
}

impl Source {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        Source {
            name: name.into(),
            text: text.into(),
            dir: None,
        }
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
        let (line, column) = span
            .map(|span| line_column(&self.text, span.start))
            .unwrap_or((1, 1));
        Diagnostic {
            file: self.name.clone(),
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

    proptest! {
        #[test]
        fn any_offset_maps_inside_the_text(text in "\\PC{0,64}", offset in 0usize..80) {
            let (line, column) = line_column(&text, offset);
            prop_assert!(line >= 1 && line <= text.matches('\n').count() + 1);
            prop_assert!(column >= 1);
        }
    }
}
