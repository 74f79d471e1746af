//! The Hub's `Deliver`: fan-out of one event to the matching Outboxes (4009 on a full one)
//! through the channel's `Flow` (in offset order; holes repaired from history, `gap` frames),
//! malformed producer messages (counted, logged once a minute per channel), control messages
//! and the loss and return of the control subscription (handed to the node's control
//! handler) and broker gaps.
//!
//! May use: broker (`Delivery`, `Event`), outbox, protocol (close, gap frames), metrics, the
//! Hub's flow and channels.  Never: await or do I/O.

use std::time::Duration;

use super::{channels::Subs, flow::Step, ControlSignal, Hub};
use crate::{
    broker::{ChannelKey, Deliver, Delivery, Done, Event},
    outbox::Push,
    protocol::{close::CloseCode, GapPosition, ServerMessage},
};

/// How often a channel's malformed producer messages may be logged.
const MALFORMED_LOG_EVERY: Duration = Duration::from_secs(60);

impl Hub {
    /// Pushes one event to every subscriber whose filter takes it (4009 on a full queue).
    pub(super) fn fan_out(&self, subs: &Subs, event: &Event) {
        let (mut delivered, mut slow) = (0u64, 0u64);
        let ahead = !subs.ahead.is_empty();
        for s in subs.list.iter() {
            if s.filter.as_ref().is_some_and(|f| !f.matches(&event.name))
                || (ahead && subs.has_seen(&s.outbox, event.offset, event.epoch.as_deref()))
            {
                continue;
            }
            match s.outbox.push_event(event.frame.clone(), event.received) {
                Push::Queued => delivered += 1,
                Push::Full => {
                    if s.outbox.close(CloseCode::SlowConsumer) {
                        slow += 1;
                    }
                }
                Push::Closed => {}
            }
        }
        self.metrics.deliveries.inc_by(delivered);
        if slow > 0 {
            self.metrics.slow_consumer_closes.inc_by(slow);
        }
    }

    /// Carries out a flow's steps in order: events to the matching subscribers, gaps to all.
    pub(super) fn apply(&self, channel: &ChannelKey, subs: &Subs, steps: Vec<Step>) {
        for step in steps {
            match step {
                Step::Deliver(e) => self.fan_out(subs, &e),
                Step::Rollback(position) => self.spawn_new_epoch(channel.clone(), position),
                Step::Gap(position) => {
                    let frame = ServerMessage::Gap {
                        channel: channel.topic,
                        position: GapPosition { offset: position.offset, epoch: position.epoch },
                    }
                    .to_frame();
                    // Queued like an event, so it keeps its place among the channel's events.
                    let now = std::time::Instant::now();
                    for s in subs.list.iter() {
                        if s.outbox.push_event(frame.clone(), now) == Push::Full
                            && s.outbox.close(CloseCode::SlowConsumer)
                        {
                            self.metrics.slow_consumer_closes.inc();
                        }
                    }
                }
            }
        }
    }

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
                let mut subs = ch.subs.lock();
                if subs.flow.takes_next(&event) {
                    // The common case: the next offset (or none), nothing being repaired.
                    self.fan_out(&subs, &event);
                    subs.prune_ahead();
                    return;
                }
                let mut steps = Vec::new();
                let repair = subs.flow.on_event(event, &mut steps);
                self.apply(&channel, &subs, steps);
                subs.prune_ahead();
                drop(subs);
                if let Some(r) = repair {
                    self.spawn_repair(channel, r);
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
                self.repair_all();
            }
        }
    }
}
