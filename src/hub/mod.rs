//! The Hub: this node's registry of sessions and of who is subscribed to which channel,
//! and the fan-out of every incoming event to the matching Outboxes.
//!
//! Subscribing the first local subscriber of a channel subscribes the broker (under a
//! per-channel lock); the last one leaving dissolves the channel after `UNSUBSCRIBE_DELAY`,
//! so churn does not flap broker subscriptions.
//!
//! Owns: `channels`, `sessions`, the dispatch loop.  May use: broker (traits), outbox,
//! protocol, metrics.  Never: await or do I/O inside `deliver`; hold a map guard across `.await`.
//! Invariants: per channel, events are pushed to every Outbox in the order `deliver` saw them.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::{
    broker::{Broker, BrokerError, ChannelKey, ControlMessage, Deliver, Delivery},
    ids::{ConnId, KeyId},
    keys::cache::KeyCache,
    metrics::Metrics,
    outbox::{Outbox, Push},
    protocol::{close::CloseCode, filter::EventFilter},
    token::TokenHash,
};

/// How long a channel with no local subscriber stays subscribed at the broker.
pub const UNSUBSCRIBE_DELAY: Duration = Duration::from_secs(1);

/// One subscriber of one channel; the Outbox (compared by pointer) is its identity.
struct Sub {
    outbox: Arc<Outbox>,
    filter: Option<Arc<EventFilter>>,
}

/// A channel's subscribers. Joining is a push and leaving at session end is a count: the
/// entries of ended (retired) sessions are swept out once they are half the list, so N
/// sessions joining and leaving cost O(N), not O(N²).
#[derive(Default)]
struct Subs {
    list: Vec<Sub>,
    /// Leaves counted since the last sweep (may overcount: only decides when to sweep).
    retired: usize,
}

impl Subs {
    /// Drops the entries of retired sessions; returns whether the list is now empty.
    fn sweep(&mut self) -> bool {
        self.list.retain(|s| !s.outbox.is_retired());
        self.retired = 0;
        self.list.is_empty()
    }
}

#[derive(Default)]
struct Channel {
    subs: Mutex<Subs>,
    /// Whether the broker is subscribed; also serialises broker calls for this channel.
    at_broker: tokio::sync::Mutex<bool>,
}

/// What the Hub knows about a session, for closing it by key or all at once.
pub struct SessionEntry {
    pub key_id: KeyId,
    pub secret: TokenHash,
    pub outbox: Arc<Outbox>,
}

pub struct Hub {
    me: Weak<Hub>,
    broker: Arc<dyn Broker>,
    channels: DashMap<ChannelKey, Arc<Channel>>,
    sessions: DashMap<ConnId, SessionEntry>,
    /// Secrets replaced by a rotation and still inside their grace period, with its end.
    retiring: DashMap<TokenHash, time::OffsetDateTime>,
    /// Keys revoked and secrets retired lately: a session that authenticated just before the
    /// control message but registers just after it is still closed (see `register`).
    revoked: DashMap<KeyId, std::time::Instant>,
    retired: DashMap<TokenHash, std::time::Instant>,
    /// Verified keys, forgotten by the control messages handled here.
    cache: Arc<KeyCache>,
    /// Signalled after a broker gap (control messages may have been missed).
    gap: tokio::sync::Notify,
    /// When a malformed message was last logged per channel (at most once a minute).
    malformed_logged: DashMap<String, std::time::Instant>,
    metrics: Arc<Metrics>,
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

/// How often a channel's malformed producer messages may be logged.
const MALFORMED_LOG_EVERY: Duration = Duration::from_secs(60);

impl Hub {
    /// Builds the Hub and its broker together: the broker gets a weak handle to the Hub.
    pub fn new(
        metrics: Arc<Metrics>,
        cache: Arc<KeyCache>,
        make_broker: impl FnOnce(Weak<dyn Deliver>) -> Arc<dyn Broker>,
    ) -> Arc<Hub> {
        Arc::new_cyclic(|me: &Weak<Hub>| {
            let handler: Weak<dyn Deliver> = me.clone();
            Hub {
                me: me.clone(),
                broker: make_broker(handler),
                channels: DashMap::new(),
                sessions: DashMap::new(),
                retiring: DashMap::new(),
                revoked: DashMap::new(),
                retired: DashMap::new(),
                cache,
                gap: tokio::sync::Notify::new(),
                malformed_logged: DashMap::new(),
                metrics,
            }
        })
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
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

    /// Asks every session to close (shutdown: 1001).
    pub fn close_all(&self, code: CloseCode) {
        for s in self.sessions.iter() {
            s.outbox.close(code);
        }
    }

    /// Open sessions as (using a current secret, using a secret retiring after a rotation).
    pub fn sessions_by_secret(&self) -> (usize, usize) {
        let previous =
            self.sessions.iter().filter(|s| self.retiring.contains_key(&s.secret)).count();
        (self.sessions.len() - previous, previous)
    }

    // === subscriptions ===

    /// Adds the session owning `outbox` to `key`, subscribing the broker first if this node
    /// had no subscriber yet. On a broker error nothing changes. The caller makes sure the
    /// session is not on `key` already (see `set_filter`).
    pub async fn subscribe(
        &self,
        key: &ChannelKey,
        outbox: &Arc<Outbox>,
        filter: Option<Arc<EventFilter>>,
    ) -> Result<(), BrokerError> {
        loop {
            let ch = self.channels.entry(key.clone()).or_default().clone();
            // The broker state and the subscriber list change together under the channel's
            // lock, so `dissolve` (which holds it too) sees either both or neither.
            let mut at_broker = ch.at_broker.lock().await;
            if !*at_broker {
                if let Err(e) = self.broker.subscribe(key).await {
                    drop(at_broker);
                    self.schedule_dissolve(key.clone()); // drop the empty channel we made
                    return Err(e);
                }
                *at_broker = true;
            }
            // Add under the map guard too, so the channel cannot be removed in between.
            if let Some(current) = self.channels.get(key) {
                if Arc::ptr_eq(&current, &ch) {
                    current.subs.lock().list.push(Sub { outbox: outbox.clone(), filter });
                    return Ok(());
                }
            }
            // The channel was dissolved while we waited for its lock: start again.
        }
    }

    /// Replaces the event filter of the session owning `outbox` on `key` (a client
    /// subscribing again to a channel it is on). Returns whether it was on `key`.
    pub fn set_filter(
        &self,
        key: &ChannelKey,
        outbox: &Arc<Outbox>,
        filter: Option<Arc<EventFilter>>,
    ) -> bool {
        let Some(ch) = self.channels.get(key).map(|c| c.clone()) else { return false };
        let mut subs = ch.subs.lock();
        match subs.list.iter_mut().find(|s| Arc::ptr_eq(&s.outbox, outbox)) {
            Some(s) => {
                s.filter = filter;
                true
            }
            None => false,
        }
    }

    /// Removes the session owning `outbox` from `key` (a client's `unsubscribe`); the last
    /// one leaving schedules the dissolve.
    pub fn unsubscribe(&self, key: &ChannelKey, outbox: &Arc<Outbox>) {
        self.change_subs(key, |subs| {
            let before = subs.list.len();
            subs.list.retain(|s| !Arc::ptr_eq(&s.outbox, outbox));
            before != subs.list.len() && subs.sweep()
        });
    }

    /// A session ended: retires its `outbox` (no more frames) and counts it out of `keys`,
    /// sweeping a channel's list once half of it is retired; a channel left with no live
    /// subscriber schedules its dissolve.
    pub fn leave(&self, keys: impl IntoIterator<Item = ChannelKey>, outbox: &Outbox) {
        outbox.retire();
        for key in keys {
            self.change_subs(&key, |subs| {
                subs.retired += 1;
                subs.retired * 2 >= subs.list.len() && subs.sweep()
            });
        }
    }

    /// Applies `change` to `key`'s subscriber list under its lock; when `change` reports the
    /// list empty, schedules the channel's dissolve.
    fn change_subs(&self, key: &ChannelKey, change: impl FnOnce(&mut Subs) -> bool) {
        let Some(ch) = self.channels.get(key).map(|c| c.clone()) else { return };
        let now_empty = change(&mut ch.subs.lock());
        if now_empty {
            self.schedule_dissolve(key.clone());
        }
    }

    fn schedule_dissolve(&self, key: ChannelKey) {
        let me = self.me.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        rt.spawn(async move {
            tokio::time::sleep(UNSUBSCRIBE_DELAY).await;
            if let Some(hub) = me.upgrade() {
                hub.dissolve(&key).await;
            }
        });
    }

    /// Drops a channel that is still empty and unsubscribes the broker.
    async fn dissolve(&self, key: &ChannelKey) {
        let Some(ch) = self.channels.get(key).map(|c| c.clone()) else { return };
        // Under the channel's lock: no subscriber can join or subscribe the broker meanwhile.
        let mut at_broker = ch.at_broker.lock().await;
        if !ch.subs.lock().sweep() {
            return;
        }
        if *at_broker {
            // Unsubscribe while the channel is still in the map, so a newcomer waits for this
            // lock instead of racing a SUBSCRIBE against this UNSUBSCRIBE.
            if let Err(e) = self.broker.unsubscribe(key).await {
                tracing::warn!(channel = %key, error = %e, "broker unsubscribe failed");
            }
            *at_broker = false;
        }
        self.channels.remove_if(key, |_, c| Arc::ptr_eq(c, &ch) && c.subs.lock().list.is_empty());
    }

    /// Channels with at least one local subscriber or not yet dissolved (for tests).
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    // === control ===

    /// Applies a control message from any node (this one included).
    pub fn apply(&self, msg: ControlMessage) {
        match msg {
            ControlMessage::Revoke { key_id } => {
                self.cache.invalidate(&key_id);
                tombstone(&self.revoked, key_id.clone());
                let n = self.close_key(&key_id, None, CloseCode::KeyRevoked);
                tracing::info!(key_id = %key_id, closed = n, "key revoked");
            }
            ControlMessage::Retire { key_id, secret, at } => {
                self.cache.invalidate(&key_id);
                self.retire(key_id, secret, at);
            }
        }
    }

    /// The (key, secret) of every open session, for revalidation.
    pub fn session_keys(&self) -> Vec<(KeyId, TokenHash)> {
        self.sessions.iter().map(|s| (s.key_id.clone(), s.secret)).collect()
    }

    /// Resolves after the broker reported a gap (one signal is kept if nobody waits yet).
    pub async fn gap_seen(&self) {
        self.gap.notified().await;
    }

    fn log_malformed(&self, channel: &str, error: &crate::broker::DecodeError) {
        let now = std::time::Instant::now();
        if self
            .malformed_logged
            .get(channel)
            .is_some_and(|t| now.duration_since(*t) < MALFORMED_LOG_EVERY)
        {
            return;
        }
        if self.malformed_logged.len() > 10_000 {
            self.malformed_logged.retain(|_, t| now.duration_since(*t) < MALFORMED_LOG_EVERY);
        }
        self.malformed_logged.insert(channel.to_owned(), now);
        tracing::warn!(channel = %channel, error = %error, "dropped a malformed producer message (logged once a minute per channel)");
    }

    /// Closes the streams of a rotated-out secret when its grace period ends.
    fn retire(&self, key_id: KeyId, secret: TokenHash, at: time::OffsetDateTime) {
        let left =
            Duration::try_from(at - time::OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO);
        let rt = match tokio::runtime::Handle::try_current() {
            Ok(rt) if !left.is_zero() => rt,
            _ => {
                tombstone(&self.retired, secret);
                let n = self.close_key(&key_id, Some(&secret), CloseCode::KeyRevoked);
                tracing::info!(key_id = %key_id, closed = n, "rotated secret retired");
                return;
            }
        };
        self.retiring.insert(secret, at);
        let me = self.me.clone();
        rt.spawn(async move {
            tokio::time::sleep(left).await;
            if let Some(hub) = me.upgrade() {
                hub.retiring.remove(&secret);
                tombstone(&hub.retired, secret);
                let n = hub.close_key(&key_id, Some(&secret), CloseCode::KeyRevoked);
                tracing::info!(key_id = %key_id, closed = n, "rotated secret retired");
            }
        });
    }
}

impl Deliver for Hub {
    fn deliver(&self, delivery: Delivery) {
        match delivery {
            Delivery::Event { channel, event } => {
                self.metrics.events_received.inc();
                let Some(ch) = self.channels.get(&channel).map(|c| c.clone()) else { return };
                let (mut delivered, mut slow) = (0u64, 0u64);
                let subs = ch.subs.lock();
                for s in subs.list.iter() {
                    if s.filter.as_ref().is_some_and(|f| !f.matches(&event.name)) {
                        continue;
                    }
                    match s.outbox.push(event.frame.clone()) {
                        Push::Queued => delivered += 1,
                        Push::Full => {
                            if s.outbox.close(CloseCode::SlowConsumer) {
                                slow += 1;
                            }
                        }
                        Push::Closed => {}
                    }
                }
                drop(subs);
                self.metrics.deliveries.inc_by(delivered);
                if slow > 0 {
                    self.metrics.slow_consumer_closes.inc_by(slow);
                }
            }
            Delivery::Malformed { channel, error } => {
                self.metrics.events_malformed.inc();
                self.log_malformed(&channel, &error);
            }
            Delivery::Control(msg) => self.apply(msg),
            Delivery::Gap => {
                self.metrics.broker_gaps.inc();
                self.cache.clear();
                self.gap.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        broker::codec,
        ids::AccountId,
        keys::cache::KeyCache,
        scope::{Environment, Topic},
    };
    use bytes::Bytes;
    use std::collections::HashSet;

    /// A broker that records its subscriptions and is slow to unsubscribe (widening races).
    #[derive(Default)]
    struct Recording {
        desired: Mutex<HashSet<ChannelKey>>,
    }

    #[async_trait::async_trait]
    impl Broker for Recording {
        async fn subscribe(&self, ch: &ChannelKey) -> Result<(), BrokerError> {
            tokio::time::sleep(Duration::from_millis(3)).await;
            self.desired.lock().insert(ch.clone());
            Ok(())
        }
        async fn unsubscribe(&self, ch: &ChannelKey) -> Result<(), BrokerError> {
            tokio::time::sleep(Duration::from_millis(7)).await;
            self.desired.lock().remove(ch);
            Ok(())
        }
        async fn publish(&self, _: &ChannelKey, _: Bytes) -> Result<(), BrokerError> {
            Ok(())
        }
        async fn publish_control(&self, _: &ControlMessage) -> Result<(), BrokerError> {
            Ok(())
        }
        async fn ping(&self) -> Result<(), BrokerError> {
            Ok(())
        }
    }

    fn hub() -> (Arc<Hub>, Arc<Recording>) {
        let rec = Arc::new(Recording::default());
        let r = rec.clone();
        let cache = Arc::new(KeyCache::new(10, Duration::from_secs(1)));
        (Hub::new(Arc::new(Metrics::new()), cache, move |_| r), rec)
    }

    fn key() -> ChannelKey {
        ChannelKey::new(Environment::Live, AccountId::parse("a").unwrap(), Topic::Tasks)
    }

    fn event() -> Delivery {
        let event = codec::decode(Topic::Tasks, br#"{"event":"e"}"#, 1024).unwrap();
        Delivery::Event { channel: key(), event }
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscriber_arriving_during_a_dissolve_stays_subscribed_at_the_broker() {
        for offset_ms in 0..20u64 {
            let (hub, broker) = hub();
            let first = Arc::new(Outbox::new(8));
            hub.subscribe(&key(), &first, None).await.unwrap();
            hub.unsubscribe(&key(), &first); // dissolve fires in UNSUBSCRIBE_DELAY
            tokio::time::sleep(
                UNSUBSCRIBE_DELAY + Duration::from_millis(offset_ms) - Duration::from_millis(10),
            )
            .await;
            let second = Arc::new(Outbox::new(8));
            hub.subscribe(&key(), &second, None).await.unwrap();
            tokio::time::sleep(UNSUBSCRIBE_DELAY * 2).await; // let every timer run
            assert!(
                broker.desired.lock().contains(&key()),
                "offset {offset_ms} ms: broker unsubscribed a live channel"
            );
            hub.deliver(event());
            assert_eq!(second.len(), 1, "offset {offset_ms} ms: the event was not delivered");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_subscriber_leaving_unsubscribes_the_broker() {
        let (hub, broker) = hub();
        let o = Arc::new(Outbox::new(8));
        hub.subscribe(&key(), &o, None).await.unwrap();
        hub.unsubscribe(&key(), &o);
        tokio::time::sleep(UNSUBSCRIBE_DELAY * 2).await;
        assert!(broker.desired.lock().is_empty());
        assert_eq!(hub.channel_count(), 0);
    }

    /// Entries (live or retired, not yet swept) in `key`'s list.
    fn entries(hub: &Hub, key: &ChannelKey) -> usize {
        hub.channels.get(key).map_or(0, |c| c.subs.lock().list.len())
    }

    #[tokio::test(start_paused = true)]
    async fn ended_sessions_get_nothing_are_swept_and_the_last_one_dissolves_the_channel() {
        let (hub, broker) = hub();
        let outboxes: Vec<_> = (0..100).map(|_| Arc::new(Outbox::new(8))).collect();
        for o in &outboxes {
            hub.subscribe(&key(), o, None).await.unwrap();
        }
        hub.deliver(event());
        let (gone, live) = outboxes.split_at(60);
        for o in gone {
            hub.leave([key()], o);
            assert!(o.is_empty(), "a retired outbox keeps no frames");
        }
        // Swept once half the list was retired: far fewer than 100 entries remain.
        let left = entries(&hub, &key());
        assert!((40..=70).contains(&left), "{left} entries after 60 of 100 left");
        hub.deliver(event());
        assert!(live.iter().all(|o| o.len() == 2), "live sessions get every event");
        assert!(gone.iter().all(|o| o.is_empty()), "ended sessions get nothing");
        for o in live {
            hub.leave([key()], o);
        }
        assert_eq!(entries(&hub, &key()), 0, "the last leave sweeps everything");
        tokio::time::sleep(UNSUBSCRIBE_DELAY * 2).await;
        assert!(broker.desired.lock().is_empty());
        assert_eq!(hub.channel_count(), 0);
    }

    #[tokio::test]
    async fn set_filter_replaces_only_that_sessions_filter() {
        let (hub, _) = hub();
        let (a, b) = (Arc::new(Outbox::new(8)), Arc::new(Outbox::new(8)));
        hub.subscribe(&key(), &a, None).await.unwrap();
        hub.subscribe(&key(), &b, None).await.unwrap();
        let only_x = Arc::new(EventFilter::parse(&["x".to_owned()]).unwrap());
        assert!(hub.set_filter(&key(), &a, Some(only_x)));
        hub.deliver(event()); // event "e"
        assert_eq!((a.len(), b.len()), (0, 1));
        assert!(!hub.set_filter(&key(), &Arc::new(Outbox::new(8)), None), "not a member");
        assert_eq!(entries(&hub, &key()), 2);
    }

    #[tokio::test]
    async fn a_session_registering_after_its_keys_revocation_is_closed() {
        let (hub, _) = hub();
        let key_id = KeyId::generate();
        hub.apply(ControlMessage::Revoke { key_id: key_id.clone() });
        let outbox = Arc::new(Outbox::new(8));
        hub.register(
            ConnId::generate(),
            SessionEntry { key_id, secret: TokenHash::of("s"), outbox: outbox.clone() },
        );
        assert_eq!(outbox.close_requested(), Some(CloseCode::KeyRevoked));
        let other = Arc::new(Outbox::new(8));
        hub.register(
            ConnId::generate(),
            SessionEntry {
                key_id: KeyId::generate(),
                secret: TokenHash::of("t"),
                outbox: other.clone(),
            },
        );
        assert_eq!(other.close_requested(), None);
        let retired = TokenHash::of("old");
        hub.apply(ControlMessage::Retire {
            key_id: KeyId::generate(),
            secret: retired,
            at: time::OffsetDateTime::now_utc(),
        });
        let late = Arc::new(Outbox::new(8));
        hub.register(
            ConnId::generate(),
            SessionEntry { key_id: KeyId::generate(), secret: retired, outbox: late.clone() },
        );
        assert_eq!(late.close_requested(), Some(CloseCode::KeyRevoked));
    }
}
