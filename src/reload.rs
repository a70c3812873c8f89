//! Config reload: on SIGHUP, or when the watched file changes, the file is read and validated
//! in full and only then swapped in, whole and atomically ([`Shared::reload`]); a request sees
//! either the old config or the new one, never a mix.
//!
//! What a reload keeps: limit counters, whose ids come from each rule's class scope and window,
//! not from its limit — so unchanged rules keep their windows (no fresh burst) and a raised or
//! lowered limit applies at once to the window already open. What it cannot change: `[server]`
//! and `[state]` (sockets, threads and connection pools are built from them; a changed value is
//! logged and waits for a restart), and the upstream accounts and their pools (queued and running
//! jobs hold slots in the running pools; a reload that changes them is refused).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::config::{restart_only_changes, Config, ConfigError, Located, Overrides};
use crate::shared::Shared;

/// Why a reload was refused; the running config keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    NeedsRestart(Located),
}

impl ReloadError {
    /// The field at fault, when the error names one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ReloadError::Config(ConfigError::Invalid(l)) | ReloadError::NeedsRestart(l) => {
                Some(&l.field)
            }
            ReloadError::Config(ConfigError::Read { .. }) => None,
        }
    }
}

/// Swaps a validated config in, unless it changes what only a restart can change. Returns the
/// restart-only settings it changed (left as they run).
pub fn apply(shared: &Shared, new: Config) -> Result<Vec<&'static str>, ReloadError> {
    let running = shared.policy.load();
    if running.config.jobs.pools != new.jobs.pools {
        return Err(ReloadError::NeedsRestart(Located {
            field: "upstream_account".into(),
            line: None,
            message: "upstream accounts and the pools tiers and accounts use are fixed at start \
                      (jobs hold slots in them); restart floodgate to change them"
                .into(),
        }));
    }
    let ignored = restart_only_changes(&running.config, &new);
    shared.reload(new);
    Ok(ignored)
}

/// What identifies a version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?; // follows symlinks: a ConfigMap swap counts
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

/// Reloads one config file (and the files it names) into a running floodgate.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    overrides: Overrides,
    /// The files the running config was read from besides itself ([`Config::read_files`]: the
    /// accounts file, the listener's certificates), watched beside the config.
    read_files: Vec<PathBuf>,
    seen: Vec<Option<Stamp>>,
}

impl Reloader {
    /// `overrides` are the command-line values, applied again to every reloaded file;
    /// `read_files` are the running config's.
    pub fn new(path: PathBuf, overrides: Overrides, read_files: Vec<PathBuf>) -> Self {
        let mut reloader = Self {
            path,
            overrides,
            read_files,
            seen: Vec::new(),
        };
        reloader.seen = reloader.stamps();
        reloader
    }

    fn stamps(&self) -> Vec<Option<Stamp>> {
        let files = std::iter::once(&self.path).chain(&self.read_files);
        files.map(|f| stamp(f)).collect()
    }

    /// Reads, validates and applies the file; logs and counts the outcome. `trigger` says what
    /// asked for it ("SIGHUP", "file change").
    pub fn reload(&mut self, shared: &Shared, trigger: &'static str) -> Result<(), ReloadError> {
        self.seen = self.stamps();
        let result = Config::load(&self.path, &self.overrides)
            .map_err(ReloadError::from)
            .and_then(|config| {
                let read_files = config.read_files();
                let ignored = apply(shared, config)?;
                if read_files != self.read_files {
                    self.read_files = read_files;
                    self.seen = self.stamps();
                }
                Ok(ignored)
            });
        shared.metrics.reload.reloaded(result.is_ok());
        let refused = result.as_ref().err().map(ToString::to_string);
        shared.status.reloaded(refused, shared.clock.now_ms());
        match result {
            Ok(ignored) => {
                tracing::info!(trigger, file = %self.path.display(), "config reloaded");
                if !ignored.is_empty() {
                    tracing::warn!(
                        fields = %ignored.join(", "),
                        "these settings change only on restart; their running values stay"
                    );
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    trigger, file = %self.path.display(), field = e.field().unwrap_or("-"),
                    error = %e, "config reload failed; keeping the running config"
                );
                Err(e)
            }
        }
    }

    /// True when the config or a file it names changed (modification time or size) since they
    /// were last read.
    pub fn file_changed(&self) -> bool {
        self.stamps() != self.seen
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::classify::ClassId;
    use crate::clock::ManualClock;
    use crate::identity::{AccountId, TierId};
    use crate::store::{consume, Store};

    fn config(per_minute: u32, extra: &str) -> Config {
        let text = format!(
            "[server]\nupstream = \"http://127.0.0.1:9000\"\n{extra}\n\
             [[route]]\npath = \"/a\"\nclass = \"a\"\n\
             [[tiers.t.limits]]\nclasses = [\"a\"]\nper_minute = {per_minute}\n"
        );
        Config::parse(&text, &Overrides::default()).unwrap()
    }

    /// Spends `n` requests of class `a` for one account; returns how many were admitted.
    fn spend(shared: &Shared, n: usize) -> usize {
        let policy = shared.policy.load();
        let rules = policy.config.tier(TierId(0)).rules(ClassId(1));
        let Store::Memory(store) = &shared.store else {
            panic!("reload tests run on the memory store");
        };
        let account = AccountId::from_key(b"k");
        (0..n)
            .filter(|_| {
                let (decision, _) = store.apply(account, shared.clock.now_ms(), consume(rules));
                decision.is_admitted()
            })
            .count()
    }

    #[test]
    fn a_changed_limit_applies_to_the_open_window() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let shared = Shared::new(config(5, ""), Store::memory(), clock);
        assert_eq!(spend(&shared, 4), 4);
        assert_eq!(apply(&shared, config(3, "")).unwrap(), Vec::<&str>::new());
        assert_eq!(
            spend(&shared, 1),
            0,
            "lowered to 3 with 4 used: refused at once"
        );
        apply(&shared, config(10, "")).unwrap();
        assert_eq!(spend(&shared, 10), 6, "raised to 10 with 4 used: 6 more");
        apply(&shared, config(10, "idle_timeout = \"5s\"")).unwrap();
        assert_eq!(
            spend(&shared, 1),
            0,
            "an unrelated change gives no fresh burst"
        );
    }

    #[test]
    fn server_changes_are_reported_and_pool_changes_refused() {
        let clock = Arc::new(ManualClock::new(0));
        let shared = Shared::new(config(5, ""), Store::memory(), clock);
        let ignored = apply(&shared, config(5, "idle_timeout = \"5s\"\nworkers = 3")).unwrap();
        assert_eq!(ignored, vec!["server.workers", "server.idle_timeout"]);
        let text = "[server]\nupstream = \"http://127.0.0.1:9000\"\n\
                    [[upstream_account]]\nname = \"u1\"\nconcurrency = 2\n\
                    [tiers.t]\nupstream_accounts = [\"u1\"]\n";
        let with_pool = Config::parse(text, &Overrides::default()).unwrap();
        let err = apply(&shared, with_pool).unwrap_err();
        assert_eq!(err.field(), Some("upstream_account"));
        assert_eq!(shared.policy.load().config.tiers[0].name, "t");
        assert_eq!(
            shared.policy.load().config.server.idle_timeout,
            std::time::Duration::from_secs(5),
            "the refused reload left the last applied config running"
        );
    }
}
