//! The Redis store's connections: each worker thread talks to Redis over its own multiplexed
//! connection (its event loop drives the socket: no hop to another thread on the request path),
//! dialled on first use — however many operations want it at the same moment — and again after
//! it broke. An operation that finds its connection broken (Redis restarted and closed it)
//! dials again and runs once more within the same timeout ([`Connections::run`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, RedisError};
use tokio::sync::OnceCell;

use super::scripts;
use crate::store::StoreError;

/// Who floodgate signs in to Redis as, when not (only) in the URL (`[store] username`,
/// `password_file`): each replaces what the URL says.
#[derive(Clone, Copy, Default)]
pub struct Login<'a> {
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
}

/// A connection to the store: one server's multiplexed connection, or a cluster's, which sends
/// each command to the master owning its key's slot (every script touches one key, and one
/// account's keys share a hash tag) and follows the cluster through failovers.
#[derive(Clone)]
pub(super) enum Conn {
    Server(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Server(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where a store's connections go.
enum Target {
    Server(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// One thread's connection to one store's server. Operations that find the slot empty wait for
/// one dial between them instead of each dialling its own connection.
type Slot = Arc<OnceCell<Conn>>;

/// One store's connections: where they go, and each thread's own.
pub(super) struct Connections {
    /// Tells this store's connections apart in the per-thread cache.
    id: u64,
    /// Where and as whom to connect: the URL with `[store] username` / `password_file` applied,
    /// and the roots a `rediss://` server's certificate is checked against; or the cluster.
    target: Target,
    /// The URL without its password, for logs and `Debug`.
    pub url: String,
    pub timeout: Duration,
}

thread_local! {
    /// Per thread, per store: the multiplexed connection this thread's event loop drives.
    static CONNECTIONS: RefCell<HashMap<u64, Slot>> = RefCell::new(HashMap::new());
}

static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(0);

/// `url` with the password of its user information, if any, left out: `redis://user:***@host`.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..])
        }
        None => url.to_owned(),
    }
}

impl Connections {
    /// Connections to the server at `url` (e.g. `redis://127.0.0.1:6379/0`) signing in as
    /// `login` says, when it says; nothing is connected yet.
    pub fn server(url: &str, timeout: Duration, login: &Login<'_>) -> Result<Self, StoreError> {
        let mut connection = url.into_connection_info().map_err(unavailable)?;
        if let Some(user) = login.username {
            connection.redis.username = Some(user.to_owned());
        }
        if let Some(password) = login.password {
            connection.redis.password = Some(password.to_owned());
        }
        Ok(Self {
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            target: Target::Server(redis::Client::open(connection).map_err(unavailable)?),
            url: without_password(url),
            timeout,
        })
    }

    /// The same connections, checking a `rediss://` server's certificate against the PEM CA
    /// certificates `ca` instead of the bundled roots.
    pub fn trusting(mut self, ca: &[u8]) -> Result<Self, StoreError> {
        let certificates = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.to_vec()),
        };
        if let Target::Server(client) = &self.target {
            let info = client.get_connection_info().clone();
            let client = redis::Client::build_with_tls(info, certificates).map_err(unavailable)?;
            self.target = Target::Server(client);
        }
        Ok(self)
    }

    /// Connections to the Redis Cluster that `nodes` belong to (any of them answer for all;
    /// more than one, so a dial still finds the cluster when a node is down).
    pub fn cluster(
        nodes: &[String],
        timeout: Duration,
        login: &Login<'_>,
    ) -> Result<Self, StoreError> {
        let first = nodes.first().map_or("", String::as_str);
        let mut conns = Self::server(first, timeout, login)?;
        let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(2);
        if let Some(user) = login.username {
            builder = builder.username(user.to_owned());
        }
        if let Some(password) = login.password {
            builder = builder.password(password.to_owned());
        }
        conns.target = Target::Cluster(builder.build().map_err(unavailable)?);
        conns.url = nodes
            .iter()
            .map(|n| without_password(n))
            .collect::<Vec<_>>()
            .join(",");
        Ok(conns)
    }

    /// This thread's slot for this store's connection.
    fn slot(&self) -> Slot {
        CONNECTIONS.with(|m| m.borrow_mut().entry(self.id).or_default().clone())
    }

    /// Empties `slot` if it is still this thread's (a concurrent operation may already have put
    /// a new one in its place), so the next operation dials afresh.
    fn forget(&self, slot: &Slot) {
        CONNECTIONS.with(|m| {
            let mut m = m.borrow_mut();
            if m.get(&self.id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
                m.remove(&self.id);
            }
        });
    }

    /// This thread's connection, dialled (and its scripts loaded) on first use.
    async fn connection(&self, slot: &Slot) -> redis::RedisResult<Conn> {
        slot.get_or_try_init(|| self.dial()).await.cloned()
    }

    /// A new connection, with every script already in the server's cache: after a restart the
    /// first operations need no NOSCRIPT round trip.
    async fn dial(&self) -> redis::RedisResult<Conn> {
        match &self.target {
            Target::Server(client) => {
                let config = AsyncConnectionConfig::new().set_connection_timeout(self.timeout);
                let conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                let mut conn = Conn::Server(conn);
                let mut load = redis::pipe();
                for source in scripts::SOURCES {
                    load.cmd("SCRIPT").arg("LOAD").arg(source).ignore();
                }
                load.exec_async(&mut conn).await?;
                Ok(conn)
            }
            Target::Cluster(client) => {
                let mut conn = Conn::Cluster(client.get_async_connection().await?);
                // SCRIPT LOAD goes to every master (a new master after a failover loads a
                // script on its first NOSCRIPT, as after a restart).
                for source in scripts::SOURCES {
                    redis::cmd("SCRIPT")
                        .arg("LOAD")
                        .arg(source)
                        .exec_async(&mut conn)
                        .await?;
                }
                Ok(conn)
            }
        }
    }

    /// Runs `op` on this thread's connection, within the store's timeout. When the connection
    /// turns out to be broken — Redis restarted and closed it — `op` runs once more on a new
    /// one, within the same timeout: the stale connection costs a dial, not a failure. A
    /// failed operation empties the slot, so the next one dials afresh.
    ///
    /// The retry can repeat an operation whose reply was lost with its connection: counted
    /// twice, an admission only ever consumes more of the quota, never lets more through.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let (first, second) = (self.slot(), OnceLock::new());
        let attempt = async {
            match op(self.connection(&first).await?).await {
                Err(e) if connection_broke(&e) => {
                    tracing::debug!(error = %e, "redis connection broke; dialling again");
                    self.forget(&first);
                    let slot = second.get_or_init(|| self.slot());
                    op(self.connection(slot).await?).await
                }
                outcome => outcome,
            }
        };
        let outcome = match tokio::time::timeout(self.timeout, attempt).await {
            Err(_) => Err(StoreError::Unavailable("redis timed out".into())),
            Ok(result) => result.map_err(unavailable),
        };
        if outcome.is_err() {
            self.forget(&first);
            if let Some(slot) = second.get() {
                self.forget(slot);
            }
        }
        outcome
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Whether `e` says the connection itself is gone (closed by the server, reset, a protocol
/// error): the operation may be retried on a new one. A timeout or a script error is not.
fn connection_broke(e: &RedisError) -> bool {
    e.is_unrecoverable_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_password() {
        let shown = |url: &str| without_password(url);
        assert_eq!(
            shown("redis://floodgate:s3cret@10.0.0.5:6379/0"),
            "redis://floodgate:***@10.0.0.5:6379/0"
        );
        assert_eq!(shown("redis://:s3cret@host/1"), "redis://:***@host/1");
        assert_eq!(shown("redis://user:p@ss@host"), "redis://user:***@host");
        assert_eq!(shown("redis://10.0.0.5:6379/0"), "redis://10.0.0.5:6379/0");
        assert_eq!(shown("unix:///run/redis.sock"), "unix:///run/redis.sock");
    }

    #[test]
    fn the_password_file_and_user_replace_the_urls() {
        let login = Login {
            username: Some("floodgate"),
            password: Some("from-file"),
        };
        let url = "redis://old:old@127.0.0.1:6379/2";
        let conns = Connections::server(url, Duration::from_secs(1), &login).unwrap();
        let Target::Server(client) = &conns.target else {
            panic!("one server")
        };
        let info = &client.get_connection_info().redis;
        assert_eq!(info.username.as_deref(), Some("floodgate"));
        assert_eq!(info.password.as_deref(), Some("from-file"));
        assert_eq!(info.db, 2);
        assert!(!conns.url.contains("old:old"), "{}", conns.url);
    }
}
