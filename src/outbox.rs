//! `Outbox`: one connection's bounded queue of text frames, filled by the Hub (events) and
//! the session (replies), drained by that connection's writer.
//!
//! Owns: the queue, its wake-up and the connection's close request.
//! May use: parking_lot, futures' `AtomicWaker`, protocol::close.  Never: await, I/O.
//! Invariants: `push` and `close` never block on the socket; an idle outbox holds no heap
//! memory; the first close reason wins.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, Ordering},
        OnceLock,
    },
    task::Waker,
    time::Instant,
};

use futures::task::AtomicWaker;
use parking_lot::Mutex;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::protocol::close::CloseCode;

/// Slots a drained queue may keep; a larger buffer left by a burst is released.
const RETAINED_SLOTS: usize = 16;

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The queue was at capacity; the frame was dropped and the caller decides (4009).
    Full,
    /// The connection is closing; the frame was dropped.
    Closed,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Utf8Bytes>,
    /// When the oldest queued event frame was received from the broker.
    oldest_event: Option<Instant>,
    /// While a session catches up (resume), live event frames wait here, after the replies
    /// and missed events it queues meanwhile (boxed: an idle connection pays one pointer).
    held: Option<Box<Held>>,
}

#[derive(Debug, Default)]
struct Held {
    frames: VecDeque<Utf8Bytes>,
    oldest_event: Option<Instant>,
}

#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<Queue>,
    /// At most `u32::MAX` frames (u32 so the retired flag fits beside it).
    capacity: u32,
    waker: AtomicWaker,
    close: OnceLock<CloseCode>,
    /// Its session ended: it takes no more frames, and the Hub drops it from its channels
    /// lazily (see `Hub::leave`).
    retired: AtomicBool,
    /// The session has something to look at besides frames (its key changed, see `nudge`).
    nudged: AtomicBool,
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX).max(1),
            waker: AtomicWaker::new(),
            close: OnceLock::new(),
            retired: AtomicBool::new(false),
            nudged: AtomicBool::new(false),
        }
    }

    /// Queues a reply frame without waiting. Wakes the writer when the queue was empty.
    pub fn push(&self, frame: Utf8Bytes) -> Push {
        self.push_at(frame, None, false)
    }

    /// Queues a live event frame the broker handed this node at `received` (behind the
    /// catch-up while the outbox is held).
    pub fn push_event(&self, frame: Utf8Bytes, received: Instant) -> Push {
        self.push_at(frame, Some(received), true)
    }

    /// Queues an event frame read from history for a resume: ahead of held live events.
    pub fn push_missed(&self, frame: Utf8Bytes, received: Instant) -> Push {
        self.push_at(frame, Some(received), false)
    }

    /// From now until `release`, live event frames wait behind what the session queues.
    pub fn hold(&self) {
        self.queue.lock().held.get_or_insert_with(Box::default);
    }

    /// Queues the held live events after everything queued so far, and stops holding.
    pub fn release(&self) {
        let mut q = self.queue.lock();
        let Some(held) = q.held.take() else { return };
        let was_empty = q.frames.is_empty();
        q.frames.extend(held.frames);
        q.oldest_event = q.oldest_event.or(held.oldest_event);
        let wake = was_empty && !q.frames.is_empty();
        drop(q);
        if wake {
            self.waker.wake();
        }
    }

    fn push_at(&self, frame: Utf8Bytes, received: Option<Instant>, live: bool) -> Push {
        if self.close.get().is_some() {
            return Push::Closed;
        }
        let mut q = self.queue.lock();
        // Checked under the lock `retire` takes, so no frame lands after the queue is freed.
        if self.is_retired() {
            return Push::Closed;
        }
        let held_len = q.held.as_ref().map_or(0, |h| h.frames.len());
        if q.frames.len() + held_len >= self.capacity as usize {
            return Push::Full;
        }
        if let (true, Some(held)) = (live && received.is_some(), q.held.as_mut()) {
            held.frames.push_back(frame);
            held.oldest_event = held.oldest_event.or(received);
            return Push::Queued;
        }
        q.frames.push_back(frame);
        if q.oldest_event.is_none() {
            q.oldest_event = received;
        }
        let was_empty = q.frames.len() == 1;
        drop(q);
        if was_empty {
            self.waker.wake();
        }
        Push::Queued
    }

    /// Asks the writer to close the connection with `code`. Returns `false` if a close
    /// was already requested (the earlier reason stands).
    pub fn close(&self, code: CloseCode) -> bool {
        let first = self.close.set(code).is_ok();
        self.waker.wake();
        first
    }

    /// Asks the session to look at its grant again (a key update); wakes the writer.
    pub fn nudge(&self) {
        self.nudged.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Whether the session was nudged since the last call (clears the flag).
    pub fn take_nudge(&self) -> bool {
        self.nudged.swap(false, Ordering::AcqRel)
    }

    /// Marks the session as ended and frees the queue; every later push is `Closed`.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        *self.queue.lock() = Queue::default();
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// The requested close, if any.
    pub fn close_requested(&self) -> Option<CloseCode> {
        self.close.get().copied()
    }

    /// Registers the writer's waker; call before `take_into` so no push is missed.
    pub fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// Moves every queued frame to the back of `out` (swapping buffers when `out` is empty,
    /// so steady traffic allocates nothing). Returns how many frames moved and when the
    /// oldest event among them was received.
    pub fn take_into(&self, out: &mut VecDeque<Utf8Bytes>) -> (usize, Option<Instant>) {
        let mut q = self.queue.lock();
        let n = q.frames.len();
        if n == 0 {
            return (0, None);
        }
        if out.is_empty() {
            std::mem::swap(&mut q.frames, out);
        } else {
            out.extend(q.frames.drain(..));
        }
        (n, q.oldest_event.take())
    }

    /// Gives back the queue's memory if a burst left it large and it is empty now (called
    /// when the connection is quiet, not per batch, so steady traffic reuses its buffers).
    pub fn trim(&self) {
        let mut q = self.queue.lock();
        if q.frames.is_empty() && q.frames.capacity() > RETAINED_SLOTS {
            q.frames = VecDeque::new();
        }
    }

    /// Frames queued right now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.queue.lock().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Releases a drained local buffer's memory when a burst left it large.
pub fn trim(buf: &mut VecDeque<Utf8Bytes>) {
    if buf.is_empty() && buf.capacity() > RETAINED_SLOTS {
        *buf = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        sync::{
            atomic::{AtomicUsize, Ordering},
            Arc,
        },
        task::Wake,
    };

    struct CountingWaker(AtomicUsize);
    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn push_is_bounded_and_full_does_not_close() {
        let o = Outbox::new(2);
        assert_eq!(o.push("a".into()), Push::Queued);
        assert_eq!(o.push("b".into()), Push::Queued);
        assert_eq!(o.push("c".into()), Push::Full);
        assert_eq!(o.close_requested(), None);
        let mut out = VecDeque::new();
        assert_eq!(o.take_into(&mut out).0, 2);
        assert_eq!(out.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(o.push("d".into()), Push::Queued);
    }

    #[test]
    fn first_close_reason_wins_and_stops_pushes() {
        let o = Outbox::new(4);
        assert!(o.close(CloseCode::SlowConsumer));
        assert!(!o.close(CloseCode::GoingAway));
        assert_eq!(o.close_requested(), Some(CloseCode::SlowConsumer));
        assert_eq!(o.push("x".into()), Push::Closed);
    }

    #[test]
    fn writer_is_woken_on_first_push_and_on_close() {
        let o = Outbox::new(8);
        let w = Arc::new(CountingWaker(AtomicUsize::new(0)));
        o.register(&Waker::from(w.clone()));
        o.push("a".into());
        assert_eq!(w.0.load(Ordering::SeqCst), 1);
        o.register(&Waker::from(w.clone()));
        o.push("b".into()); // queue not empty: the writer is already due to run
        assert_eq!(w.0.load(Ordering::SeqCst), 1);
        o.close(CloseCode::Normal);
        assert_eq!(w.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_nudge_wakes_the_writer_once_and_is_taken_once() {
        let o = Outbox::new(8);
        let w = Arc::new(CountingWaker(AtomicUsize::new(0)));
        o.register(&Waker::from(w.clone()));
        assert!(!o.take_nudge());
        o.nudge();
        assert_eq!(w.0.load(Ordering::SeqCst), 1);
        assert!(o.take_nudge());
        assert!(!o.take_nudge());
    }

    #[test]
    fn take_appends_in_order_when_the_target_is_not_empty() {
        let o = Outbox::new(8);
        let mut out: VecDeque<Utf8Bytes> = VecDeque::from(vec![Utf8Bytes::from("0")]);
        o.push("1".into());
        o.push("2".into());
        o.take_into(&mut out);
        assert_eq!(out.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["0", "1", "2"]);
        assert!(o.is_empty());
    }

    #[test]
    fn take_reports_when_the_oldest_queued_event_arrived() {
        let o = Outbox::new(8);
        let (t1, t2) = (Instant::now(), Instant::now() + std::time::Duration::from_millis(5));
        o.push("reply".into());
        o.push_event("e1".into(), t1);
        o.push_event("e2".into(), t2);
        let mut out = VecDeque::new();
        assert_eq!(o.take_into(&mut out), (3, Some(t1)));
        o.push("reply".into());
        assert_eq!(o.take_into(&mut out), (1, None));
        o.push_event("e3".into(), t2);
        assert_eq!(o.take_into(&mut out), (1, Some(t2)));
    }

    #[test]
    fn while_held_live_events_wait_behind_replies_and_missed_events() {
        let o = Outbox::new(4);
        let t = Instant::now();
        o.hold();
        assert_eq!(o.push_event("live1".into(), t), Push::Queued);
        assert_eq!(o.push("reply".into()), Push::Queued);
        assert_eq!(o.push_missed("missed".into(), t), Push::Queued);
        assert_eq!(o.push_event("live2".into(), t), Push::Queued);
        assert_eq!(o.push_event("over".into(), t), Push::Full, "held frames count too");
        o.release();
        let mut out = VecDeque::new();
        o.take_into(&mut out);
        let got: Vec<&str> = out.iter().map(|f| f.as_str()).collect();
        assert_eq!(got, ["reply", "missed", "live1", "live2"]);
        assert_eq!(o.push_event("live3".into(), t), Push::Queued);
        assert_eq!(o.len(), 1, "released: live events are queued directly again");
    }
}
