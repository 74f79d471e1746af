//! The Hub's `Deliver`: fan-out of one event to the matching Outboxes (4009 on a full one),
//! malformed producer messages (counted, logged once a minute per channel), control messages
//! and the loss and return of the control subscription (handed to the node's control
//! handler) and broker gaps.
//!
//! May use: outbox, metrics.  Never: await or do I/O.

use std::time::Duration;

use super::{ControlSignal, Hub};
use crate::{
    broker::{Deliver, Delivery, Done},
    outbox::Push,
    protocol::close::CloseCode,
};

/// How often a channel's malformed producer messages may be logged.
const MALFORMED_LOG_EVERY: Duration = Duration::from_secs(60);

impl Hub {
    fn log_malformed(&self, channel: &str, error: &crate::broker::DecodeError) {
        let now = std::time::Instant::now();
        if self
            .malformed_logged
            .get(channel)
            .is_some_and(|t| now.duration_since(*t) < MALFORMED_LOG_EVERY)
        {
            return;
        }
        if self.malformed_logged.len() > 10_000 {
            self.malformed_logged.retain(|_, t| now.duration_since(*t) < MALFORMED_LOG_EVERY);
        }
        self.malformed_logged.insert(channel.to_owned(), now);
        tracing::warn!(channel = %channel, error = %error, "dropped a malformed producer message (logged once a minute per channel)");
    }
}

impl Hub {
    fn signal(&self, signal: ControlSignal) {
        let up = match signal {
            ControlSignal::Message(..) => None,
            ControlSignal::Lost => Some(false),
            ControlSignal::Regained => Some(true),
        };
        if let Some(up) = up {
            let mut link = self.link.lock();
            *link = Some(up);
            if let Some(handle) = self.control.get() {
                handle(signal);
            }
            return;
        }
        match self.control.get() {
            Some(handle) => handle(signal),
            None => tracing::warn!("a control signal arrived before the node was wired"),
        }
    }
}

impl Deliver for Hub {
    fn deliver(&self, delivery: Delivery) {
        match delivery {
            Delivery::Event { channel, event } => {
                self.metrics.events_received.inc();
                let Some(ch) = self.channels.get(&channel).map(|c| c.clone()) else { return };
                let (mut delivered, mut slow) = (0u64, 0u64);
                let subs = ch.subs.lock();
                for s in subs.list.iter() {
                    if s.filter.as_ref().is_some_and(|f| !f.matches(&event.name)) {
                        continue;
                    }
                    match s.outbox.push(event.frame.clone()) {
                        Push::Queued => delivered += 1,
                        Push::Full => {
                            if s.outbox.close(CloseCode::SlowConsumer) {
                                slow += 1;
                            }
                        }
                        Push::Closed => {}
                    }
                }
                drop(subs);
                self.metrics.deliveries.inc_by(delivered);
                if slow > 0 {
                    self.metrics.slow_consumer_closes.inc_by(slow);
                }
            }
            Delivery::Malformed { channel, error } => {
                self.metrics.events_malformed.inc();
                self.log_malformed(&channel, &error);
            }
            Delivery::Control(msg) => self.signal(ControlSignal::Message(msg, Done::none())),
            Delivery::Confirm(msg, done) => self.signal(ControlSignal::Message(msg, done)),
            Delivery::ControlLost => self.signal(ControlSignal::Lost),
            Delivery::ControlGap => {
                self.signal(ControlSignal::Regained);
                self.gap.notify_one();
            }
            Delivery::Overflow => {
                self.metrics.broker_overflows.inc();
            }
            Delivery::Gap => {
                self.metrics.broker_gaps.inc();
                self.gap.notify_one();
            }
        }
    }
}
