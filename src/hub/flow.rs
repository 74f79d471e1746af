//! `Flow`: one channel's position on this node and the repair of its gaps (SPEC §7), as a
//! state machine with no I/O: the Hub feeds it live events, broker reconnects and history
//! pages, and delivers the `Step`s it returns, in order, under the channel's lock.
//!
//! May use: broker (`Event`, `Position`, `HistoryPage`).  Never: await, lock, or do I/O.
//! Invariants: within an epoch, the offsets delivered are strictly increasing and each one
//! is the last delivered plus one, unless a `Gap` step comes first; events without an
//! offset (published around the history) pass straight through.
//!
//! Rollback (a Redis replica promoted without the last writes, SPEC §7, §9): a repair reads
//! from the last delivered event itself; if history's head is behind it, or holds another
//! event at its offset, the store forgot events this node delivered and will number new ones
//! with the same offsets. The flow then drops that epoch (`stale`) and asks for a new one
//! (`Step::Rollback`); the new epoch's first event comes with a `Gap`, and clients resuming
//! from the old epoch are told `recovered: false`.

use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::broker::{Event, HistoryPage, Position};

/// Events held back per channel while a repair runs; past it the repair is given up (gap).
pub(super) const MAX_HELD: usize = 10_000;
/// Failed history reads before a repair is given up (gap).
pub(super) const MAX_ATTEMPTS: u32 = 3;

/// What the Hub must do, in order.
#[derive(Debug, Clone)]
pub(super) enum Step {
    Deliver(Arc<Event>),
    /// Tell every subscriber: events before this position may be missing.
    Gap(Position),
    /// The store rolled back under this position: start a new epoch there.
    Rollback(Position),
}

/// A history read the Hub must run: events after `after`, then `Flow::repaired(generation, …)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Repair {
    pub(super) generation: u64,
    pub(super) after: u64,
}

/// How a finished repair went (for the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Outcome {
    pub(super) repaired: u64,
    pub(super) unrepaired: u64,
}

#[derive(Debug, Default)]
pub(super) struct Flow {
    /// The last event delivered (or the head read when the channel was joined); `None` while
    /// history is off or not read yet.
    last: Option<Position>,
    /// The frame of the last event delivered (to recognise it in history).
    last_frame: Option<Utf8Bytes>,
    /// An epoch found rolled back: its events are dropped until a new epoch begins.
    stale: Option<Arc<str>>,
    /// `Some` while a repair runs: live events that arrived meanwhile, in arrival order.
    held: Option<Vec<Arc<Event>>>,
    /// Bumped for every repair started, so a stale read is ignored.
    generation: u64,
    attempts: u32,
}

fn position_of(e: &Event) -> Option<Position> {
    Some(Position { offset: e.offset?, epoch: e.epoch.clone()? })
}

impl Flow {
    pub(super) fn last(&self) -> Option<&Position> {
        self.last.as_ref()
    }

    #[cfg(test)]
    pub(super) fn repairing(&self) -> bool {
        self.held.is_some()
    }

    /// The channel's head as read when its first local subscriber joined.
    pub(super) fn start_at(&mut self, head: Position) {
        if self.last.is_none() {
            self.last = Some(head);
        }
    }

    fn start_repair(&mut self) -> Repair {
        self.generation += 1;
        self.attempts = 0;
        self.held.get_or_insert_with(Vec::new);
        Repair { generation: self.generation, after: self.read_after() }
    }

    /// Where a repair reads from: just before the last event delivered, so the read shows
    /// whether history still holds that very event (a rollback check).
    fn read_after(&self) -> u64 {
        let last = self.last.as_ref().map_or(0, |p| p.offset);
        if self.last_frame.is_some() {
            last.saturating_sub(1)
        } else {
            last
        }
    }

    /// Records `e` as the last event delivered.
    fn delivered(&mut self, e: &Event, pos: Position) {
        self.last = Some(pos);
        self.last_frame = Some(e.frame.clone());
    }

    /// The fast path: `e` has no offset or is exactly the next one and nothing is being
    /// repaired; then it is taken (the caller delivers it) and `true` is returned.
    pub(super) fn takes_next(&mut self, e: &Event) -> bool {
        if self.held.is_some() || self.stale.is_some() {
            return e.offset.is_none();
        }
        let (Some(offset), Some(last)) = (e.offset, self.last.as_mut()) else {
            return true;
        };
        if offset == last.offset + 1 && e.epoch.as_deref() == Some(&*last.epoch) {
            last.offset = offset;
            self.last_frame = Some(e.frame.clone());
            return true;
        }
        false
    }

    /// A live event from the broker.
    pub(super) fn on_event(&mut self, e: Arc<Event>, out: &mut Vec<Step>) -> Option<Repair> {
        let Some(pos) = position_of(&e) else {
            out.push(Step::Deliver(e));
            return None;
        };
        if self.stale.as_ref() == Some(&pos.epoch) {
            return None; // numbered again after a rollback: ambiguous, dropped (gap follows)
        }
        if let Some(held) = &mut self.held {
            if held.len() < MAX_HELD {
                held.push(e);
                return None;
            }
            held.push(e);
            self.give_up(out);
            return None;
        }
        let Some(last) = &self.last else {
            out.push(Step::Deliver(e));
            return None;
        };
        if last.epoch != pos.epoch {
            // History was lost or restarted: what came between cannot be known.
            out.push(Step::Gap(Position::new(pos.offset - 1, pos.epoch.clone())));
            self.stale = None;
            self.delivered(&e, pos);
            out.push(Step::Deliver(e));
            return None;
        }
        match pos.offset.cmp(&(last.offset + 1)) {
            std::cmp::Ordering::Less => None, // seen already (a repair read it first)
            std::cmp::Ordering::Equal => {
                self.delivered(&e, pos);
                out.push(Step::Deliver(e));
                None
            }
            std::cmp::Ordering::Greater => {
                self.held = Some(vec![e]);
                Some(self.start_repair())
            }
        }
    }

    /// The broker reconnected: whatever was published meanwhile must be read from history.
    pub(super) fn on_reconnect(&mut self) -> Option<Repair> {
        self.last.is_some().then(|| self.start_repair())
    }

    /// A repair's history read finished (`None`: it failed). Returns a further repair when
    /// held events still leave a hole that the read could not have seen yet.
    pub(super) fn repaired(
        &mut self,
        generation: u64,
        page: Option<HistoryPage>,
        out: &mut Vec<Step>,
        outcome: &mut Outcome,
    ) -> Option<Repair> {
        if generation != self.generation || self.held.is_none() {
            return None; // superseded
        }
        let Some(page) = page else {
            self.attempts += 1;
            if self.attempts >= MAX_ATTEMPTS {
                outcome.unrepaired += 1;
                self.give_up(out);
                return None;
            }
            return Some(Repair { generation, after: self.read_after() });
        };
        let held = self.held.take().unwrap_or_default();
        let Some(last) = self.last.clone() else {
            out.extend(held.into_iter().map(Step::Deliver));
            return None;
        };
        if page.head.epoch != last.epoch {
            // The epoch changed under us: nothing of the old one can be read any more.
            outcome.unrepaired += 1;
            if held.is_empty() {
                out.push(Step::Gap(page.head.clone()));
                self.last = Some(page.head);
            }
            for e in held {
                let _ = self.on_event(e, out);
            }
            return None;
        }
        if self.rolled_back(&page, &last) {
            outcome.unrepaired += 1;
            self.stale = Some(last.epoch.clone());
            out.push(Step::Rollback(last));
            for e in held {
                let _ = self.on_event(e, out); // a new epoch's events go on; the stale ones drop
            }
            return None;
        }
        let mut candidates: Vec<Arc<Event>> = page.events.into_iter().chain(held).collect();
        candidates
            .retain(|e| e.epoch.as_deref() == Some(&*last.epoch) && e.offset > Some(last.offset));
        candidates.sort_by_key(|e| e.offset);
        candidates.dedup_by_key(|e| e.offset);
        let mut next = last.offset + 1;
        let mut lost = false;
        let mut rest = candidates.into_iter();
        let mut waiting = Vec::new();
        let mut last_frame = None;
        for e in rest.by_ref() {
            let offset = e.offset.unwrap_or(next);
            if offset > next {
                if next > page.head.offset {
                    // `next` was published after the read: it may still arrive; read again.
                    waiting.push(e);
                    break;
                }
                // History no longer has `next..offset`: say so once, then go on.
                lost = true;
                out.push(Step::Gap(Position::new(offset - 1, last.epoch.clone())));
            }
            next = offset + 1;
            last_frame = Some(e.frame.clone());
            out.push(Step::Deliver(e));
        }
        waiting.extend(rest);
        self.last = Some(Position::new(next - 1, last.epoch.clone()));
        if last_frame.is_some() {
            self.last_frame = last_frame;
        }
        if lost {
            outcome.unrepaired += 1;
        }
        if waiting.is_empty() {
            if !lost {
                outcome.repaired += 1;
            }
            return None;
        }
        self.held = Some(waiting);
        self.generation += 1;
        self.attempts = 0;
        Some(Repair { generation: self.generation, after: next - 1 })
    }

    /// Whether `page` (same epoch) shows history forgot what this node delivered: its head
    /// is behind the last event delivered, or another event has that event's offset.
    fn rolled_back(&self, page: &HistoryPage, last: &Position) -> bool {
        if page.head.offset < last.offset {
            return true;
        }
        let Some(frame) = &self.last_frame else { return false };
        page.events.iter().any(|e| e.offset == Some(last.offset) && e.frame != *frame)
    }

    /// Stops repairing: the held events in order, each hole announced by a gap first.
    fn give_up(&mut self, out: &mut Vec<Step>) {
        self.generation += 1;
        let mut held = self.held.take().unwrap_or_default();
        held.sort_by_key(|e| e.offset);
        held.dedup_by_key(|e| e.offset);
        for e in held {
            let Some(pos) = position_of(&e) else { continue };
            let follows = self.last.as_ref().map(|l| (l.epoch == pos.epoch, l.offset));
            match follows {
                Some((true, last)) if pos.offset <= last => continue,
                Some((true, last)) if pos.offset == last + 1 => {}
                _ => out.push(Step::Gap(Position::new(pos.offset - 1, pos.epoch.clone()))),
            }
            self.delivered(&e, pos);
            out.push(Step::Deliver(e));
        }
    }
}

#[cfg(test)]
#[path = "flow_tests.rs"]
mod tests;
