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
    let mut v2 = encode(&sample());
    v2[8..12].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(decode(&v2), Err(SnapshotError::UnsupportedVersion(2)));
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

#[test]
fn only_open_windows_survive_a_load() {
    let yesterday = DAY0 - DAY_MS + 5_000;
    let saved = Snapshot {
        saved_at_ms: yesterday,
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
