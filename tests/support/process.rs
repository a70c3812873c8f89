//! The real `floodgate` binary as a child process: started on loopback port 0 with JSON logs,
//! its ports read from its own "listening" log line, signalled, and killed on drop. Every wait
//! is bounded.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::time::{sleep, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_floodgate");

/// The binary under test: `FLOODGATE_BIN` when set (to soak a release build), else the one
/// cargo built for these tests.
pub fn bin() -> String {
    std::env::var("FLOODGATE_BIN").unwrap_or_else(|_| BIN.to_owned())
}

/// A running floodgate process.
pub struct Process {
    child: Child,
    stderr_file: tempfile::NamedTempFile,
    /// The working directory of its own (where a relative state file lands), unless the test
    /// chose one with [`Process::start_in`].
    _own_dir: Option<tempfile::TempDir>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl Process {
    /// Starts floodgate on `config` in front of `upstream` and waits until it serves.
    pub async fn start(config: &Path, upstream: &str) -> Process {
        match Self::try_start(config, upstream).await {
            Ok(p) => p,
            Err(log) => panic!("floodgate did not start:\n{log}"),
        }
    }

    /// Like [`Process::start`], with `RUST_LOG` set to `log` (e.g. "debug").
    pub async fn start_logging(config: &Path, upstream: &str, log: &str) -> Process {
        match Self::spawn(config, upstream, log, &[]).await {
            Ok(p) => p,
            Err(log) => panic!("floodgate did not start:\n{log}"),
        }
    }

    /// Like [`Process::start`], but a failed start returns the process's log.
    pub async fn try_start(config: &Path, upstream: &str) -> Result<Process, String> {
        Self::spawn(config, upstream, "info", &[]).await
    }

    /// Like [`Process::start`], with more command-line flags.
    pub async fn start_with(config: &Path, upstream: &str, flags: &[&str]) -> Process {
        match Self::spawn(config, upstream, "info", flags).await {
            Ok(p) => p,
            Err(log) => panic!("floodgate did not start:\n{log}"),
        }
    }

    /// Like [`Process::start`], in working directory `dir` (the same command run twice in
    /// the same place, as an operator restarts it).
    pub async fn start_in(dir: &Path, config: &Path, upstream: &str) -> Process {
        match Self::spawn_in(Some(dir), config, upstream, "info", &[]).await {
            Ok(p) => p,
            Err(log) => panic!("floodgate did not start:\n{log}"),
        }
    }

    async fn spawn(
        config: &Path,
        upstream: &str,
        log: &str,
        flags: &[&str],
    ) -> Result<Process, String> {
        Self::spawn_in(None, config, upstream, log, flags).await
    }

    async fn spawn_in(
        dir: Option<&Path>,
        config: &Path,
        upstream: &str,
        log: &str,
        flags: &[&str],
    ) -> Result<Process, String> {
        let stderr_file = tempfile::NamedTempFile::new().expect("temp file");
        let own_dir = match dir {
            Some(_) => None,
            None => Some(tempfile::tempdir().expect("temp dir")),
        };
        let cwd = dir.or(own_dir.as_ref().map(|d| d.path())).unwrap();
        let child = Command::new(bin())
            .current_dir(cwd)
            .args(["--log-format", "json", "--config"])
            .arg(config)
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--upstream", upstream, "--workers", "1"])
            .args(flags)
            .env("RUST_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr_file.reopen().expect("reopen temp file"))
            .spawn()
            .expect("spawn floodgate");
        let mut p = Process {
            child,
            stderr_file,
            _own_dir: own_dir,
            addr: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(line) = p.log_line("floodgate listening") {
                p.addr = field(&line, "addr").parse().expect("addr field");
                let admin = field(&line, "admin");
                let admin = admin.trim_start_matches("Some(").trim_end_matches(')');
                p.admin = admin.parse().expect("admin field");
                return Ok(p);
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(format!("exited with {status}:\n{}", p.stderr()));
            }
            if Instant::now() >= deadline {
                return Err(format!("no listening line after 20 s:\n{}", p.stderr()));
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr_file.path()).unwrap_or_default()
    }

    /// The first JSON log line whose message is `message`.
    pub fn log_line(&self, message: &str) -> Option<serde_json::Value> {
        self.stderr()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["fields"]["message"] == message)
    }

    /// Sends a signal with `kill -SIG pid`.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} {pid} failed");
    }

    /// SIGTERM, then waits (bounded) for a clean exit.
    pub async fn terminate(&mut self) {
        self.signal("TERM");
        match self.wait_exit(Duration::from_secs(15)).await {
            Some(status) => assert!(
                status.success(),
                "exit {status} after SIGTERM:\n{}",
                self.stderr()
            ),
            None => panic!("still running 15 s after SIGTERM:\n{}", self.stderr()),
        }
    }

    /// SIGKILL: no shutdown code runs.
    pub async fn kill_hard(&mut self) {
        self.signal("KILL");
        assert!(
            self.wait_exit(Duration::from_secs(10)).await.is_some(),
            "still running after SIGKILL"
        );
    }

    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Every JSON log line whose message is `message`.
    pub fn log_lines(&self, message: &str) -> Vec<serde_json::Value> {
        self.stderr()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"] == message)
            .collect()
    }

    /// The process's resident set size in KiB (Linux), if readable.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }
}

/// A string field of a JSON log line.
fn field(line: &serde_json::Value, name: &str) -> String {
    match &line["fields"][name] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
