//! The training workload of floodgate's profile-guided build (`scripts/pgo-build.sh`).
//!
//! Runs a floodgate binary (the instrumented one) on loopback in front of an upstream of its
//! own, twice: on `config/bench.toml` with the benchmark's traffic (keep-alive GETs checked
//! against a per-key limit), then on `config/floodgate.toml` with a mix — limited classes
//! admitted and refused, an unknown path, a path to normalise, a 256 KiB upload, a 1 MiB
//! answer, the premium key, the admin endpoints. Each floodgate ends on SIGTERM, which writes
//! its profile. Every loop is bounded by a request count; the run fails (exit 1) when the
//! answers are not what the configs say, so a broken workload cannot train a build quietly.
//!
//! ```text
//! cargo run --release --example pgo_workload -- FLOODGATE_BINARY [SCALE]
//! ```
//! SCALE (default 1.0) multiplies the request counts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// What one phase sends on each of its connections, one request after another.
struct Phase {
    config: &'static str,
    connections: usize,
    requests_per_connection: usize,
    /// The `j`th request of connection `c`.
    request: fn(c: usize, j: usize) -> Request<Full<Bytes>>,
    /// Whether the statuses counted are what the config calls for.
    expected: fn(&BTreeMap<u16, usize>) -> bool,
}

const BENCH: Phase = Phase {
    config: "config/bench.toml",
    connections: 64,
    requests_per_connection: 1500,
    request: bench_request,
    // Nothing is refused under the benchmark's limit.
    expected: |statuses| statuses.keys().all(|s| *s == 200),
};

const MIX: Phase = Phase {
    config: "config/floodgate.toml",
    connections: 16,
    requests_per_connection: 400,
    request: mix_request,
    // The basic tier's minute limits refuse some; the rest pass.
    expected: |statuses| statuses.contains_key(&200) && statuses.contains_key(&429),
};

fn bench_request(c: usize, _j: usize) -> Request<Full<Bytes>> {
    get("/")
        .header("x-api-key", format!("k{c}"))
        .body(Full::default())
        .unwrap()
}

fn mix_request(c: usize, j: usize) -> Request<Full<Bytes>> {
    let key = format!("train-{c}-{}", j % 3);
    let json = || Full::new(Bytes::from_static(br#"{"prompt": "a lighthouse"}"#));
    let post = |path: &str, key: &str, body| {
        Request::post(path)
            .header("x-api-key", key)
            .header("content-type", "application/json")
            .body(body)
            .unwrap()
    };
    match j % 10 {
        0..=4 => post("/api/v1/txt2img", &key, json()),
        5 => get("/v1/other?page=2")
            .header("x-api-key", key)
            .body(Full::default())
            .unwrap(),
        6 => post(
            "/api/v1/img2img",
            &key,
            Full::new(Bytes::from(vec![7u8; 256 << 10])),
        ),
        7 => get("/big")
            .header("x-api-key", key)
            .body(Full::default())
            .unwrap(),
        8 => post("/api/v1/txt2img", "demo-premium-key", json()),
        _ => post("/api/v1//./txt2img/?x=1", &key, json()),
    }
}

fn get(path: &str) -> http::request::Builder {
    Request::get(path)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let Some(binary) = args.next() else {
        eprintln!("usage: pgo_workload FLOODGATE_BINARY [SCALE]");
        std::process::exit(2);
    };
    let scale: f64 = args
        .next()
        .map_or(1.0, |s| s.parse().expect("SCALE is a number"));
    let upstream = start_upstream().await;
    let mut failed = false;
    for phase in [BENCH, MIX] {
        failed |= !run_phase(&binary, upstream, &phase, scale).await;
    }
    if failed {
        std::process::exit(1);
    }
}

/// Runs one floodgate on `phase.config` under the phase's traffic; `false` when an answer or
/// the exit was not as expected.
async fn run_phase(binary: &str, upstream: SocketAddr, phase: &Phase, scale: f64) -> bool {
    let (listen, admin) = (free_port(), free_port());
    let mut gate = spawn_floodgate(binary, phase.config, listen, admin, upstream);
    let ready = wait_until_listening(listen).await;
    let started = Instant::now();
    let per_connection = ((phase.requests_per_connection as f64 * scale) as usize).max(1);
    let mut tasks = Vec::new();
    for c in 0..phase.connections {
        let make = phase.request;
        tasks.push(tokio::spawn(async move {
            drive(listen, per_connection, move |j| make(c, j)).await
        }));
    }
    let mut statuses = BTreeMap::new();
    for task in tasks {
        for (status, n) in task.await.unwrap_or_default() {
            *statuses.entry(status).or_insert(0usize) += n;
        }
    }
    for path in ["/metrics", "/healthz", "/readyz"] {
        let _ = drive(admin, 1, |_| get(path).body(Full::default()).unwrap()).await;
    }
    let elapsed = started.elapsed();
    let exited = stop(&mut gate);
    let total: usize = statuses.values().sum();
    println!(
        "{}: {total} requests in {:.1} s, statuses {statuses:?}, exit {exited:?}",
        phase.config,
        elapsed.as_secs_f64()
    );
    let expected = (phase.expected)(&statuses);
    ready && expected && total == phase.connections * per_connection && exited == Some(true)
}

fn spawn_floodgate(
    binary: &str,
    config: &str,
    listen: SocketAddr,
    admin: SocketAddr,
    upstream: SocketAddr,
) -> Child {
    // A fresh state file per run: the shipped config keeps state, and counts carried over from
    // an earlier run would change the answers the workload checks.
    let state = std::env::temp_dir().join(format!("floodgate-pgo-{}.bin", listen.port()));
    let _ = std::fs::remove_file(&state);
    Command::new(binary)
        .args(["--config", config])
        .arg("--state")
        .arg(&state)
        .args(["--listen", &listen.to_string()])
        .args(["--admin", &admin.to_string()])
        .args(["--upstream", &format!("http://{upstream}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"))
}

/// SIGTERM, then the exit (floodgate writes its profile as it exits); `Some(success)`.
fn stop(gate: &mut Child) -> Option<bool> {
    if let Ok(pid) = libc::pid_t::try_from(gate.id()) {
        // SAFETY: kill(2) with a child's pid and a signal number has no memory effects.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = gate.try_wait() {
            return Some(status.success());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = gate.kill();
    None
}

async fn wait_until_listening(addr: SocketAddr) -> bool {
    for _ in 0..250 {
        if TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn free_port() -> SocketAddr {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    socket.local_addr().unwrap()
}

/// Sends `count` requests one after another on one keep-alive connection to `addr` (a new
/// connection when floodgate closes one); returns how many got each status.
async fn drive(
    addr: SocketAddr,
    count: usize,
    request: impl Fn(usize) -> Request<Full<Bytes>>,
) -> Vec<(u16, usize)> {
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut sender = None;
    for j in 0..count {
        if sender.is_none() {
            sender = connect(addr).await;
        }
        let Some(s) = sender.as_mut() else {
            *statuses.entry(0).or_default() += 1;
            continue;
        };
        let status = match s.send_request(request(j)).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let _ = resp.into_body().collect().await;
                status
            }
            Err(_) => 0,
        };
        if status == 0 || !s.is_ready() {
            sender = None;
        }
        *statuses.entry(status).or_default() += 1;
    }
    statuses.into_iter().collect()
}

async fn connect(addr: SocketAddr) -> Option<client::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (sender, conn) = client::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    Some(sender)
}

/// An upstream on a loopback port: `/big` answers 1 MiB, a request with a body is read whole
/// and its size answered, anything else answers `ok`.
async fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(answer);
                let _ = server::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    static BIG: [u8; 1 << 20] = [b'x'; 1 << 20];
    let body = if req.uri().path() == "/big" {
        Bytes::from_static(&BIG)
    } else {
        let received = req.into_body().collect().await?.to_bytes().len();
        match received {
            0 => Bytes::from_static(b"ok"),
            n => Bytes::from(format!(r#"{{"received": {n}}}"#)),
        }
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = StatusCode::OK;
    Ok(resp)
}
