//! `/healthz` (the process runs), `/readyz` (broker and key store answer) and `/metrics`.
//!
//! May use: state, metrics, body, broker (its error, for the reason).  Never: block on a dead
//! backend longer than a second.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Response, StatusCode};
use serde_json::json;

use super::body;
use crate::{broker::BrokerError, state::AppState};

const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

pub fn healthz() -> Response<Full<Bytes>> {
    body::json(StatusCode::OK, &json!({"status": "ok"}))
}

pub async fn readyz(state: &AppState) -> Response<Full<Bytes>> {
    let (broker, store) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, state.hub.broker().ping()),
        tokio::time::timeout(CHECK_TIMEOUT, state.keys.store().ping()),
    );
    // What is down; a not-ready broker says why in public words (slots, never an address).
    let broker_down = match broker {
        Ok(Ok(())) => None,
        Ok(Err(BrokerError::NotReady(why))) => Some(format!("broker unavailable: {why}")),
        Ok(Err(_)) => Some("broker unavailable".to_owned()),
        Err(_) => {
            Some(format!("broker unavailable: no answer within {}s", CHECK_TIMEOUT.as_secs()))
        }
    };
    let store_down = (!matches!(store, Ok(Ok(())))).then(|| "key store unavailable".to_owned());
    if state.shutdown.token.is_cancelled() {
        return body::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "unavailable", "reason": "shutting down"}),
        );
    }
    let down: Vec<String> = broker_down.into_iter().chain(store_down).collect();
    if down.is_empty() {
        return body::json(StatusCode::OK, &json!({"status": "ready"}));
    }
    let reason = down.join("; ");
    body::json(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "unavailable", "reason": reason}))
}

/// The metrics in the Prometheus text format 0.0.4, or OpenMetrics 1.0 when the `Accept`
/// header asks for `application/openmetrics-text`.
pub fn metrics(state: &Arc<AppState>, accept: Option<&str>) -> Response<Full<Bytes>> {
    let (current, previous) = state.hub.sessions_by_secret(|h| state.control.is_retiring(h));
    state.metrics.set_by_secret(current, previous);
    let openmetrics = accept.is_some_and(|a| {
        a.split(',')
            .any(|t| t.trim().to_ascii_lowercase().starts_with("application/openmetrics-text"))
    });
    let (text, content_type) = if openmetrics {
        (
            state.metrics.render_openmetrics(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (state.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
    };
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    resp
}
