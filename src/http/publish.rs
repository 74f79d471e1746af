//! Admin `POST /internal/v1/publish`: producers without Redis publish one event here
//! (SPEC §5), authenticated by the admin bearer token.
//!
//! May use: state, broker codec, body, error.  Never: accept a request without the token.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response, StatusCode};
use serde::Deserialize;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    account_id: AccountId,
    environment: Environment,
    channel: Topic,
    event: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
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
    let p: PublishRequest = body::read_json(req, body::Limits::of(&state.config)).await?;
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
        Ok(()) => {
            state.metrics.events_published.inc();
            Ok(body::json(
                StatusCode::OK,
                &json!({"published": true, "id": id, "channel": channel.name()}),
            ))
        }
        Err(BrokerError::InvalidEvent(e)) => Err(ApiError::invalid_param("data", e.to_string())),
        Err(BrokerError::Unavailable(_)) => Err(ApiError::broker_unavailable()),
    }
}
