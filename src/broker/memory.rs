//! The in-process broker of embedded mode: `publish` decodes the event and hands it to the
//! node's `Deliver` synchronously, in the caller's order.
//!
//! Owns: nothing but the handler link.  May use: broker, codec.  Never: spawn, await I/O.

use std::{sync::Weak, time::Instant};

use bytes::Bytes;

use super::{codec, Broker, BrokerError, ChannelKey, ControlMessage, Deliver, Delivery};

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
        match codec::decode(channel.topic, &event_json, self.max_event_bytes, Instant::now()) {
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

    async fn ping(&self) -> Result<(), BrokerError> {
        Ok(())
    }
}
