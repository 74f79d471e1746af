//! The Hub: this node's registry of sessions and of who is subscribed to which channel,
//! and the fan-out of every incoming event to the matching Outboxes.
//!
//! Subscribing the first local subscriber of a channel subscribes the broker (under a
//! per-channel lock); the last one leaving dissolves the channel after `UNSUBSCRIBE_DELAY`,
//! so churn does not flap broker subscriptions (`channels`). Incoming deliveries are
//! handled in `deliver`; control messages are handed to the handler `control.rs` installs.
//!
//! Owns: `channels`, `sessions`, the tombstones of revoked keys and retired secrets, the
//! dispatch loop.  May use: broker (traits), outbox, protocol, ids, token,
//! metrics.  Never: await or do
//! I/O inside `deliver`; hold a map guard across `.await`; know what a control message means.
//! Invariants: per channel, events are pushed to every Outbox in the order `deliver` saw them.

mod channels;
mod deliver;
mod flow;
mod repair;
#[cfg(test)]
mod tests;

use std::{
    sync::{Arc, OnceLock, Weak},
    time::Duration,
};

use dashmap::DashMap;

use crate::{
    broker::{Broker, ChannelKey, ControlMessage, Deliver},
    ids::{ConnId, KeyId},
    metrics::Metrics,
    outbox::Outbox,
    protocol::close::CloseCode,
    token::TokenHash,
};
use channels::Channel;

/// How long a channel with no local subscriber stays subscribed at the broker.
pub const UNSUBSCRIBE_DELAY: Duration = Duration::from_secs(1);

/// What the Hub knows about a session, for closing it by key or all at once.
pub struct SessionEntry {
    pub key_id: KeyId,
    pub secret: TokenHash,
    pub outbox: Arc<Outbox>,
}

/// What the node does with a control message (installed once, by `control`).
pub type ControlHandler = Box<dyn Fn(ControlMessage) + Send + Sync>;

pub struct Hub {
    me: Weak<Hub>,
    broker: Arc<dyn Broker>,
    channels: DashMap<ChannelKey, Arc<Channel>>,
    sessions: DashMap<ConnId, SessionEntry>,
    /// Keys revoked and secrets retired lately: a session that authenticated just before the
    /// control message but registers just after it is still closed (see `register`).
    revoked: DashMap<KeyId, std::time::Instant>,
    retired: DashMap<TokenHash, std::time::Instant>,
    control: OnceLock<ControlHandler>,
    /// Signalled after a broker gap (control messages may have been missed).
    gap: tokio::sync::Notify,
    /// When a malformed message was last logged per channel (at most once a minute).
    malformed_logged: DashMap<String, std::time::Instant>,
    metrics: Arc<Metrics>,
    /// Events read from history per repair read (the history size).
    repair_limit: usize,
}

/// How long a revocation or retirement is remembered for sessions still registering.
const TOMBSTONE_TTL: Duration = Duration::from_secs(300);

/// Remembers `key` as dead for `TOMBSTONE_TTL`, dropping older tombstones as it goes.
fn tombstone<K: std::hash::Hash + Eq>(map: &DashMap<K, std::time::Instant>, key: K) {
    let now = std::time::Instant::now();
    if map.len() >= 1024 {
        map.retain(|_, at| now.duration_since(*at) < TOMBSTONE_TTL);
    }
    map.insert(key, now);
}

impl Hub {
    /// Builds the Hub and its broker together: the broker gets a weak handle to the Hub.
    /// `repair_limit`: events read from history per gap-repair read (the history size).
    pub fn new(
        metrics: Arc<Metrics>,
        repair_limit: usize,
        make_broker: impl FnOnce(Weak<dyn Deliver>) -> Arc<dyn Broker>,
    ) -> Arc<Hub> {
        Arc::new_cyclic(|me: &Weak<Hub>| {
            let handler: Weak<dyn Deliver> = me.clone();
            Hub {
                me: me.clone(),
                broker: make_broker(handler),
                channels: DashMap::new(),
                sessions: DashMap::new(),
                revoked: DashMap::new(),
                retired: DashMap::new(),
                control: OnceLock::new(),
                gap: tokio::sync::Notify::new(),
                malformed_logged: DashMap::new(),
                metrics,
                repair_limit: repair_limit.max(1),
            }
        })
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// Installs what control messages do on this node (once; later calls are ignored).
    pub fn set_control_handler(&self, handler: ControlHandler) {
        let _ = self.control.set(handler);
    }

    // === sessions ===

    /// Registers a session; one whose key was revoked (or secret retired) in the meantime is
    /// asked to close at once. (Registration is written before the tombstones are read, and
    /// revocation writes its tombstone before scanning sessions: one of the two sees the other.)
    pub fn register(&self, conn: ConnId, entry: SessionEntry) {
        let (outbox, key, secret) = (entry.outbox.clone(), entry.key_id.clone(), entry.secret);
        self.sessions.insert(conn, entry);
        if self.revoked.contains_key(&key) || self.retired.contains_key(&secret) {
            outbox.close(CloseCode::KeyRevoked);
        }
    }

    pub fn deregister(&self, conn: ConnId) {
        self.sessions.remove(&conn);
    }

    /// Sessions registered on this node.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Asks every session of `key_id` (optionally only those using one secret) to close.
    pub fn close_key(&self, key_id: &KeyId, secret: Option<&TokenHash>, code: CloseCode) -> usize {
        let mut n = 0;
        for s in self.sessions.iter() {
            if s.key_id == *key_id && secret.is_none_or(|h| s.secret == *h) && s.outbox.close(code)
            {
                n += 1;
            }
        }
        n
    }

    /// Closes every stream of a revoked key, and any that registers for a while after.
    pub fn close_revoked_key(&self, key_id: &KeyId) -> usize {
        tombstone(&self.revoked, key_id.clone());
        self.close_key(key_id, None, CloseCode::KeyRevoked)
    }

    /// Closes every stream opened with a retired secret, and any that registers for a while
    /// after.
    pub fn close_retired_secret(&self, key_id: &KeyId, secret: &TokenHash) -> usize {
        tombstone(&self.retired, *secret);
        self.close_key(key_id, Some(secret), CloseCode::KeyRevoked)
    }

    /// Asks every session to close (shutdown: 1001).
    pub fn close_all(&self, code: CloseCode) {
        for s in self.sessions.iter() {
            s.outbox.close(code);
        }
    }

    /// Open sessions as (using a current secret, using a secret `retiring` says is in grace).
    pub fn sessions_by_secret(&self, retiring: impl Fn(&TokenHash) -> bool) -> (usize, usize) {
        let previous = self.sessions.iter().filter(|s| retiring(&s.secret)).count();
        (self.sessions.len() - previous, previous)
    }

    /// The (key, secret) of every open session, for revalidation.
    pub fn session_keys(&self) -> Vec<(KeyId, TokenHash)> {
        self.sessions.iter().map(|s| (s.key_id.clone(), s.secret)).collect()
    }

    /// Resolves after the broker reported a gap (one signal is kept if nobody waits yet).
    pub async fn gap_seen(&self) {
        self.gap.notified().await;
    }
}
