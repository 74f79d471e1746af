//! What control messages (revocations, a rotation's retirements, key updates) do on this
//! node, and how a node heals when it may have missed one.
//!
//! - `Revoke` forgets the key's cached copy and closes its streams (4003).
//! - `Update` forgets the key's cached copy, reads its record again and applies it to the
//!   key's streams (`refresh`): lost read scopes, a new allowlist, a new expiry (SPEC §8).
//! - `Retire` arms one timer per secret (idempotent: the same secret announced twice arms one
//!   timer; a later deadline replaces the earlier) on a single timer task per node; when it
//!   fires, the secret's streams close (4003). A deadline already past closes them at once.
//! - Every `key_cache_ttl`, and after every broker gap, the keys of all open streams are read
//!   again from the store (one read per distinct key, a few at a time) and applied like an
//!   update: a revocation, rotation or update whose message was lost still takes effect.
//! - While the control subscription is lost the key cache is suspended (every lookup reads
//!   the store); it resumes when the subscription is back, before the revalidation.
//!
//! Owns: the retiring secrets and their timers, the record reads in flight, the revalidation
//! pass.  May use: hub, keys (store, cache, principal), broker (ControlMessage, Done), auth
//! (principal_for), ids, token, protocol::close, shutdown.
//! Never: block the Hub; close a stream because its record is missing (data loss is not
//! revocation).

mod refresh;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Weak},
    time::Duration,
};

use dashmap::DashMap;
use parking_lot::Mutex;
use time::OffsetDateTime;

use crate::{
    broker::{ControlMessage, Done},
    hub::{ControlSignal, Hub},
    ids::KeyId,
    keys::{cache::KeyCache, KeyStore},
    shutdown::Shutdown,
    token::TokenHash,
};

pub struct Control {
    hub: Arc<Hub>,
    store: Arc<dyn KeyStore>,
    cache: Arc<KeyCache>,
    /// Secrets inside a rotation's grace: their key and when the grace ends.
    retiring: DashMap<TokenHash, (KeyId, OffsetDateTime)>,
    /// The timer wheel: one entry per retiring secret, ordered by deadline.
    timers: Mutex<BTreeMap<(OffsetDateTime, TokenHash), KeyId>>,
    /// Wakes the timer task when an earlier deadline is armed.
    rearmed: tokio::sync::Notify,
    /// Keys whose record is being read, and who waits for one more read after that.
    inflight: Mutex<HashMap<KeyId, refresh::Again>>,
}

impl Control {
    /// Builds the node's control handling and installs it as the Hub's control handler.
    pub fn install(hub: Arc<Hub>, store: Arc<dyn KeyStore>, cache: Arc<KeyCache>) -> Arc<Self> {
        let control = Arc::new(Self {
            hub: hub.clone(),
            store,
            cache,
            retiring: DashMap::new(),
            timers: Mutex::new(BTreeMap::new()),
            rearmed: tokio::sync::Notify::new(),
            inflight: Mutex::new(HashMap::new()),
        });
        let weak: Weak<Control> = Arc::downgrade(&control);
        hub.set_control_handler(Box::new(move |signal| {
            if let Some(c) = weak.upgrade() {
                match signal {
                    ControlSignal::Message(msg, done) => c.apply_confirmed(msg, done),
                    ControlSignal::Lost => {
                        tracing::warn!(
                            "control messages cannot be heard: the key cache is off until they can"
                        );
                        c.cache.suspend();
                    }
                    ControlSignal::Regained => c.cache.resume(),
                }
            }
        }));
        control
    }

    /// Applies a control message from any node (this one included).
    pub fn apply(self: &Arc<Self>, msg: ControlMessage) {
        self.apply_confirmed(msg, Done::none());
    }

    /// Applies a control message; `done` is dropped once it is handled (for an update, once
    /// the key was read again and applied to its streams).
    pub fn apply_confirmed(self: &Arc<Self>, msg: ControlMessage, done: Done) {
        match msg {
            ControlMessage::Revoke { key_id } => self.apply_revoke(&key_id),
            ControlMessage::Retire { key_id, secret, at } => {
                self.cache.invalidate(&key_id);
                if at <= OffsetDateTime::now_utc() {
                    self.retire_now(&key_id, &secret);
                } else {
                    self.arm(key_id, secret, at);
                }
            }
            ControlMessage::Update { key_id } => {
                // Evicted before this returns: a confirmed publish waits for exactly this.
                self.cache.invalidate(&key_id);
                self.spawn_refresh(key_id, done);
            }
        }
    }

    fn apply_revoke(&self, key_id: &KeyId) {
        self.cache.invalidate(key_id);
        let n = self.hub.close_revoked_key(key_id);
        tracing::info!(key_id = %key_id, closed = n, "key revoked");
    }

    fn retire_now(&self, key_id: &KeyId, secret: &TokenHash) {
        if let Some((_, (_, at))) = self.retiring.remove(secret) {
            self.timers.lock().remove(&(at, *secret));
        }
        let n = self.hub.close_retired_secret(key_id, secret);
        tracing::info!(key_id = %key_id, closed = n, "rotated secret retired");
    }

    /// Arms (or moves) the one timer of `secret`.
    fn arm(&self, key_id: KeyId, secret: TokenHash, at: OffsetDateTime) {
        let mut timers = self.timers.lock();
        if let Some(old) = self.retiring.get(&secret).map(|e| e.1) {
            if old == at {
                return;
            }
            timers.remove(&(old, secret));
        }
        self.retiring.insert(secret, (key_id.clone(), at));
        let earliest = timers.keys().next().is_none_or(|first| (at, secret) < *first);
        timers.insert((at, secret), key_id);
        drop(timers);
        if earliest {
            self.rearmed.notify_one();
        }
    }

    /// Whether `secret` is inside a rotation's grace (for the per-secret connection gauge).
    pub fn is_retiring(&self, secret: &TokenHash) -> bool {
        self.retiring.contains_key(secret)
    }

    /// Timers armed on this node (one per retiring secret).
    pub fn pending_timers(&self) -> usize {
        self.timers.lock().len()
    }

    /// Starts the timer task and the periodic revalidation (every `recheck_every` and after
    /// every broker gap), until shutdown.
    pub fn spawn(self: &Arc<Self>, shutdown: &Shutdown, recheck_every: Duration) {
        let (me, token) = (self.clone(), shutdown.token.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = me.run_timers() => {}
            }
        });
        let (me, token) = (self.clone(), shutdown.token.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(recheck_every.max(Duration::from_secs(1)));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = me.hub.gap_seen() => {
                        // Revocations may have been missed: trust no cached key.
                        me.cache.clear();
                        me.revalidate().await;
                    }
                    _ = every.tick() => me.revalidate().await,
                }
            }
        });
    }

    async fn run_timers(&self) {
        loop {
            let next = self.timers.lock().keys().next().map(|(at, _)| *at);
            let wait = next.map(|at| {
                Duration::try_from(at - OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO)
            });
            match wait {
                Some(d) if d.is_zero() => self.fire_due(),
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => self.fire_due(),
                        _ = self.rearmed.notified() => {}
                    }
                }
                None => self.rearmed.notified().await,
            }
        }
    }

    fn fire_due(&self) {
        let now = OffsetDateTime::now_utc();
        let due: Vec<(TokenHash, KeyId)> = {
            let mut timers = self.timers.lock();
            let mut due = Vec::new();
            while let Some(entry) = timers.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let ((_, secret), key_id) = entry.remove_entry();
                due.push((secret, key_id));
            }
            due
        };
        for (secret, key_id) in due {
            self.retiring.remove(&secret);
            let n = self.hub.close_retired_secret(&key_id, &secret);
            tracing::info!(key_id = %key_id, closed = n, "rotated secret retired");
        }
    }
}
