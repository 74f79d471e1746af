//! `RedisCluster`: a private Redis Cluster of `redis-server --cluster-enabled yes` processes
//! on free ports (each with its bus port, +10000, free too), made with `redis-cli --cluster
//! create` and awaited until every node says `cluster_state:ok` and agrees on the slot map.
//! A test can SIGKILL a master, wait for its replica's promotion, and migrate a slot.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use redis::Value;
use tempfile::TempDir;

pub struct RedisCluster {
    /// Ports of every node, and the process of each one still running.
    nodes: Vec<(u16, Option<Child>)>,
    dir: TempDir,
    /// The process `spawn_new` just started.
    spawned: Option<Child>,
}

/// A port whose cluster bus port (+10000) is free too.
fn free_pair() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}/")
}

pub async fn node_conn(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url(port)).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// `INFO section` of one node, or for "cluster" its `CLUSTER INFO`; empty while it does not
/// answer (starting, or killed).
async fn info(port: u16, section: &str) -> String {
    let Ok(client) = redis::Client::open(url(port)) else { return String::new() };
    let Ok(mut c) = client.get_multiplexed_async_connection().await else { return String::new() };
    let mut cmd = if section == "cluster" { redis::cmd("CLUSTER") } else { redis::cmd("INFO") };
    cmd.arg(if section == "cluster" { "INFO" } else { section });
    cmd.query_async::<String>(&mut c).await.unwrap_or_default()
}

async fn node_id(port: u16) -> String {
    redis::cmd("CLUSTER").arg("MYID").query_async(&mut node_conn(port).await).await.unwrap()
}

/// `CLUSTER SETSLOT slot how node` on the node at `port`.
async fn setslot(port: u16, slot: u16, how: &str, node: &str) {
    let mut setslot = redis::cmd("CLUSTER");
    setslot.arg("SETSLOT").arg(slot).arg(how).arg(node);
    setslot.query_async::<()>(&mut node_conn(port).await).await.unwrap()
}

/// `(first, last, master port)` of every slot range, as the node at `port` sees them, sorted.
async fn slots_seen_by(port: u16) -> Vec<(u16, u16, u16)> {
    let v: Value =
        redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut node_conn(port).await).await.unwrap();
    let Value::Array(ranges) = v else { panic!("CLUSTER SLOTS: {v:?}") };
    let mut map: Vec<(u16, u16, u16)> = ranges
        .into_iter()
        .map(|r| match r {
            Value::Array(f) => match (&f[0], &f[1], &f[2]) {
                (Value::Int(a), Value::Int(b), Value::Array(m)) => match m[1] {
                    Value::Int(p) => (*a as u16, *b as u16, p as u16),
                    _ => panic!("{m:?}"),
                },
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        })
        .collect();
    map.sort();
    map
}

impl RedisCluster {
    /// Three masters, each with one replica.
    pub async fn start() -> Self {
        Self::start_with(3, 1).await
    }

    /// `masters` masters with `replicas` replicas each.
    pub async fn start_with(masters: usize, replicas: usize) -> Self {
        let mut me = Self { nodes: Vec::new(), dir: tempfile::tempdir().unwrap(), spawned: None };
        for _ in 0..masters * (1 + replicas) {
            let port = me.spawn_new().await;
            let child = me.spawned.take();
            me.nodes.push((port, child));
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for (port, _) in &me.nodes {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli on PATH");
        assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
        me.await_ok(me.ports()).await;
        me
    }

    /// The ports of the nodes still running.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().filter(|(_, c)| c.is_some()).map(|(p, _)| *p).collect()
    }

    /// Seed URLs of all nodes, comma-separated (`--redis-cluster`).
    pub fn seeds(&self) -> String {
        self.nodes.iter().map(|(p, _)| url(*p)).collect::<Vec<_>>().join(",")
    }

    /// A command connection to the whole cluster.
    pub async fn conn(&self) -> redis::cluster_async::ClusterConnection {
        let seeds: Vec<String> = self.ports().into_iter().map(url).collect();
        redis::cluster::ClusterClient::new(seeds).unwrap().get_async_connection().await.unwrap()
    }

    /// The ports of the masters that serve slots, sorted.
    pub async fn masters(&self) -> Vec<u16> {
        let mut m: Vec<u16> = self.slot_map().await.into_iter().map(|(_, _, p)| p).collect();
        m.sort();
        m.dedup();
        m
    }

    /// `(first, last, master port)` of every slot range, from a live node.
    pub async fn slot_map(&self) -> Vec<(u16, u16, u16)> {
        slots_seen_by(self.ports()[0]).await
    }

    pub async fn slot_of(&self, key: &str) -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut node_conn(self.ports()[0]).await)
            .await
            .unwrap()
    }

    pub async fn master_of_slot(&self, slot: u16) -> u16 {
        let map = self.slot_map().await;
        map.iter().find(|(a, b, _)| *a <= slot && slot <= *b).map(|(_, _, p)| *p).unwrap()
    }

    /// The first account `{prefix}{i}` whose live `tasks` channel has a master for which
    /// `want` holds, and that master (to put a channel on, or off, a chosen shard).
    pub async fn account_whose_tasks(
        &self,
        prefix: &str,
        want: impl Fn(u16) -> bool,
    ) -> (String, u16) {
        let map = self.slot_map().await;
        for i in 0.. {
            let account = format!("{prefix}{i}");
            let slot = self.slot_of(&format!("mt:live:{account}:tasks")).await;
            let master = map.iter().find(|(a, b, _)| *a <= slot && slot <= *b).unwrap().2;
            if want(master) {
                return (account, master);
            }
        }
        unreachable!("some account's channel lands on every master")
    }

    /// `CONFIG SET name value` on the node at `port`.
    pub async fn config_set(&self, port: u16, name: &str, value: &str) {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut node_conn(port).await)
            .await
            .unwrap();
    }

    /// `PUBSUB SHARDCHANNELS` on one node, sorted.
    pub async fn shard_channels(&self, port: u16) -> Vec<String> {
        let mut v: Vec<String> = redis::cmd("PUBSUB")
            .arg("SHARDCHANNELS")
            .query_async(&mut node_conn(port).await)
            .await
            .unwrap();
        v.sort();
        v
    }

    /// The port of a replica of the master at `master`.
    pub async fn replica_of(&self, master: u16) -> u16 {
        let replication = info(master, "replication").await;
        let line = replication.lines().find(|l| l.starts_with("slave0:")).expect("a replica");
        let port = line.split(',').find_map(|f| f.strip_prefix("port=")).expect("its port");
        port.trim().parse().unwrap()
    }

    /// SIGSTOP (`true`) or SIGCONT one node: a stopped replica misses what its master writes.
    pub fn pause(&self, port: u16, stop: bool) {
        let (_, child) = self.nodes.iter().find(|(p, _)| *p == port).expect("a node");
        let pid = child.as_ref().expect("running").id().to_string();
        let signal = if stop { "-STOP" } else { "-CONT" };
        assert!(Command::new("kill").args([signal, &pid]).status().unwrap().success());
    }

    /// SIGKILL one node, as a crash would.
    pub fn kill(&mut self, port: u16) {
        if let Some((_, child)) = self.nodes.iter_mut().find(|(p, _)| *p == port) {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Waits until the dead master's slots are served by a promoted replica and every
    /// surviving node says `cluster_state:ok`.
    pub async fn await_failover(&self, dead: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self.all_ok(&self.ports()).await;
            if ok && !self.slot_map().await.iter().any(|(_, _, p)| *p == dead) {
                return;
            }
            assert!(Instant::now() < deadline, "no failover of {dead} within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Moves `slot` and its keys to the master at `to` (the procedure of `redis-cli
    /// --cluster reshard`, for one given slot).
    pub async fn migrate_slot(&self, slot: u16, to: u16) {
        let from = self.master_of_slot(slot).await;
        assert_ne!(from, to);
        let mut src = node_conn(from).await;
        let (src_id, dst_id) = (node_id(from).await, node_id(to).await);
        setslot(to, slot, "IMPORTING", &src_id).await;
        setslot(from, slot, "MIGRATING", &dst_id).await;
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query_async(&mut src)
                .await
                .unwrap();
            if keys.is_empty() {
                break;
            }
            let _: () = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query_async(&mut src)
                .await
                .unwrap();
        }
        for port in self.masters().await {
            setslot(port, slot, "NODE", &dst_id).await;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.master_of_slot(slot).await != to {
            assert!(Instant::now() < deadline, "slot {slot} never moved to {to}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every node `cluster_state:ok`, and every replica's link to its master up (a replica
    /// still in its first sync would be promoted empty).
    async fn all_ok(&self, ports: &[u16]) -> bool {
        for p in ports {
            if !info(*p, "cluster").await.contains("cluster_state:ok") {
                return false;
            }
            let replication = info(*p, "replication").await;
            if replication.contains("role:slave") && !replication.contains("master_link_status:up")
            {
                return false;
            }
        }
        true
    }

    /// Waits until every node is `cluster_state:ok` with the same slot map.
    async fn await_ok(&self, ports: Vec<u16>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.all_ok(&ports).await {
                let mut maps = Vec::new();
                for p in &ports {
                    maps.push(slots_seen_by(*p).await);
                }
                if maps.windows(2).all(|w| w[0] == w[1]) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the cluster never became ok");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl RedisCluster {
    /// Starts one cluster-enabled node on a fresh free port; its process waits in `spawned`.
    async fn spawn_new(&mut self) -> u16 {
        for _ in 0..10 {
            let port = free_pair();
            let conf = self.dir.path().join(format!("nodes-{port}.conf"));
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                .arg("--cluster-config-file")
                .arg(&conf)
                .args(["--cluster-replica-validity-factor", "0"])
                .args(["--cluster-allow-replica-migration", "no"])
                // A replica syncs at once and is listed in CLUSTER SLOTS at once (Redis 7.0
                // leaves out a replica whose offset is still 0, until the master's ping).
                .args(["--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(self.dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server on PATH");
            let pid = child.id();
            self.spawned = Some(child);
            for _ in 0..200 {
                if let Some(Ok(Some(_))) = self.spawned.as_mut().map(|c| c.try_wait()) {
                    break; // exited: port taken
                }
                if info(port, "server")
                    .await
                    .lines()
                    .any(|l| l.trim() == format!("process_id:{pid}"))
                {
                    return port;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            if let Some(mut c) = self.spawned.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        panic!("could not start a cluster-enabled redis-server");
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
