//! Validation of a loaded `Config`: every value the server cannot run with is refused with
//! one line naming the setting.
//!
//! May use: the parent module.

use std::time::Duration;

use super::{Config, ConfigError, MAX_DURATION};

impl Config {
    /// Rejects values the server cannot run with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("header_read_timeout", self.header_read_timeout),
            ("ticket_ttl", self.ticket_ttl),
            ("auth_timeout", self.auth_timeout),
            ("ping_interval", self.ping_interval),
            ("pong_timeout", self.pong_timeout),
            ("close_timeout", self.close_timeout),
            ("shutdown_grace", self.shutdown_grace),
            ("body_read_timeout", self.body_read_timeout),
            ("request_timeout", self.request_timeout),
            ("history_ttl", self.history_ttl),
        ];
        for (name, d) in positive
            .into_iter()
            .chain([("key_cache_ttl", self.key_cache_ttl.max(Duration::from_secs(1)))])
        {
            if d.is_zero() {
                return Err(ConfigError::new(name, "must be greater than zero"));
            }
            // Deadlines are computed as now + duration: keep them far from overflow.
            if d > MAX_DURATION {
                return Err(ConfigError::new(name, "must be at most 7 days"));
            }
        }
        let at_least = [
            ("max_header_bytes", self.max_header_bytes, 8192),
            ("max_body_bytes", self.max_body_bytes, 1),
            ("max_message_bytes", self.max_message_bytes, 128),
            ("max_event_bytes", self.max_event_bytes, 64),
            ("outbox_capacity", self.outbox_capacity, 1),
            ("ws_read_buffer_bytes", self.ws_read_buffer_bytes, 64),
            ("listen_backlog", self.listen_backlog as usize, 1),
            ("max_unauthenticated", self.max_unauthenticated, 1),
            ("max_broker_queue_bytes", self.max_broker_queue_bytes, 64 * 1024),
        ];
        for (name, v, min) in at_least {
            if v < min {
                return Err(ConfigError::new(name, format!("must be at least {min}, got {v}")));
            }
        }
        if self.history_size > 100_000 {
            return Err(ConfigError::new("history_size", "must be at most 100000"));
        }
        if self.rotation_max_previous_secrets > 16 {
            return Err(ConfigError::new("rotation_max_previous_secrets", "must be at most 16"));
        }
        if let Some(url) = &self.redis_url {
            check_redis_url("redis_url", url, &["redis://", "unix://", "redis+unix://"])?;
            if self.redis_cluster.is_some() {
                return Err(ConfigError::new(
                    "redis_cluster",
                    "give either redis_url (one Redis) or redis_cluster (a Redis Cluster), not both",
                ));
            }
        }
        if self.redis_cluster.is_some() {
            let seeds = self.cluster_seeds();
            if seeds.is_empty() {
                return Err(ConfigError::new("redis_cluster", "needs at least one redis:// URL"));
            }
            for url in &seeds {
                check_redis_url("redis_cluster", url, &["redis://"])?;
            }
        }
        if let Some(t) = &self.admin_token {
            if t.len() < 16 {
                return Err(ConfigError::new("admin_token", "must be at least 16 characters"));
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("data_dir", "must not be empty"));
        }
        Ok(())
    }
}

/// A Redis URL this build can use: one of `schemes`, and no TLS (refused here rather than
/// failing at connect).
fn check_redis_url(setting: &str, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    if url.starts_with("rediss://") {
        return Err(ConfigError::new(
            setting,
            "rediss:// (TLS) is not supported by this build; use redis:// on a private network or a TLS-terminating proxy such as stunnel",
        ));
    }
    if !schemes.iter().any(|p| url.starts_with(p)) {
        return Err(ConfigError::new(setting, format!("must start with {}", schemes.join(" or "))));
    }
    Ok(())
}
