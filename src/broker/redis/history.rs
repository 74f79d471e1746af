//! History in Redis (SPEC §7): the `miteos` function library (`publish.lua`), which numbers
//! an event, appends it to its channel's Stream and publishes it in one atomic step, and the
//! calls that read positions and history back. The library carries this node's settings; a
//! node loads it (FUNCTION LOAD REPLACE) on every (re)connect and again whenever Redis
//! answers that a function is missing (a Redis restarted empty).
//!
//! Owns: the library source.  May use: broker::codec, broker::position, redis_link.
//! Never: PUBLISH around the history (the parent does that, with history off).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use redis::FromRedisValue;

use super::unavailable;
use crate::{
    broker::{
        codec::{self, ChannelKey, DecodeError},
        BrokerError, HistoryPage, Position,
    },
    redis_link::RedisLink,
};

/// The library as shipped: default settings on its `-- @settings` line.
pub const LIBRARY: &str = include_str!("publish.lua");

/// How much the function adds to a producer message at most (`offset`, `epoch`, `id`,
/// `created_at`): nodes accept a published message up to `max_event_bytes` plus this, so
/// the limit applies to what the producer sent, as with a plain PUBLISH.
pub(super) const ADDED_BYTES: usize = 256;

/// The Stream (`…:h`) and meta hash (`…:m`) of a channel; their hash tag is the channel
/// name, so both live in the channel's cluster slot.
pub fn history_keys(channel: &ChannelKey) -> [String; 2] {
    let name = channel.name();
    [format!("{{{name}}}:h"), format!("{{{name}}}:m")]
}

/// The library source with the given settings on its settings line.
/// The library's source with these settings; `sharded` (a Redis Cluster) publishes with
/// SPUBLISH, to the shard channel the nodes SSUBSCRIBE, else with PUBLISH.
pub fn library(size: usize, ttl: Duration, max_event_bytes: usize, sharded: bool) -> String {
    let ttl_ms = ttl.as_millis().max(1);
    LIBRARY
        .lines()
        .map(|line| {
            if line.ends_with("-- @settings") {
                format!(
                    "local SETTINGS = {{ size = {size}, ttl_ms = {ttl_ms}, max_bytes = \
                     {max_event_bytes}, sharded = {sharded} }} -- @settings"
                )
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub(super) struct History {
    size: usize,
    settings: (u64, u64, u64),
    max_event_bytes: usize,
    source: String,
}

impl History {
    /// `None` when `size` is 0 (history off).
    pub(super) fn new(
        size: usize,
        ttl: Duration,
        max_event_bytes: usize,
        sharded: bool,
    ) -> Option<Self> {
        (size > 0).then(|| Self {
            size,
            settings: (size as u64, ttl.as_millis().max(1) as u64, max_event_bytes as u64),
            max_event_bytes,
            source: library(size, ttl, max_event_bytes, sharded),
        })
    }

    /// Loads the library, warning when the one in Redis had other settings (every node and
    /// CLI on one Redis should share them: the last to load wins).
    pub(super) async fn load(&self, link: &RedisLink) -> Result<(), BrokerError> {
        let mut conn = link.conn().await.map_err(unavailable)?;
        let theirs: redis::RedisResult<(u64, u64, u64)> =
            redis::cmd("FCALL_RO").arg("mt_settings").arg(0).query_async(&mut conn).await;
        if let Ok(theirs) = theirs {
            if theirs != self.settings {
                tracing::warn!(
                    ?theirs,
                    ours = ?self.settings,
                    "replacing a history function library loaded with other settings \
                     (history_size, history_ttl ms, max_event_bytes): give every node the same"
                );
            }
        }
        self.load_on(&mut conn).await
    }

    async fn load_on(&self, conn: &mut impl redis::aio::ConnectionLike) -> Result<(), BrokerError> {
        redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(&self.source)
            .query_async::<String>(conn)
            .await
            .map(|_| ())
            .map_err(|e| unavailable(format!("loading the history functions: {e}")))
    }

    /// `FCALL name 2 <keys> args…`, loading the library and calling again once if Redis
    /// does not know the function.
    async fn call<T: FromRedisValue>(
        &self,
        link: &RedisLink,
        name: &str,
        channel: &ChannelKey,
        args: &[&[u8]],
    ) -> Result<T, BrokerError> {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(name).arg(2).arg(&history_keys(channel)[..]);
        for a in args {
            cmd.arg(*a);
        }
        let mut conn = link.conn().await.map_err(unavailable)?;
        match cmd.query_async::<T>(&mut conn).await {
            Err(e) if e.code() == Some("ERR") && e.detail() == Some("Function not found") => {
                tracing::info!("redis has no history functions (restarted empty?): loading them");
                self.load_on(&mut conn).await?;
                cmd.query_async::<T>(&mut conn).await.map_err(|e| self.error(e))
            }
            other => other.map_err(|e| self.error(e)),
        }
    }

    /// A refusal of the function as the `DecodeError` the nodes would have reported.
    fn error(&self, e: redis::RedisError) -> BrokerError {
        let detail = e.detail().unwrap_or_default().to_owned();
        match e.code() {
            Some("MT_TOO_LARGE") => DecodeError::TooLarge { limit: self.max_event_bytes }.into(),
            Some("MT_BAD_EVENT_NAME") => DecodeError::BadEventName.into(),
            Some("MT_MALFORMED") => DecodeError::Malformed(detail).into(),
            _ => unavailable(e),
        }
    }

    /// `FCALL mt_reepoch`: forgets the channel's history if its epoch is still `stale`.
    pub(super) async fn new_epoch(
        &self,
        link: &RedisLink,
        channel: &ChannelKey,
        stale: &str,
    ) -> Result<(), BrokerError> {
        let mut conn = link.conn().await.map_err(unavailable)?;
        redis::cmd("FCALL")
            .arg("mt_reepoch")
            .arg(2)
            .arg(&history_keys(channel)[..])
            .arg(stale)
            .query_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    pub(super) async fn publish(
        &self,
        link: &RedisLink,
        channel: &ChannelKey,
        event_json: &Bytes,
    ) -> Result<Position, BrokerError> {
        let (offset, epoch): (u64, String) =
            self.call(link, "mt_publish", channel, &[event_json.as_ref()]).await?;
        Ok(Position::new(offset, epoch))
    }

    pub(super) async fn head(
        &self,
        link: &RedisLink,
        channel: &ChannelKey,
    ) -> Result<Position, BrokerError> {
        let (offset, epoch): (u64, String) = self.call(link, "mt_head", channel, &[]).await?;
        Ok(Position::new(offset, epoch))
    }

    pub(super) async fn read(
        &self,
        link: &RedisLink,
        channel: &ChannelKey,
        after: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        let after = after.map(|a| a.to_string()).unwrap_or_default();
        // No page holds more than the history does.
        let limit = limit.min(self.size).to_string();
        let (offset, epoch, first, messages): (u64, String, u64, Vec<Vec<u8>>) =
            self.call(link, "mt_history", channel, &[after.as_bytes(), limit.as_bytes()]).await?;
        let received = std::time::Instant::now();
        let max = self.max_event_bytes + ADDED_BYTES;
        let events = messages
            .iter()
            .filter_map(|m| match codec::decode(channel.topic, m, max, received) {
                Ok(event) => Some(event),
                Err(error) => {
                    tracing::warn!(%channel, %error, "skipping an undecodable history entry");
                    None
                }
            })
            .collect();
        Ok(HistoryPage { events, head: Position::new(offset, Arc::<str>::from(epoch)), first })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_line_is_rewritten_and_nothing_else() {
        let src = library(7, Duration::from_secs(2), 100, false);
        assert!(src.contains(
            "local SETTINGS = { size = 7, ttl_ms = 2000, max_bytes = 100, sharded = false }"
        ));
        let sharded = library(7, Duration::from_secs(2), 100, true);
        assert!(sharded.contains("max_bytes = 100, sharded = true }"));
        assert_eq!(src.lines().count(), LIBRARY.lines().count());
        assert_eq!(src.matches("-- @settings").count(), 1);
        assert!(src.starts_with("#!lua name=miteos\n"));
    }

    #[test]
    fn keys_share_the_channel_as_hash_tag() {
        let c = ChannelKey::parse("mt:test:acct_x:tasks").unwrap();
        assert_eq!(history_keys(&c), ["{mt:test:acct_x:tasks}:h", "{mt:test:acct_x:tasks}:m"]);
    }
}
