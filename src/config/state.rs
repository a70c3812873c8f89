//! `[state]`: where the memory store's limit state is kept across restarts, and how soon an
//! admitted change reaches the disk.

use std::path::PathBuf;
use std::time::Duration;

use super::error::{ConfigError, Source};
use super::raw::RawState;

/// The state file, how often it is written whole, and how changes between two writes are kept.
/// Read at start; a reload does not change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    pub file: PathBuf,
    /// How often the whole state is written (and the journal started afresh).
    pub save_interval: Duration,
    pub journal: Journal,
}

/// How admitted changes reach the disk between two saves of the whole state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Journal {
    /// Changed accounts are appended to the journal this often: a hard kill loses at most this
    /// much (plus one write and fsync).
    Every(Duration),
    /// A request that changed counts is answered only once its change is on disk.
    Strict,
    /// No journal: a hard kill loses everything since the last save.
    Off,
}

pub(super) const DEFAULT_SAVE_INTERVAL: &str = "5s";
pub(super) const DEFAULT_JOURNAL: Duration = Duration::from_millis(200);
/// The promise is "at most one second lost"; a longer journal interval would break it.
const LONGEST_JOURNAL: Duration = Duration::from_secs(1);

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
        journal: journal(src, raw)?,
    }))
}

fn journal(src: &Source<'_>, raw: &RawState) -> Result<Journal, ConfigError> {
    let Some(value) = &raw.journal else {
        return Ok(Journal::Every(DEFAULT_JOURNAL));
    };
    let text = value.get_ref().trim();
    let err = |msg: String| src.at("state.journal", value.span(), msg);
    match text {
        "strict" => return Ok(Journal::Strict),
        "off" => return Ok(Journal::Off),
        _ => {}
    }
    let every = humantime::parse_duration(text).map_err(|_| {
        err(format!(
            "{text:?}: expected a duration up to \"1s\" (like \"200ms\"), \"strict\" or \"off\""
        ))
    })?;
    if every.is_zero() || every > LONGEST_JOURNAL {
        return Err(err(format!(
            "{text:?}: a journal interval is longer than zero and at most \"1s\" \
             (\"strict\" writes every change before answering; \"off\" keeps no journal)"
        )));
    }
    Ok(Journal::Every(every))
}
