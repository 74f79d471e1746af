//! The Redis broker: every node SUBSCRIBEs exactly the channels it has local subscribers for
//! (`mt:{env}:{account}:{topic}`) on one pub/sub connection, and `mt:control` on a second one
//! of its own, so a flood of events never delays a revocation; publishing goes over the
//! shared command connection.
//!
//! Ingress is bounded (`ingress`): a node that cannot keep up drops its event connection —
//! an overflow, counted — and reconnects: Redis discards what it published meanwhile, the
//! node reports a `Gap`, and memory stays bounded instead of growing until it is killed.
//!
//! With history on (`history`), publishing is a call of the `miteos` function library,
//! loaded on every (re)connect before the `Gap` is reported, so the node can repair it.
//!
//! Key updates are published *confirmed*: the call returns once every node acknowledged
//! (or must have noticed it can no longer hear control messages), see `control`.
//!
//! The broker keeps the *desired* set of channels. A supervisor task per connection
//! (re)connects with jittered, capped exponential backoff, resubscribes, reports a `Gap` after
//! every reconnect (Redis pub/sub is at-most-once: what was published meanwhile is lost), and
//! pings the connection so a silent failure is noticed.
//!
//! Owns: the pub/sub connection, the desired set, readiness.  May use: broker,
//! broker::codec, ids, redis_link, its submodules.  Never: PSUBSCRIBE, a task per message.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Weak,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use parking_lot::Mutex;
use rand::Rng;
use redis::aio::PubSubSink;

mod control;
mod history;
mod ingress;
mod readiness;
mod shard;
mod sharded;
mod topology;

pub use control::CONFIRM_WITHIN;

use super::{
    codec, Broker, BrokerError, ChannelKey, ControlMessage, Deliver, Delivery, HistoryPage,
    Position,
};
use crate::{ids::random_base62, redis_link::RedisLink};
use history::History;
pub use history::{history_keys, library, LIBRARY};

/// The channel every node listens to for key revocations and rotations.
pub const CONTROL_CHANNEL: &str = "mt:control";
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
const HEALTH_EVERY: Duration = Duration::from_secs(5);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

pub struct RedisBroker {
    inner: Arc<Inner>,
}

/// What a Redis broker is configured with (from `Config`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_event_bytes: usize,
    /// Bounds what was read from Redis and not yet delivered (`max_broker_queue_bytes`).
    pub max_queued_bytes: usize,
    /// Events kept per channel; 0 turns history off (plain PUBLISH, no offsets).
    pub history_size: usize,
    pub history_ttl: Duration,
    /// Whether to (re)install the function library on every connect (a node); else only
    /// when a call finds it missing (a one-shot command, whose settings may differ).
    pub install_library: bool,
}

struct Inner {
    link: Arc<RedisLink>,
    handler: Weak<dyn Deliver>,
    node: String,
    max_event_bytes: usize,
    /// `None` with history off.
    history: Option<History>,
    /// On a Redis Cluster: the sharded subscriptions (else one event connection, `sink`).
    shards: Option<sharded::Shards>,
    install_library: bool,
    desired: Mutex<HashSet<String>>,
    /// The live event connection's subscribe handle; `None` while disconnected.
    sink: Mutex<Option<PubSubSink>>,
    /// Whether the event side and the control connection are up, and why not.
    readiness: readiness::Readiness,
    /// Notified when the control connection comes up.
    control_up: tokio::sync::Notify,
    /// Confirmed control publishes waiting for acknowledgements.
    acks: control::Acks,
    /// Messages read from Redis, in order, for the delivery task; and their payload bytes.
    queue: tokio::sync::mpsc::UnboundedSender<Queued>,
    queued_bytes: AtomicUsize,
    max_queued_bytes: usize,
}

/// What the reader hands the delivery task.
enum Queued {
    /// The crate's message as received: it owns its bytes, so queueing copies nothing.
    Message(redis::Msg, Instant),
    Gap,
    Overflow,
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

impl RedisBroker {
    /// Starts the supervisor tasks; the broker becomes ready once Redis answers (and, with
    /// history on, has the function library loaded).
    pub fn start(link: Arc<RedisLink>, handler: Weak<dyn Deliver>, settings: Settings) -> Self {
        let Settings { max_event_bytes, max_queued_bytes, history_size, history_ttl, .. } =
            settings;
        let (queue, queued) = tokio::sync::mpsc::unbounded_channel();
        let cluster = link.is_cluster();
        let (shards, link_events) = cluster.then(sharded::Shards::new).unzip();
        let inner = Arc::new(Inner {
            link,
            handler,
            node: random_base62(12),
            max_event_bytes,
            history: History::new(history_size, history_ttl, max_event_bytes, cluster),
            shards,
            install_library: settings.install_library,
            desired: Mutex::new(HashSet::new()),
            sink: Mutex::new(None),
            readiness: readiness::Readiness::new(cluster),
            control_up: tokio::sync::Notify::new(),
            acks: control::Acks::default(),
            queue,
            queued_bytes: AtomicUsize::new(0),
            max_queued_bytes,
        });
        match link_events {
            Some(events) => tokio::spawn(sharded::supervise(Arc::downgrade(&inner), events)),
            None => tokio::spawn(supervise(Arc::downgrade(&inner))),
        };
        tokio::spawn(control::supervise(Arc::downgrade(&inner)));
        tokio::spawn(ingress::drain(Arc::downgrade(&inner), queued));
        Self { inner }
    }

    /// Event payload bytes read from Redis and not yet delivered (bounded).
    pub fn queued_bytes(&self) -> usize {
        self.inner.queued_bytes.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn deliver(&self, d: Delivery) {
        if let Some(h) = self.handler.upgrade() {
            h.deliver(d);
        }
    }

    /// The largest published message a node decodes: the function adds the position (and
    /// `id`, `created_at`) to what the producer sent, which `max_event_bytes` bounds.
    fn max_decoded_bytes(&self) -> usize {
        self.max_event_bytes + if self.history.is_some() { history::ADDED_BYTES } else { 0 }
    }
}

/// Connect, subscribe, read until the connection fails, back off, repeat — until the broker
/// is dropped (with the Hub that owns it). Not "until the handler is gone": the Hub builds
/// its broker inside `Arc::new_cyclic`, so the handler is not upgradable yet when this task
/// may first run (that made a node never connect, now and then, under load).
async fn supervise(weak: Weak<Inner>) {
    let mut failures: u32 = 0;
    let mut connected_before = false;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        match connect(&inner).await {
            Ok(stream) => {
                failures = 0;
                inner.readiness.events_up();
                if connected_before {
                    tracing::info!(
                        "reconnected to redis; events published during the outage were lost"
                    );
                    let _ = inner.queue.send(Queued::Gap);
                } else {
                    tracing::info!("connected to redis");
                }
                connected_before = true;
                ingress::read(&inner, stream).await;
                inner.readiness.events_down("lost the redis connection; reconnecting".into());
                *inner.sink.lock() = None;
                tracing::warn!("lost the redis subscription connection; reconnecting");
            }
            Err(e) => {
                // A half-made connection may have installed its sink: subscribes must wait
                // for the next connection, not fail on this one.
                *inner.sink.lock() = None;
                if failures == 0 {
                    tracing::warn!(error = %e, "cannot reach redis; retrying with backoff");
                }
                failures = failures.saturating_add(1);
            }
        }
        drop(inner);
        tokio::time::sleep(backoff(failures)).await;
    }
}

/// Full-jitter exponential backoff: a random delay in [d/2, d], d = min(cap, base·2^n).
fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return BACKOFF_BASE;
    }
    let d = BACKOFF_BASE.saturating_mul(1u32 << failures.min(16)).min(BACKOFF_CAP);
    let half = d / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

/// Opens a pub/sub connection (within `COMMAND_TIMEOUT`): to the one Redis, or in a cluster
/// to the master at `addr`.
async fn open(
    inner: &Inner,
    addr: Option<&str>,
) -> Result<(PubSubSink, redis::aio::PubSubStream), BrokerError> {
    let client = inner.link.client_for(addr).map_err(unavailable)?;
    let pubsub = tokio::time::timeout(COMMAND_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(unavailable)?
        .map_err(unavailable)?;
    Ok(pubsub.split())
}

async fn connect(inner: &Inner) -> Result<redis::aio::PubSubStream, BrokerError> {
    let (mut sink, stream) = open(inner, None).await?;
    // Install the sink first, then snapshot: a concurrent `subscribe` either sees the sink
    // (and subscribes itself) or lands in the snapshot.
    *inner.sink.lock() = Some(sink.clone());
    let wanted: Vec<String> = inner.desired.lock().iter().cloned().collect();
    for chunk in wanted.chunks(256) {
        tokio::time::timeout(COMMAND_TIMEOUT, sink.subscribe(chunk))
            .await
            .map_err(unavailable)?
            .map_err(unavailable)?;
    }
    // Before the node reports the gap of a reconnect: repairing it reads history. A Redis
    // restarted empty has no functions.
    load_library(inner).await?;
    Ok(stream)
}

/// Installs the function library (a node, with history on).
async fn load_library(inner: &Inner) -> Result<(), BrokerError> {
    if let Some(history) = inner.history.as_ref().filter(|_| inner.install_library) {
        tokio::time::timeout(COMMAND_TIMEOUT, history.load(&inner.link))
            .await
            .map_err(unavailable)??;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Broker for RedisBroker {
    async fn subscribe(&self, channel: &ChannelKey) -> Result<(), BrokerError> {
        let name = channel.name();
        self.inner.desired.lock().insert(name.clone());
        if let Some(shards) = &self.inner.shards {
            return shards.subscribe(&self.inner, &name).await.inspect_err(|_| {
                self.inner.desired.lock().remove(&name);
            });
        }
        // Disconnected: the supervisor subscribes the desired set when it reconnects.
        let Some(mut sink) = self.inner.sink.lock().clone() else { return Ok(()) };
        match tokio::time::timeout(COMMAND_TIMEOUT, sink.subscribe(&name)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(e) => Err(unavailable(e)),
        }
        .inspect_err(|_| {
            self.inner.desired.lock().remove(&name);
        })
    }

    async fn unsubscribe(&self, channel: &ChannelKey) -> Result<(), BrokerError> {
        let name = channel.name();
        self.inner.desired.lock().remove(&name);
        if let Some(shards) = &self.inner.shards {
            return shards.unsubscribe(&name).await;
        }
        let Some(mut sink) = self.inner.sink.lock().clone() else { return Ok(()) };
        tokio::time::timeout(COMMAND_TIMEOUT, sink.unsubscribe(&name))
            .await
            .map_err(unavailable)?
            .map_err(unavailable)
    }

    async fn publish(
        &self,
        channel: &ChannelKey,
        event_json: Bytes,
    ) -> Result<Option<Position>, BrokerError> {
        let inner = &self.inner;
        let Some(history) = &inner.history else {
            let mut conn = inner.link.conn().await.map_err(unavailable)?;
            let command = if inner.shards.is_some() { "SPUBLISH" } else { "PUBLISH" };
            return redis::cmd(command)
                .arg(channel.name())
                .arg(event_json.as_ref())
                .query_async::<i64>(&mut conn)
                .await
                .map(|_| None)
                .map_err(unavailable);
        };
        match history.publish(&inner.link, channel, &event_json).await {
            Ok(position) => Ok(Some(position)),
            Err(BrokerError::InvalidEvent(error)) => {
                // Refused before it reached any node: report it here, as nodes would have.
                inner
                    .deliver(Delivery::Malformed { channel: channel.name(), error: error.clone() });
                Err(error.into())
            }
            Err(e) => Err(e),
        }
    }

    async fn head(&self, channel: &ChannelKey) -> Result<Option<Position>, BrokerError> {
        let Some(history) = &self.inner.history else { return Ok(None) };
        history.head(&self.inner.link, channel).await.map(Some)
    }

    async fn history(
        &self,
        channel: &ChannelKey,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Option<HistoryPage>, BrokerError> {
        let Some(history) = &self.inner.history else { return Ok(None) };
        history.read(&self.inner.link, channel, after, limit).await.map(Some)
    }

    async fn new_epoch(&self, channel: &ChannelKey, stale: &str) -> Result<(), BrokerError> {
        let Some(history) = &self.inner.history else { return Ok(()) };
        history.new_epoch(&self.inner.link, channel, stale).await
    }

    async fn publish_control(&self, msg: &ControlMessage) -> Result<(), BrokerError> {
        control::publish(&self.inner, msg, false).await
    }

    async fn publish_control_confirmed(&self, msg: &ControlMessage) -> Result<(), BrokerError> {
        control::publish(&self.inner, msg, true).await
    }

    fn confirm_within(&self) -> Duration {
        // Waiting for the control subscription to come up, then for the acknowledgements.
        COMMAND_TIMEOUT + CONFIRM_WITHIN
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        if let Some(why) = self.inner.readiness.reason() {
            return Err(BrokerError::NotReady(why));
        }
        // On a cluster a PING goes to every node, so any dead master or replica would fail
        // it; the shards this node needs are watched by their links' health pings instead.
        if self.inner.shards.is_some() {
            return Ok(());
        }
        let mut conn = self.inner.link.conn().await.map_err(unavailable)?;
        redis::cmd("PING").query_async::<String>(&mut conn).await.map(|_| ()).map_err(unavailable)
    }

    fn ready(&self) -> bool {
        self.inner.readiness.is_ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for n in 1..30 {
            let d = backoff(n);
            let full = BACKOFF_BASE.saturating_mul(1u32 << n.min(16)).min(BACKOFF_CAP);
            assert!(d >= full / 2 && d <= full, "{n}: {d:?}");
        }
        assert!(backoff(40) <= BACKOFF_CAP);
    }
}
