//! Request routing for the two listeners, the access log (paths only, queries redacted) and
//! the refusal log of every refused request (see `refusals`).
//!
//! Owns: which (listener, method, path) goes to which handler.  May use: state, error, ws,
//! refusals, telemetry (URI redaction), the handlers below.  Never: log a query string
//! unredacted or a header value.

pub mod api_keys;
pub mod body;
pub mod client_ip;
mod domain_errors;
pub mod events;
pub mod health;
pub mod key_update;
pub mod publish;
pub mod tickets;

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Method, Request, Response};

use crate::{
    error::{ApiError, ErrorCode},
    refusals::{self, Refused},
    state::AppState,
    telemetry::redact_uri,
    ws,
};

/// Which listener a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Public,
    Admin,
}

/// Routes one request and logs it.
pub async fn route(
    req: Request<Incoming>,
    peer: SocketAddr,
    state: Arc<AppState>,
    listener: Listener,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let uri = redact_uri(req.uri());
    let credential = credential(&req);
    let client = client_ip::client_ip(peer.ip(), req.headers(), &state.config.trusted_proxies);
    let resp = dispatch(req, peer, client, &state, listener).await;
    if resp.status() == hyper::StatusCode::REQUEST_TIMEOUT {
        state.metrics.rate_limited("body_timeout");
    }
    if is_refusal(resp.status()) {
        let code = resp.extensions().get::<ErrorCode>().map_or("unknown", |c| c.0);
        refusals::refused(Refused::Request, code, client, credential.as_deref());
    }
    tracing::debug!(%peer, %method, uri = %uri, status = resp.status().as_u16(), "request");
    resp
}

/// Statuses that mean "not allowed now" rather than "malformed" or "not found": these are
/// logged once each at `info` (rate-limited) for operators.
fn is_refusal(status: hyper::StatusCode) -> bool {
    use hyper::StatusCode as S;
    matches!(
        status,
        S::UNAUTHORIZED
            | S::FORBIDDEN
            | S::REQUEST_TIMEOUT
            | S::PAYLOAD_TOO_LARGE
            | S::TOO_MANY_REQUESTS
            | S::SERVICE_UNAVAILABLE
    )
}

/// The credential a request offers (bearer header, or the `token`/`ticket` query), for the
/// refusal log, which only ever writes it redacted.
fn credential(req: &Request<Incoming>) -> Option<String> {
    body::bearer(req).map(str::to_owned).or_else(|| {
        let q = req.uri().query();
        ws::upgrade::query_param(q, "token").or_else(|| ws::upgrade::query_param(q, "ticket"))
    })
}

async fn dispatch(
    req: Request<Incoming>,
    peer: SocketAddr,
    client: std::net::IpAddr,
    state: &Arc<AppState>,
    listener: Listener,
) -> Response<Full<Bytes>> {
    use Listener::{Admin, Public};
    let path = req.uri().path().to_owned();
    let m = req.method();
    if listener == Public && path.starts_with("/v1/") && live_key_from_browser(&req, state) {
        state.metrics.refused("live_key_in_browser");
        return ApiError::live_key_in_browser().into_response();
    }
    match (listener, path.as_str()) {
        (_, "/healthz") if m == Method::GET => health::healthz(),
        (_, "/readyz") if m == Method::GET => health::readyz(state).await,
        (Public, "/v1/ws") => ws::upgrade::handle(req, client, peer.ip(), state).await,
        #[cfg(feature = "conformance")]
        (Public, "/conformance/echo") => ws::echo::handle(req, state).await,
        (Public, "/v1/events") if m == Method::GET => events::handle(req, client, state).await,
        (Public, "/v1/ws/tickets") if m == Method::POST => {
            tickets::handle(req, client, state).await
        }
        (Public, p) if p == "/v1/api-keys" || p.starts_with("/v1/api-keys/") => {
            api_keys::handle(req, client, state).await
        }
        (Admin, "/metrics") if m == Method::GET => {
            let accept = req.headers().get(hyper::header::ACCEPT).and_then(|v| v.to_str().ok());
            health::metrics(state, accept)
        }
        (Admin, "/internal/v1/publish") if m == Method::POST => publish::handle(req, state).await,
        (_, "/healthz" | "/readyz") | (Admin, "/metrics") | (Public, "/v1/events") => {
            ApiError::method_not_allowed().with_allow("GET").into_response()
        }
        (Public, "/v1/ws/tickets") | (Admin, "/internal/v1/publish") => {
            ApiError::method_not_allowed().with_allow("POST").into_response()
        }
        _ => ApiError::not_found().into_response(),
    }
}

/// SPEC §4.1: a production key on a request with an `Origin` (a browser), unless allowed.
/// Tickets (`mt_live_tk_…`) are what browsers should use and pass.
fn live_key_from_browser(req: &Request<Incoming>, state: &AppState) -> bool {
    if state.config.allow_live_keys_in_browser || !req.headers().contains_key(hyper::header::ORIGIN)
    {
        return false;
    }
    let is_live_key = |c: &str| c.starts_with("mt_live_") && !c.starts_with("mt_live_tk_");
    body::bearer(req).is_some_and(is_live_key)
        || ws::upgrade::query_param(req.uri().query(), "token").is_some_and(|t| is_live_key(&t))
}
