//! Whether the Redis broker can serve (`/readyz`, the upgrade check), and if not, why, in
//! words safe for a public answer: which part is down and which slots wait, never an address
//! (the log line next to each change has that).
//!
//! May use: parking_lot.  Never: I/O.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

pub(super) struct Readiness {
    /// The event subscriptions: the one connection, or every shard a channel needs.
    events: AtomicBool,
    /// The control subscription (`mt:control`).
    control: AtomicBool,
    /// Why the event side is down.
    events_why: Mutex<String>,
}

impl Readiness {
    /// Not ready: nothing has connected yet.
    pub fn new(cluster: bool) -> Self {
        let why =
            if cluster { "not connected to the redis cluster" } else { "not connected to redis" };
        Self {
            events: AtomicBool::new(false),
            control: AtomicBool::new(false),
            events_why: Mutex::new(why.to_owned()),
        }
    }

    pub fn events_up(&self) {
        self.events.store(true, Ordering::SeqCst);
    }

    /// The event side is down for `why` (no address in it: it is shown on `/readyz`).
    pub fn events_down(&self, why: String) {
        *self.events_why.lock() = why;
        self.events.store(false, Ordering::SeqCst);
    }

    pub fn set_control(&self, up: bool) {
        self.control.store(up, Ordering::SeqCst);
    }

    pub fn control(&self) -> bool {
        self.control.load(Ordering::SeqCst)
    }

    pub fn is_ready(&self) -> bool {
        self.events.load(Ordering::SeqCst) && self.control()
    }

    /// `None` when ready, else every reason, joined.
    pub fn reason(&self) -> Option<String> {
        let mut why = Vec::new();
        if !self.events.load(Ordering::SeqCst) {
            why.push(self.events_why.lock().clone());
        }
        if !self.control() {
            why.push("the control channel (revocations) is not subscribed".to_owned());
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_with_both_sides_up_and_says_what_is_down() {
        let r = Readiness::new(true);
        assert_eq!(
            r.reason().as_deref(),
            Some(
                "not connected to the redis cluster; the control channel (revocations) is not \
                 subscribed"
            )
        );
        r.events_up();
        assert!(!r.is_ready());
        r.set_control(true);
        assert!(r.is_ready());
        assert_eq!(r.reason(), None);
        r.events_down("cannot reach the shard serving slots 0-5460".into());
        assert!(!r.is_ready());
        assert_eq!(r.reason().as_deref(), Some("cannot reach the shard serving slots 0-5460"));
    }
}
