//! A real Redis Cluster on loopback, owned by the test: six `redis-server --cluster-enabled`
//! (three masters, a replica each) joined by `redis-cli --cluster create`, killed on drop.

use std::process::Command;
use std::time::{Duration, Instant};

use super::redis_server::RedisServer;

pub struct RedisCluster {
    servers: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli is installed with redis-server");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl RedisCluster {
    /// Starts the six nodes and waits (at most 30 s) until the cluster answers for every slot.
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let servers: Vec<RedisServer> = (0..6)
            .map(|i| {
                let conf = dir.path().join(format!("nodes-{i}.conf"));
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    conf.to_str().unwrap(),
                    "--cluster-node-timeout",
                    "1000",
                    // a replica syncs at once (not after the 5 s wait for more replicas), so
                    // it can take over from the start
                    "--repl-diskless-sync-delay",
                    "0",
                    // the surviving masters keep serving their slots while one fails over
                    // (docs/operations/redis.md)
                    "--cluster-require-full-coverage",
                    "no",
                ])
            })
            .collect();
        let addrs: Vec<String> = servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = RedisCluster { servers, _dir: dir };
        cluster.wait_ok(Duration::from_secs(30));
        cluster
    }

    /// Waits until every live node reports `cluster_state:ok` and every replica is in sync
    /// with its master (a replica that never synced cannot take over).
    pub fn wait_ok(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let ok = self.servers.iter().filter(|s| s.is_running()).all(|s| {
                let replication = cli(s.port, &["info", "replication"]);
                cli(s.port, &["cluster", "info"]).contains("cluster_state:ok")
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not settle");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis://127.0.0.1:PORT` of every node.
    pub fn nodes(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port))
            .collect()
    }

    /// The port of the master that serves `key`'s slot now.
    pub fn master_of(&self, key: &str) -> u16 {
        self.try_master_of(key)
            .unwrap_or_else(|| panic!("no master serves {key:?}"))
    }

    /// The port of the master that serves `key`'s slot now, if one does.
    pub fn try_master_of(&self, key: &str) -> Option<u16> {
        let live = self.servers.iter().find(|s| s.is_running()).unwrap().port;
        let slot: u16 = cli(live, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .unwrap();
        for line in cli(live, &["cluster", "nodes"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
            });
            if serves {
                let addr = fields[1].split('@').next().unwrap();
                return addr.rsplit(':').next().unwrap().parse().ok();
            }
        }
        None
    }

    /// Kills the node on `port`, as a crash would.
    pub fn kill(&mut self, port: u16) {
        let server = self.servers.iter_mut().find(|s| s.port == port).unwrap();
        server.stop();
    }
}
