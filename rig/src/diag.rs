//! Errors in lab and scenario files that name the file, line and field.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A problem at a place in a TOML file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted field path when known, e.g. `phone[1].mac` or `step[3].within`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.path.display(), self.line, self.column)?;
        if let Some(field) = &self.field {
            write!(f, "field `{field}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for FileError {}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

impl FileError {
    pub fn at(
        path: &Path,
        text: &str,
        span: Option<Range<usize>>,
        field: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = span.map_or((1, 1), |s| line_col(text, s.start));
        FileError {
            path: path.to_owned(),
            line,
            column,
            field,
            message: message.into(),
        }
    }

    /// From a TOML/serde error: keeps toml's position, and pulls the field
    /// name out of serde's "unknown field `x`" / "missing field `x`" wording.
    pub fn from_toml(path: &Path, text: &str, error: &toml::de::Error) -> Self {
        let message = error.message().trim().to_owned();
        let field = [
            "unknown field `",
            "missing field `",
            "duplicate key `",
            "duplicate field `",
        ]
        .iter()
        .find_map(|prefix| {
            message
                .split(prefix)
                .nth(1)
                .and_then(|rest| rest.split('`').next())
                .map(str::to_owned)
        });
        let field = field.or_else(|| key_at_span(text, error.span()));
        FileError::at(path, text, error.span(), field, message)
    }
}

/// The `key` of a `key = value` line the span points into, if any.
fn key_at_span(text: &str, span: Option<Range<usize>>) -> Option<String> {
    let span = span?;
    let start = text[..span.start.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && !key.starts_with('[') && !key.starts_with('#'))
        .then(|| key.trim_matches('"').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("abc", 0, (1, 1))]
    #[case("abc\ndef", 4, (2, 1))]
    #[case("abc\ndef", 6, (2, 3))]
    #[case("a\n\nb", 3, (3, 1))]
    fn positions(#[case] text: &str, #[case] offset: usize, #[case] expected: (usize, usize)) {
        assert_eq!(line_col(text, offset), expected);
    }
}
