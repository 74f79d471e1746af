//! `GET /v1/events?channel=T&after=N&limit=L` (SPEC §3, §7): a page of one channel's history
//! for the caller's own account and environment, scope-checked per topic; for dashboards
//! loading state and for clients after `recovered: false`.
//!
//! May use: state, body, error, keys (`Principal`), broker (history), scope.

use std::{net::IpAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response, StatusCode};
use serde_json::value::RawValue;

use super::body;
use crate::{broker::ChannelKey, error::ApiError, scope::Topic, state::AppState};

/// Events per page without `limit`, and at most.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

pub async fn handle(
    req: Request<Incoming>,
    client: IpAddr,
    state: &Arc<AppState>,
) -> Response<Full<Bytes>> {
    match page(req, client, state).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

struct Query {
    topic: Topic,
    after: Option<u64>,
    limit: usize,
}

fn parse(query: Option<&str>) -> Result<Query, ApiError> {
    let (mut topic, mut after, mut limit) = (None, None, DEFAULT_LIMIT);
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "channel" => {
                topic = Some(v.parse::<Topic>().map_err(|_| {
                    ApiError::invalid_param("channel", format!("Unknown channel `{v}`."))
                })?)
            }
            "after" => {
                after = Some(v.parse::<u64>().map_err(|_| {
                    ApiError::invalid_param("after", "`after` must be an offset (0 or more).")
                })?)
            }
            "limit" => {
                limit = v.parse::<usize>().ok().filter(|l| (1..=MAX_LIMIT).contains(l)).ok_or_else(
                    || {
                        ApiError::invalid_param(
                            "limit",
                            format!("`limit` must be between 1 and {MAX_LIMIT}."),
                        )
                    },
                )?
            }
            other => {
                return Err(ApiError::invalid_param(
                    other,
                    format!("Unknown parameter `{other}`: expected channel, after, limit."),
                ))
            }
        }
    }
    let topic = topic.ok_or_else(|| ApiError::missing_param("channel"))?;
    Ok(Query { topic, after, limit })
}

async fn page(
    req: Request<Incoming>,
    client: IpAddr,
    state: &Arc<AppState>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let caller = state.auth.authenticate(body::bearer(&req), client).await?;
    let q = parse(req.uri().query())?;
    let scope = q.topic.read_scope();
    if !caller.has(scope) {
        state.metrics.auth_failure("insufficient_scope");
        return Err(ApiError::insufficient_scope(scope.as_str()));
    }
    let key = ChannelKey::new(caller.environment, caller.account.clone(), q.topic);
    let page = state
        .hub
        .broker()
        .history(&key, q.after, q.limit)
        .await
        .map_err(|_| ApiError::broker_unavailable())?;
    let Some(page) = page else {
        // History is off (history_size = 0): nothing is kept, there is no position.
        return Ok(body::json(
            StatusCode::OK,
            &serde_json::json!({"data": [], "position": null, "has_more": false}),
        ));
    };
    let mut data: Vec<&RawValue> = Vec::with_capacity(page.events.len());
    for e in &page.events {
        let raw: &RawValue =
            serde_json::from_str(e.frame.as_str()).map_err(|_| ApiError::internal())?;
        data.push(raw);
    }
    Ok(body::json(
        StatusCode::OK,
        &serde_json::json!({"data": data, "position": page.head, "has_more": page.has_more()}),
    ))
}
