//! The broker seam: how events and control messages reach every node.
//!
//! `Broker` is the async, control-plane side (subscribe, publish, ping); `Deliver` is the
//! synchronous handler the Hub implements, called once per incoming event in channel order.
//! Only `node.rs` and `cli.rs` name a concrete broker.
//!
//! Owns: the traits, `Delivery`, `ControlMessage`, `BrokerError`.  May use: broker::codec, ids,
//! scope, token (hashes in control messages).
//! Never: know about sessions or sockets. Invariants: `Deliver::deliver` never awaits.

pub mod coalesce;
pub mod codec;
pub mod memory;
pub mod position;
pub mod redis;
mod ring;

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{ids::KeyId, token::TokenHash};
pub use codec::{ChannelKey, DecodeError, Event};
pub use position::{HistoryPage, Position};

/// A message between nodes about keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    /// Close every stream of this key with 4003 and forget any cached copy of it.
    Revoke { key_id: KeyId },
    /// A rotation: streams opened with this secret close with 4003 at `at` (now if past).
    Retire {
        key_id: KeyId,
        secret: TokenHash,
        #[serde(with = "time::serde::rfc3339")]
        at: time::OffsetDateTime,
    },
    /// The key's scopes, allowlist or expiry changed: forget any cached copy, read the record
    /// again and apply it to the key's open streams (SPEC §8).
    Update { key_id: KeyId },
}

/// Tells a confirmed publish that one node finished handling its message, when dropped.
/// A handler that keeps it through asynchronous work (re-reading a key and applying it to
/// the key's streams) delays the confirmation until that work is done.
pub struct Done(Option<Box<dyn FnOnce() + Send>>);

impl Done {
    pub fn new(f: impl FnOnce() + Send + 'static) -> Self {
        Done(Some(Box::new(f)))
    }

    /// Nobody waits.
    pub fn none() -> Self {
        Done(None)
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

impl std::fmt::Debug for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Done(waited for)" } else { "Done(none)" })
    }
}

/// What a broker hands to the node.
#[derive(Debug)]
pub enum Delivery {
    Event {
        channel: ChannelKey,
        event: Arc<Event>,
    },
    /// A producer message that failed validation; it reaches no client.
    Malformed {
        channel: String,
        error: DecodeError,
    },
    Control(ControlMessage),
    /// A control message whose publisher waits until `Done` is dropped.
    Confirm(ControlMessage, Done),
    /// The broker lost its connection: anything published meanwhile was lost.
    Gap,
    /// The control connection reconnected: control messages may have been missed (no event
    /// was lost by it).
    ControlGap,
    /// The control connection is lost: until the next `ControlGap`, control messages are
    /// not received (a node must not trust what it cached).
    ControlLost,
    /// The node read events slower than they arrived and dropped its subscription to stay
    /// within its memory bound (a `Gap` follows once it is back).
    Overflow,
}

/// The node's handler for deliveries. Called in order per channel, never awaits.
pub trait Deliver: Send + Sync + 'static {
    fn deliver(&self, delivery: Delivery);
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// Not ready (`ping`), for a reason worded for a public answer (`/readyz`): no address.
    #[error("broker not ready: {0}")]
    NotReady(String),
    #[error("invalid event: {0}")]
    InvalidEvent(#[from] DecodeError),
}

/// Publish/subscribe transport between producers and nodes.
#[async_trait::async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Starts receiving `channel` on this node (idempotent).
    async fn subscribe(&self, channel: &ChannelKey) -> Result<(), BrokerError>;
    /// Stops receiving `channel` on this node (idempotent).
    async fn unsubscribe(&self, channel: &ChannelKey) -> Result<(), BrokerError>;
    /// Publishes one producer message (SPEC §5 JSON) to every node; with history on, appends
    /// it to the channel's history in the same atomic step and returns its position.
    async fn publish(
        &self,
        channel: &ChannelKey,
        event_json: Bytes,
    ) -> Result<Option<Position>, BrokerError>;
    /// The channel's position now (starting its epoch if it has none); `None` with history off.
    async fn head(&self, channel: &ChannelKey) -> Result<Option<Position>, BrokerError>;
    /// Up to `limit` events of the channel's history with offsets above `after` (the newest
    /// `limit` without it), oldest first; `None` with history off.
    async fn history(
        &self,
        channel: &ChannelKey,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Option<HistoryPage>, BrokerError>;
    /// Starts a new epoch for `channel` if its epoch is still `stale`: its history was found
    /// to have forgotten events already delivered (a rollback). Nothing to do by default.
    async fn new_epoch(&self, _channel: &ChannelKey, _stale: &str) -> Result<(), BrokerError> {
        Ok(())
    }
    /// Publishes a control message to every node, this one included.
    async fn publish_control(&self, msg: &ControlMessage) -> Result<(), BrokerError>;
    /// Like `publish_control`, and returns once every node that received the message has
    /// handled it (dropped its `Done`), or once a node that did not must have noticed that
    /// its control subscription is lost (see the Redis broker).
    async fn publish_control_confirmed(&self, msg: &ControlMessage) -> Result<(), BrokerError>;
    /// The longest `publish_control_confirmed` may wait for confirmations (beyond sending).
    fn confirm_within(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
    /// Answers when the broker is usable (`/readyz`).
    async fn ping(&self) -> Result<(), BrokerError>;
    /// Whether the broker is connected right now (cheap; checked on every upgrade).
    fn ready(&self) -> bool {
        true
    }
}
