//! The fast path allocates nothing per request once warm (src/server/fast.rs): floodgate's
//! worker threads count their allocations in test builds (`allocator::counting`). A test binary
//! of its own, so no other test's workers allocate into the count meanwhile.

mod support;

use support::raw::{connect, read_response};
use support::{Gate, Upstream, DAY0_MS};
use tokio::io::AsyncWriteExt;

const CONFIG: &str = "[identity]\nanonymous = \"client_ip\"\ndefault_tier = \"t\"\n[[tiers.t.limits]]\nclasses = [\"*\"]\nper_minute = 1000000\n";

#[tokio::test]
async fn a_plain_request_allocates_nothing_once_warm() {
    let up = Upstream::start().await;
    let config = format!("[server]\nworkers = 1\n{CONFIG}");
    let gate = Gate::start(&config, &up.url(), DAY0_MS);
    let mut s = connect(gate.addr).await;
    // An anonymous caller (counted by its address) and one with a key.
    let anonymous = b"GET /x?a=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n";
    let keyed = b"POST /y HTTP/1.1\r\nHost: h\r\nx-api-key: k1\r\ncontent-length: 2\r\n\r\n{}";
    let mut exchange = async |n: usize| {
        for i in 0..n {
            let request: &[u8] = if i % 2 == 0 { anonymous } else { keyed };
            s.write_all(request).await.unwrap();
            let answer = read_response(&mut s).await.unwrap();
            assert_eq!(answer.status, 200);
        }
    };
    exchange(300).await;
    let before = floodgate::allocator::counting::allocations();
    exchange(1000).await;
    let during = floodgate::allocator::counting::allocations() - before;
    // A few for the worker's own upkeep (a block of rendered numbers lasts ~400 values).
    assert!(
        during <= 10,
        "{during} allocations on the worker over 1000 requests"
    );
}
