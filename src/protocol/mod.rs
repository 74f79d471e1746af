//! The WebSocket wire protocol of SPEC §4: client messages in, server messages out.
//!
//! Owns: message shapes and their (de)serialisation.  May use: serde, scope.
//! Never: I/O. Invariants: parsing untrusted text never panics; server messages are
//! serialised once into a text frame.

pub mod close;
pub mod filter;

use std::{collections::BTreeMap, sync::Arc};

use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::scope::{Environment, Topic};

/// A position a client last saw on a channel, sent back to resume from it (SPEC §7).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeFrom {
    pub offset: u64,
    pub epoch: String,
}

/// `resume`: channel name → the last position seen.
pub type Resume = BTreeMap<String, ResumeFrom>;

/// One channel's entry in `positions`: where it stood when the subscription started, and
/// for a channel the client asked to resume, whether the missed events follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PositionReply {
    pub offset: u64,
    pub epoch: Arc<str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

/// `positions` of `auth.success` and `subscribed`.
pub type Positions = BTreeMap<Topic, PositionReply>;

/// A message a client may send.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientMessage {
    Auth {
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        ticket: Option<String>,
        #[serde(default)]
        resume: Option<Resume>,
    },
    Subscribe {
        channels: Vec<String>,
        #[serde(default)]
        events: Option<Vec<String>>,
        #[serde(default)]
        resume: Option<Resume>,
    },
    Unsubscribe {
        channels: Vec<String>,
    },
    Ping,
}

impl ClientMessage {
    /// Parses one text frame; the error is a human-readable reason for `invalid_message`.
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| {
            let msg = e.to_string();
            if msg.contains("unknown variant") || msg.contains("missing field `type`") {
                "unknown message type: expected auth, subscribe, unsubscribe or ping".to_owned()
            } else {
                format!("malformed message: {msg}")
            }
        })
    }
}

/// A message the server sends (events are pre-serialised elsewhere, see `broker::codec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub enum ServerMessage {
    #[serde(rename = "auth.success")]
    AuthSuccess {
        message: &'static str,
        connection_id: String,
        key_id: String,
        environment: Environment,
        channels: Vec<Topic>,
        /// Absent with history off.
        #[serde(skip_serializing_if = "Option::is_none")]
        positions: Option<Positions>,
    },
    #[serde(rename = "subscribed")]
    Subscribed {
        channels: Vec<Topic>,
        #[serde(skip_serializing_if = "Option::is_none")]
        positions: Option<Positions>,
    },
    /// Events of `channel` before `position` may be missing (history could not repair it).
    #[serde(rename = "gap")]
    Gap { channel: Topic, position: GapPosition },
    /// A client's `unsubscribe` answered (`reason` absent), or topics the server took away
    /// (`"reason": "scope_removed"`: the key lost their read scope, SPEC §8).
    #[serde(rename = "unsubscribed")]
    Unsubscribed {
        channels: Vec<Topic>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
    },
    #[serde(rename = "pong")]
    Pong,
    #[serde(rename = "error")]
    Error {
        code: &'static str,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        param: Option<String>,
    },
}

/// The position in a `gap` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GapPosition {
    pub offset: u64,
    pub epoch: Arc<str>,
}

impl ServerMessage {
    pub fn error(code: &'static str, message: impl Into<String>, param: Option<String>) -> Self {
        ServerMessage::Error { code, message: message.into(), param }
    }

    /// The text frame for this message.
    pub fn to_frame(&self) -> Utf8Bytes {
        // Serialising these plain structs cannot fail; fall back to an empty object anyway.
        Utf8Bytes::from(serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_parse() {
        assert_eq!(
            ClientMessage::parse(r#"{"type":"auth","token":"t"}"#),
            Ok(ClientMessage::Auth { token: Some("t".into()), ticket: None, resume: None })
        );
        assert_eq!(
            ClientMessage::parse(
                r#"{"type":"subscribe","channels":["tasks"],"events":["task.*"]}"#
            ),
            Ok(ClientMessage::Subscribe {
                channels: vec!["tasks".into()],
                events: Some(vec!["task.*".into()]),
                resume: None,
            })
        );
        assert_eq!(ClientMessage::parse(r#"{"type":"ping"}"#), Ok(ClientMessage::Ping));
    }

    #[test]
    fn bad_client_messages_are_errors_not_panics() {
        for bad in [
            "",
            "{",
            "[]",
            "null",
            r#"{"type":"dance"}"#,
            r#"{"channels":[]}"#,
            r#"{"type":"subscribe"}"#,
            r#"{"type":"subscribe","channels":"tasks"}"#,
        ] {
            assert!(ClientMessage::parse(bad).is_err(), "{bad}");
        }
        assert!(ClientMessage::parse(r#"{"type":"dance"}"#)
            .unwrap_err()
            .contains("unknown message type"));
    }

    #[test]
    fn server_messages_have_the_spec_shape() {
        let m = ServerMessage::AuthSuccess {
            message: "Authenticated successfully",
            connection_id: "conn_x".into(),
            key_id: "key_y".into(),
            environment: Environment::Live,
            channels: vec![Topic::Agents, Topic::Tasks],
            positions: None,
        };
        let v: serde_json::Value = serde_json::from_str(m.to_frame().as_str()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"auth.success","message":"Authenticated successfully","connection_id":"conn_x","key_id":"key_y","environment":"live","channels":["agents","tasks"]})
        );
        assert_eq!(ServerMessage::Pong.to_frame().as_str(), r#"{"type":"pong"}"#);
        let lost = ServerMessage::Unsubscribed {
            channels: vec![Topic::Agents],
            reason: Some("scope_removed"),
        };
        assert_eq!(
            lost.to_frame().as_str(),
            r#"{"type":"unsubscribed","channels":["agents"],"reason":"scope_removed"}"#
        );
        let e = ServerMessage::error("insufficient_scope", "no", Some("agents.read".into()));
        assert_eq!(
            e.to_frame().as_str(),
            r#"{"type":"error","code":"insufficient_scope","message":"no","param":"agents.read"}"#
        );
    }
}
