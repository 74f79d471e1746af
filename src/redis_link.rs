//! `RedisLink`: the node's shared Redis command connection (a `ConnectionManager`, which
//! reconnects by itself), created lazily so a node can start while Redis is down, with short
//! timeouts so callers fail fast during an outage instead of hanging.
//!
//! Owns: the command connection.  May use: redis.  Never: pub/sub (see `broker::redis`).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// How long a command may wait for a (re)connection or an answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct RedisLink {
    client: redis::Client,
    /// Built once; it reconnects by itself from then on.
    manager: std::sync::OnceLock<ConnectionManager>,
    /// One connect attempt at a time, and when the last one failed: callers that waited
    /// behind a failed attempt share its failure instead of each trying again (with Redis
    /// down at start, 50 concurrent requests fail together in ~1 s, not one by one).
    connecting: tokio::sync::Mutex<Option<(std::time::Instant, String)>>,
}

impl RedisLink {
    pub fn new(url: &str) -> redis::RedisResult<Self> {
        Ok(Self {
            client: redis::Client::open(url)?,
            manager: std::sync::OnceLock::new(),
            connecting: tokio::sync::Mutex::new(None),
        })
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// A handle to the shared connection (connecting first if there is none yet).
    pub async fn conn(&self) -> redis::RedisResult<ConnectionManager> {
        if let Some(m) = self.manager.get() {
            return Ok(m.clone());
        }
        let asked = std::time::Instant::now();
        let mut last_failure = self.connecting.lock().await;
        if let Some(m) = self.manager.get() {
            return Ok(m.clone());
        }
        if let Some((at, error)) = last_failure.as_ref() {
            if *at >= asked {
                return Err(down(error.clone()));
            }
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let attempt = ConnectionManager::new_with_config(self.client.clone(), config);
        let result = match tokio::time::timeout(CONNECT_TIMEOUT * 2, attempt).await {
            Ok(r) => r,
            Err(_) => Err(down("timed out connecting to redis".into())),
        };
        match result {
            Ok(m) => {
                let _ = self.manager.set(m.clone());
                *last_failure = None;
                Ok(m)
            }
            Err(e) => {
                *last_failure = Some((std::time::Instant::now(), e.to_string()));
                Err(e)
            }
        }
    }
}

fn down(detail: String) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "redis unavailable", detail))
}
