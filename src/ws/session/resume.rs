//! Joining channels with positions and resume (SPEC §7): the outbox is held while the
//! session joins, so the reply with `positions` comes first; for each channel resumed from
//! a position that history still covers, the missed events follow, in order, before any
//! live event of it (those wait in the held outbox: all have higher offsets).
//!
//! May use: the parent module, hub, broker (history reads), outbox, protocol, scope.

use std::{collections::BTreeMap, sync::Arc};

use super::Session;
use crate::{
    broker::{BrokerError, Event, Position},
    outbox::Push,
    protocol::{
        close::CloseCode, filter::EventFilter, PositionReply, Positions, Resume, ResumeFrom,
    },
    scope::Topic,
};

/// What joining found for one channel: its position and the missed events to send.
struct Joined {
    topic: Topic,
    position: Position,
    recovered: Option<bool>,
    missed: Vec<Arc<Event>>,
}

impl Session {
    /// Joins `topics` and answers with `reply(positions)` (queued first), then the missed
    /// events of resumed channels, then the live ones. On a broker error the channels joined
    /// so far stay joined and the error is returned (nothing else is sent).
    pub(super) async fn join_all(
        &mut self,
        topics: &[Topic],
        filter: Option<Arc<EventFilter>>,
        resume: Option<&Resume>,
        reply: impl FnOnce(Option<Positions>) -> crate::protocol::ServerMessage,
    ) -> Result<(), BrokerError> {
        self.outbox.hold();
        let joined = self.join_each(topics, filter.clone(), resume).await;
        let joined = match joined {
            Ok(j) => j,
            Err(e) => {
                self.outbox.release();
                return Err(e);
            }
        };
        let positions: Option<Positions> = (!joined.is_empty()).then(|| {
            joined
                .iter()
                .map(|j| {
                    let p = &j.position;
                    let reply = PositionReply {
                        offset: p.offset,
                        epoch: p.epoch.clone(),
                        recovered: j.recovered,
                    };
                    (j.topic, reply)
                })
                .collect::<BTreeMap<_, _>>()
        });
        self.send(reply(positions));
        let now = std::time::Instant::now();
        for e in joined.iter().flat_map(|j| j.missed.iter()) {
            if filter.as_ref().is_some_and(|f| !f.matches(&e.name)) {
                continue;
            }
            if self.outbox.push_missed(e.frame.clone(), now) == Push::Full
                && self.outbox.close(CloseCode::SlowConsumer)
            {
                self.state.metrics.slow_consumer_closes.inc();
            }
        }
        self.outbox.release();
        Ok(())
    }

    async fn join_each(
        &mut self,
        topics: &[Topic],
        filter: Option<Arc<EventFilter>>,
        resume: Option<&Resume>,
    ) -> Result<Vec<Joined>, BrokerError> {
        let mut joined = Vec::with_capacity(topics.len());
        for &topic in topics {
            let fresh = !self.reg.topics.contains(topic);
            let from = resume.and_then(|r| r.get(topic.as_str())).filter(|_| fresh);
            let seen = match from {
                Some(from) => self.seen_at(topic, from).await?,
                None => None,
            };
            let (position, _) = self.join(topic, filter.clone(), seen).await?;
            let Some(position) = position else { continue };
            let (recovered, missed) = match from {
                Some(from) => self.missed_since(topic, from, &position).await,
                None => (None, Vec::new()),
            };
            match recovered {
                Some(true) => {
                    self.state.metrics.resumes_recovered.inc();
                }
                Some(false) => {
                    self.state.metrics.resumes_unrecovered.inc();
                }
                None => {}
            }
            joined.push(Joined { topic, position, recovered, missed });
        }
        Ok(joined)
    }

    /// The resume position as one the channel really reached (checked against its head), so
    /// that a node behind it neither resends nor refuses what the client saw elsewhere.
    async fn seen_at(
        &self,
        topic: Topic,
        from: &ResumeFrom,
    ) -> Result<Option<Position>, BrokerError> {
        let head = self.state.hub.broker().head(&self.reg.key(topic)).await?;
        Ok(head
            .filter(|h| *h.epoch == *from.epoch && from.offset <= h.offset)
            .map(|h| Position::new(from.offset, h.epoch)))
    }

    /// The events after `from` up to `to`, if history still has every one of them in the
    /// same epoch (`recovered: true`); else nothing (`false`): never a partial fill.
    async fn missed_since(
        &self,
        topic: Topic,
        from: &ResumeFrom,
        to: &Position,
    ) -> (Option<bool>, Vec<Arc<Event>>) {
        let window = self.state.config.history_size as u64;
        if from.epoch != *to.epoch || from.offset > to.offset || to.offset - from.offset > window {
            return (Some(false), Vec::new());
        }
        if from.offset == to.offset {
            return (Some(true), Vec::new());
        }
        let want = usize::try_from(to.offset - from.offset).unwrap_or(usize::MAX);
        let key = self.reg.key(topic);
        let page = match self.state.hub.broker().history(&key, Some(from.offset), want).await {
            Ok(Some(page)) if page.head.epoch == to.epoch && page.covers(from.offset) => page,
            _ => return (Some(false), Vec::new()),
        };
        let missed: Vec<Arc<Event>> =
            page.events.into_iter().filter(|e| e.offset <= Some(to.offset)).collect();
        let complete = missed.len() == want
            && missed.iter().zip(from.offset + 1..).all(|(e, o)| e.offset == Some(o));
        if complete {
            (Some(true), missed)
        } else {
            (Some(false), Vec::new())
        }
    }
}
