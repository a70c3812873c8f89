//! The `floodgate` binary: CLI, logging, config, sockets, signals (TERM/INT stop, HUP reloads).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use floodgate::admin::client::AccountsCommand;
use floodgate::app::{self, Listeners};
use floodgate::clock::SystemClock;
use floodgate::config::{Config, Overrides};
use floodgate::reload::Reloader;

/// A reverse proxy and rate limiter for HTTP APIs.
///
/// Each option can also come from the environment (`FLOODGATE_CONFIG`, `FLOODGATE_UPSTREAM`, …,
/// shown in `--help`), for containers; a flag given on the command line wins over its variable,
/// and both over the config file.
#[derive(Debug, Parser)]
#[command(name = "floodgate", version, about)]
struct Cli {
    /// Config file (TOML).
    #[arg(long, global = true, env = "FLOODGATE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen address, e.g. 127.0.0.1:8080 (overrides server.listen).
    #[arg(long, global = true, env = "FLOODGATE_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// Upstream URL, e.g. http://127.0.0.1:9000 (overrides server.upstream).
    #[arg(long, global = true, env = "FLOODGATE_UPSTREAM", value_name = "URL")]
    upstream: Option<String>,
    /// Admin listen address, or "off" (overrides server.admin).
    #[arg(long, global = true, env = "FLOODGATE_ADMIN", value_name = "ADDR")]
    admin: Option<String>,
    /// Worker threads; 0 = one per CPU (overrides server.workers).
    #[arg(long, global = true, env = "FLOODGATE_WORKERS", value_name = "N")]
    workers: Option<usize>,
    /// Keep limit state across restarts in this file (overrides state.file).
    #[arg(long, global = true, env = "FLOODGATE_STATE", value_name = "FILE")]
    state: Option<String>,
    /// Log format.
    #[arg(long, env = "FLOODGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the config file and print a summary, without starting.
    Check,
    /// Show or change an account at runtime through a running floodgate's admin listener
    /// (`--admin` or the config's `[server] admin`; the token from `--token-file`,
    /// `FLOODGATE_ADMIN_TOKEN_FILE` or the config's `admin_token`).
    Accounts {
        /// A file holding the admin token.
        #[arg(long, env = "FLOODGATE_ADMIN_TOKEN_FILE", value_name = "FILE")]
        token_file: Option<PathBuf>,
        #[command(subcommand)]
        action: AccountsCommand,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floodgate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Accounts { token_file, action }) = &cli.command {
        return accounts(&cli, token_file.as_deref(), action);
    }
    let path = cli.config.clone().context("--config FILE is required")?;
    // First: a signal sent while floodgate loads its config and state is answered once it
    // serves, not by the signal's default action (a SIGHUP would end the process).
    let signals = match cli.command {
        Some(Command::Check) => None,
        _ => Some(Signals::take_over()?),
    };
    let overrides = Overrides {
        listen: cli.listen,
        upstream: cli.upstream,
        admin: cli.admin,
        workers: cli.workers,
        state_file: cli.state,
    };
    let config = Config::load(&path, &overrides)
        .with_context(|| format!("invalid config {}", path.display()))?;
    if let Some(Command::Check) = cli.command {
        print!("{}: ok\n{}", path.display(), config.summary());
        for warning in dropped_account_changes(&config) {
            println!("warning: {warning}");
        }
        return Ok(());
    }
    let listeners = Listeners::bind(&config).context("cannot bind listeners")?;
    let watch = config.server.watch_config;
    let read_files = config.read_files();
    let store = app::open_store(&config.store).context("cannot set up the state store")?;
    let running = app::start(config, listeners, store, Arc::new(SystemClock))?;
    tracing::info!(addr = %running.addr, admin = ?running.admin_addr, "floodgate listening");
    let mut reloader = Reloader::new(path, overrides, read_files);
    let signals = signals.expect("taken over unless checking");
    let signal = signals.wait(&running, &mut reloader, watch)?;
    tracing::info!(signal, "shutting down");
    running.shutdown();
    tracing::info!("stopped");
    Ok(())
}

/// The accounts' runtime changes (in the records file beside the state file) that `config`
/// could no longer honour: a start or reload on it would drop them, with these warnings.
fn dropped_account_changes(config: &Config) -> Vec<String> {
    let Some(state) = &config.state else {
        return Vec::new();
    };
    let file = floodgate::store::accounts::records_file(&state.file);
    match floodgate::store::accounts::read_records_file(&file) {
        Ok(records) => floodgate::accounts::Overrides::resolve(config, &records).1,
        Err(e) => vec![format!("cannot read the accounts' runtime records: {e}")],
    }
}

/// `floodgate accounts …`: one call of the accounts API; its answer printed.
fn accounts(
    cli: &Cli,
    token_file: Option<&std::path::Path>,
    action: &AccountsCommand,
) -> anyhow::Result<()> {
    let config = match &cli.config {
        Some(path) => Some(
            Config::load(path, &Overrides::default())
                .with_context(|| format!("invalid config {}", path.display()))?,
        ),
        None => None,
    };
    let admin = match (&cli.admin, &config) {
        (Some(addr), _) => addr
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .with_context(|| format!("--admin {addr:?} is not an address like 127.0.0.1:9091"))?,
        (None, Some(c)) => c
            .server
            .admin
            .context("the config turns the admin listener off")?,
        (None, None) => anyhow::bail!("give --admin ADDR (or FLOODGATE_ADMIN) or --config FILE"),
    };
    let token = match (token_file, &config) {
        (Some(file), _) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the token file {}", file.display()))?
                .trim()
                .to_owned(),
        ),
        (None, Some(c)) => c.server.admin_token.as_ref().map(|t| t.expose().to_owned()),
        (None, None) => None,
    };
    let (status, body) = floodgate::admin::client::call(admin, token.as_deref(), action)?;
    if (200..300).contains(&status) {
        println!("{body}");
        Ok(())
    } else {
        eprintln!("{body}");
        anyhow::bail!("the admin listener answered {status}")
    }
}

/// The signals floodgate answers, taken over before anything is bound: a SIGHUP (or SIGTERM)
/// that arrives while floodgate is still starting waits for it, instead of ending the process
/// with the signal's default action.
struct Signals {
    rt: tokio::runtime::Runtime,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn take_over() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (term, int, hup) = rt.block_on(async {
            anyhow::Ok((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
                signal(SignalKind::hangup())?,
            ))
        })?;
        Ok(Self { rt, term, int, hup })
    }

    /// Blocks until SIGTERM or SIGINT (returns its name); reloads the config on SIGHUP and,
    /// with `watch`, when the file changes (its modification time is checked every second).
    fn wait(
        mut self,
        running: &app::Running,
        reloader: &mut Reloader,
        watch: bool,
    ) -> anyhow::Result<&'static str> {
        self.rt.block_on(async {
            let mut poll = tokio::time::interval(std::time::Duration::from_secs(1));
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = self.term.recv() => return Ok("SIGTERM"),
                    _ = self.int.recv() => return Ok("SIGINT"),
                    _ = self.hup.recv() => {
                        let _ = reloader.reload(&running.shared, "SIGHUP");
                    }
                    _ = poll.tick(), if watch => {
                        if reloader.file_changed() {
                            let _ = reloader.reload(&running.shared, "file change");
                        }
                    }
                }
            }
        })
    }
}
