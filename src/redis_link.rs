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
    manager: tokio::sync::Mutex<Option<ConnectionManager>>,
}

impl RedisLink {
    pub fn new(url: &str) -> redis::RedisResult<Self> {
        Ok(Self { client: redis::Client::open(url)?, manager: tokio::sync::Mutex::new(None) })
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// A handle to the shared connection (connecting first if there is none yet).
    pub async fn conn(&self) -> redis::RedisResult<ConnectionManager> {
        let mut slot = self.manager.lock().await;
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let m = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        *slot = Some(m.clone());
        Ok(m)
    }
}
