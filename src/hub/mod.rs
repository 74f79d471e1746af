//! The Hub: this node's registry of sessions and of who is subscribed to which channel,
//! and the fan-out of every incoming event to the matching Outboxes.
//!
//! Subscribing the first local subscriber of a channel subscribes the broker (under a
//! per-channel lock); the last one leaving dissolves the channel after `UNSUBSCRIBE_DELAY`,
//! so churn does not flap broker subscriptions (`channels`). Incoming deliveries are
//! handled in `deliver`; control messages are handed to the handler `control.rs` installs.
//! Each session carries its `Grant` (what it may read now, when it must close); `regrant`
//! changes grants as `control` decides and nudges the sessions to apply them.
//!
//! Owns: `channels`, `sessions` and their grants, the tombstones of revoked keys, retired
//! secrets and updated keys, the dispatch loop.  May use: broker (traits), outbox, protocol,
//! ids, token, scope, metrics.  Never: await or do
//! I/O inside `deliver`; hold a map guard across `.await`; know what a control message means.
//! Invariants: per channel, events are pushed to every Outbox in the order `deliver` saw them.

mod channels;
mod deliver;
mod flow;
mod repair;
#[cfg(test)]
mod tests;

use std::{
    net::IpAddr,
    sync::{Arc, OnceLock, Weak},
    time::{Duration, Instant},
};

use dashmap::DashMap;

use crate::{
    broker::{
        coalesce::{Coalesce, ReadCounters},
        Broker, ChannelKey, ControlMessage, Deliver, Done,
    },
    ids::{ConnId, KeyId},
    metrics::Metrics,
    outbox::Outbox,
    protocol::close::CloseCode,
    scope::{ScopeSet, TopicSet},
    token::TokenHash,
};
use channels::Channel;

/// How long a channel with no local subscriber stays subscribed at the broker.
pub const UNSUBSCRIBE_DELAY: Duration = Duration::from_secs(1);

/// What the Hub knows about a session, for closing it by key or all at once, and for
/// applying a key update to it (SPEC §8).
pub struct SessionEntry {
    pub key_id: KeyId,
    pub secret: TokenHash,
    pub outbox: Arc<Outbox>,
    /// The address the credential was checked from at connect (trusted proxies resolved; for
    /// a ticket, the address that minted it), checked against a new allowlist. `None`: never.
    pub client: Option<IpAddr>,
    /// The most this stream may read whatever the key gains (a ticket's scopes; every scope
    /// for a stream opened with the key itself).
    pub limit: ScopeSet,
    /// What the stream may read now and when it must close; the session applies it when
    /// nudged (`regrant`).
    pub grant: Grant,
}

/// A stream's permissions as of its key's latest record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub readable: TopicSet,
    pub expires_at: Option<time::OffsetDateTime>,
}

/// What `regrant` decides for one session.
pub enum Verdict {
    Keep,
    Close,
    Grant(Grant),
}

/// What the node's control handling is told: a control message, or that its control
/// subscription was lost or is back (messages may have been missed in between).
pub enum ControlSignal {
    /// A control message; drop `Done` once it is handled (a confirmed publish waits).
    Message(ControlMessage, Done),
    Lost,
    Regained,
}

/// What the node does with control signals (installed once, by `control`).
pub type ControlHandler = Box<dyn Fn(ControlSignal) + Send + Sync>;

pub struct Hub {
    me: Weak<Hub>,
    broker: Arc<dyn Broker>,
    channels: DashMap<ChannelKey, Arc<Channel>>,
    sessions: DashMap<ConnId, SessionEntry>,
    /// Keys revoked and secrets retired lately: a session that authenticated just before the
    /// control message but registers just after it is still closed (see `register`).
    revoked: DashMap<KeyId, std::time::Instant>,
    retired: DashMap<TokenHash, std::time::Instant>,
    /// Keys whose record was last applied to their streams at this time: a session that
    /// authenticated before an update but registers after it re-reads its key.
    updated: DashMap<KeyId, std::time::Instant>,
    control: OnceLock<ControlHandler>,
    /// The latest `Lost`/`Regained` (true = regained), replayed to a handler installed after
    /// it; the lock also keeps the two in order with the installation.
    link: parking_lot::Mutex<Option<bool>>,
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
    /// Builds the Hub and its broker together: the broker gets a weak handle to the Hub, and
    /// the Hub sees it through `Coalesce` (identical concurrent reads sent once).
    /// `repair_limit`: events read from history per gap-repair read (the history size).
    pub fn new(
        metrics: Arc<Metrics>,
        repair_limit: usize,
        make_broker: impl FnOnce(Weak<dyn Deliver>) -> Arc<dyn Broker>,
    ) -> Arc<Hub> {
        let counters = |op| {
            let (sent, shared) = metrics.broker_read_counters(op);
            ReadCounters { sent, shared }
        };
        let (head, history) = (counters("head"), counters("history"));
        Arc::new_cyclic(|me: &Weak<Hub>| {
            let handler: Weak<dyn Deliver> = me.clone();
            // Every broker kind behind one decorator: concurrent identical reads (a resume
            // storm) are sent once.
            let broker: Arc<dyn Broker> =
                Arc::new(Coalesce::new(make_broker(handler), head, history));
            Hub {
                me: me.clone(),
                broker,
                channels: DashMap::new(),
                sessions: DashMap::new(),
                revoked: DashMap::new(),
                retired: DashMap::new(),
                updated: DashMap::new(),
                control: OnceLock::new(),
                link: parking_lot::Mutex::new(None),
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

    /// Installs what control signals do on this node (once; later calls are ignored). The
    /// control subscription's latest state, if it changed before, is replayed to it.
    pub fn set_control_handler(&self, handler: ControlHandler) {
        let link = self.link.lock();
        if self.control.set(handler).is_ok() {
            if let (Some(handle), Some(up)) = (self.control.get(), *link) {
                handle(if up { ControlSignal::Regained } else { ControlSignal::Lost });
            }
        }
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

    /// Whether an update of `key_id` was applied to this node's streams at or after `since`
    /// (call after `register`: `regrant` marks the key before it scans the sessions).
    pub fn updated_since(&self, key_id: &KeyId, since: Instant) -> bool {
        self.updated.get(key_id).is_some_and(|at| *at >= since)
    }

    /// Decides for every session of `key_id` (all sessions when `None`): `decide` sees the
    /// session's entry and says keep, close (4003), or a new grant, which the session is
    /// nudged to apply when it differs from its current one. Returns (closed, changed).
    pub fn regrant(
        &self,
        key_id: Option<&KeyId>,
        mut decide: impl FnMut(&SessionEntry) -> Verdict,
    ) -> (usize, usize) {
        if let Some(k) = key_id {
            tombstone(&self.updated, k.clone());
        }
        let (mut closed, mut changed) = (0, 0);
        for mut s in self.sessions.iter_mut() {
            if key_id.is_some_and(|k| s.key_id != *k) || s.outbox.close_requested().is_some() {
                continue;
            }
            match decide(&s) {
                Verdict::Keep => {}
                Verdict::Close => closed += usize::from(s.outbox.close(CloseCode::KeyRevoked)),
                Verdict::Grant(g) if g != s.grant => {
                    s.grant = g;
                    s.outbox.nudge();
                    changed += 1;
                }
                Verdict::Grant(_) => {}
            }
        }
        (closed, changed)
    }

    /// The session's current grant.
    pub fn grant(&self, conn: ConnId) -> Option<Grant> {
        self.sessions.get(&conn).map(|s| s.grant)
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
