//! `RedisLink`: the node's shared Redis command connection — to one Redis (a
//! `ConnectionManager`, which reconnects by itself) or to a Redis Cluster (the redis crate's
//! `ClusterConnection`, which follows MOVED/ASK and refreshes its slot map) — created lazily
//! so a node can start while Redis is down, with short timeouts so callers fail fast during
//! an outage instead of hanging. Callers see one `Conn` type either way; in a cluster every
//! multi-key command, script and pipeline must keep to one slot (hash tags, docs/PRODUCERS.md).
//!
//! Owns: the command connection, the seed addresses.  May use: redis.
//! Never: pub/sub (see `broker::redis`).

use std::time::Duration;

use redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    Cmd, Pipeline, RedisFuture, Value,
};

/// How long a command may wait for a (re)connection or an answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the node's Redis is.
#[derive(Clone)]
enum Target {
    Single(redis::Client),
    /// The seed nodes' addresses, and a client for the whole cluster.
    Cluster(Vec<redis::ConnectionInfo>, Box<ClusterClient>),
}

pub struct RedisLink {
    target: Target,
    /// Built once; it reconnects by itself from then on.
    conn: std::sync::OnceLock<Conn>,
    /// One connect attempt at a time, and when the last one failed: callers that waited
    /// behind a failed attempt share its failure instead of each trying again (with Redis
    /// down at start, 50 concurrent requests fail together in ~1 s, not one by one).
    connecting: tokio::sync::Mutex<Option<(std::time::Instant, String)>>,
}

/// A command connection to one Redis or to a cluster; cheap to clone.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl RedisLink {
    /// One Redis at `url`.
    pub fn new(url: &str) -> redis::RedisResult<Self> {
        Ok(Self::with(Target::Single(redis::Client::open(url)?)))
    }

    /// A Redis Cluster reached through these seed nodes (any of its nodes will do).
    pub fn cluster(seeds: &[String]) -> redis::RedisResult<Self> {
        let infos = seeds
            .iter()
            .map(|s| redis::IntoConnectionInfo::into_connection_info(s.as_str()))
            .collect::<redis::RedisResult<Vec<_>>>()?;
        let client = ClusterClient::builder(infos.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .retries(2)
            .build()?;
        Ok(Self::with(Target::Cluster(infos, Box::new(client))))
    }

    fn with(target: Target) -> Self {
        Self { target, conn: std::sync::OnceLock::new(), connecting: tokio::sync::Mutex::new(None) }
    }

    /// Whether this is a cluster (sharded pub/sub, one slot per multi-key step).
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(..))
    }

    /// A client for one Redis: the single one, or in a cluster the node at `addr`
    /// (`host:port`), with the seeds' credentials.
    pub fn client_for(&self, addr: Option<&str>) -> redis::RedisResult<redis::Client> {
        match (&self.target, addr) {
            (Target::Single(c), _) => Ok(c.clone()),
            (Target::Cluster(seeds, _), addr) => {
                let mut info = seeds.first().cloned().ok_or_else(|| down("no seed".into()))?;
                if let Some((host, port)) = addr.and_then(|a| a.rsplit_once(':')) {
                    let port = port.parse().map_err(|_| down(format!("bad address {addr:?}")))?;
                    info = info.set_addr(redis::ConnectionAddr::Tcp(host.to_owned(), port));
                }
                redis::Client::open(info)
            }
        }
    }

    /// A handle to the shared connection (connecting first if there is none yet).
    pub async fn conn(&self) -> redis::RedisResult<Conn> {
        if let Some(c) = self.conn.get() {
            return Ok(c.clone());
        }
        let asked = std::time::Instant::now();
        let mut last_failure = self.connecting.lock().await;
        if let Some(c) = self.conn.get() {
            return Ok(c.clone());
        }
        if let Some((at, error)) = last_failure.as_ref() {
            if *at >= asked {
                return Err(down(error.clone()));
            }
        }
        let result = match tokio::time::timeout(CONNECT_TIMEOUT * 2, self.connect()).await {
            Ok(r) => r,
            Err(_) => Err(down("timed out connecting to redis".into())),
        };
        match result {
            Ok(c) => {
                let _ = self.conn.set(c.clone());
                *last_failure = None;
                Ok(c)
            }
            Err(e) => {
                *last_failure = Some((std::time::Instant::now(), e.to_string()));
                Err(e)
            }
        }
    }

    async fn connect(&self) -> redis::RedisResult<Conn> {
        match &self.target {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_with_config(client.clone(), config).await.map(Conn::Single)
            }
            Target::Cluster(_, client) => client.get_async_connection().await.map(Conn::Cluster),
        }
    }
}

fn down(detail: String) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "redis unavailable", detail))
}
