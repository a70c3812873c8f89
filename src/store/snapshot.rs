//! The memory store's state file: limit counters that survive a restart.
//!
//! A small versioned binary format, encoded and decoded by pure functions, with thin file I/O
//! around it. Accounts are their 128-bit key hashes, so no API key is ever written.
//!
//! ```text
//! header   magic "FGSTATE\0" | version u32 | payload length u64 | xxh3-64 of the payload u64
//! payload  saved_at_ms u64 | generation u64 | accounts u32 | per account:
//!            id u128 | counters u32 | per counter: id u32 | count u32 | end_ms u64
//! ```
//!
//! `generation` (version 2) is the first journal generation ([`super::journal`]) written after
//! this snapshot was taken: at start the journals from that generation on are replayed over it.
//! Version 1 files, written before the journal existed, have no `generation` and still load, as
//! generation 0. All integers are little-endian. A file that fails any check (magic, version, length,
//! checksum, structure) is refused whole: a half-read state is worse than none.
//!
//! Saving is atomic: the bytes go to `<file>.tmp` in the same directory, which is fsynced and
//! renamed over the file, and then the directory is fsynced, so a crash leaves the old file or
//! the new one, never a torn one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::identity::AccountId;
use crate::limits::{Counter, CounterId};

const MAGIC: &[u8; 8] = b"FGSTATE\0";
const VERSION: u32 = 2;
/// The layout before the journal: no `generation` in the payload.
const VERSION_1: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8 + 8;
/// Smallest encoded account: id and counter count.
const ACCOUNT_MIN_LEN: usize = 16 + 4;
const COUNTER_LEN: usize = 4 + 4 + 8;

/// Every account's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub saved_at_ms: u64,
    /// The first journal generation that holds changes made after this snapshot.
    pub generation: u64,
    pub accounts: Vec<(AccountId, Vec<Counter>)>,
}

impl Snapshot {
    /// Only the windows still open at `now_ms`, and only accounts that have one: counters of a
    /// past UTC day, or of a minute that has ended, are gone.
    pub fn live(mut self, now_ms: u64) -> Snapshot {
        for (_, counters) in &mut self.accounts {
            counters.retain(|c| now_ms < c.end_ms);
        }
        self.accounts.retain(|(_, counters)| !counters.is_empty());
        self
    }
}

/// Why state file bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a floodgate state file (bad magic)")]
    BadMagic,
    #[error("state file version {0} is not supported (this build reads version {VERSION})")]
    UnsupportedVersion(u32),
    #[error("truncated: {expected} payload bytes declared, {found} present")]
    Truncated { expected: u64, found: u64 },
    #[error("{0} bytes after the declared payload")]
    TrailingBytes(u64),
    #[error("checksum mismatch")]
    Checksum,
    #[error("malformed payload: {0}")]
    Malformed(&'static str),
}

/// The file's bytes for `snapshot`.
pub fn encode(snapshot: &Snapshot) -> Vec<u8> {
    let mut payload = Vec::with_capacity(
        20 + snapshot
            .accounts
            .iter()
            .map(|(_, c)| ACCOUNT_MIN_LEN + c.len() * COUNTER_LEN)
            .sum::<usize>(),
    );
    payload.extend_from_slice(&snapshot.saved_at_ms.to_le_bytes());
    payload.extend_from_slice(&snapshot.generation.to_le_bytes());
    payload.extend_from_slice(&(snapshot.accounts.len() as u32).to_le_bytes());
    for (account, counters) in &snapshot.accounts {
        payload.extend_from_slice(&account.0.to_le_bytes());
        payload.extend_from_slice(&(counters.len() as u32).to_le_bytes());
        for c in counters {
            payload.extend_from_slice(&c.id.0.to_le_bytes());
            payload.extend_from_slice(&c.count.to_le_bytes());
            payload.extend_from_slice(&c.end_ms.to_le_bytes());
        }
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Reads a state file's bytes; any damage is an error, never a panic.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    let mut header = Reader(bytes);
    if header.take(MAGIC.len()).ok() != Some(MAGIC.as_slice()) {
        return Err(SnapshotError::BadMagic);
    }
    let short = |_| SnapshotError::Malformed("header cut short");
    let version = header.u32().map_err(short)?;
    if version != VERSION && version != VERSION_1 {
        return Err(SnapshotError::UnsupportedVersion(version));
    }
    let expected = header.u64().map_err(short)?;
    let checksum = header.u64().map_err(short)?;
    let payload = header.0;
    let found = payload.len() as u64;
    if found < expected {
        return Err(SnapshotError::Truncated { expected, found });
    }
    if found > expected {
        return Err(SnapshotError::TrailingBytes(found - expected));
    }
    if xxhash_rust::xxh3::xxh3_64(payload) != checksum {
        return Err(SnapshotError::Checksum);
    }
    decode_payload(Reader(payload), version)
}

fn decode_payload(mut r: Reader<'_>, version: u32) -> Result<Snapshot, SnapshotError> {
    let saved_at_ms = r.u64()?;
    let generation = match version {
        VERSION_1 => 0,
        _ => r.u64()?,
    };
    let n_accounts = r.u32()? as usize;
    // Capacity from what the bytes can hold, not from what they claim.
    let mut accounts = Vec::with_capacity(n_accounts.min(r.0.len() / ACCOUNT_MIN_LEN));
    for _ in 0..n_accounts {
        let id = AccountId(r.u128()?);
        let n_counters = r.u32()? as usize;
        let mut counters = Vec::with_capacity(n_counters.min(r.0.len() / COUNTER_LEN));
        for _ in 0..n_counters {
            counters.push(Counter {
                id: CounterId(r.u32()?),
                count: r.u32()?,
                end_ms: r.u64()?,
            });
        }
        accounts.push((id, counters));
    }
    if !r.0.is_empty() {
        return Err(SnapshotError::Malformed(
            "bytes left after the last account",
        ));
    }
    Ok(Snapshot {
        saved_at_ms,
        generation,
        accounts,
    })
}

/// A cursor over bytes that refuses to read past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if self.0.len() < n {
            return Err(SnapshotError::Malformed("an entry is cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        self.array().map(u64::from_le_bytes)
    }

    fn u128(&mut self) -> Result<u128, SnapshotError> {
        self.array().map(u128::from_le_bytes)
    }
}

/// Writes `snapshot` to `path` atomically (temp file, fsync, rename, fsync of the directory).
pub fn save(path: &Path, snapshot: &Snapshot) -> io::Result<()> {
    write_atomic(path, &encode(snapshot))
}

/// Writes `bytes` to `path` atomically: a crash leaves the old file or the new one, whole.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = sibling(path, "tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    File::open(directory_of(path))?.sync_all()
}

/// What reading the state file found.
#[derive(Debug)]
pub enum Loaded {
    /// No state file yet (the first start).
    Missing,
    /// The saved state, keeping only windows still open.
    State(Snapshot),
    /// The file could not be read as state; it was renamed to `set_aside` (or renaming failed).
    Corrupt {
        error: SnapshotError,
        set_aside: io::Result<PathBuf>,
    },
}

/// Reads the state file at `path`. A damaged file is moved to `<file>.corrupt-<now_ms>`, kept for
/// a post-mortem, and reported as [`Loaded::Corrupt`]; only I/O failures are errors.
pub fn load(path: &Path, now_ms: u64) -> io::Result<Loaded> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Missing),
        Err(e) => return Err(e),
    };
    match decode(&bytes) {
        Ok(snapshot) => Ok(Loaded::State(snapshot.live(now_ms))),
        Err(error) => {
            let aside = sibling(path, &format!("corrupt-{now_ms}"));
            let set_aside = fs::rename(path, &aside).map(|()| aside);
            Ok(Loaded::Corrupt { error, set_aside })
        }
    }
}

/// `<path>.<suffix>`, in the same directory (so a rename stays on one filesystem).
pub(super) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    path.with_file_name(name)
}

/// The directory `path` is in (`.` for a bare file name).
pub(super) fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::DAY_MS;

    /// 2026-11-23T00:00:00Z.
    const DAY0: u64 = 1_795_392_000_000;

    fn counter(id: u32, count: u32, end_ms: u64) -> Counter {
        Counter {
            id: CounterId(id),
            count,
            end_ms,
        }
    }

    fn sample() -> Snapshot {
        Snapshot {
            saved_at_ms: DAY0 + 3_600_000,
            generation: 12,
            accounts: vec![
                (
                    AccountId::from_key(b"alice"),
                    vec![
                        counter(7, 3, DAY0 + DAY_MS),
                        counter(9, 1, DAY0 + 3_660_000),
                    ],
                ),
                (
                    AccountId(u128::MAX),
                    vec![counter(u32::MAX, u32::MAX, u64::MAX)],
                ),
                (AccountId(0), vec![]),
            ],
        }
    }

    #[test]
    fn encode_then_decode_gives_the_same_snapshot() {
        assert_eq!(decode(&encode(&sample())), Ok(sample()));
        assert_eq!(
            decode(&encode(&Snapshot::default())),
            Ok(Snapshot::default())
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode(&sample());
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "cut at {len}");
        }
        assert_eq!(
            decode(&bytes[..bytes.len() - 5]),
            Err(SnapshotError::Truncated {
                expected: (bytes.len() - HEADER_LEN) as u64,
                found: (bytes.len() - HEADER_LEN - 5) as u64,
            })
        );
    }

    #[test]
    fn every_flipped_byte_is_an_error() {
        let bytes = encode(&sample());
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            assert!(decode(&bad).is_err(), "byte {i} flipped was accepted");
        }
        let mut bad = bytes.clone();
        bad[HEADER_LEN + 20] ^= 1;
        assert_eq!(decode(&bad), Err(SnapshotError::Checksum));
    }

    #[test]
    fn foreign_and_future_files_are_refused() {
        assert_eq!(decode(b""), Err(SnapshotError::BadMagic));
        assert_eq!(
            decode(b"{\"accounts\": []}\n"),
            Err(SnapshotError::BadMagic)
        );
        let mut v3 = encode(&sample());
        v3[8..12].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(decode(&v3), Err(SnapshotError::UnsupportedVersion(3)));
        let mut long = encode(&sample());
        long.extend_from_slice(b"junk");
        assert_eq!(decode(&long), Err(SnapshotError::TrailingBytes(4)));
    }

    /// Bytes with a valid header around `payload`.
    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(payload).to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn a_checksummed_but_malformed_payload_is_refused_without_allocating_what_it_claims() {
        let mut claims_too_much = DAY0.to_le_bytes().to_vec();
        claims_too_much.extend_from_slice(&5u64.to_le_bytes()); // the generation
        claims_too_much.extend_from_slice(&u32::MAX.to_le_bytes()); // 4 billion accounts
        claims_too_much.extend_from_slice(&[0u8; 19]);
        assert_eq!(
            decode(&framed(&claims_too_much)),
            Err(SnapshotError::Malformed("an entry is cut short"))
        );
        let mut extra = encode(&Snapshot::default())[HEADER_LEN..].to_vec();
        extra.push(0);
        assert_eq!(
            decode(&framed(&extra)),
            Err(SnapshotError::Malformed(
                "bytes left after the last account"
            ))
        );
    }

    /// The version 1 layout, as floodgate wrote it before the journal: no generation.
    fn encode_v1(snapshot: &Snapshot) -> Vec<u8> {
        let mut payload = snapshot.saved_at_ms.to_le_bytes().to_vec();
        payload.extend_from_slice(&encode(snapshot)[HEADER_LEN + 16..]);
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    #[test]
    fn a_version_1_file_still_loads_as_generation_0() {
        let old = Snapshot {
            generation: 0,
            ..sample()
        };
        let bytes = encode_v1(&old);
        assert_eq!(&bytes[8..12], &1u32.to_le_bytes());
        assert_eq!(decode(&bytes), Ok(old));
        let mut cut = encode_v1(&sample());
        cut.truncate(cut.len() - 3);
        assert!(decode(&cut).is_err());
    }

    #[test]
    fn only_open_windows_survive_a_load() {
        let yesterday = DAY0 - DAY_MS + 5_000;
        let saved = Snapshot {
            saved_at_ms: yesterday,
            generation: 0,
            accounts: vec![
                // Yesterday's daily counter (ends at DAY0) and a minute long gone: the account goes.
                (
                    AccountId(1),
                    vec![counter(1, 14, DAY0), counter(2, 1, yesterday + 60_000)],
                ),
                // Today's daily counter stays; its closed minute window goes.
                (
                    AccountId(2),
                    vec![counter(1, 5, DAY0 + DAY_MS), counter(2, 1, DAY0 + 60_000)],
                ),
            ],
        };
        let now = DAY0 + 60_000; // the minute window ends exactly now: closed
        assert_eq!(
            decode(&encode(&saved)).unwrap().live(now).accounts,
            vec![(AccountId(2), vec![counter(1, 5, DAY0 + DAY_MS)])]
        );
        assert_eq!(
            saved.clone().live(DAY0 + DAY_MS).accounts,
            vec![],
            "the next day nothing is left"
        );
    }

    #[test]
    fn save_is_atomic_and_load_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.bin");
        assert!(matches!(load(&path, DAY0), Ok(Loaded::Missing)));
        save(&path, &Snapshot::default()).unwrap();
        save(&path, &sample()).unwrap();
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["state.bin"], "no temp file left behind");
        match load(&path, DAY0 + 3_600_000).unwrap() {
            Loaded::State(s) => assert_eq!(s, sample().live(DAY0 + 3_600_000)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_corrupt_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.bin");
        let mut bytes = encode(&sample());
        bytes.truncate(bytes.len() / 2);
        fs::write(&path, &bytes).unwrap();
        match load(&path, 1234).unwrap() {
            Loaded::Corrupt { error, set_aside } => {
                assert!(matches!(error, SnapshotError::Truncated { .. }), "{error}");
                let aside = set_aside.unwrap();
                assert_eq!(aside, dir.path().join("state.bin.corrupt-1234"));
                assert_eq!(fs::read(&aside).unwrap(), bytes, "kept for a post-mortem");
            }
            other => panic!("{other:?}"),
        }
        assert!(!path.exists());
        assert!(matches!(load(&path, 1235), Ok(Loaded::Missing)));
    }

    #[test]
    fn a_bare_file_name_saves_in_the_working_directory() {
        assert_eq!(directory_of(Path::new("state.bin")), Path::new("."));
        assert_eq!(
            sibling(Path::new("/var/lib/fg/state.bin"), "tmp"),
            Path::new("/var/lib/fg/state.bin.tmp")
        );
    }
}
