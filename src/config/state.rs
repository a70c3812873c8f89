//! `[state]`: where the memory store's limit state is kept across restarts.

use std::path::PathBuf;
use std::time::Duration;

use super::error::{ConfigError, Source};
use super::raw::RawState;

/// The state file and how often it is written. Read at start; a reload does not change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    pub file: PathBuf,
    /// At most this much of the state is lost when the process is killed without a shutdown.
    pub save_interval: Duration,
}

pub(super) const DEFAULT_SAVE_INTERVAL: &str = "5s";

pub(super) fn build_state(
    src: &Source<'_>,
    raw: Option<&RawState>,
) -> Result<Option<StateConfig>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let file = raw.file.get_ref().trim();
    if file.is_empty() {
        return Err(src.at("state.file", raw.file.span(), "must name a file"));
    }
    let save_interval = super::duration(
        src,
        "state.save_interval",
        raw.save_interval.as_ref(),
        DEFAULT_SAVE_INTERVAL,
    )?;
    Ok(Some(StateConfig {
        file: PathBuf::from(file),
        save_interval,
    }))
}
