//! The in-process broker of embedded mode: `publish` numbers the event in its channel's
//! in-memory history (`ring`), decodes it and hands it to the node's `Deliver`
//! synchronously, in offset order.
//!
//! A confirmed control message is handed over with a `Done` and awaited.
//!
//! Owns: the handler link and the history rings.  May use: broker, codec, ring.
//! Never: await I/O (but for a confirmed control message's handler). Spawns one task: the
//! sweeper that releases idle channels' history.

use std::{
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use bytes::Bytes;

use super::{
    codec, ring::Rings, Broker, BrokerError, ChannelKey, ControlMessage, Deliver, Delivery, Done,
    HistoryPage, Position,
};

/// The longest a confirmed publish waits for this node's handler (a key update re-reads the
/// key, with retries, before its `Done` is dropped).
const CONFIRM_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

pub struct MemoryBroker {
    handler: Weak<dyn Deliver>,
    max_event_bytes: usize,
    rings: Arc<Rings>,
}

impl MemoryBroker {
    /// `handler` is weak so the Hub (which owns the broker) and the broker form no cycle.
    /// `history_size` 0 turns history off.
    pub fn new(
        handler: Weak<dyn Deliver>,
        max_event_bytes: usize,
        history_size: usize,
        history_ttl: Duration,
    ) -> Self {
        let rings = Arc::new(Rings::new(history_size, history_ttl));
        if rings.enabled() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let weak = Arc::downgrade(&rings);
                let every = (history_ttl / 4).max(Duration::from_millis(100));
                rt.spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        let Some(rings) = weak.upgrade() else { return };
                        rings.sweep();
                    }
                });
            }
        }
        Self { handler, max_event_bytes, rings }
    }

    fn deliver(&self, d: Delivery) {
        if let Some(h) = self.handler.upgrade() {
            h.deliver(d);
        }
    }

    /// Channels whose history is kept right now.
    pub fn history_channels(&self) -> usize {
        self.rings.len()
    }
}

#[async_trait::async_trait]
impl Broker for MemoryBroker {
    async fn subscribe(&self, _channel: &ChannelKey) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &ChannelKey) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn publish(
        &self,
        channel: &ChannelKey,
        event_json: Bytes,
    ) -> Result<Option<Position>, BrokerError> {
        let result = if self.rings.enabled() {
            self.rings
                .append(channel, &event_json, self.max_event_bytes, |event| {
                    self.deliver(Delivery::Event { channel: channel.clone(), event: event.clone() })
                })
                .map(Some)
        } else {
            codec::decode(channel.topic, &event_json, self.max_event_bytes, Instant::now()).map(
                |event| {
                    self.deliver(Delivery::Event { channel: channel.clone(), event });
                    None
                },
            )
        };
        result.map_err(|error| {
            self.deliver(Delivery::Malformed { channel: channel.name(), error: error.clone() });
            error.into()
        })
    }

    async fn head(&self, channel: &ChannelKey) -> Result<Option<Position>, BrokerError> {
        Ok(self.rings.enabled().then(|| self.rings.head(channel)))
    }

    async fn history(
        &self,
        channel: &ChannelKey,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Option<HistoryPage>, BrokerError> {
        Ok(self.rings.enabled().then(|| self.rings.read(channel, after, limit)))
    }

    async fn publish_control(&self, msg: &ControlMessage) -> Result<(), BrokerError> {
        self.deliver(Delivery::Control(msg.clone()));
        Ok(())
    }

    async fn publish_control_confirmed(&self, msg: &ControlMessage) -> Result<(), BrokerError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.deliver(Delivery::Confirm(
            msg.clone(),
            Done::new(move || {
                let _ = tx.send(());
            }),
        ));
        // Handled when `Done` is dropped (a dropped sender says the same).
        let _ = tokio::time::timeout(CONFIRM_WITHIN, rx).await;
        Ok(())
    }

    fn confirm_within(&self) -> std::time::Duration {
        CONFIRM_WITHIN
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        Ok(())
    }
}
