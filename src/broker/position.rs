//! Positions in a channel's history (SPEC §7): an epoch naming one incarnation of the
//! channel's history and the offset of its last event, and a page of history as brokers
//! return it.
//!
//! May use: broker::codec (`Event`), serde.  Never: I/O.

use std::sync::Arc;

use serde::Serialize;

use super::codec::Event;

/// Where a channel stands: the offset of its last event (0 before the first) in an epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Position {
    pub offset: u64,
    pub epoch: Arc<str>,
}

impl Position {
    pub fn new(offset: u64, epoch: impl Into<Arc<str>>) -> Self {
        Self { offset, epoch: epoch.into() }
    }
}

/// Events of one channel's history, oldest first, with where the channel and its history
/// stand at the time of the read.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// Events with offsets above the requested one, oldest first, at most the limit.
    pub events: Vec<Arc<Event>>,
    /// The channel's position when it was read.
    pub head: Position,
    /// The lowest offset still in history (`head.offset + 1` when history is empty).
    pub first: u64,
}

impl HistoryPage {
    /// Whether every event after `after` (in this epoch) is still in history.
    pub fn covers(&self, after: u64) -> bool {
        after.saturating_add(1) >= self.first && after <= self.head.offset
    }

    /// Whether events newer than the last one returned exist.
    pub fn has_more(&self) -> bool {
        self.events.last().and_then(|e| e.offset).is_some_and(|o| o < self.head.offset)
    }
}
