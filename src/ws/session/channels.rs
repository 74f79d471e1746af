//! A session's channel messages: `subscribe` (scope-checked, with event filters) and
//! `unsubscribe`, validated as a whole before anything changes; and the topics a key update
//! takes away (`regrant`).
//!
//! May use: the parent module, hub, broker (`ChannelKey`, `Position`), scope, protocol.

use std::sync::Arc;

use super::{resume::JoinError, Session};
use crate::{
    broker::{BrokerError, Position},
    hub::Grant,
    protocol::{filter::EventFilter, Resume, ServerMessage},
    scope::Topic,
};

impl Session {
    /// Validates every requested channel first; on any error nothing changes.
    fn parse_channels(
        &self,
        names: &[String],
        need_read: bool,
    ) -> Result<Vec<Topic>, ServerMessage> {
        if names.is_empty() {
            return Err(ServerMessage::error(
                "invalid_message",
                "`channels` must list at least one channel",
                Some("channels".into()),
            ));
        }
        let mut topics = Vec::with_capacity(names.len());
        for name in names {
            let topic: Topic = name.parse().map_err(|_| {
                ServerMessage::error(
                    "unknown_channel",
                    format!("unknown channel `{name}`"),
                    Some(name.clone()),
                )
            })?;
            if need_read && !self.readable.contains(topic) {
                let scope = topic.read_scope().to_string();
                return Err(ServerMessage::error(
                    "insufficient_scope",
                    format!("this key lacks `{scope}`"),
                    Some(scope),
                ));
            }
            topics.push(topic);
        }
        topics.sort_by_key(|t| t.as_str());
        topics.dedup();
        Ok(topics)
    }

    pub(super) async fn subscribe(
        &mut self,
        names: &[String],
        events: Option<&[String]>,
        resume: Option<&Resume>,
    ) {
        let topics = match self.parse_channels(names, true) {
            Ok(t) => t,
            Err(e) => return self.send(e),
        };
        if events.is_some_and(|e| e.len() > crate::protocol::filter::MAX_PATTERNS) {
            return self.send(ServerMessage::error(
                "invalid_message",
                format!(
                    "at most {} event patterns per subscribe",
                    crate::protocol::filter::MAX_PATTERNS
                ),
                Some("events".into()),
            ));
        }
        let filter = match events.map(EventFilter::parse).transpose() {
            Ok(f) => f.map(Arc::new),
            Err(e) => {
                return self.send(ServerMessage::error(
                    "invalid_message",
                    e.to_string(),
                    Some("events".into()),
                ))
            }
        };
        let reply = |positions| ServerMessage::Subscribed { channels: topics.clone(), positions };
        // After a failed history read the stream is closing with 1013 (see `join_all`).
        if let Err(JoinError::Broker(_)) = self.join_all(&topics, filter, resume, reply).await {
            self.send(ServerMessage::error(
                "broker_unavailable",
                "the event broker is unavailable; retry later",
                None,
            ));
        }
    }

    pub(super) fn unsubscribe(&mut self, names: &[String]) {
        let topics = match self.parse_channels(names, false) {
            Ok(t) => t,
            Err(e) => return self.send(e),
        };
        for topic in &topics {
            self.state.hub.unsubscribe(&self.reg.key(*topic), &self.outbox);
            self.reg.topics = self.reg.topics.without(*topic);
        }
        self.send(ServerMessage::Unsubscribed { channels: topics, reason: None });
    }

    /// Applies the grant the Hub holds for this session (SPEC §8): joined topics it no
    /// longer allows are left first, so no event of theirs follows the client's
    /// `unsubscribed` (`scope_removed`); topics it adds are only allowed, not joined.
    /// Returns the grant; the caller closes when it allows nothing and moves the expiry.
    pub(super) fn regrant(&mut self) -> Option<Grant> {
        let grant = self.state.hub.grant(self.reg.conn)?;
        self.readable = grant.readable;
        let lost = self.reg.topics.minus(grant.readable);
        if !lost.is_empty() && !grant.readable.is_empty() {
            for topic in lost.iter() {
                self.state.hub.unsubscribe(&self.reg.key(topic), &self.outbox);
                self.reg.topics = self.reg.topics.without(topic);
            }
            self.send(ServerMessage::Unsubscribed {
                channels: lost.to_vec(),
                reason: Some("scope_removed"),
            });
        }
        Some(grant)
    }

    /// Joins one channel (or replaces its filter if joined already). Returns the channel's
    /// position at the join and whether the session was new on it. `seen`: see
    /// `Hub::subscribe`.
    pub(super) async fn join(
        &mut self,
        topic: Topic,
        filter: Option<Arc<EventFilter>>,
        seen: Option<Position>,
    ) -> Result<(Option<Position>, bool), BrokerError> {
        let key = self.reg.key(topic);
        if self.reg.topics.contains(topic) {
            if let Some(position) = self.state.hub.set_filter(&key, &self.outbox, filter.clone()) {
                return Ok((position, false));
            }
        }
        let position = self.state.hub.subscribe(&key, &self.outbox, filter, seen).await?;
        self.reg.topics = self.reg.topics.with(topic);
        Ok((position, true))
    }
}
