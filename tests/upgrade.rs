//! Protocol upgrades (WebSocket and the like): admitted like any request of their class, sent
//! upstream with `Connection: upgrade` and `Upgrade` kept, and — when the upstream answers
//! `101` — tunnelled byte for byte both ways. Real TCP over loopback; every read is bounded.

mod support;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use support::raw::{connect, read_response};
use support::{Gate, Upstream, DAY0_MS};

const CONFIG: &str = r#"
    [[route]]
    method = "GET"
    path = "/upgrade"
    class = "live"
    [[tiers.t.limits]]
    classes = ["live"]
    per_minute = 2
"#;

fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nhost: t\r\nx-api-key: k\r\nconnection: Upgrade\r\n\
         upgrade: echo\r\n\r\n"
    )
}

/// Writes `msg` on the tunnel and reads the same bytes back.
async fn round_trip(s: &mut tokio::net::TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .expect("echo within 5 s")
        .expect("echo read");
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_is_tunnelled_both_ways_after_the_upstreams_101() {
    let up = Upstream::start().await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    let mut s = connect(gate.addr).await;
    s.write_all(upgrade_request("/upgrade").as_bytes())
        .await
        .unwrap();
    let head = read_response(&mut s).await.unwrap();
    assert_eq!(head.status, 101, "{}", head.head);
    assert_eq!(head.header("upgrade"), Some("echo"));
    assert!(head
        .header("connection")
        .is_some_and(|c| c.eq_ignore_ascii_case("upgrade")));
    assert_eq!(head.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(head.header("x-ratelimit-remaining"), Some("1"));

    assert_eq!(
        round_trip(&mut s, b"hello floodgate").await,
        b"hello floodgate"
    );
    let big = vec![7u8; 256 * 1024];
    assert_eq!(
        round_trip(&mut s, &big).await,
        big,
        "a large frame crosses whole"
    );

    let open_tunnels = |text: &str| support::metric(text, "floodgate_tunnels_open");
    let text = support::metrics(&gate.admin_url("/metrics")).await;
    assert_eq!(open_tunnels(&text), 1.0);

    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("upgrade"), Some("echo"));
    assert_eq!(seen[0].header("connection"), Some("upgrade"));
    assert!(seen[0].header("x-forwarded-for").is_some());

    // The client leaves: the tunnel ends and stops being counted.
    drop(s);
    let admin = gate.admin_url("/metrics");
    let closed = support::eventually(Duration::from_secs(5), || async {
        open_tunnels(&support::metrics(&admin).await) == 0.0
    })
    .await;
    assert!(closed, "the tunnel was still counted after its client left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_count_against_the_limits_and_a_refused_one_never_reaches_the_upstream() {
    let up = Upstream::start().await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = connect(gate.addr).await;
        s.write_all(upgrade_request("/upgrade").as_bytes())
            .await
            .unwrap();
        assert_eq!(read_response(&mut s).await.unwrap().status, 101);
        open.push(s);
    }
    let mut s = connect(gate.addr).await;
    s.write_all(upgrade_request("/upgrade").as_bytes())
        .await
        .unwrap();
    let refused = read_response(&mut s).await.unwrap();
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("x-ratelimit-type"), Some("minute"));
    assert_eq!(
        up.seen().len(),
        2,
        "the refused upgrade never reached the upstream"
    );
    // The admitted tunnels still work.
    for s in &mut open {
        assert_eq!(round_trip(s, b"still here").await, b"still here");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_does_not_switch_answers_as_usual() {
    let up = Upstream::start().await;
    let gate = Gate::start(CONFIG, &up.url(), DAY0_MS);
    let mut s = connect(gate.addr).await;
    // The upstream switches only on /upgrade; elsewhere it answers 200 JSON.
    s.write_all(upgrade_request("/plain").as_bytes())
        .await
        .unwrap();
    let a = read_response(&mut s).await.unwrap();
    assert_eq!(a.status, 200, "{}", a.head);
    assert_eq!(a.body, r#"{"ok":true}"#);
    assert!(a.header("upgrade").is_none());
    // The client connection stays an ordinary keep-alive connection.
    s.write_all(b"GET /again HTTP/1.1\r\nhost: t\r\nx-api-key: k\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await.unwrap().status, 200);
}

/// A tunnel nothing moves through for the idle timeout is closed; one with traffic is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_idle_for_the_idle_timeout_is_closed_and_a_busy_one_is_not() {
    let up = Upstream::start().await;
    let config = format!("[server]\nidle_timeout = \"400ms\"\n{CONFIG}");
    let gate = Gate::start(&config, &up.url(), DAY0_MS);
    let mut s = connect(gate.addr).await;
    s.write_all(upgrade_request("/upgrade").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await.unwrap().status, 101);
    // Traffic every 150 ms for over twice the idle timeout keeps it open.
    let busy = std::time::Instant::now();
    let mut last_byte = busy;
    while busy.elapsed() < Duration::from_millis(1000) {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(round_trip(&mut s, b"ping").await, b"ping");
        last_byte = std::time::Instant::now();
    }
    // Then silence: closed about the idle timeout after the last byte.
    assert!(
        support::raw::closed_within(&mut s, Duration::from_secs(3)).await,
        "an idle tunnel stayed open"
    );
    let took = last_byte.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(2000),
        "closed {took:?} after the last byte (idle timeout 400 ms)"
    );
}
