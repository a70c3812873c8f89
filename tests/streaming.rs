//! 100 MB through floodgate in both directions with flat memory: bodies are streamed, never
//! buffered whole. Alone in its file so the RSS reading sees only this test.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use support::{Gate, Upstream, DAY0_MS};

const MB: u64 = 1024 * 1024;
const TOTAL: u64 = 100 * MB;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_body_streams_both_ways_with_flat_memory() {
    let up = Upstream::start().await;
    let gate = Gate::start("", &up.url(), DAY0_MS);
    let before = rss_bytes();

    // Upload 100 MB to /echo, which streams it straight back; read the echo as it arrives.
    let stream = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let mut left = TOTAL;
    let body = StreamBody::new(futures_util::stream::poll_fn(move |_| {
        if left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = left.min(chunk.len() as u64) as usize;
        left -= n as u64;
        std::task::Poll::Ready(Some(Ok::<_, std::convert::Infallible>(Frame::data(
            chunk.slice(..n),
        ))))
    }))
    .boxed();
    let req = Request::post("/echo")
        .header("host", "x")
        .header("x-api-key", "k")
        .body(body)
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut echoed = 0u64;
    let mut peak = before;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.unwrap().into_data() {
            echoed += d.len() as u64;
            peak = peak.max(rss_bytes());
        }
    }
    assert_eq!(echoed, TOTAL);

    // Download 100 MB.
    sender.ready().await.unwrap();
    let req = Request::get(format!("/download?bytes={TOTAL}"))
        .header("host", "x")
        .header("x-api-key", "k")
        .body(
            http_body_util::Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let mut body = resp.into_body();
    let mut downloaded = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.unwrap().into_data() {
            downloaded += d.len() as u64;
            peak = peak.max(rss_bytes());
        }
    }
    assert_eq!(downloaded, TOTAL);
    assert_eq!(
        up.seen()
            .iter()
            .find(|s| s.target == "/echo")
            .unwrap()
            .body_len,
        TOTAL
    );
    let growth = peak.saturating_sub(before);
    eprintln!("RSS before {} MB, peak {} MB", before / MB, peak / MB);
    assert!(
        growth < 32 * MB,
        "RSS grew by {} MB while streaming 2 x 100 MB",
        growth / MB
    );
}
