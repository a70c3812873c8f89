//! The journal's format: what changed since the last save of the whole state, appended every
//! flush so that a hard kill loses at most one journal interval (pure encoding and decoding; the
//! files are [`super::keeper`]'s).
//!
//! ```text
//! file     magic "FGJOURN\0" | version u32 | generation u64 | xxh3-64 of those 20 bytes u64
//!          then records, appended
//! record   len u32 | xxh3-64 of the body u64 | body (len bytes):
//!            account u128 | counters u32 | per counter: id u32 | count u32 | end_ms u64
//! ```
//!
//! All integers are little-endian. A record holds an account's whole open state — absolute
//! counts, not increments — so replaying it replaces the account's counters: replay is
//! last-write-wins per account, and replaying a record twice changes nothing. One writer thread
//! appends, so an account's records are in the order its changes were made.
//!
//! A crash can leave the last record half-written, and a disk can damage one: decoding stops at
//! the first record that is cut short or fails its checksum, keeps every record before it, and
//! says how many bytes it left unread, for a warning. A damaged tail never fails a start.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::identity::AccountId;
use crate::limits::{Counter, CounterId};

const MAGIC: &[u8; 8] = b"FGJOURN\0";
const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 8 + 4 + 8 + 8;
/// A record's length and checksum, before its body.
const FRAME_LEN: usize = 4 + 8;
/// A body without counters: the account and the counter count.
const BODY_MIN_LEN: usize = 16 + 4;
const COUNTER_LEN: usize = 4 + 4 + 8;
/// More counters than any config gives an account: a length past this is damage, not data.
const MAX_COUNTERS: usize = 1 << 16;

/// One account's open counters at the moment it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub account: AccountId,
    pub counters: Vec<Counter>,
}

/// A journal file's header, for `generation`.
pub fn header(generation: u64) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..8].copy_from_slice(MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[12..20].copy_from_slice(&generation.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&out[..20]);
    out[20..].copy_from_slice(&sum.to_le_bytes());
    out
}

/// Appends one record for `account` to `buf`. Writes into the caller's buffer, which the
/// journal writer reuses from flush to flush.
pub fn append_record<'a>(
    buf: &mut Vec<u8>,
    account: AccountId,
    counters: impl IntoIterator<Item = &'a Counter>,
) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_LEN]);
    buf.extend_from_slice(&account.0.to_le_bytes());
    let count_at = buf.len();
    buf.extend_from_slice(&[0u8; 4]);
    let mut n = 0u32;
    for c in counters {
        buf.extend_from_slice(&c.id.0.to_le_bytes());
        buf.extend_from_slice(&c.count.to_le_bytes());
        buf.extend_from_slice(&c.end_ms.to_le_bytes());
        n += 1;
    }
    buf[count_at..count_at + 4].copy_from_slice(&n.to_le_bytes());
    let body = start + FRAME_LEN;
    let len = (buf.len() - body) as u32;
    let sum = xxhash_rust::xxh3::xxh3_64(&buf[body..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..body].copy_from_slice(&sum.to_le_bytes());
}

/// Why a journal file was not read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("not a floodgate journal (bad header)")]
    BadHeader,
    #[error("journal version {0} is not supported (this build reads version {VERSION})")]
    UnsupportedVersion(u32),
}

/// Where and why decoding stopped before the end of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset in the file of the first record not read.
    pub offset: usize,
    /// Bytes from there to the end of the file, all skipped.
    pub skipped: usize,
    pub kind: DamageKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// The file ends inside a record: a write the crash interrupted.
    Torn,
    /// A record's length is impossible or its checksum does not match.
    Corrupt,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            DamageKind::Torn => "a record cut short",
            DamageKind::Corrupt => "a corrupt record",
        };
        write!(
            f,
            "{what} at byte {}; {} bytes skipped",
            self.offset, self.skipped
        )
    }
}

/// What a journal file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journal {
    pub generation: u64,
    /// Every whole, intact record, in the order written.
    pub records: Vec<Record>,
    /// Set when decoding stopped early.
    pub damage: Option<Damage>,
}

/// Reads a journal file's bytes: its header must be intact; its records are read up to the
/// first damaged one.
pub fn decode(bytes: &[u8]) -> Result<Journal, HeaderError> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(HeaderError::BadHeader);
    }
    let sum = u64::from_le_bytes(bytes[20..28].try_into().expect("8 bytes"));
    if xxhash_rust::xxh3::xxh3_64(&bytes[..20]) != sum {
        return Err(HeaderError::BadHeader);
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(HeaderError::UnsupportedVersion(version));
    }
    let generation = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let mut journal = Journal {
        generation,
        records: Vec::new(),
        damage: None,
    };
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        match record_at(&bytes[at..]) {
            Ok((record, used)) => {
                journal.records.push(record);
                at += used;
            }
            Err(kind) => {
                journal.damage = Some(Damage {
                    offset: at,
                    skipped: bytes.len() - at,
                    kind,
                });
                break;
            }
        }
    }
    Ok(journal)
}

/// The record at the start of `bytes` and its length in bytes.
fn record_at(bytes: &[u8]) -> Result<(Record, usize), DamageKind> {
    if bytes.len() < FRAME_LEN {
        return Err(DamageKind::Torn);
    }
    let len = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
    let shape_ok = len >= BODY_MIN_LEN
        && (len - BODY_MIN_LEN) % COUNTER_LEN == 0
        && (len - BODY_MIN_LEN) / COUNTER_LEN <= MAX_COUNTERS;
    if !shape_ok {
        return Err(DamageKind::Corrupt);
    }
    let Some(body) = bytes.get(FRAME_LEN..FRAME_LEN + len) else {
        return Err(DamageKind::Torn);
    };
    let sum = u64::from_le_bytes(bytes[4..FRAME_LEN].try_into().expect("8 bytes"));
    if xxhash_rust::xxh3::xxh3_64(body) != sum {
        return Err(DamageKind::Corrupt);
    }
    let le = |at: usize, n: usize| &body[at..at + n];
    let account = AccountId(u128::from_le_bytes(le(0, 16).try_into().expect("16")));
    let n = u32::from_le_bytes(le(16, 4).try_into().expect("4")) as usize;
    if n != (len - BODY_MIN_LEN) / COUNTER_LEN {
        return Err(DamageKind::Corrupt);
    }
    let counters = (0..n)
        .map(|i| {
            let at = BODY_MIN_LEN + i * COUNTER_LEN;
            Counter {
                id: CounterId(u32::from_le_bytes(le(at, 4).try_into().expect("4"))),
                count: u32::from_le_bytes(le(at + 4, 4).try_into().expect("4")),
                end_ms: u64::from_le_bytes(le(at + 8, 8).try_into().expect("8")),
            }
        })
        .collect();
    Ok((Record { account, counters }, FRAME_LEN + len))
}

/// `<state file>.journal-<generation>`, beside the state file.
pub fn path_of(state: &Path, generation: u64) -> PathBuf {
    let mut name = state.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".journal-{generation}"));
    state.with_file_name(name)
}

/// The generation in a file name, if it names one of `state`'s journals.
pub fn generation_in(state: &Path, file_name: &str) -> Option<u64> {
    let own = state.file_name()?.to_str()?;
    let digits = file_name.strip_prefix(own)?.strip_prefix(".journal-")?;
    match digits.bytes().all(|b| b.is_ascii_digit()) {
        true => digits.parse().ok(),
        false => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(id: u32, count: u32, end_ms: u64) -> Counter {
        Counter {
            id: CounterId(id),
            count,
            end_ms,
        }
    }

    fn records() -> Vec<Record> {
        vec![
            Record {
                account: AccountId::from_key(b"alice"),
                counters: vec![counter(7, 3, 1_000), counter(9, 1, 2_000)],
            },
            Record {
                account: AccountId(u128::MAX),
                counters: vec![counter(u32::MAX, u32::MAX, u64::MAX)],
            },
            Record {
                account: AccountId(0),
                counters: vec![],
            },
            Record {
                account: AccountId::from_key(b"alice"),
                counters: vec![counter(7, 4, 1_000)],
            },
        ]
    }

    fn file(generation: u64, records: &[Record]) -> Vec<u8> {
        let mut bytes = header(generation).to_vec();
        for r in records {
            append_record(&mut bytes, r.account, &r.counters);
        }
        bytes
    }

    #[test]
    fn records_round_trip_in_order() {
        let journal = decode(&file(42, &records())).unwrap();
        assert_eq!(journal.generation, 42);
        assert_eq!(journal.records, records());
        assert_eq!(journal.damage, None);
        let empty = decode(&header(0)).unwrap();
        assert!(empty.records.is_empty() && empty.damage.is_none());
    }

    #[test]
    fn a_torn_tail_keeps_every_whole_record_at_every_cut() {
        let whole = file(1, &records());
        let last_start = file(1, &records()[..3]).len();
        for cut in last_start..whole.len() {
            let journal = decode(&whole[..cut]).unwrap();
            assert_eq!(journal.records, records()[..3], "cut at {cut}");
            let expected = (cut > last_start).then_some(Damage {
                offset: last_start,
                skipped: cut - last_start,
                kind: DamageKind::Torn,
            });
            assert_eq!(journal.damage, expected, "cut at {cut}");
        }
    }

    #[test]
    fn a_bad_checksum_stops_replay_at_that_record() {
        let mut bytes = file(1, &records());
        let second = file(1, &records()[..1]).len();
        bytes[second + FRAME_LEN + 3] ^= 0x40; // inside the second record's account
        let journal = decode(&bytes).unwrap();
        assert_eq!(journal.records, records()[..1]);
        let damage = journal.damage.unwrap();
        assert_eq!((damage.offset, damage.kind), (second, DamageKind::Corrupt));
        assert_eq!(damage.skipped, bytes.len() - second);
        assert!(damage.to_string().starts_with("a corrupt record at byte"));
    }

    #[test]
    fn an_impossible_length_is_damage_not_an_allocation() {
        let mut bytes = file(1, &records()[..1]);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0u8; 40]);
        let journal = decode(&bytes).unwrap();
        assert_eq!(journal.records.len(), 1);
        assert_eq!(journal.damage.unwrap().kind, DamageKind::Corrupt);
        // Zeros, as a file extended by a crash might read: a length of 0 is no record.
        let mut zeros = file(1, &[]);
        zeros.extend_from_slice(&[0u8; 64]);
        assert_eq!(
            decode(&zeros).unwrap().damage.unwrap().kind,
            DamageKind::Corrupt
        );
    }

    #[test]
    fn a_damaged_header_refuses_the_file() {
        assert_eq!(decode(b""), Err(HeaderError::BadHeader));
        assert_eq!(
            decode(&header(3)[..HEADER_LEN - 1]),
            Err(HeaderError::BadHeader)
        );
        let mut bad = file(3, &records());
        bad[13] ^= 1; // the generation, under the header's checksum
        assert_eq!(decode(&bad), Err(HeaderError::BadHeader));
        let mut future = header(3);
        future[8..12].copy_from_slice(&2u32.to_le_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64(&future[..20]);
        future[20..].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(decode(&future), Err(HeaderError::UnsupportedVersion(2)));
    }

    #[test]
    fn journal_names_carry_their_generation() {
        let state = Path::new("/var/lib/fg/state.bin");
        let path = path_of(state, 17);
        assert_eq!(path, Path::new("/var/lib/fg/state.bin.journal-17"));
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(generation_in(state, name), Some(17));
        for other in [
            "state.bin",
            "state.bin.tmp",
            "state.bin.journal-",
            "state.bin.journal-1x",
            "state.bin.journal-+1",
            "other.bin.journal-3",
        ] {
            assert_eq!(generation_in(state, other), None, "{other}");
        }
    }
}
