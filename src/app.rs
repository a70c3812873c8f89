//! Wiring: config -> shared state -> worker threads. The one place that spawns threads and tasks.
//!
//! Each worker runs its own single-threaded tokio runtime with its own listener socket
//! (SO_REUSEPORT lets the kernel spread connections) and its own upstream connection pool: no
//! cross-core locking on the forwarding path. Limit state is shared by all workers through the
//! store. A control thread runs the admin listener and housekeeping (the idle-account sweep,
//! the status page's samples, Redis probes). When `[state]` names a file, a state thread keeps
//! it: the journal's flushes and the periodic saves ([`crate::store::keeper`]). The state file
//! and its journal are loaded before the first request is served, and the state is written a
//! last time after the workers have drained.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};

use crate::access_log::AccessLog;
use crate::clock::Clock;
use crate::config::{Config, Journal, StateConfig, UpstreamTarget};
use crate::metrics::Metrics;
use crate::proxy::upstream::{self, ExchangeTimeouts, UpstreamClient, Upstreams};
use crate::proxy::Proxy;
use crate::server::conn::Timeouts;
pub use crate::shared::{open_store, Policy, Shared};
use crate::store::keeper::{Keeper, Trouble};
use crate::store::snapshot::{self, Loaded};
use crate::store::Store;
use crate::{admin, server};

/// Sockets floodgate serves on, bound before start (tests bind port 0).
pub struct Listeners {
    /// One or more sockets for the proxy port; workers take them round-robin.
    pub proxy: Vec<TcpListener>,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds `workers` SO_REUSEPORT sockets on the proxy address and the admin socket.
    pub fn bind(config: &Config) -> io::Result<Self> {
        let proxy = bind_reuseport(config.server.listen, config.server.workers.max(1))?;
        let admin = config.server.admin.map(TcpListener::bind).transpose()?;
        Ok(Self { proxy, admin })
    }
}

fn bind_reuseport(addr: SocketAddr, n: usize) -> io::Result<Vec<TcpListener>> {
    use socket2::{Domain, Socket, Type};
    let mut out: Vec<TcpListener> = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nodelay(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        let listener: TcpListener = socket.into();
        addr = listener.local_addr()?; // later sockets share the port the first one got
        out.push(listener);
    }
    Ok(out)
}

/// A running floodgate.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    /// Stops the admin listener, once the workers have drained.
    stop_admin: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    control: JoinHandle<()>,
    state: Option<StateThread>,
}

/// The thread that keeps the state file and its journal; its last save's result comes back on
/// join.
struct StateThread {
    handle: JoinHandle<io::Result<usize>>,
    stop: Arc<AtomicBool>,
    file: std::path::PathBuf,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (up to the deadline), joins every thread
    /// and then saves the limit state, so it includes what the drained requests consumed.
    pub fn shutdown(self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        self.shared.jobs.close();
        let _ = self.shutdown.send(true);
        for t in self.workers {
            let _ = t.join();
        }
        // The admin listener outlives the drain: /readyz keeps answering 503 and /metrics
        // stays scrapeable until the last request is done.
        let _ = self.stop_admin.send(true);
        let _ = self.control.join();
        if let Some(log) = &self.shared.access_log {
            log.flush(std::time::Duration::from_secs(2));
        }
        if let Some(state) = self.state {
            state.stop.store(true, Ordering::SeqCst);
            state.handle.thread().unpark();
            let shown = state.file.display();
            match state.handle.join() {
                Ok(Ok(accounts)) => tracing::info!(file = %shown, accounts, "limit state saved"),
                Ok(Err(e)) => tracing::error!(
                    file = %shown, error = %e, "cannot save limit state"
                ),
                Err(_) => tracing::error!(file = %shown, "the state thread panicked"),
            }
        }
    }
}

/// Starts workers and the control thread on already-bound sockets.
pub fn start(
    config: Config,
    listeners: Listeners,
    store: Store,
    clock: Arc<dyn Clock>,
) -> io::Result<Running> {
    let workers = config.server.workers.max(1);
    let server_cfg = config.server.clone();
    let state = config.state.clone();
    let access_log = config.access_log.clone();
    let mut shared = Shared::new(config, store, clock);
    if let Some(log) = &access_log {
        let dropped = shared.metrics.listener.access_log_dropped.clone();
        shared.access_log = Some(Arc::new(AccessLog::open(log, dropped)?));
    }
    let shared = Arc::new(shared);
    load_account_records(&shared);
    load_upstream_health(&shared);
    let keeper = state
        .as_ref()
        .map(|state| restore_state(&shared, state))
        .transpose()?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let addr = listeners
        .proxy
        .first()
        .ok_or_else(|| io::Error::other("no proxy listener"))?
        .local_addr()?;
    let admin_addr = listeners
        .admin
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;

    let settings = server::Settings {
        timeouts: Timeouts {
            header: server_cfg.header_read_timeout,
            idle: server_cfg.idle_timeout,
            send: server_cfg.send_timeout,
        },
        drain_deadline: server_cfg.shutdown_deadline,
        max_header_bytes: server_cfg.max_header_bytes,
        max_header_count: server_cfg.max_header_count,
        h2c: server_cfg.h2c,
        discard: server::discard::DiscardLimits {
            limit: server_cfg.discard_body_limit,
            idle: server_cfg.client_body_timeout,
        },
    };
    // One bound for every worker's connections together.
    let slots = Arc::new(Semaphore::new(
        server_cfg.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let tls = upstream_tls(&server_cfg, &shared)?;
    let mut threads = Vec::new(); // the workers
    for i in 0..workers {
        let listener = listeners.proxy[i % listeners.proxy.len()].try_clone()?;
        listener.set_nonblocking(true)?;
        let upstreams = Arc::new(Upstreams {
            default: Arc::new(upstream_client(
                &server_cfg,
                &server_cfg.upstream,
                tls.as_ref(),
                &shared.metrics,
            )?),
            by_origin: account_upstreams(&server_cfg, &shared, tls.as_ref())?,
        });
        let proxy = Arc::new(Proxy::new(
            shared.clone(),
            upstreams,
            server_cfg.max_header_count,
        ));
        let (rx, slots) = (shutdown_rx.clone(), slots.clone());
        let listener_tls = shared.tls.clone();
        let access_log = shared.access_log.clone();
        threads.push(spawn_runtime(
            format!("floodgate-worker-{i}"),
            async move {
                proxy.enter_worker();
                if i == 0 {
                    tokio::spawn(proxy.clone().resume_tasks());
                }
                #[cfg(feature = "test-hooks")]
                crate::allocator::counting::count_this_thread();
                // The worker's access log lines gather in its own buffer, flushed on a timer.
                let flusher = access_log.clone().map(|log| {
                    log.enter_worker();
                    tokio::spawn(log.flush_periodically())
                });
                let listener = tokio::net::TcpListener::from_std(listener)
                    .expect("listener registers with the runtime");
                server::serve(listener, proxy, rx, (settings, listener_tls), slots).await;
                if let (Some(flusher), Some(log)) = (flusher, access_log) {
                    flusher.abort();
                    log.leave_worker();
                }
            },
        )?);
    }
    let admin_listener = listeners
        .admin
        .map(|l| l.set_nonblocking(true).map(|_| l))
        .transpose()?;
    let control_shared = shared.clone();
    let (stop_admin, stop_admin_rx) = watch::channel(false);
    let control = spawn_runtime("floodgate-control".into(), async move {
        let admin = admin_listener.map(|l| (l, stop_admin_rx));
        control(control_shared, admin, shutdown_rx).await;
    })?;
    let state = match (state, keeper) {
        (Some(config), Some(keeper)) => {
            let stop = Arc::new(AtomicBool::new(false));
            let (thread_shared, thread_stop) = (shared.clone(), stop.clone());
            let file = config.file.clone();
            let handle = std::thread::Builder::new()
                .name("floodgate-state".into())
                .spawn(move || keep_state(&thread_shared, keeper, &config, &thread_stop))?;
            Some(StateThread { handle, stop, file })
        }
        _ => None,
    };
    Ok(Running {
        addr,
        admin_addr,
        shared,
        shutdown,
        stop_admin,
        workers: threads,
        control,
        state,
    })
}

/// One connection pool per distinct upstream-account base URL, for one worker.
fn account_upstreams(
    server: &crate::config::ServerConfig,
    shared: &Shared,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> io::Result<HashMap<String, Arc<UpstreamClient>>> {
    let mut out = HashMap::new();
    for pool in &shared.jobs.pools {
        for account in &pool.accounts {
            let Some(origin) = &account.origin else {
                continue;
            };
            if out.contains_key(origin) {
                continue;
            }
            let target = UpstreamTarget::parse(origin).map_err(io::Error::other)?;
            let client = upstream_client(server, &target, tls, &shared.metrics)?;
            out.insert(origin.clone(), Arc::new(client));
        }
    }
    Ok(out)
}

/// A worker's pool for one origin, with the `[server]` timeouts and idle bound.
fn upstream_client(
    server: &crate::config::ServerConfig,
    target: &UpstreamTarget,
    tls: Option<&Arc<rustls::ClientConfig>>,
    metrics: &Metrics,
) -> io::Result<UpstreamClient> {
    UpstreamClient::new(
        target,
        tls,
        ExchangeTimeouts::new(server),
        metrics.cut_counters(),
        server.max_idle_upstream_connections,
    )
    .map_err(io::Error::other)
}

/// The TLS settings for `https://` origins, when any origin is one.
fn upstream_tls(
    server: &crate::config::ServerConfig,
    shared: &Shared,
) -> io::Result<Option<Arc<rustls::ClientConfig>>> {
    let accounts = shared.jobs.pools.iter().flat_map(|p| &p.accounts);
    let any_https = server.upstream.tls
        || accounts
            .filter_map(|a| a.origin.as_deref())
            .any(|o| o.starts_with("https://"));
    if !any_https {
        return Ok(None);
    }
    let extra = server
        .upstream_ca
        .as_ref()
        .map_or(&[][..], |ca| &ca.certs[..]);
    upstream::tls_client_config(extra)
        .map(Some)
        .map_err(|e| io::Error::other(format!("upstream TLS settings: {e}")))
}

/// Loads the state file into the store before serving, then replays its journal over it. A
/// corrupt file is reported and set aside and floodgate starts with empty state (and whatever
/// the journal holds); a damaged journal tail is reported and skipped. A file that cannot be
/// read at all is an error, rather than quotas silently starting over. The state is written back
/// at once, so a state directory floodgate cannot write fails the start instead of the shutdown.
fn restore_state(shared: &Shared, state: &StateConfig) -> io::Result<Keeper> {
    let now = shared.clock.now_ms();
    let shown = state.file.display();
    let loaded = snapshot::load(&state.file, now)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read state file {shown}: {e}")))?;
    let mut generation = 0;
    match loaded {
        Loaded::Missing => tracing::info!(file = %shown, "no state file yet; starting empty"),
        Loaded::State(saved) => {
            let age_secs = now.saturating_sub(saved.saved_at_ms) / 1000;
            generation = saved.generation;
            let accounts = shared.store.restore(saved, now);
            tracing::info!(file = %shown, accounts, age_secs, "limit state restored");
        }
        Loaded::Corrupt { error, set_aside } => match set_aside {
            Ok(aside) => tracing::warn!(
                file = %shown, %error, moved_to = %aside.display(),
                "state file is corrupt; set aside, starting with empty limit state"
            ),
            Err(e) => tracing::warn!(
                file = %shown, %error, rename_error = %e,
                "state file is corrupt and could not be set aside; starting with empty limit state"
            ),
        },
    }
    let mut keeper = Keeper::new(state.file.clone(), generation);
    if let Some(memory) = shared.store.as_memory() {
        let replayed = keeper.replay(memory, now).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot read the journal of {shown}: {e}"))
        })?;
        for r in &replayed {
            match &r.trouble {
                Some(Trouble::Damaged(damage)) => tracing::warn!(
                    file = %r.path.display(), records = r.records, error = %damage,
                    "journal damaged; replayed the records before the damage, skipped the rest"
                ),
                Some(error @ Trouble::Unreadable(_)) => tracing::warn!(
                    file = %r.path.display(), %error, "journal unreadable; skipped"
                ),
                None => {}
            }
        }
        if !replayed.is_empty() {
            let records: usize = replayed.iter().map(|r| r.records).sum();
            tracing::info!(file = %shown, files = replayed.len(), records, "journal replayed");
        }
        if state.journal != Journal::Off {
            keeper.attach(memory.journal(state.journal == Journal::Strict));
        }
    }
    let saved = keeper.save(&shared.store, now);
    shared.metrics.state.saved(saved.is_ok());
    saved.map_err(|e| io::Error::new(e.kind(), format!("cannot write state file {shown}: {e}")))?;
    Ok(keeper)
}

/// How often the state thread wakes to flush in strict mode when no request wakes it sooner.
const STRICT_IDLE_FLUSH: Duration = Duration::from_millis(200);

/// The state thread: flushes the journal every journal interval (in strict mode, as soon as a
/// request waits, back to back while requests wait), saves the whole state every
/// `save_interval`, and a last time when told to stop; returns that last save's result.
fn keep_state(
    shared: &Shared,
    mut keeper: Keeper,
    state: &StateConfig,
    stop: &AtomicBool,
) -> io::Result<usize> {
    keeper.wake_this_thread();
    let flush_every = match state.journal {
        Journal::Every(every) => every,
        Journal::Strict => STRICT_IDLE_FLUSH,
        Journal::Off => state.save_interval,
    };
    let memory = shared.store.as_memory();
    let mut next_save = Instant::now() + state.save_interval;
    loop {
        if stop.load(Ordering::SeqCst) {
            let saved = keeper.save(&shared.store, shared.clock.now_ms());
            shared.metrics.state.saved(saved.is_ok());
            return saved;
        }
        if Instant::now() >= next_save {
            let saved = keeper.save(&shared.store, shared.clock.now_ms());
            shared.metrics.state.saved(saved.is_ok());
            match saved {
                Ok(accounts) => tracing::debug!(accounts, "limit state saved"),
                Err(e) => tracing::error!(
                    file = %state.file.display(), error = %e, "cannot save limit state"
                ),
            }
            next_save = Instant::now() + state.save_interval;
        }
        if let Some(memory) = memory {
            let started = Instant::now();
            match keeper.flush(memory, shared.clock.now_ms()) {
                Ok(0) => {}
                Ok(records) => shared
                    .metrics
                    .state
                    .journal_flushed(Some(records), started.elapsed().as_secs_f64()),
                Err(e) => {
                    let seconds = started.elapsed().as_secs_f64();
                    shared.metrics.state.journal_flushed(None, seconds);
                    tracing::error!(
                        file = %state.file.display(), error = %e,
                        "cannot write the state journal; saving the whole state instead"
                    );
                    next_save = Instant::now();
                }
            }
        }
        let until_save = next_save.saturating_duration_since(Instant::now());
        std::thread::park_timeout(flush_every.min(until_save));
    }
}

fn spawn_runtime(
    name: String,
    fut: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name).spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime starts");
        rt.block_on(fut);
    })
}

/// The admin listener and housekeeping. Housekeeping ends at shutdown; the admin listener runs
/// until its own stop signal, sent once the workers have drained.
async fn control(
    shared: Arc<Shared>,
    admin: Option<(TcpListener, watch::Receiver<bool>)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let admin = admin.map(|(listener, stop)| {
        let listener = tokio::net::TcpListener::from_std(listener)
            .expect("listener registers with the runtime");
        tokio::spawn(admin::serve(listener, shared.clone(), stop))
    });
    // On its own: the other housekeeping's Redis round trips must not delay it past the time
    // other replicas wait before taking this one's tasks over.
    let alive = shared
        .tasks
        .clone()
        .map(|book| tokio::spawn(keep_alive(book)));
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    let mut sample = tokio::time::interval(Duration::from_secs(1));
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut records = matches!(shared.store, crate::store::Store::Redis(_)).then(|| {
        let mut every = tokio::time::interval(crate::store::accounts::REFRESH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every
    });
    let mut records_failing = false;
    let mut probe = shared.store.recovery_probe().map(|every| {
        let mut every = tokio::time::interval(every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every
    });
    loop {
        tokio::select! {
            _ = sweep.tick() => {
                let remaining = shared.store.evict_idle(shared.clock.now_ms());
                shared.metrics.state.tracked_accounts.set(remaining as i64);
            }
            _ = sample.tick() => {
                shared.show_upstream_states();
                let degraded = shared.store.is_degraded();
                shared.status.sample(&shared.metrics, degraded, shared.clock.now_ms());
            }
            _ = tick(&mut probe) => shared.store.probe().await,
            _ = tick(&mut records) => {
                let refreshed = shared.accounts.refresh().await;
                match (&refreshed, records_failing) {
                    (Err(e), false) => tracing::warn!(
                        error = %e,
                        "cannot read the accounts' records from redis; the changes last read \
                         stay in force"
                    ),
                    (Ok(_), true) => tracing::info!("the accounts' records are read again"),
                    _ => {}
                }
                records_failing = refreshed.is_err();
                if let Ok(true) = refreshed {
                    shared.apply_records();
                }
                if let Ok(changed) = refresh_upstreams(&shared).await {
                    for (account, health) in &changed {
                        shared.apply_upstream(account, health);
                    }
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    if let Some(alive) = alive {
        alive.abort();
    }
    if let Some(admin) = admin {
        let _ = admin.await;
    }
}

/// With Redis: says every second that this replica is alive, so that no other replica takes
/// its running tasks over.
async fn keep_alive(book: Arc<crate::store::tasks::TaskBook>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Err(e) = book.keep_alive().await {
            tracing::debug!(error = %e, "cannot say this replica is alive");
        }
    }
}

/// Reads the accounts' runtime records before the first request: from the records file beside
/// the state file, or from Redis (on a thread of its own, as the store's connections belong to
/// the thread that dialled them). A file that cannot be read is set aside and reported; Redis
/// that cannot answer yet is caught up by the control thread's refresh.
fn load_account_records(shared: &Arc<Shared>) {
    let loaded = match &shared.store {
        crate::store::Store::Memory(_) => shared.accounts.load_file().map_err(|e| e.to_string()),
        crate::store::Store::Redis(_) => {
            on_own_thread(
                shared,
                |s| async move { s.accounts.refresh().await.map(|_| 0) },
            )
        }
    };
    match loaded {
        Ok(_) => {
            shared.apply_records();
            let n = shared.accounts.records().len();
            if n > 0 {
                tracing::info!(accounts = n, "accounts changed at runtime restored");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot read the accounts' runtime records"),
    }
}

/// Runs a read from Redis before the first request, on a thread of its own with a runtime of
/// its own: the store's connections belong to the thread that dialled them.
fn on_own_thread<T, F>(
    shared: &Arc<Shared>,
    read: impl FnOnce(Arc<Shared>) -> F + Send + 'static,
) -> Result<T, String>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, crate::store::StoreError>>,
{
    let shared = shared.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(read(shared)).map_err(|e| e.to_string())
    })
    .join()
    .unwrap_or_else(|_| Err("the thread reading from redis panicked".into()))
}

/// Reads the upstream accounts' health before the first job: from the health file beside the
/// state file, or from Redis (on a thread of its own, as for the accounts' records). An account
/// disabled or resting before a restart or on another replica stays so.
fn load_upstream_health(shared: &Arc<Shared>) {
    let loaded = match &shared.store {
        crate::store::Store::Memory(_) => shared
            .upstreams
            .load_file()
            .map(|records| records.into_iter().collect())
            .map_err(|e| e.to_string()),
        crate::store::Store::Redis(_) => {
            on_own_thread(shared, |s| async move { refresh_upstreams(&s).await })
        }
    };
    match loaded {
        Ok(records) => {
            for (account, health) in &records {
                shared.apply_upstream(account, health);
            }
            shared.show_upstream_states();
        }
        Err(e) => tracing::error!(error = %e, "cannot read the upstream accounts' health"),
    }
}

/// With Redis: the upstream accounts' health another replica changed since this one last read
/// it.
async fn refresh_upstreams(
    shared: &Shared,
) -> Result<Vec<(String, crate::queue::health::Health)>, crate::store::StoreError> {
    let accounts = shared.jobs.upstream_accounts();
    let names: Vec<&str> = accounts.iter().map(|a| a.name.as_str()).collect();
    shared.upstreams.refresh(&names).await
}

/// The next tick of an optional interval; never, without one.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(every) => {
            every.tick().await;
        }
        None => std::future::pending().await,
    }
}
