//! The in-process broker of embedded mode: `publish` decodes the event and hands it to the
//! node's `Deliver` synchronously, in the caller's order.
//!
//! A confirmed control message is handed over with a `Done` and awaited.
//!
//! Owns: nothing but the handler link.  May use: broker, codec.  Never: spawn, await I/O
//! (but for a confirmed control message's handler).

use std::sync::Weak;

use bytes::Bytes;

use super::{codec, Broker, BrokerError, ChannelKey, ControlMessage, Deliver, Delivery, Done};

/// The longest a confirmed publish waits for this node's handler (a key update re-reads the
/// key, with retries, before its `Done` is dropped).
const CONFIRM_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

pub struct MemoryBroker {
    handler: Weak<dyn Deliver>,
    max_event_bytes: usize,
}

impl MemoryBroker {
    /// `handler` is weak so the Hub (which owns the broker) and the broker form no cycle.
    pub fn new(handler: Weak<dyn Deliver>, max_event_bytes: usize) -> Self {
        Self { handler, max_event_bytes }
    }

    fn deliver(&self, d: Delivery) {
        if let Some(h) = self.handler.upgrade() {
            h.deliver(d);
        }
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

    async fn publish(&self, channel: &ChannelKey, event_json: Bytes) -> Result<(), BrokerError> {
        match codec::decode(channel.topic, &event_json, self.max_event_bytes) {
            Ok(event) => {
                self.deliver(Delivery::Event { channel: channel.clone(), event });
                Ok(())
            }
            Err(error) => {
                self.deliver(Delivery::Malformed { channel: channel.name(), error: error.clone() });
                Err(error.into())
            }
        }
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
