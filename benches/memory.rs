//! Memory per tracked account in the [`MemoryStore`], measured as resident set size.
//!
//! Run with `cargo bench --bench memory`. Target: <= 200 bytes per tracked key at 1M keys.
//!
//! Each case runs in a fresh child process (this binary re-executed), so one case's freed heap
//! does not flatter or spoil the next: the child reads its RSS from `/proc/self/statm`, inserts
//! 1,000,000 distinct accounts with `check_and_consume` (the way the proxy creates them), reads
//! RSS again and prints the difference per key. Account ids are computed, not stored, so the only
//! thing that grows is the store.
//!
//! The RSS figure includes allocator slack (freed pre-resize tables the allocator keeps), so it
//! is what a running proxy would show. The type sizes and the map's capacity are printed as well,
//! to tell the table's share from the slack.

use std::mem::size_of;
use std::process::Command;

use dashmap::DashMap;
use floodgate::config::{Config, Overrides};
use floodgate::identity::{AccountId, BuildIdHasher};
use floodgate::limits::{Counter, Counters, Rule};
use floodgate::store::{open_counters, MemoryStore};

mod common;
use common::{account, check_and_consume, DAY0};

const KEYS: u64 = 1_000_000;
const CASE_VAR: &str = "FLOODGATE_MEMORY_CASE";
const TARGET_BYTES_PER_KEY: f64 = 200.0;

/// The page size, from the ELF auxiliary vector (AT_PAGESZ = 6); 4096 if unreadable.
fn page_size() -> u64 {
    let Ok(auxv) = std::fs::read("/proc/self/auxv") else {
        return 4096;
    };
    auxv.chunks_exact(16)
        .map(|p| {
            (
                u64::from_ne_bytes(p[..8].try_into().unwrap()),
                u64::from_ne_bytes(p[8..].try_into().unwrap()),
            )
        })
        .find(|&(k, _)| k == 6)
        .map_or(4096, |(_, v)| v)
}

/// Resident set size in bytes (second field of `/proc/self/statm`, in pages).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm has a resident field");
    pages * page_size()
}

/// Anonymous memory backed by transparent huge pages (e.g. with
/// `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, or THP set to `always`).
fn anon_huge_kib() -> Option<u64> {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    let line = rollup.lines().find(|l| l.starts_with("AnonHugePages:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn rules(tier: &str, class: &str) -> Vec<Rule> {
    let text = include_str!("../config/floodgate.toml");
    let overrides = Overrides {
        upstream: Some("http://127.0.0.1:9".into()),
        ..Default::default()
    };
    let config = Config::parse(text, &overrides).expect("config/floodgate.toml parses");
    let t = config
        .tiers
        .iter()
        .find(|t| t.name == tier)
        .expect("tier exists");
    let c = config
        .classes
        .iter()
        .position(|c| c == class)
        .expect("class exists");
    t.rules(floodgate::classify::ClassId(c as u16)).to_vec()
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// One measurement, in this (child) process.
fn run_case(case: &str) {
    // Each account makes one request per entry: a heavy basic user of two endpoint classes
    // holds 4 counters, which spill the inline SmallVec (2 counters) to the heap.
    let requests: Vec<Vec<Rule>> = match case {
        "basic_txt2img_2_counters" => vec![rules("basic", "txt2img")],
        "premium_1_counter" => vec![rules("premium", "txt2img")],
        "basic_txt2img_img2img_4_counters" => {
            vec![rules("basic", "txt2img"), rules("basic", "img2img")]
        }
        other => panic!("unknown case {other:?}"),
    };
    let rule_count: usize = requests.iter().map(Vec::len).sum();
    let store = MemoryStore::default();
    // Touch the map once so its shards exist before the baseline.
    check_and_consume(&store, AccountId(u128::MAX), &requests[0], DAY0);
    let before = rss_bytes();
    for i in 0..KEYS {
        for rules in &requests {
            let d = check_and_consume(&store, account(i), rules, DAY0 + i);
            assert!(d.is_admitted());
        }
    }
    let after = rss_bytes();
    let huge = anon_huge_kib();
    assert_eq!(store.len() as u64, KEYS + 1);
    let per_key = (after.saturating_sub(before)) as f64 / KEYS as f64;
    let counters: usize = (0..16)
        .map(|i| store.apply(account(i), DAY0, open_counters).0.len())
        .sum();
    println!(
        "memory/{case}: {} rules ({} counters per account), RSS before {:.1} MiB, after {:.1} MiB, \
         delta {:.1} MiB => {:.1} bytes per key at 1M keys (target <= {TARGET_BYTES_PER_KEY})",
        rule_count,
        counters / 16,
        mib(before),
        mib(after),
        mib(after.saturating_sub(before)),
        per_key,
    );
    if let Some(kib) = huge.filter(|&k| k > 0) {
        println!(
            "memory/{case}: {:.1} MiB of it on transparent huge pages",
            kib as f64 / 1024.0
        );
    }

    // The same inserts into a bare map of the store's type, for its capacity: the table's own
    // share of the RSS above (buckets x (entry + 1 control byte)).
    drop(store);
    let map: DashMap<AccountId, Counters, BuildIdHasher> = DashMap::with_hasher(Default::default());
    for i in 0..KEYS {
        map.insert(account(i), Counters::default());
    }
    let cap = map.capacity();
    let entry = size_of::<(AccountId, Counters)>();
    // hashbrown keeps at most 7/8 of its buckets full: buckets = capacity * 8 / 7, a power of
    // two per shard.
    let buckets = cap as f64 * 8.0 / 7.0;
    println!(
        "memory/{case}: map len {} capacity {cap} buckets {buckets:.0} ({:.2} of buckets used); at \
         {entry} B/entry + 1 ctrl byte the tables hold ~{:.1} bytes per key; the rest of the RSS \
         delta is allocator slack and spilled counter lists",
        map.len(),
        map.len() as f64 / buckets,
        buckets * (entry as f64 + 1.0) / KEYS as f64,
    );
    if per_key > TARGET_BYTES_PER_KEY {
        println!("memory/{case}: OVER TARGET");
    }
}

fn main() {
    if let Ok(case) = std::env::var(CASE_VAR) {
        run_case(&case);
        return;
    }
    let shards =
        (std::thread::available_parallelism().map_or(1, usize::from) * 4).next_power_of_two();
    println!(
        "memory: page {} B; size_of Counter {} B, Counters {} B, AccountId {} B (align {}), \
         (AccountId, Counters) entry {} B; dashmap shards {shards}",
        page_size(),
        size_of::<Counter>(),
        size_of::<Counters>(),
        size_of::<AccountId>(),
        std::mem::align_of::<AccountId>(),
        size_of::<(AccountId, Counters)>(),
    );
    let exe = std::env::current_exe().expect("current exe");
    let mut failed = false;
    for case in [
        "basic_txt2img_2_counters",
        "premium_1_counter",
        "basic_txt2img_img2img_4_counters",
    ] {
        let status = Command::new(&exe)
            .env(CASE_VAR, case)
            .status()
            .expect("run the measurement child");
        failed |= !status.success();
    }
    if failed {
        std::process::exit(1);
    }
}
