//! Joining channels with positions and resume (SPEC §7): the outbox is held while the
//! session joins, so the reply with `positions` comes first; for each channel resumed from
//! a position that history still covers, the missed events follow, in order, before any
//! live event of it (those wait in the held outbox: all have higher offsets).
//!
//! A broker error is never answered as `recovered: false` (that tells the client its events
//! are gone): a failed head read leaves the channel unjoined (the caller answers 1013 or
//! `broker_unavailable`); a failed history read, after the channel was joined, closes the
//! stream with 1013 at once (the client resumes again). Either counts `resumes_failed`. A
//! resume position this node has already reached on the channel needs no head read.
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

/// Why joining failed.
#[derive(Debug)]
pub(super) enum JoinError {
    /// Before the channel was joined (its head or its broker subscription): nothing changed
    /// for it.
    Broker(BrokerError),
    /// A resumed channel's history read failed after it was joined: the stream is closing
    /// with 1013 (nothing after the failed channel was sent or joined).
    Resume(BrokerError),
}

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
    /// so far stay joined and the error is returned (nothing else is sent; after a failed
    /// history read the stream is asked to close first, so nothing held is sent either).
    pub(super) async fn join_all(
        &mut self,
        topics: &[Topic],
        filter: Option<Arc<EventFilter>>,
        resume: Option<&Resume>,
        reply: impl FnOnce(Option<Positions>) -> crate::protocol::ServerMessage,
    ) -> Result<(), JoinError> {
        self.outbox.hold();
        let joined = self.join_each(topics, filter.clone(), resume).await;
        let joined = match joined {
            Ok(j) => j,
            Err(e) => {
                match &e {
                    JoinError::Broker(err) => tracing::debug!(error = %err, "join failed"),
                    JoinError::Resume(err) => {
                        tracing::debug!(error = %err, "history read for a resume failed");
                        // Live events of the joined channel may be held: none may go out
                        // without its missed ones before them (SPEC §7).
                        self.outbox.close(CloseCode::TryAgainLater);
                    }
                }
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
    ) -> Result<Vec<Joined>, JoinError> {
        let mut joined = Vec::with_capacity(topics.len());
        let metrics = self.state.metrics.clone();
        let failed = |e| {
            metrics.resumes_failed.inc();
            e
        };
        for &topic in topics {
            let fresh = !self.reg.topics.contains(topic);
            let from = resume.and_then(|r| r.get(topic.as_str())).filter(|_| fresh);
            let seen = match from {
                Some(from) => {
                    self.seen_at(topic, from).await.map_err(|e| failed(JoinError::Broker(e)))?
                }
                None => None,
            };
            let (position, _) =
                self.join(topic, filter.clone(), seen).await.map_err(JoinError::Broker)?;
            let Some(position) = position else { continue };
            let (recovered, missed) = match from {
                Some(from) => self
                    .missed_since(topic, from, &position)
                    .await
                    .map_err(|e| failed(JoinError::Resume(e)))?,
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
    /// that a node behind it neither resends nor refuses what the client saw elsewhere. A
    /// position at or below the one this node reached on the channel is real without asking
    /// the broker (and `Hub::subscribe` makes no use of a `seen` it is not behind).
    async fn seen_at(
        &self,
        topic: Topic,
        from: &ResumeFrom,
    ) -> Result<Option<Position>, BrokerError> {
        let key = self.reg.key(topic);
        if let Some(here) = self.state.hub.position(&key) {
            if *here.epoch == *from.epoch && from.offset <= here.offset {
                return Ok(Some(Position::new(from.offset, here.epoch)));
            }
        }
        let head = self.state.hub.broker().head(&key).await?;
        Ok(head
            .filter(|h| *h.epoch == *from.epoch && from.offset <= h.offset)
            .map(|h| Position::new(from.offset, h.epoch)))
    }

    /// The events after `from` up to `to`, if history still has every one of them in the
    /// same epoch (`recovered: true`); else nothing (`false`): never a partial fill. A
    /// failed read is an error, not `false`: history may well have every event.
    async fn missed_since(
        &self,
        topic: Topic,
        from: &ResumeFrom,
        to: &Position,
    ) -> Result<(Option<bool>, Vec<Arc<Event>>), BrokerError> {
        let window = self.state.config.history_size as u64;
        if from.epoch != *to.epoch || from.offset > to.offset || to.offset - from.offset > window {
            return Ok((Some(false), Vec::new()));
        }
        if from.offset == to.offset {
            return Ok((Some(true), Vec::new()));
        }
        let want = usize::try_from(to.offset - from.offset).unwrap_or(usize::MAX);
        let key = self.reg.key(topic);
        let page = match self.state.hub.broker().history(&key, Some(from.offset), want).await? {
            Some(page) if page.head.epoch == to.epoch && page.covers(from.offset) => page,
            _ => return Ok((Some(false), Vec::new())),
        };
        let missed: Vec<Arc<Event>> =
            page.events.into_iter().filter(|e| e.offset <= Some(to.offset)).collect();
        let complete = missed.len() == want
            && missed.iter().zip(from.offset + 1..).all(|(e, o)| e.offset == Some(o));
        Ok(if complete { (Some(true), missed) } else { (Some(false), Vec::new()) })
    }
}
