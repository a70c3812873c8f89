//! The real `floodgate` binary: `check` on good and bad configs, and a full start -> proxy ->
//! SIGTERM cycle with the listen/upstream/admin flags overriding the file. Loopback only; every
//! wait is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_floodgate");

fn manifest_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn floodgate(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run floodgate")
}

fn check(config: &str) -> (Option<i32>, String, String) {
    let out = floodgate(&["check", "--config", config]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check_ok(rel: &str, expected: &[&str]) {
    let path = manifest_path(rel);
    let (code, stdout, stderr) = check(path.to_str().unwrap());
    assert_eq!(
        code,
        Some(0),
        "check {rel}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.starts_with(&format!("{}: ok\n", path.display())),
        "check {rel}: {stdout}"
    );
    for want in expected {
        assert!(
            stdout.contains(want),
            "check {rel}: summary lacks {want:?}:\n{stdout}"
        );
    }
}

#[test]
fn check_floodgate_toml() {
    check_ok(
        "config/floodgate.toml",
        &[
            "listen 127.0.0.1:8080  upstream http://127.0.0.1:9000  admin 127.0.0.1:9090\n",
            "18 routes, 19 classes, 2 tiers\n",
            "  route POST /api/v1/txt2img -> txt2img\n",
            "  route POST /api/v1/prompt/* -> prompt\n",
            "  default class: default\n",
            "  tier basic: txt2img[minute=3 daily=100] ",
            "  tier premium: default[minute=300] ",
        ],
    );
}

#[test]
fn check_midjourney_toml() {
    check_ok(
        "config/midjourney.toml",
        &[
            "4 routes, 5 classes, 5 tiers\n",
            "  route GET /mj/message/{} -> progress\n",
            "  route POST /mj/submit/imagine -> imagine\n",
            "  default class: general\n",
            "  tier free: general[interval=1/3000ms] progress[second=10] imagine[interval=1/3000ms] \
             blend[interval=1/3000ms] submit[interval=1/3000ms]\n",
            "  job class submit: Task, max job time 600s\n",
            "  queue free: concurrency 2, max queue 50, max wait 600s, pool upstream\n",
            "  incorrect tasks: 3 rules, judged on imagine, blend, submit\n",
            "  relax: mode at /process_mode (default fast, unreadable relax), counted on imagine, blend, submit, \
             earned by imagine, blend\n",
            "  penalties free: incorrect 30/day then block; relax 100/day then surcharge x2\n",
            "  penalties developer: incorrect 60/day then flag; relax 500/day then surcharge x2\n",
            "  penalties pro: incorrect 60/day then flag; relax 1500/day then surcharge x2\n",
        ],
    );
}

#[test]
fn check_bench_toml() {
    check_ok(
        "config/bench.toml",
        &[
            "listen 127.0.0.1:18085  upstream http://127.0.0.1:18080  admin 127.0.0.1:18086\n",
            "0 routes, 1 classes, 1 tiers\n",
            "  tier bench: default[second=1000000000]\n",
        ],
    );
}

/// `floodgate check` with `args` and only the environment variables `env` of floodgate's own.
fn check_with_env(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(BIN);
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("FLOODGATE_")) {
        cmd.env_remove(name);
    }
    let out = cmd
        .arg("check")
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run floodgate");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn the_environment_overrides_the_file_and_a_flag_overrides_the_environment() {
    let path = manifest_path("config/floodgate.toml");
    let env = [
        ("FLOODGATE_CONFIG", path.to_str().unwrap()),
        ("FLOODGATE_UPSTREAM", "http://10.1.2.3:9000"),
        ("FLOODGATE_LISTEN", "127.0.0.1:18181"),
        ("FLOODGATE_ADMIN", "off"),
    ];
    let (code, stdout, stderr) = check_with_env(&env, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("listen 127.0.0.1:18181  upstream http://10.1.2.3:9000  admin off"),
        "{stdout}"
    );
    let (code, stdout, stderr) = check_with_env(&env, &["--upstream", "http://10.9.9.9:9000"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("upstream http://10.9.9.9:9000"), "{stdout}");
    let (code, _, stderr) = check_with_env(&[("FLOODGATE_WORKERS", "many")], &[]);
    assert_eq!(code, Some(2), "a bad value is a usage error");
    assert!(
        stderr.contains("'many'") && stderr.contains("--workers"),
        "{stderr}"
    );
}

#[test]
fn check_bad_config_names_field_and_line() {
    let path = manifest_path("tests/fixtures/bad/zero_per_minute.toml");
    let (code, stdout, stderr) = check(path.to_str().unwrap());
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "floodgate: invalid config {}: line 10: tiers.basic.limits[0].per_minute: \
             must be at least 1",
            path.display()
        )
    );
}

#[test]
fn check_bad_flag_value_names_the_field() {
    let path = manifest_path("config/floodgate.toml");
    // Only --config is a global flag: the overrides go before the subcommand.
    let out = floodgate(&[
        "--upstream",
        "ftp://127.0.0.1:9443",
        "check",
        "--config",
        path.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains(
            "server.upstream: \"ftp://127.0.0.1:9443\": only http:// and https:// upstreams are \
             supported"
        ),
        "{stderr}"
    );
}

#[test]
fn check_missing_file() {
    let (code, stdout, stderr) = check("/nonexistent.toml");
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    assert_eq!(stdout, "");
    let stderr = stderr.trim_end();
    assert!(
        stderr.starts_with(
            "floodgate: invalid config /nonexistent.toml: cannot read config file \
             /nonexistent.toml: "
        ),
        "{stderr}"
    );
    assert!(stderr.contains("No such file or directory"), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "the OS error is printed once: {stderr}"
    );
}

#[test]
fn missing_config_flag() {
    let out = floodgate(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "floodgate: --config FILE is required"
    );
}

// ---------------------------------------------------------------------------------------------
// Start, forward, SIGTERM.

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Reads one HTTP/1.1 message head and a `Content-Length` body. Returns (head, body).
fn read_message(stream: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("head too long"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other(
                "connection closed before the head ended",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other("connection closed in the body"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Ok((head, body))
}

/// Sends one request on a fresh connection; returns (status, head, body).
fn request(addr: SocketAddr, raw: &str) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(raw.as_bytes())?;
    let (head, body) = read_message(&mut s)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head:?}")))?;
    Ok((status, head, String::from_utf8_lossy(&body).into_owned()))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

const UPSTREAM_BODY: &str = "hello from the tiny upstream";

/// A one-thread HTTP/1.1 upstream that answers every request with 200 and reports the heads it
/// saw. Stops when `stop` is set, or after 60 s at most.
struct TinyUpstream {
    addr: SocketAddr,
    seen: mpsc::Receiver<String>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TinyUpstream {
    fn start() -> TinyUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, seen) = mpsc::channel();
        let stop2 = stop.clone();
        let thread = thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
                let mut stream = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(_) => return,
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
                // One request per connection, then close.
                if let Ok((head, _)) = read_message(&mut stream) {
                    let _ = tx.send(head);
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-tiny-upstream: yes\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{UPSTREAM_BODY}",
                        UPSTREAM_BODY.len()
                    );
                    let _ = stream.write_all(response.as_bytes());
                }
            }
        });
        TinyUpstream {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TinyUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The floodgate child process; killed on drop if a failed assertion left it running.
struct Proc {
    child: Child,
    stderr_file: tempfile::NamedTempFile,
}

impl Proc {
    fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr_file.path()).unwrap_or_default()
    }

    fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The binary started on `config`, listening on `listen` in front of `upstream` with its
/// admin listener on `admin`, with more `args`.
fn spawn_on(
    config: &std::path::Path,
    (listen, upstream, admin): (SocketAddr, SocketAddr, SocketAddr),
    args: &[&str],
    dir: &std::path::Path,
) -> Proc {
    let (listen, admin) = (listen.to_string(), admin.to_string());
    let upstream = format!("http://{upstream}");
    let mut all = vec![
        "--listen",
        &listen,
        "--upstream",
        &upstream,
        "--admin",
        &admin,
    ];
    all.extend_from_slice(args);
    spawn(config, &all, dir)
}

/// The binary started on `config` with `args` (`dir`: its working directory), its log in a
/// file of its own.
fn spawn(config: &std::path::Path, args: &[&str], dir: &std::path::Path) -> Proc {
    let stderr_file = tempfile::NamedTempFile::new().expect("temp file");
    let child = Command::new(BIN)
        .current_dir(dir)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr_file.reopen().expect("reopen temp file"))
        .spawn()
        .expect("spawn floodgate");
    Proc { child, stderr_file }
}

#[test]
fn flags_override_file_then_sigterm_exits_cleanly() {
    let upstream = TinyUpstream::start();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = manifest_path("config/floodgate.toml");
    let workdir = tempfile::tempdir().expect("temp dir"); // where its state file lands
    let addrs = (listen, upstream.addr, admin);
    let mut proc = spawn_on(&config, addrs, &["--workers", "1"], workdir.path());

    // Ready: /healthz on the admin port answers 200 (100 tries, 10 s at most).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut healthy = false;
    for _ in 0..100 {
        if let Some(status) = proc.child.try_wait().unwrap() {
            panic!("floodgate exited early with {status}:\n{}", proc.stderr());
        }
        let probe = "GET /healthz HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n";
        if let Ok((200, _, body)) = request(admin, probe) {
            assert!(body.contains("ok"), "healthz body: {body}");
            healthy = true;
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        healthy,
        "admin /healthz on {admin} never answered 200:\n{}",
        proc.stderr()
    );

    // An unlimited (default-class) request reaches the upstream given on the command line.
    let (status, head, body) = request(
        listen,
        "GET /cli-test/ping?x=1 HTTP/1.1\r\nhost: api.example\r\nx-api-key: cli-test-key\r\n\
         connection: close\r\n\r\n",
    )
    .unwrap_or_else(|e| panic!("request via proxy {listen}: {e}\n{}", proc.stderr()));
    assert_eq!(status, 200, "{head}{body}\n{}", proc.stderr());
    assert_eq!(body, UPSTREAM_BODY);
    assert_eq!(header(&head, "x-tiny-upstream"), Some("yes"), "{head}");
    let seen = upstream
        .seen
        .recv_timeout(Duration::from_secs(5))
        .expect("the upstream saw the request");
    assert!(
        seen.starts_with("GET /cli-test/ping?x=1 HTTP/1.1\r\n"),
        "upstream saw: {seen}"
    );

    // The file's limits still apply: Basic txt2img is 3 per minute.
    let (status, head, _) = request(
        listen,
        "POST /api/v1/txt2img HTTP/1.1\r\nhost: api.example\r\nx-api-key: cli-test-key\r\n\
         content-length: 0\r\nconnection: close\r\n\r\n",
    )
    .unwrap_or_else(|e| panic!("POST via proxy: {e}\n{}", proc.stderr()));
    assert_eq!(status, 200, "{head}");
    assert_eq!(header(&head, "x-ratelimit-limit"), Some("3"), "{head}");
    assert_eq!(header(&head, "x-ratelimit-remaining"), Some("2"), "{head}");
    let seen = upstream
        .seen
        .recv_timeout(Duration::from_secs(5))
        .expect("the upstream saw the POST");
    assert!(
        seen.starts_with("POST /api/v1/txt2img HTTP/1.1\r\n"),
        "{seen}"
    );

    // SIGTERM: a clean exit with status 0 within 15 s.
    let pid = proc.child.id().to_string();
    let kill = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(kill.success(), "kill -TERM {pid} failed");
    match proc.wait_timeout(Duration::from_secs(15)) {
        Some(status) => assert!(
            status.success(),
            "floodgate exited with {status} after SIGTERM:\n{}",
            proc.stderr()
        ),
        None => panic!(
            "floodgate still running 15 s after SIGTERM:\n{}",
            proc.stderr()
        ),
    }
    let log = proc.stderr();
    assert!(log.contains("shutting down"), "log:\n{log}");
    assert!(log.contains(&listen.to_string()), "log:\n{log}");
}

/// A SIGHUP that arrives while floodgate is still starting (here: reading the accounts'
/// records from a Redis that takes its time to answer) does not end it: the signal waits for
/// it to serve and reloads.
#[test]
fn a_sighup_during_start_up_is_answered_once_serving() {
    let upstream = TinyUpstream::start();
    // A "Redis" that accepts and never answers: the start waits out the store's timeout.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    silent.set_nonblocking(true).unwrap();
    let held = thread::spawn(move || {
        // Holds what it accepts, answering nothing, for 3 s; then stops by itself.
        let (mut open, until) = (Vec::new(), Instant::now() + Duration::from_secs(3));
        while Instant::now() < until {
            if let Ok((stream, _)) = silent.accept() {
                open.push(stream);
            }
            thread::sleep(Duration::from_millis(10));
        }
    });
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("floodgate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nworkers = 1\n[store]\ntype = \"redis\"\nurl = \"redis://{silent_addr}/0\"\n\
             timeout = \"1s\"\non_failure = \"fail_open\"\n"
        ),
    )
    .unwrap();
    let mut proc = spawn_on(&config, (listen, upstream.addr, admin), &[], dir.path());
    let pid = proc.child.id().to_string();
    // Past the first instants of the process (before its main runs, nothing can take a
    // signal over), a SIGHUP every 20 ms for 600 ms: the start waits a second for the store.
    thread::sleep(Duration::from_millis(100));
    for sent in 0..30 {
        if let Some(status) = proc.child.try_wait().unwrap() {
            panic!(
                "a SIGHUP during start-up ended floodgate ({status}) after {sent} sent:\n{}",
                proc.stderr()
            );
        }
        let _ = Command::new("kill").args(["-HUP", &pid]).status();
        thread::sleep(Duration::from_millis(20));
    }
    let probe = "GET /healthz HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n";
    let served = request(admin, probe);
    assert!(
        matches!(served, Ok((200, _, _))),
        "{served:?}\n{}",
        proc.stderr()
    );
    thread::sleep(Duration::from_millis(300));
    assert!(
        proc.child.try_wait().unwrap().is_none(),
        "{}",
        proc.stderr()
    );
    assert!(
        proc.stderr().contains("SIGHUP"),
        "the queued SIGHUP reloaded:\n{}",
        proc.stderr()
    );
    drop(proc);
    let _ = held.join();
}
