//! `TestServer`: a node built through the library on 127.0.0.1:0 with a temp data dir.

use std::sync::Arc;

use miteos_stream::{
    ids::AccountId,
    keys::service::NewKey,
    scope::{Environment, Scope},
    state::AppState,
    Config, Node,
};
use serde_json::Value;
use tempfile::TempDir;
use tokio::task::JoinHandle;

use super::http::HttpClient;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// What several nodes of one test share in Redis mode: one private redis-server, or in
/// cluster mode one private Redis Cluster of three masters.
pub enum Shared {
    Redis(super::RedisServer),
    Cluster(super::RedisCluster),
}

impl Shared {
    pub async fn start() -> Self {
        if crate::CLUSTER_MODE {
            Shared::Cluster(super::RedisCluster::start_with(3, 0).await)
        } else {
            Shared::Redis(super::RedisServer::start().await)
        }
    }
}

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub admin_addr: std::net::SocketAddr,
    /// The bootstrap key (acct_local, test, every scope); empty when the store already had
    /// keys (a second node on a shared Redis).
    pub bootstrap: String,
    pub state: Arc<AppState>,
    task: Option<JoinHandle<()>>,
    _dir: TempDir,
    /// The private Redis of a node started by `with` in Redis mode (dropped last).
    _redis: Option<super::RedisServer>,
    /// The private Redis Cluster of a node started by `with` in cluster mode.
    _cluster: Option<super::RedisCluster>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    /// Starts a server after `f` adjusted the test config.
    pub async fn with(f: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            admin_token: Some(ADMIN_TOKEN.into()),
            // Clients still open when a test ends do not answer the 1001; don't wait long.
            close_timeout: std::time::Duration::from_secs(1),
            ..Config::default()
        };
        f(&mut cfg);
        // A private backend unless `f` gave one (a node of a shared Redis or cluster).
        let given = cfg.redis_url.is_some() || cfg.redis_cluster.is_some();
        let redis = if crate::REDIS_MODE && !crate::CLUSTER_MODE && !given {
            let r = super::RedisServer::start().await;
            cfg.redis_url = Some(r.url());
            Some(r)
        } else {
            None
        };
        // Cluster mode: three masters, no replicas (tests of failover start their own).
        let cluster = if crate::CLUSTER_MODE && !given {
            let c = super::RedisCluster::start_with(3, 0).await;
            cfg.redis_cluster = Some(c.seeds());
            Some(c)
        } else {
            None
        };
        let redis_mode = cfg.redis_mode();
        let node = Node::build(cfg).await.expect("node builds");
        let bootstrap =
            node.bootstrap.as_ref().map(|b| b.token.expose().to_owned()).unwrap_or_default();
        let (addr, admin_addr, state) = (node.public_addr, node.admin_addr, node.state().clone());
        let task = tokio::spawn(node.run(std::future::pending()));
        let s = Self {
            addr,
            admin_addr,
            bootstrap,
            state,
            task: Some(task),
            _dir: dir,
            _redis: redis,
            _cluster: cluster,
        };
        if redis_mode {
            s.wait_ready(200).await;
        }
        s
    }

    /// A node in Redis mode on `redis`, ready (its `/readyz` answered 200).
    pub async fn on_redis(redis: &super::RedisServer, f: impl FnOnce(&mut Config)) -> Self {
        let url = redis.url();
        Self::with(|c| {
            c.redis_url = Some(url);
            f(c)
        })
        .await
    }

    /// A node on what `shared` holds (the mode's backend), ready.
    pub async fn on_shared(shared: &Shared, f: impl FnOnce(&mut Config)) -> Self {
        match shared {
            Shared::Redis(r) => Self::on_redis(r, f).await,
            Shared::Cluster(c) => Self::on_cluster(c, f).await,
        }
    }

    /// A node on the Redis Cluster `cluster`, ready.
    pub async fn on_cluster(cluster: &super::RedisCluster, f: impl FnOnce(&mut Config)) -> Self {
        let seeds = cluster.seeds();
        Self::with(|c| {
            c.redis_url = None;
            c.redis_cluster = Some(seeds);
            f(c)
        })
        .await
    }

    /// Polls `/readyz` (as a load balancer would) until it answers `status`, for up to 10 s.
    pub async fn wait_ready(&self, status: u16) {
        for _ in 0..500 {
            if self.http().await.get("/readyz", None).await.status == status {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("/readyz never answered {status}");
    }

    /// Stops the node (1001 to every socket) and re-raises a panic of its task.
    pub async fn shutdown(mut self) {
        self.state.shutdown.token.cancel();
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }

    /// Creates a key directly through the key service and returns its secret.
    pub async fn key(&self, account: &str, env: Environment, scopes: &[Scope]) -> (String, String) {
        self.key_with(NewKey {
            name: "test".into(),
            account: AccountId::parse(account).unwrap(),
            environment: env,
            scopes: scopes.to_vec(),
            ip_allowlist: vec![],
            expires_at: None,
        })
        .await
    }

    /// Creates a key from a full `NewKey`; returns (secret, key id).
    pub async fn key_with(&self, new: NewKey) -> (String, String) {
        let created = self.state.keys.create(new).await.expect("create key");
        (created.token.expose().to_owned(), created.record.id.to_string())
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://{}/v1/ws?token={token}", self.addr)
    }

    pub async fn http(&self) -> HttpClient {
        HttpClient::connect(self.addr).await
    }

    /// `DELETE /v1/api-keys/{id}` with `bearer`: revokes the key.
    pub async fn revoke(&self, id: &str, bearer: &str) -> super::http::HttpResponse {
        self.http().await.delete(&format!("/v1/api-keys/{id}"), Some(bearer)).await
    }

    pub async fn admin(&self) -> HttpClient {
        HttpClient::connect(self.admin_addr).await
    }

    /// Publishes one event through the admin endpoint, asserts it was accepted and returns
    /// the answer (`id`, `channel`, and with history `offset` and `epoch`).
    pub async fn publish(
        &self,
        admin: &mut HttpClient,
        account: &str,
        env: &str,
        channel: &str,
        event: &str,
        data: Value,
    ) -> Value {
        let body = serde_json::json!({"account_id": account, "environment": env, "channel": channel, "event": event, "data": data});
        let resp =
            admin.post_json("/internal/v1/publish", Some(ADMIN_TOKEN), &body.to_string()).await;
        assert_eq!(resp.status, 200, "publish failed: {}", resp.body);
        resp.json()
    }

    /// The current value of a metric line (exact name with labels), 0 if absent.
    pub fn metric(&self, line_prefix: &str) -> f64 {
        self.state
            .metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(line_prefix).and_then(|rest| rest.trim().parse().ok()))
            .unwrap_or(0.0)
    }
}
