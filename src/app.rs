//! Wiring: config -> shared state -> worker threads. The one place that spawns threads and tasks.
//!
//! Each worker runs its own single-threaded tokio runtime with its own listener socket
//! (SO_REUSEPORT lets the kernel spread connections) and its own upstream connection pool: no
//! cross-core locking on the forwarding path. Limit state is shared by all workers through the
//! store. A control thread runs the admin listener and housekeeping.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::{Handles, Metrics};
use crate::proxy::upstream::UpstreamClient;
use crate::proxy::Proxy;
use crate::queue::Jobs;
use crate::store::Store;
use crate::{admin, server};

/// A config together with the metric handles resolved for it; swapped whole on reload.
#[derive(Debug)]
pub struct Policy {
    pub config: Config,
    pub handles: Handles,
}

/// State every worker shares.
pub struct Shared {
    pub policy: ArcSwap<Policy>,
    /// Job pools and task holds; built from the config at start.
    pub jobs: Jobs,
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
    pub shutting_down: AtomicBool,
}

impl Shared {
    pub fn new(config: Config, store: Store, clock: Arc<dyn Clock>) -> Self {
        let metrics = Metrics::new();
        let handles = metrics.handles(&config);
        let jobs = Jobs::new(&config.jobs, &metrics);
        Self {
            jobs,
            policy: ArcSwap::from_pointee(Policy { config, handles }),
            store,
            clock,
            metrics,
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Swaps in a new config atomically. Counters are keyed by rule content, so rules that did
    /// not change keep their windows.
    pub fn reload(&self, config: Config) {
        let handles = self.metrics.handles(&config);
        self.policy.store(Arc::new(Policy { config, handles }));
    }
}

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
    threads: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (up to the deadline) and joins every thread.
    pub fn shutdown(self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        self.shared.jobs.close();
        let _ = self.shutdown.send(true);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// How long in-flight requests get to finish after shutdown starts.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Starts workers and the control thread on already-bound sockets.
pub fn start(
    config: Config,
    listeners: Listeners,
    store: Store,
    clock: Arc<dyn Clock>,
) -> io::Result<Running> {
    let workers = config.server.workers.max(1);
    let server_cfg = config.server.clone();
    let shared = Arc::new(Shared::new(config, store, clock));
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

    let mut threads = Vec::new();
    for i in 0..workers {
        let listener = listeners.proxy[i % listeners.proxy.len()].try_clone()?;
        listener.set_nonblocking(true)?;
        let upstream = Arc::new(UpstreamClient::new(
            server_cfg.upstream.authority.clone(),
            server_cfg.upstream_connect_timeout,
            server_cfg.upstream_timeout,
            server_cfg.max_idle_upstream_connections,
        ));
        let account_upstreams = account_upstreams(&server_cfg, &shared);
        let proxy = Arc::new(Proxy::new(shared.clone(), upstream, account_upstreams));
        let settings = server::Settings {
            header_read_timeout: server_cfg.header_read_timeout,
            drain_deadline: DRAIN_DEADLINE,
        };
        let rx = shutdown_rx.clone();
        threads.push(spawn_runtime(
            format!("floodgate-worker-{i}"),
            async move {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .expect("listener registers with the runtime");
                server::serve(listener, proxy, rx, settings).await;
            },
        )?);
    }
    let admin_listener = listeners
        .admin
        .map(|l| l.set_nonblocking(true).map(|_| l))
        .transpose()?;
    let control_shared = shared.clone();
    threads.push(spawn_runtime("floodgate-control".into(), async move {
        control(control_shared, admin_listener, shutdown_rx).await;
    })?);
    Ok(Running {
        addr,
        admin_addr,
        shared,
        shutdown,
        threads,
    })
}

/// One connection pool per distinct upstream-account base URL, for one worker.
fn account_upstreams(
    server: &crate::config::ServerConfig,
    shared: &Shared,
) -> HashMap<String, Arc<UpstreamClient>> {
    let mut out = HashMap::new();
    for pool in &shared.jobs.pools {
        for account in &pool.accounts {
            if let Some(authority) = &account.authority {
                out.entry(authority.clone()).or_insert_with(|| {
                    Arc::new(UpstreamClient::new(
                        authority.clone(),
                        server.upstream_connect_timeout,
                        server.upstream_timeout,
                        server.max_idle_upstream_connections,
                    ))
                });
            }
        }
    }
    out
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

/// The admin listener and housekeeping, until shutdown.
async fn control(
    shared: Arc<Shared>,
    admin: Option<TcpListener>,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Some(listener) = admin {
        let listener = tokio::net::TcpListener::from_std(listener)
            .expect("listener registers with the runtime");
        tokio::spawn(admin::serve(listener, shared.clone(), shutdown.clone()));
    }
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = sweep.tick() => {
                let remaining = shared.store.evict_idle(shared.clock.now_ms());
                shared.metrics.tracked_accounts.set(remaining as i64);
            }
            _ = shutdown.changed() => break,
        }
    }
}
