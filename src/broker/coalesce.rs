//! `Coalesce`: a `Broker` decorator that sends concurrent identical reads once. A storm of
//! resuming clients asks for the same channel's `head` and the same `history(after, …)`
//! thousands of times at once; each of those is one command on the node's one Redis
//! connection, and their queue made replies time out (SPEC §7 resumes answered
//! `recovered: false`, or 1013, under load).
//!
//! Per read key at most one read is in flight and one more is *pending* (not sent yet): every
//! caller joins the pending read, which is sent as soon as no read of the key is in flight
//! and answers all of them. A caller never joins a read already sent, so every
//! answer was read after the call began (a head is never older than the caller's call; a
//! page holds every event published before it). History reads with the same `after` share
//! one read of the largest limit asked for; each caller gets the page cut to its own limit
//! (the events a read with its limit would have returned). An error answers every caller of
//! that read; the next call sends a new one. Reads run as tasks, so a caller that goes away
//! does not cancel the read for the others. Everything but `head` and `history` passes
//! through.
//!
//! May use: broker (the trait, `Position`, `HistoryPage`), prometheus-client (counters).
//! Never: hand a caller a result read before its call began; hold the map lock across
//! `.await`.

use std::{
    collections::{hash_map::Entry, HashMap},
    future::Future,
    hash::Hash,
    pin::Pin,
    sync::Arc,
};

use bytes::Bytes;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;

use super::{Broker, BrokerError, ChannelKey, ControlMessage, HistoryPage, Position};

type Read<V> = Result<V, BrokerError>;
type Call<V> = Pin<Box<dyn Future<Output = Read<V>> + Send>>;

/// Counts of one kind of read: sent to the broker, and answered by a read another call sent.
#[derive(Clone, Default, Debug)]
pub struct ReadCounters {
    pub sent: Counter,
    pub shared: Counter,
}

/// One read for every caller that joined it before it was sent.
struct Flight<V> {
    /// The largest limit its callers asked for (history; 0 for head).
    limit: usize,
    tx: watch::Sender<Option<Read<V>>>,
}

impl<V> Flight<V> {
    fn new(limit: usize) -> (Self, watch::Receiver<Option<Read<V>>>) {
        let (tx, rx) = watch::channel(None);
        (Self { limit, tx }, rx)
    }
}

/// A key's entry exists while a task drives its reads; `next` is the read not sent yet,
/// which every new caller joins.
struct Slot<V> {
    next: Option<Flight<V>>,
}

/// The reads in flight of one kind, by key.
struct Flights<K, V> {
    slots: Mutex<HashMap<K, Slot<V>>>,
    counters: ReadCounters,
}

/// Removes the key's entry if the driving task ends without doing so (a panic in the inner
/// broker): the pending read's callers get an error instead of waiting for ever.
struct Cleanup<'a, K: Eq + Hash, V> {
    flights: &'a Flights<K, V>,
    key: &'a K,
    armed: bool,
}

impl<K: Eq + Hash, V> Drop for Cleanup<'_, K, V> {
    fn drop(&mut self) {
        if self.armed {
            self.flights.slots.lock().remove(self.key);
        }
    }
}

impl<K, V> Flights<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn new(counters: ReadCounters) -> Arc<Self> {
        Arc::new(Self { slots: Mutex::new(HashMap::new()), counters })
    }

    /// The answer of the first read of `key` sent after this call began (of a limit ≥
    /// `limit`); `call(limit)` sends one.
    async fn read(
        self: &Arc<Self>,
        key: K,
        limit: usize,
        call: impl Fn(usize) -> Call<V> + Send + Sync + 'static,
    ) -> Read<V> {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.counters.sent.inc();
            return call(limit).await;
        };
        let mut rx = {
            let mut slots = self.slots.lock();
            let slot = match slots.entry(key.clone()) {
                Entry::Occupied(o) => o.into_mut(),
                Entry::Vacant(v) => {
                    rt.spawn(self.clone().drive(key, call));
                    v.insert(Slot { next: None })
                }
            };
            match &mut slot.next {
                Some(next) => {
                    next.limit = next.limit.max(limit);
                    self.counters.shared.inc();
                    next.tx.subscribe()
                }
                none => {
                    let (flight, rx) = Flight::new(limit);
                    *none = Some(flight);
                    rx
                }
            }
        };
        let answer = match rx.wait_for(Option::is_some).await {
            Ok(answer) => (*answer).clone(),
            Err(_) => None, // the driving task ended without answering
        };
        answer.unwrap_or_else(|| Err(abandoned()))
    }

    /// Sends the key's pending read and answers its callers, until none is pending.
    async fn drive(
        self: Arc<Self>,
        key: K,
        call: impl Fn(usize) -> Call<V> + Send + Sync + 'static,
    ) {
        let mut cleanup = Cleanup { flights: &self, key: &key, armed: true };
        loop {
            let flight = {
                let mut slots = self.slots.lock();
                match slots.get_mut(&key).and_then(|s| s.next.take()) {
                    Some(f) => f,
                    None => {
                        slots.remove(&key);
                        cleanup.armed = false;
                        return;
                    }
                }
            };
            self.counters.sent.inc();
            let answer = call(flight.limit).await;
            flight.tx.send_replace(Some(answer));
        }
    }

    #[cfg(test)]
    fn keys(&self) -> usize {
        self.slots.lock().len()
    }
}

fn abandoned() -> BrokerError {
    BrokerError::Unavailable("the shared read was abandoned".into())
}

/// A history read's key: reads with the same `after` share one (the largest limit); the
/// newest `limit` events (`after: None`) are shared only by reads of the same limit.
type HistoryKey = (ChannelKey, Option<u64>, usize);

/// The coalescing decorator around any broker.
pub struct Coalesce {
    inner: Arc<dyn Broker>,
    heads: Arc<Flights<ChannelKey, Option<Position>>>,
    pages: Arc<Flights<HistoryKey, Option<HistoryPage>>>,
}

impl Coalesce {
    pub fn new(inner: Arc<dyn Broker>, head: ReadCounters, history: ReadCounters) -> Self {
        Self { inner, heads: Flights::new(head), pages: Flights::new(history) }
    }
}

#[async_trait::async_trait]
impl Broker for Coalesce {
    async fn subscribe(&self, channel: &ChannelKey) -> Result<(), BrokerError> {
        self.inner.subscribe(channel).await
    }

    async fn unsubscribe(&self, channel: &ChannelKey) -> Result<(), BrokerError> {
        self.inner.unsubscribe(channel).await
    }

    async fn publish(
        &self,
        channel: &ChannelKey,
        event_json: Bytes,
    ) -> Result<Option<Position>, BrokerError> {
        self.inner.publish(channel, event_json).await
    }

    async fn head(&self, channel: &ChannelKey) -> Result<Option<Position>, BrokerError> {
        let (inner, ch) = (self.inner.clone(), channel.clone());
        let call = move |_| -> Call<Option<Position>> {
            let (inner, ch) = (inner.clone(), ch.clone());
            Box::pin(async move { inner.head(&ch).await })
        };
        self.heads.read(channel.clone(), 0, call).await
    }

    async fn history(
        &self,
        channel: &ChannelKey,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Option<HistoryPage>, BrokerError> {
        let key = (channel.clone(), after, if after.is_some() { 0 } else { limit });
        let (inner, ch) = (self.inner.clone(), channel.clone());
        let call = move |limit| -> Call<Option<HistoryPage>> {
            let (inner, ch) = (inner.clone(), ch.clone());
            Box::pin(async move { inner.history(&ch, after, limit).await })
        };
        let mut page = self.pages.read(key, limit, call).await?;
        if let Some(p) = &mut page {
            p.events.truncate(limit);
        }
        Ok(page)
    }

    async fn new_epoch(&self, channel: &ChannelKey, stale: &str) -> Result<(), BrokerError> {
        self.inner.new_epoch(channel, stale).await
    }

    async fn publish_control(&self, msg: &ControlMessage) -> Result<(), BrokerError> {
        self.inner.publish_control(msg).await
    }

    async fn publish_control_confirmed(&self, msg: &ControlMessage) -> Result<(), BrokerError> {
        self.inner.publish_control_confirmed(msg).await
    }

    fn confirm_within(&self) -> std::time::Duration {
        self.inner.confirm_within()
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        self.inner.ping().await
    }

    fn ready(&self) -> bool {
        self.inner.ready()
    }
}

#[cfg(test)]
#[path = "coalesce_tests.rs"]
mod tests;
