//! The Redis broker's ingress: the event connection's reader moves messages into a queue of
//! at most `max_broker_queue_bytes`, and one delivery task drains it into the Hub in order.
//! A full queue drops the connection (an overflow) instead of growing without bound.
//!
//! May use: the parent module (its `Inner`), codec.  Never: a task per message.

use std::{
    sync::{atomic::Ordering, Weak},
    time::Instant,
};

use futures::StreamExt;

use super::{codec, ChannelKey, Delivery, Inner, Queued, COMMAND_TIMEOUT, HEALTH_EVERY};

impl Inner {
    /// Queues one event message for the delivery task; `false` when the queue is full.
    pub(super) fn enqueue(&self, msg: redis::Msg) -> bool {
        let size = queued_size(&msg);
        if self.queued_bytes.fetch_add(size, Ordering::AcqRel) + size > self.max_queued_bytes {
            self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            return false;
        }
        self.queue.send(Queued::Message(msg, Instant::now())).is_ok()
    }

    /// One event message, in arrival order (on the delivery task).
    fn on_message(&self, channel: &str, payload: &[u8], received: Instant) {
        let Some(key) = ChannelKey::parse(channel) else { return };
        match codec::decode(key.topic, payload, self.max_decoded_bytes(), received) {
            Ok(event) => self.deliver(Delivery::Event { channel: key, event }),
            Err(error) => self.deliver(Delivery::Malformed { channel: channel.to_owned(), error }),
        }
    }
}

/// Reads the event subscription into the bounded queue, pinging it when quiet, until it
/// fails or the queue overflows (then the connection is dropped: an overflow gap).
pub(super) async fn read(inner: &Inner, mut stream: redis::aio::PubSubStream) {
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
pub(super) async fn drain(
    weak: Weak<Inner>,
    mut queued: tokio::sync::mpsc::UnboundedReceiver<Queued>,
) {
    while let Some(item) = queued.recv().await {
        let Some(inner) = weak.upgrade() else { return };
        match item {
            Queued::Message(msg, received) => {
                inner.on_message(msg.get_channel_name(), msg.get_payload_bytes(), received);
                inner.queued_bytes.fetch_sub(queued_size(&msg), Ordering::AcqRel);
            }
            Queued::Gap => inner.deliver(Delivery::Gap),
            Queued::Overflow => inner.deliver(Delivery::Overflow),
        }
    }
}
