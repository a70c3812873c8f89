//! HTTP/2 with the clients floodgate's users run: curl (libcurl + nghttp2) over TLS with ALPN
//! `h2` and over h2c prior knowledge, nghttp, h2load, Python httpx and Node's http2. Each gets
//! its 200s within quota and, for a refused POST with a body, the 429 with its headers — the
//! request body read and discarded so the stream ends with END_STREAM, never a reset that
//! libcurl would report instead of the answer. An oversize upload gets its 413, or a clean
//! reset after it, and never hangs; a queued job completes; h2load's many streams over a few
//! connections admit exactly the quota. A client that is not installed is SKIPPED (`.ci/run`
//! installs them all).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::pki::Ca;
use support::{Gate, Upstream, DAY0_MS};

/// 3 a minute on `/limited`, a 16KB cap on `/upload`, one job at a time on `/slow`.
const LIMITS: &str = r#"
    [[route]]
    path = "/limited"
    class = "limited"
    [[route]]
    path = "/upload"
    class = "upload"
    [[route]]
    method = "POST"
    path = "/slow"
    class = "job"
    [classes.upload]
    max_body = "16KB"
    [[jobs]]
    classes = ["job"]
    [tiers.t]
    concurrency = 1
    [[tiers.t.limits]]
    classes = ["limited"]
    per_minute = 3
"#;

/// floodgate with TLS (ALPN `h2`) and the CA that signed its certificate, as a PEM file.
struct TlsGate {
    gate: Gate,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

fn tls_gate(up: &Upstream) -> TlsGate {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.leaf(&["localhost"]).write(dir.path());
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let cfg = format!("[server.tls]\ncert_file = {cert:?}\nkey_file = {key:?}\n{LIMITS}");
    TlsGate {
        gate: Gate::start(&cfg, &up.url(), DAY0_MS),
        ca_file,
        _dir: dir,
    }
}

fn h2c_gate(up: &Upstream) -> Gate {
    Gate::start(
        &format!("[server]\nh2c = true\n{LIMITS}"),
        &up.url(),
        DAY0_MS,
    )
}

/// Whether `tool` runs here; says SKIPPED when not.
fn installed(tool: &str, version_flag: &str) -> bool {
    let ok = Command::new(tool)
        .arg(version_flag)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: {tool} is not installed here; .ci/run installs it");
    }
    ok
}

/// What a client printed, and how it exited.
#[derive(Debug)]
#[allow(dead_code)] // `stderr` is shown when an assertion prints a run
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs a client to its end (bounded by `timeout`, which it is given on its command line or
/// killed at), off the test's runtime threads, which serve the upstream.
async fn run(program: &str, args: Vec<String>) -> Ran {
    let program = program.to_owned();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let out = Command::new("timeout")
            .arg("30")
            .arg(&program)
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took: started.elapsed(),
        }
    })
    .await
    .unwrap()
}

fn body_file(dir: &Path, name: &str, len: usize) -> String {
    let path = dir.join(name);
    let mut body = br#"{"prompt":"a cat"#.to_vec();
    body.resize(len.saturating_sub(2).max(body.len()), b' ');
    body.extend_from_slice(b"\"}");
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

/// `curl` with `args`, printing the status and Retry-After as the last line.
async fn curl(args: &[&str]) -> (Ran, String) {
    let mut all: Vec<String> = ["-sS", "-o", "/dev/null", "--max-time", "20", "-w"]
        .map(str::to_owned)
        .into();
    all.push("%{http_code} %header{retry-after}".to_owned());
    all.extend(args.iter().map(|a| a.to_string()));
    let ran = run("curl", all).await;
    let last = ran.stdout.lines().last().unwrap_or("").trim().to_owned();
    (ran, last)
}

/// Three admitted POSTs, then refused POSTs with bodies that each get their 429 and its exact
/// Retry-After, with curl exiting 0: over `proto` (curl's protocol flags) to `base`.
async fn curl_sees_every_refusal(proto: &[&str], base: &str, key: &str, up: &Upstream) {
    let dir = tempfile::tempdir().unwrap();
    let small = format!("@{}", body_file(dir.path(), "small.json", 200));
    let before = up.count();
    let url = format!("{base}/limited");
    let post = |url: String| {
        let mut args: Vec<String> = proto.iter().map(|a| a.to_string()).collect();
        args.extend(["-X", "POST", "-H", &format!("x-api-key: {key}")].map(String::from));
        args.extend(["--data-binary".to_owned(), small.clone(), url]);
        args
    };
    for i in 0..3 {
        let args = post(url.clone());
        let (ran, last) = curl(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        assert_eq!(
            (ran.code, last.as_str()),
            (Some(0), "200"),
            "admitted #{i}: {ran:?}"
        );
    }
    for i in 0..20 {
        let args = post(url.clone());
        let (ran, last) = curl(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        assert_eq!(
            (ran.code, last.as_str()),
            (Some(0), "429 60"),
            "refusal #{i} must reach curl as a 429 with Retry-After: {ran:?}"
        );
    }
    assert_eq!(
        up.count() - before,
        3,
        "only the admitted reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_tls_and_h2c_gets_every_refused_post_as_a_429() {
    if !installed("curl", "--version") {
        return;
    }
    let up = Upstream::start().await;
    let tls = tls_gate(&up);
    let cafile = tls.ca_file.display().to_string();
    let tls_base = format!("https://localhost:{}", tls.gate.addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", tls.gate.addr.port());
    let tls_proto = ["--http2", "--cacert", &cafile, "--resolve", &resolve];
    curl_sees_every_refusal(&tls_proto, &tls_base, "curl-tls", &up).await;

    let h2c = h2c_gate(&up);
    let h2c_base = format!("http://{}", h2c.addr);
    curl_sees_every_refusal(&["--http2-prior-knowledge"], &h2c_base, "curl-h2c", &up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_oversize_uploads_get_a_413_or_a_clean_reset_and_never_hang() {
    if !installed("curl", "--version") {
        return;
    }
    let up = Upstream::start().await;
    let gate = h2c_gate(&up);
    let dir = tempfile::tempdir().unwrap();
    // Over the cap, within the discard limit (64KB): read and discarded, the 413 reaches curl.
    let over_cap = format!("@{}", body_file(dir.path(), "over.json", 40 * 1024));
    // Declared well past the discard limit: answered, then reset (NO_ERROR).
    let huge = format!("@{}", body_file(dir.path(), "huge.json", 4 * 1024 * 1024));
    let url = format!("http://{}/upload", gate.addr);
    let upload = |body: &str| {
        let args: Vec<String> = [
            "--http2-prior-knowledge",
            "-X",
            "POST",
            "-H",
            "x-api-key: uploader",
            "--data-binary",
            body,
            &url,
        ]
        .map(String::from)
        .into();
        async move { curl(&args.iter().map(String::as_str).collect::<Vec<_>>()).await }
    };
    for i in 0..5 {
        let (ran, last) = upload(&over_cap).await;
        assert_eq!(
            (ran.code, last.as_str()),
            (Some(0), "413"),
            "#{i}: a 40KB upload over the 16KB cap gets its 413: {ran:?}"
        );
    }
    let (ran, last) = upload(&huge).await;
    assert!(ran.took < Duration::from_secs(10), "no hang: {ran:?}");
    let answered = ran.code == Some(0) && last.starts_with("413");
    // libcurl before 8.x ends a transfer whose stream closed mid-upload with exit 92 (or a
    // send error), whatever status it got.
    let reset = matches!(ran.code, Some(16 | 55 | 92));
    assert!(answered || reset, "a 413 or a clean reset: {ran:?} {last}");
    assert_eq!(up.count(), 0, "nothing oversize reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nghttp_reads_every_refusal_and_sees_no_reset_for_a_small_body() {
    if !installed("nghttp", "--version") {
        return;
    }
    let up = Upstream::start().await;
    let gate = h2c_gate(&up);
    let dir = tempfile::tempdir().unwrap();
    let small = body_file(dir.path(), "small.json", 2048);
    let huge = body_file(dir.path(), "huge.json", 2 * 1024 * 1024);
    let nghttp = |data: &str, path: &str| {
        let args: Vec<String> = [
            "-v",
            "-t",
            "20",
            "-H",
            "x-api-key: nghttp",
            "-d",
            data,
            &format!("http://{}{path}", gate.addr),
        ]
        .map(String::from)
        .into();
        run("nghttp", args)
    };
    for i in 0..8 {
        let ran = nghttp(&small, "/limited").await;
        let want = if i < 3 {
            ":status: 200"
        } else {
            ":status: 429"
        };
        assert!(ran.stdout.contains(want), "#{i}: {}", ran.stdout);
        assert!(
            !ran.stdout.contains("recv RST_STREAM"),
            "#{i}: the stream ends with END_STREAM, not a reset: {}",
            ran.stdout
        );
        if i >= 3 {
            assert!(ran.stdout.contains("retry-after: 60"), "{}", ran.stdout);
        }
    }
    let ran = nghttp(&huge, "/upload").await;
    assert!(ran.stdout.contains(":status: 413"), "{}", ran.stdout);
    if let Some(reset) = ran.stdout.lines().find(|l| l.contains("recv RST_STREAM")) {
        let after = &ran.stdout[ran.stdout.find(reset).unwrap()..];
        assert!(
            after.contains("NO_ERROR"),
            "a reset after the answer says NO_ERROR: {after}"
        );
    }
    assert!(ran.took < Duration::from_secs(10), "no hang: {ran:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_many_streams_over_few_connections_admit_exactly_the_quota() {
    if !installed("h2load", "--version") {
        return;
    }
    let up = Upstream::start().await;
    let gate = h2c_gate(&up);
    let dir = tempfile::tempdir().unwrap();
    let body = body_file(dir.path(), "job.json", 600);
    let args: Vec<String> = [
        "-n",
        "400",
        "-c",
        "4",
        "-m",
        "25",
        "-H",
        "x-api-key: h2load",
        "-d",
        &body,
        &format!("http://{}/limited", gate.addr),
    ]
    .map(String::from)
    .into();
    let ran = run("h2load", args).await;
    // h2load counts a 4xx as "failed"; "errored" is a stream that got no answer.
    assert!(
        ran.stdout
            .contains("400 total, 400 started, 400 done, 3 succeeded, 397 failed, 0 errored"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout
            .contains("status codes: 3 2xx, 0 3xx, 397 4xx, 0 5xx"),
        "{}",
        ran.stdout
    );
    assert_eq!(up.count(), 3, "exactly the quota reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_over_h2_completes_in_turn() {
    if !installed("curl", "--version") {
        return;
    }
    let up = Upstream::start().await;
    let gate = h2c_gate(&up);
    let url = format!("http://{}/slow?ms=300", gate.addr);
    let job = |n: u32| {
        let url = url.clone();
        async move {
            let header = format!("x-job: job{n}");
            curl(&[
                "--http2-prior-knowledge",
                "-X",
                "POST",
                "-H",
                "x-api-key: jobs",
                "-H",
                &header,
                "--data",
                "{\"prompt\":\"a cat\"}",
                &url,
            ])
            .await
        }
    };
    let (a, b) = tokio::join!(job(1), job(2));
    for (ran, last) in [&a, &b] {
        assert_eq!((ran.code, last.as_str()), (Some(0), "200"), "{ran:?}");
    }
    assert_eq!(up.max_in_flight(), 1, "one job at a time");
}

const PYTHON_CLIENT: &str = r#"
import ssl, sys, httpx
base, ca = sys.argv[1], sys.argv[2]
with httpx.Client(http2=True, verify=ssl.create_default_context(cafile=ca)) as c:
    for i in range(6):
        r = c.post(base + "/limited", headers={"x-api-key": "httpx"}, content=b'{"prompt":"a cat"}' * 50)
        print(r.http_version, r.status_code, r.headers.get("retry-after", ""))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_httpx_over_h2_reads_every_refusal() {
    let has_httpx = Command::new("python3")
        .args(["-c", "import httpx, h2"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_httpx {
        eprintln!("SKIPPED: python3 with httpx[http2] is not installed; .ci/run installs it");
        return;
    }
    let up = Upstream::start().await;
    let tls = tls_gate(&up);
    let base = format!("https://localhost:{}", tls.gate.addr.port());
    let args = vec![
        "-c".to_owned(),
        PYTHON_CLIENT.to_owned(),
        base,
        tls.ca_file.display().to_string(),
    ];
    let ran = run("python3", args).await;
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "HTTP/2 200 ",
            "HTTP/2 200 ",
            "HTTP/2 200 ",
            "HTTP/2 429 60",
            "HTTP/2 429 60",
            "HTTP/2 429 60"
        ],
        "{ran:?}"
    );
}

const NODE_CLIENT: &str = r#"
const http2 = require('http2');
const fs = require('fs');
const [base, ca] = process.argv.slice(1);
const session = http2.connect(base, { ca: fs.readFileSync(ca) });
const body = Buffer.from('{"prompt":"a cat"}'.repeat(50));
function post() {
  return new Promise((resolve, reject) => {
    const req = session.request({ ':method': 'POST', ':path': '/limited', 'x-api-key': 'node',
                                  'content-length': body.length });
    let status, retry;
    req.on('response', (h) => { status = h[':status']; retry = h['retry-after'] || ''; });
    req.on('data', () => {});
    req.on('end', () => resolve(`${status} ${retry}`));
    req.on('error', reject);
    req.end(body);
  });
}
(async () => {
  for (let i = 0; i < 6; i++) console.log(await post());
  session.close();
})().catch((e) => { console.log('error ' + e.code); process.exit(1); });
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_http2_reads_every_refusal() {
    if !installed("node", "--version") {
        return;
    }
    let up = Upstream::start().await;
    let tls = tls_gate(&up);
    let base = format!("https://localhost:{}", tls.gate.addr.port());
    let args = vec![
        "-e".to_owned(),
        NODE_CLIENT.to_owned(),
        base,
        tls.ca_file.display().to_string(),
    ];
    let ran = run("node", args).await;
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(
        lines,
        ["200 ", "200 ", "200 ", "429 60", "429 60", "429 60"],
        "{ran:?}"
    );
}
