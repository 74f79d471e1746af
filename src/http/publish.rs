//! Admin `POST /internal/v1/publish`: producers without Redis publish one event here
//! (SPEC §5), authenticated by the admin bearer token.
//!
//! May use: state, broker (`ChannelKey`), broker::codec, ids, scope, body, error.
//! Never: accept a request without the token.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response, StatusCode};
use serde_json::{json, value::RawValue};
use subtle::ConstantTimeEq;

use super::body;
use crate::{
    broker::{codec, BrokerError, ChannelKey},
    error::ApiError,
    ids::AccountId,
    scope::{Environment, Topic},
    state::AppState,
};

struct PublishRequest {
    account_id: AccountId,
    environment: Environment,
    channel: Topic,
    event: String,
    data: Option<Box<RawValue>>,
    id: Option<String>,
    created_at: Option<String>,
}

/// The fields of the body, each kept as its raw JSON (so `data` passes through verbatim).
type Fields = std::collections::BTreeMap<String, Box<RawValue>>;

const FIELDS: [&str; 7] =
    ["account_id", "environment", "channel", "event", "data", "id", "created_at"];

fn string(fields: &Fields, name: &str) -> Result<Option<String>, ApiError> {
    match fields.get(name) {
        None => Ok(None),
        Some(raw) => serde_json::from_str::<String>(raw.get())
            .map(Some)
            .map_err(|_| ApiError::invalid_param(name, format!("`{name}` must be a string."))),
    }
}

fn required(fields: &Fields, name: &str) -> Result<String, ApiError> {
    string(fields, name)?.ok_or_else(|| ApiError::missing_param(name))
}

/// Parses the body: a missing field is `missing_param`, a wrong type or value
/// `invalid_param`, an unknown field `unknown_param` — each naming the field.
fn parse(fields: Fields) -> Result<PublishRequest, ApiError> {
    if let Some(unknown) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::unknown_param(unknown));
    }
    let account = required(&fields, "account_id")?;
    let account_id = AccountId::parse(&account)
        .map_err(|e| ApiError::invalid_param("account_id", e.to_string()))?;
    let environment = required(&fields, "environment")?.parse().map_err(|_| {
        ApiError::invalid_param("environment", "`environment` must be `live` or `test`.")
    })?;
    let name = required(&fields, "channel")?;
    let channel = name.parse().map_err(|_| {
        let all: Vec<&str> = Topic::ALL.iter().map(|t| t.as_str()).collect();
        ApiError::invalid_param(
            "channel",
            format!("Unknown channel `{name}`: use one of {}.", all.join(", ")),
        )
    })?;
    Ok(PublishRequest {
        account_id,
        environment,
        channel,
        event: required(&fields, "event")?,
        data: fields.get("data").cloned(),
        id: string(&fields, "id")?,
        created_at: string(&fields, "created_at")?,
    })
}

pub async fn handle(req: Request<Incoming>, state: &Arc<AppState>) -> Response<Full<Bytes>> {
    match publish(req, state).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn publish(
    req: Request<Incoming>,
    state: &Arc<AppState>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let presented = body::bearer(&req).unwrap_or_default();
    if !bool::from(presented.as_bytes().ct_eq(state.admin_token.as_bytes())) {
        state.metrics.auth_failure("invalid_admin_token");
        return Err(ApiError::invalid_admin_token());
    }
    let fields: Fields = body::read_json(req, body::Limits::of(&state.config)).await?;
    let p = parse(fields)?;
    if p.event.is_empty() || p.event.len() > 256 {
        return Err(ApiError::invalid_param(
            "event",
            "`event` must be a non-empty name of at most 256 characters.",
        ));
    }
    let data = p.data.as_deref().unwrap_or(&codec::EMPTY_OBJECT);
    let (payload, id) = codec::encode(&p.event, p.id.as_deref(), p.created_at.as_deref(), data);
    if payload.len() > state.config.max_event_bytes {
        return Err(ApiError::body_too_large(state.config.max_event_bytes).with_param("data"));
    }
    let channel = ChannelKey::new(p.environment, p.account_id, p.channel);
    match state.hub.broker().publish(&channel, payload).await {
        Ok(position) => {
            state.metrics.events_published.inc();
            let mut answer = json!({"published": true, "id": id, "channel": channel.topic});
            if let Some(p) = position {
                answer["offset"] = p.offset.into();
                answer["epoch"] = p.epoch.as_ref().into();
            }
            Ok(body::json(StatusCode::OK, &answer))
        }
        Err(BrokerError::InvalidEvent(e)) => Err(ApiError::invalid_param("data", e.to_string())),
        Err(BrokerError::Unavailable(_) | BrokerError::NotReady(_)) => {
            Err(ApiError::broker_unavailable())
        }
    }
}
