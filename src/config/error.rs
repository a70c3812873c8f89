//! Config errors that name the field and, where known, the line.

use std::fmt;

/// A config file that cannot be used, and where it went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The I/O error is part of the message, not a `source()`, so `{:#}` chains don't repeat it.
    #[error("cannot read config file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{0}")]
    Invalid(Located),
}

/// An error at a field of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// Dotted path of the field, e.g. `tiers.basic.limits[2].classes`.
    pub field: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.field, self.message),
            None => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

/// Builds [`ConfigError::Invalid`] errors against one file's text.
pub(crate) struct Source<'a> {
    text: &'a str,
}

impl<'a> Source<'a> {
    pub fn new(text: &'a str) -> Self {
        Self { text }
    }

    /// 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// An error at a field whose position is known.
    pub fn at(
        &self,
        field: impl Into<String>,
        span: std::ops::Range<usize>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid(Located {
            field: field.into(),
            line: Some(self.line_of(span.start)),
            message: message.into(),
        })
    }
}

/// An error at a field whose position is not recorded.
pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(Located {
        field: field.into(),
        line: None,
        message: message.into(),
    })
}
