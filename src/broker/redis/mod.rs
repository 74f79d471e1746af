//! The Redis broker: every node SUBSCRIBEs exactly the channels it has local subscribers for
//! (`mt:{env}:{account}:{topic}`) on one pub/sub connection, and `mt:control` on a second one
//! of its own, so a flood of events never delays a revocation; publishing goes over the
//! shared command connection.
//!
//! Ingress is bounded: the event connection's reader only moves messages into a queue of at
//! most `max_broker_queue_bytes`, which one delivery task drains into the Hub in order. A node that
//! cannot keep up (the queue is full) drops its event connection — an overflow, counted —
//! and reconnects: Redis discards what it published meanwhile, the node reports a `Gap`, and
//! memory stays bounded instead of growing until the process is killed.
//!
//! Key updates are published *confirmed*: the call returns once every node acknowledged
//! (or must have noticed it can no longer hear control messages), see `control`.
//!
//! The broker keeps the *desired* set of channels. A supervisor task per connection
//! (re)connects with jittered, capped exponential backoff, resubscribes, reports a `Gap` after
//! every reconnect (Redis pub/sub is at-most-once: what was published meanwhile is lost), and
//! pings the connection so a silent failure is noticed.
//!
//! Owns: the pub/sub connection, the desired set, readiness.  May use: broker, codec,
//! redis_link.  Never: PSUBSCRIBE, a task per message.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Weak,
    },
    time::Duration,
};

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use rand::Rng;
use redis::aio::PubSubSink;

mod control;

pub use control::CONFIRM_WITHIN;

use super::{codec, Broker, BrokerError, ChannelKey, ControlMessage, Deliver, Delivery};
use crate::{ids::random_base62, redis_link::RedisLink};

/// The channel every node listens to for key revocations and rotations.
pub const CONTROL_CHANNEL: &str = "mt:control";
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
const HEALTH_EVERY: Duration = Duration::from_secs(5);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

pub struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    link: Arc<RedisLink>,
    handler: Weak<dyn Deliver>,
    node: String,
    max_event_bytes: usize,
    desired: Mutex<HashSet<String>>,
    /// The live event connection's subscribe handle; `None` while disconnected.
    sink: Mutex<Option<PubSubSink>>,
    /// Whether the event connection and the control connection are up.
    ready: AtomicBool,
    control_ready: AtomicBool,
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
    Message(redis::Msg),
    Gap,
    Overflow,
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

impl RedisBroker {
    /// Starts the supervisor task; the broker becomes ready once Redis answers.
    /// `max_queued_bytes` bounds what was read from Redis and not yet delivered.
    pub fn start(
        link: Arc<RedisLink>,
        handler: Weak<dyn Deliver>,
        max_event_bytes: usize,
        max_queued_bytes: usize,
    ) -> Self {
        let (queue, queued) = tokio::sync::mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            link,
            handler,
            node: random_base62(12),
            max_event_bytes,
            desired: Mutex::new(HashSet::new()),
            sink: Mutex::new(None),
            ready: AtomicBool::new(false),
            control_ready: AtomicBool::new(false),
            control_up: tokio::sync::Notify::new(),
            acks: control::Acks::default(),
            queue,
            queued_bytes: AtomicUsize::new(0),
            max_queued_bytes,
        });
        tokio::spawn(supervise(Arc::downgrade(&inner)));
        tokio::spawn(control::supervise(Arc::downgrade(&inner)));
        tokio::spawn(drain(Arc::downgrade(&inner), queued));
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

    /// Queues one event message for the delivery task; `false` when the queue is full.
    fn enqueue(&self, msg: redis::Msg) -> bool {
        let size = queued_size(&msg);
        if self.queued_bytes.fetch_add(size, Ordering::AcqRel) + size > self.max_queued_bytes {
            self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            return false;
        }
        self.queue.send(Queued::Message(msg)).is_ok()
    }

    /// One event message, in arrival order (on the delivery task).
    fn on_message(&self, channel: &str, payload: &[u8]) {
        let Some(key) = ChannelKey::parse(channel) else { return };
        match codec::decode(key.topic, payload, self.max_event_bytes) {
            Ok(event) => self.deliver(Delivery::Event { channel: key, event }),
            Err(error) => self.deliver(Delivery::Malformed { channel: channel.to_owned(), error }),
        }
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
                inner.ready.store(true, Ordering::SeqCst);
                if connected_before {
                    tracing::info!(
                        "reconnected to redis; events published during the outage were lost"
                    );
                    let _ = inner.queue.send(Queued::Gap);
                } else {
                    tracing::info!("connected to redis");
                }
                connected_before = true;
                read(&inner, stream).await;
                inner.ready.store(false, Ordering::SeqCst);
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

/// Opens a pub/sub connection (within `COMMAND_TIMEOUT`).
async fn open(inner: &Inner) -> Result<(PubSubSink, redis::aio::PubSubStream), BrokerError> {
    let client = inner.link.client().clone();
    let pubsub = tokio::time::timeout(COMMAND_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(unavailable)?
        .map_err(unavailable)?;
    Ok(pubsub.split())
}

async fn connect(inner: &Inner) -> Result<redis::aio::PubSubStream, BrokerError> {
    let (mut sink, stream) = open(inner).await?;
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
    Ok(stream)
}

/// Reads the event subscription into the bounded queue, pinging it when quiet, until it
/// fails or the queue overflows (then the connection is dropped: an overflow gap).
async fn read(inner: &Inner, mut stream: redis::aio::PubSubStream) {
    let mut health = tokio::time::interval(HEALTH_EVERY);
    health.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => {
                    if !inner.enqueue(msg) {
                        tracing::warn!(
                            "this node delivers slower than events arrive: dropping its redis \
                             subscription (events published until it is back are lost)"
                        );
                        let _ = inner.queue.send(Queued::Overflow);
                        return;
                    }
                }
                None => return,
            },
            _ = health.tick() => {
                let Some(mut sink) = inner.sink.lock().clone() else { return };
                let pong = tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    return;
                }
            }
        }
    }
}

/// What a queued message counts against `max_broker_queue_bytes`.
fn queued_size(msg: &redis::Msg) -> usize {
    msg.get_payload_bytes().len() + msg.get_channel_name().len()
}

/// The delivery task: hands queued messages to the Hub in order, until the broker is gone.
async fn drain(weak: Weak<Inner>, mut queued: tokio::sync::mpsc::UnboundedReceiver<Queued>) {
    while let Some(item) = queued.recv().await {
        let Some(inner) = weak.upgrade() else { return };
        match item {
            Queued::Message(msg) => {
                inner.on_message(msg.get_channel_name(), msg.get_payload_bytes());
                inner.queued_bytes.fetch_sub(queued_size(&msg), Ordering::AcqRel);
            }
            Queued::Gap => inner.deliver(Delivery::Gap),
            Queued::Overflow => inner.deliver(Delivery::Overflow),
        }
    }
}

#[async_trait::async_trait]
impl Broker for RedisBroker {
    async fn subscribe(&self, channel: &ChannelKey) -> Result<(), BrokerError> {
        let name = channel.name();
        self.inner.desired.lock().insert(name.clone());
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
        let Some(mut sink) = self.inner.sink.lock().clone() else { return Ok(()) };
        tokio::time::timeout(COMMAND_TIMEOUT, sink.unsubscribe(&name))
            .await
            .map_err(unavailable)?
            .map_err(unavailable)
    }

    async fn publish(&self, channel: &ChannelKey, event_json: Bytes) -> Result<(), BrokerError> {
        let mut conn = self.inner.link.conn().await.map_err(unavailable)?;
        redis::cmd("PUBLISH")
            .arg(channel.name())
            .arg(event_json.as_ref())
            .query_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(unavailable)
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
        if !self.ready() {
            return Err(BrokerError::Unavailable("not connected to redis".into()));
        }
        let mut conn = self.inner.link.conn().await.map_err(unavailable)?;
        redis::cmd("PING").query_async::<String>(&mut conn).await.map(|_| ()).map_err(unavailable)
    }

    fn ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst) && self.inner.control_ready.load(Ordering::SeqCst)
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
