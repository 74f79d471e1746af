//! Channel names and the producer event format of SPEC §5.
//!
//! `mt:{environment}:{account_id}:{topic}` ⇄ [`ChannelKey`]; a producer message is decoded and
//! validated once and turned into an [`Event`] that holds the client frame
//! (`{"type":"event",...}`), serialised once and shared by every subscriber.
//!
//! Owns: wire formats between producers, brokers and clients.  May use: ids, scope, serde_json.
//! Never: I/O. Invariants: `decode` never panics on any input.

use std::{fmt, sync::Arc};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::{format_description::well_known::Rfc3339, OffsetDateTime};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::{
    ids::{new_event_id, AccountId},
    scope::{Environment, Topic},
};

/// Where an event belongs: one environment, one account, one topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelKey {
    pub env: Environment,
    pub account: AccountId,
    pub topic: Topic,
}

impl ChannelKey {
    pub fn new(env: Environment, account: AccountId, topic: Topic) -> Self {
        Self { env, account, topic }
    }

    /// The broker channel name, `mt:{env}:{account}:{topic}` (its `Display`).
    pub fn name(&self) -> String {
        self.to_string()
    }

    /// Parses a broker channel name; `None` for anything else (including the control channel).
    pub fn parse(name: &str) -> Option<Self> {
        let mut parts = name.split(':');
        let (mt, env, account, topic) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if mt != "mt" || parts.next().is_some() {
            return None;
        }
        Some(Self {
            env: env.parse().ok()?,
            account: AccountId::parse(account).ok()?,
            topic: topic.parse().ok()?,
        })
    }
}

impl fmt::Display for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mt:{}:{}:{}", self.env, self.account, self.topic)
    }
}

/// One event ready for fan-out: its name (for filters), its client frame and, when it came
/// through history, its position.
#[derive(Debug)]
pub struct Event {
    pub name: Box<str>,
    pub frame: Utf8Bytes,
    /// Its offset in its channel, and the epoch that offset belongs to (`None` for an event
    /// published around the history, SPEC §5).
    pub offset: Option<u64>,
    pub epoch: Option<Arc<str>>,
    /// When this node received it from the broker (for the delivery-latency histogram).
    pub received: std::time::Instant,
}

/// Why a producer message was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("event larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("not a JSON object with a string `event`: {0}")]
    Malformed(String),
    #[error("`event` must be a non-empty name of at most 256 characters")]
    BadEventName,
}

#[derive(Deserialize)]
struct Producer<'a> {
    event: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    /// Set by the history's publish function, never by producers themselves.
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    epoch: Option<String>,
}

#[derive(Serialize)]
struct ClientFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    channel: &'a str,
    event: &'a str,
    id: &'a str,
    created_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    data: &'a RawValue,
}

/// `{}`: the `data` of an event published without one.
pub static EMPTY_OBJECT: std::sync::LazyLock<Box<RawValue>> = std::sync::LazyLock::new(|| {
    serde_json::value::to_raw_value(&serde_json::Map::new()).unwrap_or_default()
});

/// RFC 3339 UTC timestamp with milliseconds, e.g. `2026-11-28T15:04:05.123Z`.
pub fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(now.millisecond() as u32 * 1_000_000).unwrap_or(now);
    now.format(&Rfc3339).unwrap_or_default()
}

/// Validates a producer message and builds its client frame (filling `id`/`created_at`);
/// `received` is when the broker handed it to this node.
pub fn decode(
    topic: Topic,
    payload: &[u8],
    max_bytes: usize,
    received: std::time::Instant,
) -> Result<Arc<Event>, DecodeError> {
    decode_at(topic, payload, max_bytes, received, None)
}

/// `decode`, with the position `at` given by the caller instead of read from the message
/// (the in-process history numbers events as it publishes them).
pub fn decode_at(
    topic: Topic,
    payload: &[u8],
    max_bytes: usize,
    received: std::time::Instant,
    at: Option<(u64, Arc<str>)>,
) -> Result<Arc<Event>, DecodeError> {
    if payload.len() > max_bytes {
        return Err(DecodeError::TooLarge { limit: max_bytes });
    }
    let p: Producer<'_> =
        serde_json::from_slice(payload).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if p.event.is_empty() || p.event.len() > 256 {
        return Err(DecodeError::BadEventName);
    }
    let (offset, epoch) = match (at, p.offset, p.epoch) {
        (Some((o, e)), _, _) => (Some(o), Some(e)),
        (None, Some(o), Some(e)) if o > 0 && !e.is_empty() => (Some(o), Some(Arc::from(e))),
        (None, None, None) => (None, None),
        _ => return Err(DecodeError::Malformed("`offset` and `epoch` go together".into())),
    };
    let id = p.id.unwrap_or_else(new_event_id);
    let created_at = p.created_at.unwrap_or_else(now_rfc3339);
    let empty: &RawValue = &EMPTY_OBJECT;
    let frame = ClientFrame {
        kind: "event",
        channel: topic.as_str(),
        event: &p.event,
        id: &id,
        created_at: &created_at,
        offset,
        data: p.data.unwrap_or(empty),
    };
    let text = serde_json::to_string(&frame).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    Ok(Arc::new(Event {
        name: p.event.into_boxed_str(),
        frame: Utf8Bytes::from(text),
        offset,
        epoch,
        received,
    }))
}

/// The producer message for one event, with `id` and `created_at` filled in now, so every
/// node that receives it shows the same values. Returns the message and the event id.
pub fn encode(
    event: &str,
    id: Option<&str>,
    created_at: Option<&str>,
    data: &RawValue,
) -> (Bytes, String) {
    #[derive(Serialize)]
    struct Out<'a> {
        event: &'a str,
        id: &'a str,
        created_at: &'a str,
        data: &'a RawValue,
    }
    let id = id.map_or_else(new_event_id, str::to_owned);
    let created_at = created_at.map_or_else(now_rfc3339, str::to_owned);
    let out = Out { event, id: &id, created_at: &created_at, data };
    (Bytes::from(serde_json::to_vec(&out).unwrap_or_default()), id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_now(topic: Topic, payload: &[u8], max: usize) -> Result<Arc<Event>, DecodeError> {
        decode(topic, payload, max, std::time::Instant::now())
    }

    fn acct(s: &str) -> AccountId {
        AccountId::parse(s).unwrap()
    }

    #[test]
    fn channel_names_round_trip() {
        let k = ChannelKey::new(Environment::Live, acct("acct_1"), Topic::Tasks);
        assert_eq!(k.name(), "mt:live:acct_1:tasks");
        assert_eq!(ChannelKey::parse(&k.name()), Some(k));
        for bad in [
            "mt:control",
            "mt:prod:a:tasks",
            "mt:live:a:nope",
            "xx:live:a:tasks",
            "mt:live:a:tasks:x",
            "mt:live::tasks",
        ] {
            assert_eq!(ChannelKey::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn decode_builds_the_client_frame_and_fills_ids() {
        let e = decode_now(Topic::Tasks, br#"{"event":"task.completed","data":{"n":1}}"#, 1024)
            .unwrap();
        assert_eq!(&*e.name, "task.completed");
        let v: serde_json::Value = serde_json::from_str(e.frame.as_str()).unwrap();
        assert_eq!(v["type"], "event");
        assert_eq!(v["channel"], "tasks");
        assert_eq!(v["data"]["n"], 1);
        assert!(v["id"].as_str().unwrap().starts_with("evt_"));
        assert!(OffsetDateTime::parse(v["created_at"].as_str().unwrap(), &Rfc3339).is_ok());

        let e = decode_now(
            Topic::Agents,
            br#"{"event":"a.b","id":"evt_1","created_at":"2020-01-01T00:00:00Z"}"#,
            1024,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(e.frame.as_str()).unwrap();
        assert_eq!(
            (v["id"].as_str(), v["created_at"].as_str()),
            (Some("evt_1"), Some("2020-01-01T00:00:00Z"))
        );
        assert_eq!(v["data"], serde_json::json!({}));
    }

    #[test]
    fn bad_producer_messages_are_errors() {
        assert_eq!(
            decode_now(Topic::Tasks, &[b' '; 100], 10).unwrap_err(),
            DecodeError::TooLarge { limit: 10 }
        );
        for bad in [
            &b"not json"[..],
            b"{}",
            br#"{"event":5}"#,
            b"[1]",
            b"\xff\xfe",
            br#"{"event":"x","id":7}"#,
        ] {
            assert!(
                matches!(decode_now(Topic::Tasks, bad, 1024), Err(DecodeError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            decode_now(Topic::Tasks, br#"{"event":""}"#, 1024).unwrap_err(),
            DecodeError::BadEventName
        );
    }

    #[test]
    fn encode_then_decode_keeps_the_event() {
        let data = RawValue::from_string(r#"{"k":"v"}"#.into()).unwrap();
        let (bytes, id) = encode("task.done", None, None, &data);
        let e = decode_now(Topic::Tasks, &bytes, 1024).unwrap();
        let v: serde_json::Value = serde_json::from_str(e.frame.as_str()).unwrap();
        assert_eq!(v["data"]["k"], "v");
        assert_eq!(v["event"], "task.done");
        assert_eq!(v["id"], id.as_str());
    }
}
