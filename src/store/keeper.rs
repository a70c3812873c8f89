//! The memory store's state on disk: the state file (the whole state, every `save_interval`)
//! and the journal files between two saves (the accounts changed, every journal interval).
//!
//! ```text
//! <file>                 the last snapshot; names the first journal generation after it
//! <file>.journal-<N>     changes since that snapshot, appended and fsynced each flush
//! ```
//!
//! One thread owns a [`Keeper`] ([`crate::app`] runs it), so flushes and saves never overlap and
//! an account's records are written in the order of its changes. A save starts journal N+1
//! before it copies the store, so a change is either in the copy or in journal N+1 (or both:
//! records are absolute, replaying one again is harmless); then it writes the snapshot, naming
//! generation N+1, and only after that deletes the journals before N+1. A crash at any point
//! leaves a snapshot and every journal written since it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::dirty::{Dirty, SHARDS};
use super::journal::{self, Damage, HeaderError};
use super::{snapshot, MemoryStore, Store};
use crate::identity::AccountId;

/// The state file and its journals, owned by the one thread that writes them.
#[derive(Debug)]
pub struct Keeper {
    file: PathBuf,
    /// The newest generation: the open journal's, or the last one seen at start.
    generation: u64,
    /// The open journal, when changes are journaled.
    journal: Option<File>,
    /// Bytes of the open journal known written whole: a failed write is cut back to here, so
    /// later records do not follow a torn one.
    written: u64,
    dirty: Option<Arc<Dirty>>,
    /// The lists the last flush took, emptied but keeping their capacity.
    spare: [Vec<AccountId>; SHARDS],
    /// The records of one flush, reused.
    buf: Vec<u8>,
}

/// What replaying one journal file found.
#[derive(Debug)]
pub struct Replayed {
    pub path: PathBuf,
    pub records: usize,
    /// Why some or all of it was skipped.
    pub trouble: Option<Trouble>,
}

#[derive(Debug, thiserror::Error)]
pub enum Trouble {
    /// The header is damaged or from another version: nothing in the file was read.
    #[error("{0}; the file was skipped")]
    Unreadable(HeaderError),
    /// The records up to the damage were replayed; the rest was skipped.
    #[error("{0}")]
    Damaged(Damage),
}

impl Keeper {
    /// For the state `file`, whose snapshot names journal `generation` as its first.
    pub fn new(file: PathBuf, generation: u64) -> Self {
        Self {
            file,
            generation,
            journal: None,
            written: 0,
            dirty: None,
            spare: Default::default(),
            buf: Vec::new(),
        }
    }

    /// Replays every journal from the snapshot's generation on, oldest first, over the state
    /// restored from the snapshot; deletes older ones (the snapshot holds their changes). Each
    /// record replaces its account's counters, keeping only windows still open at `now_ms`.
    pub fn replay(&mut self, store: &MemoryStore, now_ms: u64) -> io::Result<Vec<Replayed>> {
        let mut out = Vec::new();
        for (generation, path) in journals(&self.file)? {
            if generation < self.generation {
                remove(&path)?;
                continue;
            }
            self.generation = generation;
            let bytes = fs::read(&path)?;
            let mut replayed = Replayed {
                path,
                records: 0,
                trouble: None,
            };
            match journal::decode(&bytes) {
                Ok(j) if j.generation != generation => {
                    replayed.trouble = Some(Trouble::Unreadable(HeaderError::BadHeader));
                }
                Ok(j) => {
                    for record in &j.records {
                        store.replace(record.account, &record.counters, now_ms);
                    }
                    replayed.records = j.records.len();
                    replayed.trouble = j.damage.map(Trouble::Damaged);
                }
                Err(e) => replayed.trouble = Some(Trouble::Unreadable(e)),
            }
            out.push(replayed);
        }
        Ok(out)
    }

    /// Journals the changes `dirty` notes from the next [`Keeper::save`] on (which opens the
    /// first journal).
    pub fn attach(&mut self, dirty: Arc<Dirty>) {
        self.dirty = Some(dirty);
    }

    /// Makes the calling thread the one a strict request wakes to flush: the thread that runs
    /// this keeper.
    pub fn wake_this_thread(&self) {
        if let Some(dirty) = &self.dirty {
            dirty.set_writer(std::thread::current());
        }
    }

    /// Appends a record for every account changed since the last flush, in one write, and
    /// fsyncs it; then strict requests waiting for it are let go. Returns the records written.
    ///
    /// A failed write is cut back and reported; its accounts are in memory and in the next
    /// snapshot, and strict requests are let go all the same: floodgate keeps answering when
    /// its disk fails, and says so (log, `floodgate_state_journal_flushes_total{result="error"}`).
    pub fn flush(&mut self, store: &MemoryStore, now_ms: u64) -> io::Result<usize> {
        let Some(dirty) = &self.dirty else {
            return Ok(0);
        };
        let epoch = dirty.take(&mut self.spare);
        self.buf.clear();
        let mut records = 0;
        for list in &mut self.spare {
            for account in list.drain(..) {
                records += usize::from(store.append_record(account, now_ms, &mut self.buf));
            }
        }
        let result = match (&mut self.journal, records) {
            (_, 0) => Ok(()),
            (Some(file), _) => {
                let result = file.write_all(&self.buf).and_then(|()| file.sync_data());
                match &result {
                    Ok(()) => self.written += self.buf.len() as u64,
                    Err(_) => {
                        let _ = file.set_len(self.written);
                    }
                }
                result
            }
            (None, _) => Err(io::Error::other("no journal open")),
        };
        dirty.durable(epoch);
        result.map(|()| records)
    }

    /// Writes the whole state: flushes, opens the next journal, writes the snapshot (naming
    /// that journal) atomically, then deletes the journals before it. Returns the accounts
    /// written; `Ok(0)` and nothing written for a store that keeps its own state (Redis).
    pub fn save(&mut self, store: &Store, now_ms: u64) -> io::Result<usize> {
        let Some(memory) = store.as_memory() else {
            return Ok(0);
        };
        // Lets strict requests go before the copy; a failure here is covered by the copy.
        let _ = self.flush(memory, now_ms);
        let next = self.generation + 1;
        if self.dirty.is_some() {
            self.journal = Some(self.open_journal(next)?);
            self.written = journal::HEADER_LEN as u64;
        }
        self.generation = next;
        let mut state = memory.snapshot(now_ms);
        state.generation = next;
        snapshot::save(&self.file, &state)?;
        for (generation, path) in journals(&self.file)? {
            if generation < next {
                remove(&path)?;
            }
        }
        Ok(state.accounts.len())
    }

    /// Creates journal `generation` with its header, durable with its directory entry.
    fn open_journal(&self, generation: u64) -> io::Result<File> {
        let path = journal::path_of(&self.file, generation);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        file.write_all(&journal::header(generation))?;
        file.sync_data()?;
        File::open(snapshot::directory_of(&self.file))?.sync_all()?;
        Ok(file)
    }
}

/// The state file's journals in its directory, by generation, oldest first.
pub fn journals(file: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(snapshot::directory_of(file)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        entries => entries?,
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(generation) = name.to_str().and_then(|n| journal::generation_in(file, n)) {
            found.push((generation, entry.path()));
        }
    }
    found.sort_by_key(|(generation, _)| *generation);
    Ok(found)
}

fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{CounterId, LimitKind, Rule, Window};
    use crate::store::snapshot::Loaded;
    use crate::store::{consume, open_counters};

    const NOW: u64 = 1_795_392_000_000 + 3_600_000;

    fn day() -> Rule {
        Rule {
            counter: CounterId(2),
            limit: 1_000,
            window: Window::UtcDay,
            kind: LimitKind::Daily,
        }
    }

    fn spend(store: &Store, key: &str, n: usize) {
        let memory = store.as_memory().unwrap();
        for _ in 0..n {
            let account = AccountId::from_key(key.as_bytes());
            let (decision, _) = memory.apply(account, NOW, consume(&[day()]));
            assert!(decision.is_admitted());
        }
    }

    fn used(store: &Store, key: &str) -> u32 {
        let account = AccountId::from_key(key.as_bytes());
        let (counters, _) = store
            .as_memory()
            .unwrap()
            .apply(account, NOW, open_counters);
        counters.first().map_or(0, |c| c.count)
    }

    /// A keeper journaling `store` into `file`, after its first save (as at start).
    fn started(store: &Store, file: &Path) -> Keeper {
        let mut keeper = Keeper::new(file.to_owned(), 0);
        keeper.attach(store.as_memory().unwrap().journal(false));
        keeper.save(store, NOW).unwrap();
        keeper
    }

    /// What a start finds in `file`'s directory: the snapshot, then the journals replayed.
    fn restart(file: &Path) -> (Store, Vec<Replayed>) {
        let store = Store::memory();
        let generation = match snapshot::load(file, NOW).unwrap() {
            Loaded::State(s) => {
                let generation = s.generation;
                store.restore(s, NOW);
                generation
            }
            other => panic!("{other:?}"),
        };
        let mut keeper = Keeper::new(file.to_owned(), generation);
        let replayed = keeper.replay(store.as_memory().unwrap(), NOW).unwrap();
        (store, replayed)
    }

    #[test]
    fn journals_are_listed_by_generation_as_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.bin");
        for name in [
            "state.bin.journal-10",
            "state.bin.journal-9",
            "state.bin.journal-100",
        ] {
            fs::write(dir.path().join(name), b"").unwrap();
        }
        fs::write(dir.path().join("state.bin.tmp"), b"").unwrap();
        let generations: Vec<u64> = journals(&file).unwrap().into_iter().map(|j| j.0).collect();
        assert_eq!(generations, vec![9, 10, 100]);
    }

    #[test]
    fn a_flushed_change_survives_a_crash_and_a_save_starts_a_new_generation() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.bin");
        let store = Store::memory();
        let mut keeper = started(&store, &file);
        spend(&store, "a", 3);
        spend(&store, "b", 1);
        assert_eq!(keeper.flush(store.as_memory().unwrap(), NOW).unwrap(), 2);
        spend(&store, "a", 2);
        assert_eq!(keeper.flush(store.as_memory().unwrap(), NOW).unwrap(), 1);
        spend(&store, "b", 5); // never flushed: lost in the crash

        let (after, replayed) = restart(&file);
        assert_eq!((used(&after, "a"), used(&after, "b")), (5, 1));
        assert_eq!(replayed.len(), 1);
        assert_eq!(replayed[0].records, 3);
        assert!(replayed[0].trouble.is_none());

        // A save folds everything into the snapshot and moves on to journal 2.
        assert_eq!(keeper.save(&store, NOW).unwrap(), 2);
        let names: Vec<u64> = journals(&file).unwrap().into_iter().map(|j| j.0).collect();
        assert_eq!(names, vec![2]);
        spend(&store, "a", 1);
        keeper.flush(store.as_memory().unwrap(), NOW).unwrap();
        let (after, replayed) = restart(&file);
        assert_eq!((used(&after, "a"), used(&after, "b")), (6, 6));
        assert_eq!(replayed[0].records, 1);
    }

    #[test]
    fn a_torn_journal_replays_its_whole_records_and_older_journals_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.bin");
        let store = Store::memory();
        let mut keeper = started(&store, &file);
        spend(&store, "a", 1);
        keeper.flush(store.as_memory().unwrap(), NOW).unwrap();
        spend(&store, "a", 1);
        keeper.flush(store.as_memory().unwrap(), NOW).unwrap();
        let path = journal::path_of(&file, 1);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
        // A journal older than the snapshot's generation is stale: deleted, not replayed.
        fs::write(journal::path_of(&file, 0), journal::header(0)).unwrap();

        let (after, replayed) = restart(&file);
        assert_eq!(
            used(&after, "a"),
            1,
            "the whole first record, not the torn second"
        );
        assert_eq!(replayed.len(), 1);
        assert!(matches!(
            &replayed[0].trouble,
            Some(Trouble::Damaged(d)) if d.skipped == 48 - 7 // records of one counter: 48 bytes
        ));
        assert!(!journal::path_of(&file, 0).exists());
    }

    #[test]
    fn a_journal_with_a_bad_header_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.bin");
        let store = Store::memory();
        let _keeper = started(&store, &file);
        fs::write(journal::path_of(&file, 1), b"not a journal at all").unwrap();
        let (_, replayed) = restart(&file);
        assert!(matches!(
            replayed[0].trouble,
            Some(Trouble::Unreadable(HeaderError::BadHeader))
        ));
    }
}
