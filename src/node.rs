//! `Node`: one server process's wiring. Builds the key store, broker and Hub from the
//! `Config`, creates the bootstrap key on an empty store, binds both listeners (so the real
//! ports are known before serving), then serves until shutdown and drains every socket.
//!
//! Owns: the choice of concrete backends (only here and in `cli`).  May use: everything.

use std::{future::Future, io::Write, net::SocketAddr, path::Path, sync::Arc};

use tokio::{net::TcpListener, sync::Semaphore};

use crate::{
    auth::Authenticator,
    broker::{
        memory::MemoryBroker,
        redis::{self as redis_broker, RedisBroker},
    },
    budget::Budget,
    config::Config,
    control::Control,
    http::Listener,
    hub::Hub,
    ids::random_base62,
    keys::{
        cache::KeyCache,
        embedded::EmbeddedKeyStore,
        redis::RedisKeyStore,
        service::{Created, KeyService},
        KeyStore, StoreError,
    },
    metrics::Metrics,
    protocol::close::CloseCode,
    rate_limit::Limits,
    redis_link::RedisLink,
    server,
    shutdown::Shutdown,
    slots::{MemorySlots, RedisSlots, SlotStore},
    state::AppState,
    tickets::{MemoryTickets, RedisTickets, TicketStore},
};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("admin token file {path}: {source}")]
    AdminToken { path: String, source: std::io::Error },
    #[error("{0}")]
    Redis(String),
}

/// The backends the config selects: embedded (redb file + in-process broker) or Redis.
pub struct Backends {
    pub store: Arc<dyn KeyStore>,
    pub tickets: Arc<dyn TicketStore>,
    pub cache: Arc<KeyCache>,
    pub slots: Arc<dyn SlotStore>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
}

impl Backends {
    /// A node's backends. Must run inside a tokio runtime (the Redis broker starts its
    /// supervisor task).
    pub fn build(config: &Config) -> Result<Self, NodeError> {
        Self::build_as(config, true)
    }

    /// A one-shot command's backends (the CLI): in Redis mode it installs the history
    /// function library only if Redis has none, never over the one the nodes loaded (whose
    /// settings may differ from the command's config).
    pub fn build_for_command(config: &Config) -> Result<Self, NodeError> {
        Self::build_as(config, false)
    }

    fn build_as(config: &Config, node: bool) -> Result<Self, NodeError> {
        let metrics = Arc::new(Metrics::new());
        let cache = Arc::new(KeyCache::new(config.key_cache_entries, config.key_cache_ttl));
        let max_event_bytes = config.max_event_bytes;
        let queue_bytes = config.max_broker_queue_bytes;
        if !config.redis_mode() {
            let (size, ttl) = (config.history_size, config.history_ttl);
            let hub = Hub::new(metrics.clone(), size, |handler| {
                Arc::new(MemoryBroker::new(handler, max_event_bytes, size, ttl))
            });
            return Ok(Self {
                store: Arc::new(EmbeddedKeyStore::open(&config.data_dir)?),
                tickets: Arc::new(MemoryTickets::default()),
                slots: Arc::new(MemorySlots::default()),
                cache,
                hub,
                metrics,
            });
        }
        // Until the control subscription is up this node would not hear a key change.
        cache.suspend();
        let link = match &config.redis_url {
            Some(url) => {
                RedisLink::new(url).map_err(|e| NodeError::Redis(format!("redis_url: {e}")))
            }
            None => RedisLink::cluster(&config.cluster_seeds())
                .map_err(|e| NodeError::Redis(format!("redis_cluster: {e}"))),
        };
        let link = Arc::new(link?);
        let broker_link = link.clone();
        let settings = redis_broker::Settings {
            max_event_bytes,
            max_queued_bytes: queue_bytes,
            history_size: config.history_size,
            history_ttl: config.history_ttl,
            install_library: node,
        };
        let hub = Hub::new(metrics.clone(), config.history_size, move |handler| {
            Arc::new(RedisBroker::start(broker_link, handler, settings))
        });
        Ok(Self {
            store: Arc::new(RedisKeyStore::new(link.clone())),
            tickets: Arc::new(RedisTickets::new(link.clone())),
            slots: RedisSlots::start(link),
            cache,
            hub,
            metrics,
        })
    }
}

/// A built node whose listeners are bound but not yet serving.
pub struct Node {
    state: Arc<AppState>,
    public: TcpListener,
    admin: TcpListener,
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The key created on an empty store; its secret is shown once by the caller.
    pub bootstrap: Option<Created>,
    /// With Redis down at start: the bootstrap key, once Redis answers (if its store is empty).
    pub late_bootstrap: Option<tokio::sync::oneshot::Receiver<Created>>,
}

/// How long a Redis-mode node waits for its broker subscription before it starts serving.
const BROKER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Retries the bootstrap-key check until Redis answers; sends the key if one was created.
fn spawn_late_bootstrap(keys: KeyService) -> tokio::sync::oneshot::Receiver<Created> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut pause = std::time::Duration::from_millis(200);
        loop {
            tokio::time::sleep(pause).await;
            match keys.bootstrap().await {
                Ok(Some(created)) => {
                    let _ = tx.send(created);
                    return;
                }
                Ok(None) => return, // the store has keys: nothing to show
                Err(_) => pause = (pause * 2).min(std::time::Duration::from_secs(5)),
            }
        }
    });
    rx
}

impl Node {
    pub async fn build(config: Config) -> Result<Node, NodeError> {
        let config = Arc::new(config);
        let b = Backends::build(&config)?;
        let keys = KeyService::new(b.store.clone(), b.hub.broker().clone())
            .with_max_previous_secrets(config.rotation_max_previous_secrets)
            .with_max_keys_per_account(config.max_keys_per_account);
        let admin_token = admin_token(&config)?;
        let bind = |addr| {
            server::bind(addr, config.listen_backlog)
                .map_err(|source| NodeError::Bind { addr, source })
        };
        let public = bind(config.listen)?;
        let admin = bind(config.admin_listen)?;
        let local = |l: &TcpListener, addr| {
            l.local_addr().map_err(|source| NodeError::Bind { addr, source })
        };
        let public_addr = local(&public, config.listen)?;
        let admin_addr = local(&admin, config.admin_listen)?;
        // Only once both listeners are bound: a start that fails creates no key, so the next
        // successful start still shows one.
        let (bootstrap, late_bootstrap) = match keys.bootstrap().await {
            Ok(created) => (created, None),
            // Redis may be down when a node starts: it serves (not ready), and creates the
            // bootstrap key (if the store turns out empty) once Redis answers.
            Err(StoreError::RedisDown(e)) => {
                tracing::warn!(error = %e, "redis unavailable at start; the bootstrap-key check waits for it");
                (None, Some(spawn_late_bootstrap(keys.clone())))
            }
            Err(e) => return Err(e.into()),
        };
        // In Redis mode, serve once the broker subscription is up (bounded: with Redis down
        // the node starts anyway and /readyz answers 503 until it is).
        let ready_by = std::time::Instant::now() + BROKER_WAIT;
        while !b.hub.broker().ready() && std::time::Instant::now() < ready_by {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let shutdown = Shutdown::new();
        let control = Control::install(b.hub.clone(), b.store.clone(), b.cache.clone());
        control.spawn(&shutdown, config.key_cache_ttl);
        let limits = Arc::new(Limits::new(&config));
        spawn_pruning(limits.clone(), &shutdown);
        let permits =
            |n: usize| Arc::new(Semaphore::new(if n == 0 { Semaphore::MAX_PERMITS } else { n }));
        let state = Arc::new(AppState {
            auth: Authenticator::new(
                b.store,
                b.tickets,
                b.cache,
                limits.clone(),
                b.metrics.clone(),
            ),
            limits,
            slots: b.slots,
            connections: permits(config.max_connections),
            unauthenticated: permits(config.max_unauthenticated),
            unauthenticated_per_key: Budget::new(config.max_unauthenticated_per_key),
            unauthenticated_per_account: Budget::new(config.max_unauthenticated_per_account),
            per_ip: Budget::new(config.max_connections_per_ip),
            admin_connections: permits(config.admin_max_connections),
            config,
            hub: b.hub,
            control,
            keys,
            metrics: b.metrics,
            shutdown,
            admin_token,
        });
        Ok(Node { state, public, admin, public_addr, admin_addr, bootstrap, late_bootstrap })
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Serves until `stop` resolves (or the node's shutdown token is cancelled), then stops
    /// accepting, closes every WebSocket with 1001 and waits up to `shutdown_grace`.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        let st = self.state;
        let public = tokio::spawn(server::serve(self.public, st.clone(), Listener::Public));
        let admin = tokio::spawn(server::serve(self.admin, st.clone(), Listener::Admin));
        tokio::select! {
            _ = stop => {}
            _ = st.shutdown.token.cancelled() => {}
        }
        st.shutdown.token.cancel();
        st.hub.close_all(CloseCode::GoingAway);
        let _ = public.await;
        let _ = admin.await;
        if !st.shutdown.drain(st.config.shutdown_grace).await {
            tracing::warn!(
                open = st.hub.session_count(),
                "shutdown grace elapsed; dropping remaining connections"
            );
        }
        tracing::info!("stopped");
    }
}

/// How often idle rate-limiter state is dropped.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Drops limiter state that no longer limits anything, until shutdown.
fn spawn_pruning(limits: Arc<Limits>, shutdown: &Shutdown) {
    let token = shutdown.token.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(PRUNE_EVERY);
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = every.tick() => limits.prune(),
            }
        }
    });
}

/// The admin token: from the config, else from `<data_dir>/admin_token`, else a new one
/// written there with mode 0600.
pub fn admin_token(config: &Config) -> Result<String, NodeError> {
    if let Some(t) = &config.admin_token {
        return Ok(t.clone());
    }
    let path = config.data_dir.join("admin_token");
    let err = |source| NodeError::AdminToken { path: path.display().to_string(), source };
    if let Some(t) = read_admin_token(&config.data_dir).map_err(err)? {
        return Ok(t);
    }
    let token = random_base62(40);
    std::fs::create_dir_all(&config.data_dir).map_err(err)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&path).map_err(err)?;
    f.write_all(token.as_bytes()).map_err(err)?;
    tracing::info!(path = %path.display(), "generated an admin token");
    Ok(token)
}

/// Reads `<data_dir>/admin_token` if it exists.
pub fn read_admin_token(data_dir: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(data_dir.join("admin_token")) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
