//! A channel's subscribers and the broker subscription behind them: joining (subscribing the
//! broker for the first local subscriber, under the channel's lock), filters, leaving, and
//! the delayed dissolve that unsubscribes the broker once nobody is left.
//!
//! May use: broker (trait), outbox, protocol::filter.  Never: hold a map guard across `.await`.

use std::sync::Arc;

use parking_lot::Mutex;

use super::{flow::Flow, Hub, UNSUBSCRIBE_DELAY};
use crate::{
    broker::{BrokerError, ChannelKey, Position},
    outbox::Outbox,
    protocol::filter::EventFilter,
};

/// One subscriber of one channel; the Outbox (compared by pointer) is its identity.
pub(super) struct Sub {
    pub(super) outbox: Arc<Outbox>,
    pub(super) filter: Option<Arc<EventFilter>>,
}

/// A channel's subscribers. Joining is a push and leaving at session end is a count: the
/// entries of ended (retired) sessions are swept out once they are half the list, so N
/// sessions joining and leaving cost O(N), not O(N²).
#[derive(Default)]
pub(super) struct Subs {
    pub(super) list: Vec<Sub>,
    /// Leaves counted since the last sweep (may overcount: only decides when to sweep).
    retired: usize,
    /// The channel's position on this node and its gap repair, under the same lock as the
    /// list so a joiner's position and the events it gets agree.
    pub(super) flow: Flow,
    /// Resumed sessions that saw more of the channel than this node has delivered yet (they
    /// came from a node ahead of this one): events up to their position are not sent to them
    /// again. Rare and short-lived (dropped once delivery passes them), so kept beside the
    /// list rather than in every `Sub`.
    pub(super) ahead: Vec<(Arc<Outbox>, Position)>,
}

impl Subs {
    /// Whether the session owning `outbox` has this event already (see `ahead`).
    pub(super) fn has_seen(
        &self,
        outbox: &Arc<Outbox>,
        offset: Option<u64>,
        epoch: Option<&str>,
    ) -> bool {
        let Some(o) = offset else { return false };
        self.ahead.iter().any(|(a, seen)| {
            Arc::ptr_eq(a, outbox) && o <= seen.offset && epoch == Some(&*seen.epoch)
        })
    }

    /// Forgets the `ahead` entries delivery has now caught up with.
    pub(super) fn prune_ahead(&mut self) {
        if self.ahead.is_empty() {
            return;
        }
        let last = self.flow.last().cloned();
        self.ahead.retain(|(o, seen)| {
            !o.is_retired()
                && last.as_ref().is_some_and(|l| l.epoch == seen.epoch && l.offset < seen.offset)
        });
    }
}

impl Subs {
    /// Drops the entries of retired sessions; returns whether the list is now empty.
    pub(super) fn sweep(&mut self) -> bool {
        self.list.retain(|s| !s.outbox.is_retired());
        self.retired = 0;
        self.list.is_empty()
    }
}

#[derive(Default)]
pub(super) struct Channel {
    pub(super) subs: Mutex<Subs>,
    /// Whether the broker is subscribed; also serialises broker calls for this channel.
    at_broker: tokio::sync::Mutex<bool>,
}

impl Hub {
    /// Adds the session owning `outbox` to `key`, subscribing the broker (and reading the
    /// channel's head) first if this node had no subscriber yet. Returns the channel's
    /// position at the moment the session joined: every event it gets later has a higher
    /// offset (`None` with history off). On a broker error nothing changes. The caller makes
    /// sure the session is not on `key` already (see `set_filter`).
    ///
    /// `seen`: the position a resuming session saw last, if the channel's head (read by the
    /// caller) shows it is real; when this node is behind it, the session is not sent those
    /// events again and its position is `seen`.
    pub async fn subscribe(
        &self,
        key: &ChannelKey,
        outbox: &Arc<Outbox>,
        filter: Option<Arc<EventFilter>>,
        seen: Option<Position>,
    ) -> Result<Option<Position>, BrokerError> {
        loop {
            let ch = self.channels.entry(key.clone()).or_default().clone();
            // The broker state and the subscriber list change together under the channel's
            // lock, so `dissolve` (which holds it too) sees either both or neither.
            let mut at_broker = ch.at_broker.lock().await;
            if !*at_broker {
                if let Err(e) = self.broker.subscribe(key).await {
                    drop(at_broker);
                    self.schedule_dissolve(key.clone()); // drop the empty channel we made
                    return Err(e);
                }
                *at_broker = true;
            }
            if ch.subs.lock().flow.last().is_none() {
                // After SUBSCRIBE: whatever is published from here on arrives live, and any
                // event that arrives at or below the head is dropped as already past.
                match self.broker.head(key).await {
                    Ok(Some(head)) => ch.subs.lock().flow.start_at(head),
                    Ok(None) => {}
                    Err(e) => {
                        drop(at_broker);
                        self.schedule_dissolve(key.clone());
                        return Err(e);
                    }
                }
            }
            // Add under the map guard too, so the channel cannot be removed in between.
            if let Some(current) = self.channels.get(key) {
                if Arc::ptr_eq(&current, &ch) {
                    let mut subs = current.subs.lock();
                    let last = subs.flow.last().cloned();
                    let ahead = match (&seen, &last) {
                        (Some(s), Some(l)) if s.epoch == l.epoch && s.offset > l.offset => seen,
                        _ => None,
                    };
                    let position = ahead.clone().or(last);
                    if let Some(seen) = ahead {
                        subs.ahead.push((outbox.clone(), seen));
                    }
                    subs.list.push(Sub { outbox: outbox.clone(), filter });
                    return Ok(position);
                }
            }
            // The channel was dissolved while we waited for its lock: start again.
        }
    }

    /// The last position this node reached on `key` (delivered, or the head read when its
    /// first local subscriber joined), if it has the channel: a position the channel really
    /// reached, never one ahead of it. Reading it needs no broker call.
    pub fn position(&self, key: &ChannelKey) -> Option<Position> {
        let ch = self.channels.get(key).map(|c| c.clone())?;
        let last = ch.subs.lock().flow.last().cloned();
        last
    }

    /// Replaces the event filter of the session owning `outbox` on `key` (a client
    /// subscribing again to a channel it is on). Returns `None` if it was not on `key`, else
    /// the channel's position now.
    pub fn set_filter(
        &self,
        key: &ChannelKey,
        outbox: &Arc<Outbox>,
        filter: Option<Arc<EventFilter>>,
    ) -> Option<Option<Position>> {
        let ch = self.channels.get(key).map(|c| c.clone())?;
        let mut subs = ch.subs.lock();
        let s = subs.list.iter_mut().find(|s| Arc::ptr_eq(&s.outbox, outbox))?;
        s.filter = filter;
        Some(subs.flow.last().cloned())
    }

    /// Removes the session owning `outbox` from `key` (a client's `unsubscribe`); the last
    /// one leaving schedules the dissolve.
    pub fn unsubscribe(&self, key: &ChannelKey, outbox: &Arc<Outbox>) {
        self.change_subs(key, |subs| {
            let before = subs.list.len();
            subs.list.retain(|s| !Arc::ptr_eq(&s.outbox, outbox));
            before != subs.list.len() && subs.sweep()
        });
    }

    /// A session ended: retires its `outbox` (no more frames) and counts it out of `keys`,
    /// sweeping a channel's list once half of it is retired; a channel left with no live
    /// subscriber schedules its dissolve.
    pub fn leave(&self, keys: impl IntoIterator<Item = ChannelKey>, outbox: &Outbox) {
        outbox.retire();
        for key in keys {
            self.change_subs(&key, |subs| {
                subs.retired += 1;
                subs.retired * 2 >= subs.list.len() && subs.sweep()
            });
        }
    }

    /// Applies `change` to `key`'s subscriber list under its lock; when `change` reports the
    /// list empty, schedules the channel's dissolve.
    fn change_subs(&self, key: &ChannelKey, change: impl FnOnce(&mut Subs) -> bool) {
        let Some(ch) = self.channels.get(key).map(|c| c.clone()) else { return };
        let now_empty = change(&mut ch.subs.lock());
        if now_empty {
            self.schedule_dissolve(key.clone());
        }
    }

    fn schedule_dissolve(&self, key: ChannelKey) {
        let me = self.me.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        rt.spawn(async move {
            tokio::time::sleep(UNSUBSCRIBE_DELAY).await;
            if let Some(hub) = me.upgrade() {
                hub.dissolve(&key).await;
            }
        });
    }

    /// Drops a channel that is still empty and unsubscribes the broker.
    async fn dissolve(&self, key: &ChannelKey) {
        let Some(ch) = self.channels.get(key).map(|c| c.clone()) else { return };
        // Under the channel's lock: no subscriber can join or subscribe the broker meanwhile.
        let mut at_broker = ch.at_broker.lock().await;
        if !ch.subs.lock().sweep() {
            return;
        }
        if *at_broker {
            // Unsubscribe while the channel is still in the map, so a newcomer waits for this
            // lock instead of racing a SUBSCRIBE against this UNSUBSCRIBE.
            if let Err(e) = self.broker.unsubscribe(key).await {
                tracing::warn!(channel = %key, error = %e, "broker unsubscribe failed");
            }
            *at_broker = false;
        }
        self.channels.remove_if(key, |_, c| Arc::ptr_eq(c, &ch) && c.subs.lock().list.is_empty());
    }

    /// Channels with at least one local subscriber or not yet dissolved (for tests).
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }
}
