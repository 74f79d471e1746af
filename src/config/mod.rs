//! Server configuration: one flat struct whose every field has a default, layered as
//! built-in defaults (== `config/default.toml`) < `--config FILE` < `MITEOS_*` env < flags.
//!
//! Owns: setting names, defaults and validation.  May use: std, serde, figment, humantime.
//! Never: network I/O, opening the data directory. Invariants: `load` never panics; every
//! error names the setting at fault in one line.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use serde::{Deserialize, Serialize};

/// Every setting of the server. See `config/default.toml` for the documented defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Public listener: `/v1/ws`, `/v1/api-keys`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
    /// Admin listener: `/metrics`, `POST /internal/v1/publish`. Keep it off the internet.
    pub admin_listen: SocketAddr,
    /// `listen(2)` backlog of both listeners (tokio's default of 128 drops SYNs in a storm).
    pub listen_backlog: u32,
    /// Directory of the embedded key store (`keys.redb`) and the generated admin token.
    pub data_dir: PathBuf,
    /// Redis URL; when set the node runs in Redis mode (issue 4), else embedded.
    pub redis_url: Option<String>,
    /// Seed nodes of a Redis 7 Cluster, comma-separated (`redis://h1:7000,redis://h2:7001`):
    /// Redis mode on the cluster, with sharded pub/sub (SPEC §9). Exclusive with `redis_url`.
    pub redis_cluster: Option<String>,
    /// Bearer token for the admin listener's publish endpoint. When unset the server
    /// generates one and writes it to `<data_dir>/admin_token` (mode 0600).
    pub admin_token: Option<String>,
    /// Proxies (CIDRs) whose `X-Forwarded-For` is believed: when the socket peer is one of
    /// them, the client address is the right-most untrusted entry of that header.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` wins when set.
    pub log: String,
    /// Verified keys kept per node so repeated connections skip the store (0 = off).
    pub key_cache_entries: usize,
    /// How long a cached key is trusted; revocations and rotations evict it at once anyway.
    #[serde(with = "duration")]
    pub key_cache_ttl: Duration,
    /// How long a WebSocket ticket from `POST /v1/ws/tickets` stays valid.
    #[serde(with = "duration")]
    pub ticket_ttl: Duration,
    /// Time a client has to send complete request headers (slowloris guard).
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// Largest request head (request line + headers) in bytes (larger → 431
    /// `headers_too_large`); at least 8192.
    pub max_header_bytes: usize,
    /// Largest HTTP request body in bytes (larger → 413 `body_too_large`).
    pub max_body_bytes: usize,
    /// Time after the upgrade within which the `auth` message must arrive (else close 4002).
    #[serde(with = "duration")]
    pub auth_timeout: Duration,
    /// Interval of server WebSocket pings.
    #[serde(with = "duration")]
    pub ping_interval: Duration,
    /// Time after a ping within which any frame must arrive (else close 4004).
    #[serde(with = "duration")]
    pub pong_timeout: Duration,
    /// How long a server-initiated close keeps trying to deliver the close frame.
    #[serde(with = "duration")]
    pub close_timeout: Duration,
    /// On SIGTERM/SIGINT, the longest the process waits for sockets to close before exiting.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// Largest client WebSocket message or frame in bytes (larger → close 1009).
    pub max_message_bytes: usize,
    /// Largest producer event in bytes (larger events are dropped and counted).
    pub max_event_bytes: usize,
    /// Frames queued per connection before it counts as a slow consumer (close 4009).
    pub outbox_capacity: usize,
    /// Failed authentications (any 401, or a refused IP) per client IP per minute; past it
    /// the IP gets 429 until the budget refills. 0 = no limit.
    pub auth_failures_per_minute: u32,
    /// New WebSocket connections per key per second (429 past it). 0 = no limit.
    pub new_connections_per_key_per_second: u32,
    /// Open WebSocket connections per key (429 before the upgrade, 4029 on a race). 0 = no limit.
    pub max_connections_per_key: usize,
    /// Open WebSocket connections per account, across keys. 0 = no limit.
    pub max_connections_per_account: usize,
    /// Client messages per second per connection, sustained (past it: close 4008). 0 = no limit.
    pub client_messages_per_second: u32,
    /// Client messages a connection may send in a burst above the sustained rate.
    pub client_message_burst: u32,
    /// Open TCP connections per node (HTTP and WebSocket); past it new ones get 503. 0 = no limit.
    pub max_connections: usize,
    /// Upgraded sockets that have not sent their auth message yet (503 past it).
    pub max_unauthenticated: usize,
    /// Allowed `Origin` values for WebSocket upgrades (exact match); empty = any. Requests
    /// without an `Origin` (non-browser clients) are always allowed.
    pub allowed_origins: Vec<String>,
    /// WebSocket read buffer per connection in bytes (tungstenite allocates it up front).
    pub ws_read_buffer_bytes: usize,
    /// Bytes of frames a connection's writer gathers before a `write()` (coalescing).
    pub ws_write_buffer_bytes: usize,
    /// Redis mode: event bytes read from Redis but not yet delivered, at most. A node that falls
    /// this far behind drops its subscription (counted in miteos_broker_overflows_total), reconnects
    /// and reports a gap, instead of growing without bound.
    pub max_broker_queue_bytes: usize,
    /// Events kept per channel for resume and gap repair (SPEC §7); 0 turns history off
    /// (events then have no offset).
    pub history_size: usize,
    /// How long an event stays in its channel's history; an idle channel's history (and its
    /// epoch) is released after it.
    #[serde(with = "duration")]
    pub history_ttl: Duration,
    /// Longest time to answer one HTTP request, body included (503 request_timeout past it).
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Slowest accepted body upload after a 2 s grace (408 request_timeout below it). 0 = no minimum.
    pub min_body_bytes_per_second: usize,
    /// Longest time to receive a request body (408 request_timeout past it).
    #[serde(with = "duration")]
    pub body_read_timeout: Duration,
    /// Open connections of the admin listener, a budget of its own (a full public listener never
    /// locks out /metrics or the admin publish).
    pub admin_max_connections: usize,
    /// Open TCP connections per client IP, IPv6 per /64 (503 past it), so one host cannot take
    /// all of max_connections. Behind a trusted proxy the proxied client is counted instead, per
    /// request in flight and per WebSocket (429 past it). 0 = no limit.
    pub max_connections_per_ip: usize,
    /// The same, per account (across its keys). 0 = no limit.
    pub max_unauthenticated_per_account: usize,
    /// Upgraded-but-unauthenticated sockets one key may hold (429 past it), so one tenant cannot
    /// take all of max_unauthenticated. 0 = no limit.
    pub max_unauthenticated_per_key: usize,
    /// Log line format on stderr: "text" (for people) or "json" (one JSON object per line).
    pub log_format: LogFormat,
    /// Keys (not revoked) one account may hold, both environments; creating one more is 400
    /// key_limit_reached. 0 = no limit.
    pub max_keys_per_account: usize,
    /// Older secrets a key may have inside a rotation's grace at once (1 = the one replaced last). A
    /// rotation beyond it ends the grace of the oldest at once (its streams close with 4003).
    pub rotation_max_previous_secrets: usize,
    /// Accept production (mt_live_) keys on requests that carry an Origin header (a browser).
    /// Off by default: browsers should connect with tickets (403 live_key_in_browser otherwise).
    pub allow_live_keys_in_browser: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            listen_backlog: 4096,
            data_dir: PathBuf::from("./data"),
            redis_url: None,
            redis_cluster: None,
            admin_token: None,
            trusted_proxies: Vec::new(),
            log: "info".into(),
            key_cache_entries: 10_000,
            key_cache_ttl: Duration::from_secs(30),
            ticket_ttl: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_body_bytes: 64 * 1024,
            auth_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            max_message_bytes: 4 * 1024,
            max_event_bytes: 64 * 1024,
            outbox_capacity: 1024,
            auth_failures_per_minute: 30,
            new_connections_per_key_per_second: 50,
            max_connections_per_key: 1000,
            max_connections_per_account: 10_000,
            client_messages_per_second: 10,
            client_message_burst: 50,
            max_connections: 19_000,
            max_unauthenticated: 1000,
            allowed_origins: Vec::new(),
            ws_read_buffer_bytes: 1024,
            ws_write_buffer_bytes: 16 * 1024,
            max_broker_queue_bytes: 32 * 1024 * 1024,
            history_size: 1000,
            history_ttl: Duration::from_secs(600),
            request_timeout: Duration::from_secs(30),
            min_body_bytes_per_second: 1024,
            body_read_timeout: Duration::from_secs(10),
            admin_max_connections: 256,
            max_connections_per_ip: 1000,
            max_unauthenticated_per_account: 200,
            max_unauthenticated_per_key: 100,
            log_format: LogFormat::Text,
            max_keys_per_account: 1000,
            rotation_max_previous_secrets: 1,
            allow_live_keys_in_browser: false,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings whose values are secrets (a password may be in the Redis URL): errors never
/// quote them.
const SECRET_SETTINGS: [&str; 3] = ["admin_token", "redis_url", "redis_cluster"];

/// The longest any duration setting may be.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Command-line flags that override every other layer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Flags {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_cluster: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

/// A configuration that cannot be used; `Display` is one line naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("invalid config: {setting}: {message}")]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

impl ConfigError {
    fn new(setting: &str, message: impl Into<String>) -> Self {
        Self { setting: setting.to_owned(), message: message.into() }
    }
}

impl Config {
    /// Layers defaults < `file` < `MITEOS_*` environment < `flags`, then validates.
    pub fn load(file: Option<&Path>, flags: &Flags) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::new(
                    "--config",
                    format!("{} is not a readable file", path.display()),
                ));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        let names = Self::setting_names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        fig = fig.merge(Env::prefixed("MITEOS_").only(&names)).merge(Serialized::defaults(flags));
        let config: Config = fig.extract().map_err(|e| {
            let first = e.into_iter().next();
            let setting = first.as_ref().map(|e| e.path.join(".")).unwrap_or_default();
            let mut message = first.map(|e| e.kind.to_string()).unwrap_or_default();
            // A parse error quotes the value: never for a setting that holds a secret.
            if SECRET_SETTINGS.contains(&setting.as_str()) {
                message = "invalid value (not shown: this setting holds a secret)".into();
            }
            ConfigError::new(if setting.is_empty() { "config" } else { &setting }, message)
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Whether the node runs on Redis (one Redis or a cluster) rather than embedded.
    pub fn redis_mode(&self) -> bool {
        self.redis_url.is_some() || self.redis_cluster.is_some()
    }

    /// The cluster's seed URLs (empty unless `redis_cluster` is set).
    pub fn cluster_seeds(&self) -> Vec<String> {
        let seeds = self.redis_cluster.as_deref().unwrap_or_default().split(',');
        seeds.map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
    }

    /// Parses a TOML document on top of the defaults (no environment, no flags).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract::<Config>()
            .map_err(|e| ConfigError::new("config", e.to_string()))
    }

    /// The names of all settings (the keys `MITEOS_<NAME>` may set).
    pub fn setting_names() -> Vec<String> {
        match serde_json::to_value(Config::default()) {
            // `None` fields serialise as `null`, so every field is a key here.
            Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }
}

mod duration;
mod validate;

#[cfg(test)]
mod tests;
