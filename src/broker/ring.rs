//! In-memory history for embedded mode (SPEC §7): per channel, the last `size` events younger
//! than `ttl`, numbered as they are published. Memory is bounded by those two settings per
//! channel, and a channel idle past `ttl` is forgotten (its next event starts a new epoch).
//!
//! May use: broker::codec, broker::position, ids, dashmap, parking_lot.  Never: await or do I/O.
//! Invariants: offsets of one epoch are 1, 2, 3, … with no hole; an event is numbered and
//! handed to `then` under its channel's lock, so delivery order is offset order.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use dashmap::DashMap;
use parking_lot::Mutex;

use super::{
    codec::{self, ChannelKey, DecodeError, Event},
    position::{HistoryPage, Position},
};

struct Ring {
    epoch: Arc<str>,
    last: u64,
    events: VecDeque<Arc<Event>>,
    touched: Instant,
}

pub(super) struct Rings {
    size: usize,
    ttl: Duration,
    /// Names this process's epochs: a restart never reuses one.
    process: String,
    epochs: AtomicU64,
    channels: DashMap<ChannelKey, Arc<Mutex<Ring>>>,
}

impl Rings {
    pub(super) fn new(size: usize, ttl: Duration) -> Self {
        Self {
            size,
            ttl,
            process: crate::ids::random_base62(10),
            epochs: AtomicU64::new(0),
            channels: DashMap::new(),
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.size > 0
    }

    fn ring(&self, channel: &ChannelKey) -> Arc<Mutex<Ring>> {
        if let Some(r) = self.channels.get(channel) {
            return r.clone();
        }
        self.channels
            .entry(channel.clone())
            .or_insert_with(|| {
                let n = self.epochs.fetch_add(1, Ordering::Relaxed);
                Arc::new(Mutex::new(Ring {
                    epoch: Arc::from(format!("{}{n}", self.process)),
                    last: 0,
                    events: VecDeque::new(),
                    touched: Instant::now(),
                }))
            })
            .clone()
    }

    /// Numbers, decodes and keeps one event, then hands it to `then` under the channel's
    /// lock (so concurrent publishers deliver in offset order).
    pub(super) fn append(
        &self,
        channel: &ChannelKey,
        payload: &[u8],
        max_bytes: usize,
        then: impl FnOnce(&Arc<Event>),
    ) -> Result<Position, DecodeError> {
        let ring = self.ring(channel);
        let mut r = ring.lock();
        let now = Instant::now();
        self.expire(&mut r, now);
        let offset = r.last + 1;
        let event = codec::decode_at(
            channel.topic,
            payload,
            max_bytes,
            now,
            Some((offset, r.epoch.clone())),
        )?;
        r.last = offset;
        r.touched = now;
        r.events.push_back(event.clone());
        while r.events.len() > self.size {
            r.events.pop_front();
        }
        then(&event);
        Ok(Position::new(offset, r.epoch.clone()))
    }

    /// Drops events older than the TTL from the front.
    fn expire(&self, r: &mut Ring, now: Instant) {
        while r.events.front().is_some_and(|e| now.duration_since(e.received) > self.ttl) {
            r.events.pop_front();
        }
    }

    pub(super) fn head(&self, channel: &ChannelKey) -> Position {
        let ring = self.ring(channel);
        let r = ring.lock();
        Position::new(r.last, r.epoch.clone())
    }

    pub(super) fn read(
        &self,
        channel: &ChannelKey,
        after: Option<u64>,
        limit: usize,
    ) -> HistoryPage {
        let ring = self.ring(channel);
        let mut r = ring.lock();
        self.expire(&mut r, Instant::now());
        let first = r.events.front().and_then(|e| e.offset).unwrap_or(r.last + 1);
        let events: Vec<Arc<Event>> = match after {
            Some(after) => {
                // Offsets in the ring are consecutive: index = offset - first.
                let skip = usize::try_from(after.saturating_add(1).saturating_sub(first))
                    .unwrap_or(usize::MAX);
                r.events.iter().skip(skip).take(limit).cloned().collect()
            }
            None => {
                let skip = r.events.len().saturating_sub(limit);
                r.events.iter().skip(skip).cloned().collect()
            }
        };
        HistoryPage { events, head: Position::new(r.last, r.epoch.clone()), first }
    }

    /// Forgets channels idle past the TTL and drops expired events of the others.
    pub(super) fn sweep(&self) {
        let now = Instant::now();
        self.channels.retain(|_, ring| {
            let mut r = ring.lock();
            self.expire(&mut r, now);
            now.duration_since(r.touched) <= self.ttl
        });
    }

    /// Channels with history kept (for tests and metrics).
    pub(super) fn len(&self) -> usize {
        self.channels.len()
    }
}
