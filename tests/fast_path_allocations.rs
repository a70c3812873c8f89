//! The fast path allocates nothing per request once warm (src/server/fast.rs): floodgate's
//! worker threads count their allocations in test builds (`allocator::counting`). A test binary
//! of its own, so no other test's workers allocate into the count meanwhile.

mod support;

use support::raw::{connect, read_response};
use support::{Gate, Upstream, DAY0_MS};
use tokio::io::AsyncWriteExt;

/// Tier `t` never refuses; the key `spent` is on a tier whose daily quota of 1 is used up by
/// the warm-up, so its requests are 429s.
const CONFIG: &str = "[identity]\nanonymous = \"client_ip\"\ndefault_tier = \"t\"\n[accounts]\nspent = \"spent\"\n[[tiers.t.limits]]\nclasses = [\"*\"]\nper_minute = 1000000\n[[tiers.spent.limits]]\nclasses = [\"*\"]\nper_day = 1\n";

#[tokio::test]
async fn a_plain_request_allocates_nothing_once_warm() {
    let config = format!("[server]\nworkers = 1\n{CONFIG}");
    let during = allocations_over_1000(&config).await;
    // A few for the worker's own upkeep (a block of rendered numbers lasts ~400 values).
    assert!(
        during <= 10,
        "{during} allocations on the worker over 1000 requests"
    );
}

#[tokio::test]
async fn with_the_access_log_on_a_request_allocates_a_few_times() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let config = format!(
        "[server]\nworkers = 1\n[access_log]\npath = {:?}\nformat = \"json\"\n{CONFIG}",
        log.display().to_string()
    );
    let during = allocations_over_1000(&config).await;
    // The record's owned fields (path, class, tier, a 429's limit), the response's extensions,
    // the record's handle on the log, and the buffer handed to the writer every few hundred
    // lines: 7 a request measured.
    assert!(
        during <= 8_000,
        "{during} allocations on the worker over 1000 requests"
    );
}

/// Allocations on floodgate's workers over 1000 requests after 300 to warm up: an anonymous
/// caller's (counted by its address), a keyed one's and a refused one's, in turn.
async fn allocations_over_1000(config: &str) -> u64 {
    // The count is the process's: one gate's workers at a time.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let up = Upstream::start().await;
    let gate = Gate::start(config, &up.url(), DAY0_MS);
    let mut s = connect(gate.addr).await;
    let anonymous = b"GET /x?a=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n";
    let keyed = b"POST /y HTTP/1.1\r\nHost: h\r\nx-api-key: k1\r\ncontent-length: 2\r\n\r\n{}";
    let spent = b"GET /z HTTP/1.1\r\nHost: h\r\nx-api-key: spent\r\n\r\n";
    let mut refused = 0;
    let mut exchange = async |n: usize| {
        for i in 0..n {
            let request: &[u8] = [&anonymous[..], keyed, spent][i % 3];
            s.write_all(request).await.unwrap();
            let answer = read_response(&mut s).await.unwrap();
            match answer.status {
                200 => {}
                429 => {
                    refused += 1;
                    assert_eq!(answer.header("x-ratelimit-type"), Some("daily"));
                }
                other => panic!("status {other}"),
            }
        }
    };
    exchange(300).await;
    let before = floodgate::allocator::counting::allocations();
    exchange(1000).await;
    let during = floodgate::allocator::counting::allocations() - before;
    // Every third request is the spent key's, a 429 from its second on.
    assert_eq!(refused, 99 + 333);
    drop(s);
    drop(gate);
    during
}
