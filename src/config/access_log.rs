//! `[access_log]`: one line per request, off unless the table is there.

use std::path::PathBuf;

use super::error::{ConfigError, Source};
use super::raw::RawAccessLog;

/// Where the lines go and how they read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub to: LogDestination,
    pub format: LogFormat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogDestination {
    Stdout,
    Stderr,
    /// Appended to; created when missing.
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// The Common Log Format's fields, then floodgate's as `key=value`.
    Common,
}

pub(super) fn access_log(
    src: &Source<'_>,
    raw: Option<&RawAccessLog>,
) -> Result<Option<AccessLogConfig>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let to = match raw.path.as_ref().map(|p| (p.get_ref().as_str(), p.span())) {
        None | Some(("stdout", _)) => LogDestination::Stdout,
        Some(("stderr", _)) => LogDestination::Stderr,
        Some(("", span)) => {
            return Err(src.at(
                "access_log.path",
                span,
                "give a file, \"stdout\" or \"stderr\"",
            ))
        }
        Some((file, _)) => LogDestination::File(PathBuf::from(file)),
    };
    let format = match raw
        .format
        .as_ref()
        .map(|f| (f.get_ref().as_str(), f.span()))
    {
        None | Some(("json", _)) => LogFormat::Json,
        Some(("common", _)) => LogFormat::Common,
        Some((other, span)) => {
            return Err(src.at(
                "access_log.format",
                span,
                format!("{other:?}: expected \"json\" or \"common\""),
            ))
        }
    };
    Ok(Some(AccessLogConfig { to, format }))
}
