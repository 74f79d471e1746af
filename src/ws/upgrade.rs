//! `GET /v1/ws`: every check that can refuse a connection runs before the upgrade (SPEC §4.1),
//! then the 101 is returned and the session is spawned on the node's task tracker.
//!
//! Owns: the order of pre-upgrade checks.  May use: state, auth, keys (`Principal`), budget,
//! rate_limit, slots, token, scope, error, session.
//! Never: upgrade a request that failed a check.

use std::{net::IpAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming,
    header::{self, HeaderMap, HeaderValue},
    Method, Request, Response, StatusCode, Version,
};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::{
    tungstenite::{handshake::derive_accept_key, protocol::Role},
    WebSocketStream,
};

use super::session;
use crate::{
    budget::{ConnPermit, RequestClient},
    error::ApiError,
    keys::Principal,
    rate_limit::client_block,
    scope::ScopeSet,
    slots,
    state::AppState,
    token::TokenHash,
};

/// Answers a `/v1/ws` request: an error response, or a 101 with the session spawned.
pub async fn handle(
    req: Request<Incoming>,
    client: IpAddr,
    peer: IpAddr,
    state: &Arc<AppState>,
) -> Response<Full<Bytes>> {
    match check_and_upgrade(req, client, peer, state).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn check_and_upgrade(
    mut req: Request<Incoming>,
    client: IpAddr,
    peer: IpAddr,
    state: &Arc<AppState>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let started = std::time::Instant::now();
    if req.method() != Method::GET {
        return Err(ApiError::method_not_allowed().with_allow("GET"));
    }
    // Without the broker a new stream would receive nothing: refuse before any store lookup.
    if !state.hub.broker().ready() {
        return Err(ApiError::broker_unavailable());
    }
    check_origin(req.headers(), &state.config.allowed_origins, state)?;
    let query = req.uri().query();
    let (token, ticket) = (query_param(query, "token"), query_param(query, "ticket"));
    let used_ticket = ticket.is_some();
    // `authenticate*` refuse a locked-out client IP (429) before touching the store.
    let (principal, credential) = match (token, ticket) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_param(
                "ticket",
                "Pass either `token` or `ticket`, not both.",
            ));
        }
        (None, Some(ticket)) => (state.auth.authenticate_ticket(&ticket, client).await?, ticket),
        (token, None) => {
            let p = state.auth.authenticate(token.as_deref(), client).await?;
            (p, token.unwrap_or_default())
        }
    };
    if principal.scopes.read_topics().is_empty() {
        state.metrics.auth_failure("insufficient_scope");
        return Err(ApiError::insufficient_scope("*.read").with_message(
            "This API key has no `*.read` scope, so there is nothing it may stream.",
        ));
    }
    let accept = websocket_accept(req.version(), req.headers())?;
    state.limits.check_new_connection(&principal.key_id, &state.metrics)?;
    check_caps(state, &principal).await?;
    if state.shutdown.token.is_cancelled() {
        return Err(ApiError::shutting_down());
    }
    let Ok(unauthenticated) = state.unauthenticated.clone().try_acquire_owned() else {
        state.metrics.rate_limited("unauthenticated");
        return Err(ApiError::overloaded());
    };
    // One tenant may not hold every unauthenticated slot.
    let Some(by_key) = state.unauthenticated_per_key.try_take(principal.key_id.clone()) else {
        state.metrics.rate_limited("unauthenticated_per_key");
        return Err(ApiError::rate_limited(1)
            .with_message("Too many connections of this key are waiting to authenticate."));
    };
    let Some(by_account) = state.unauthenticated_per_account.try_take(principal.account.clone())
    else {
        state.metrics.rate_limited("unauthenticated_per_account");
        return Err(ApiError::rate_limited(1)
            .with_message("Too many connections of this account are waiting to authenticate."));
    };
    let connection = req.extensions_mut().remove::<ConnPermit>();
    // Behind a trusted proxy the socket peer is the proxy: the client it vouches for has a
    // share, taken by the server for this request; the WebSocket keeps it once upgraded (a
    // refused upgrade gives it back with the response).
    let taken = req.extensions().get::<RequestClient>().and_then(RequestClient::take);
    let client_share = match taken {
        Some(held) => Some(held),
        None if client != crate::auth::canonical(peer) => {
            let Some(held) = state.per_ip.try_take(client_block(client)) else {
                state.metrics.rate_limited("connections_per_ip");
                return Err(ApiError::rate_limited(1)
                    .with_message("Too many open connections from this address."));
            };
            Some(held)
        }
        None => None,
    };
    // Every check passed: only now is a ticket used up (a refused upgrade leaves it valid).
    // Of two connections racing with one ticket, one wins here. A key update checks a key's
    // stream against the new allowlist with the client's address, a ticket's with the
    // address that minted it (the browser's own never was), and never lets a ticket's stream
    // read more than the ticket carried.
    let (checked_from, limit) = if used_ticket {
        let Some(ticket) = state.auth.redeem_ticket(&credential).await? else {
            state.metrics.auth_failure("invalid_api_key");
            return Err(ApiError::invalid_api_key()
                .with_message("Invalid, expired or already used ticket."));
        };
        (ticket.minted_from, principal.scopes)
    } else {
        (Some(client), ScopeSet::ALL)
    };
    if let (Some(c), Some(held)) = (&connection, client_share) {
        c.keep_client(held);
    }
    let admission = session::Admission {
        expected: TokenHash::of(&credential),
        connection,
        unauthenticated: (unauthenticated, by_key, by_account),
        started,
        client: checked_from,
        limit,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let st = state.clone();
    state.shutdown.tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                let ws =
                    WebSocketStream::from_raw_socket(io, Role::Server, Some(st.ws_config())).await;
                // The session gets a task of its own, sized for a long idle life; this one ends.
                let tracker = st.shutdown.tracker.clone();
                tracker.spawn(session::run(ws, principal, admission, st));
            }
            Err(e) => tracing::debug!(error = %e, "upgrade did not complete"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Full::default())
        .map_err(|_| ApiError::internal())
}

/// With an allowlist configured, a browser's `Origin` must be on it (exact match). Clients
/// that send no `Origin` (servers, CLIs) are not browsers and are allowed.
fn check_origin(headers: &HeaderMap, allowed: &[String], state: &AppState) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    if allowed.is_empty() || origin.to_str().is_ok_and(|o| allowed.iter().any(|a| a == o)) {
        return Ok(());
    }
    state.metrics.refused("origin_not_allowed");
    Err(ApiError::origin_not_allowed())
}

/// 429 when the key or its account already holds its cap of open connections.
async fn check_caps(state: &AppState, principal: &Principal) -> Result<(), ApiError> {
    let outcome =
        slots::check(state.slots.as_ref(), &principal.key_id, &principal.account, state.caps())
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "connection slots unavailable");
                ApiError::store_unavailable()
            })?;
    outcome.map_err(|full| {
        let (limit, what) = match full {
            slots::Full::Key => ("connections_per_key", "this key"),
            slots::Full::Account => ("connections_per_account", "this account"),
        };
        state.metrics.rate_limited(limit);
        ApiError::rate_limited(1).with_message(format!("Too many open connections for {what}."))
    })
}

/// The first value of `name` in a query string, percent-decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// Validates the RFC 6455 handshake headers and returns `Sec-WebSocket-Accept`.
fn websocket_accept(version: Version, headers: &HeaderMap) -> Result<String, ApiError> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token(header::UPGRADE, "websocket") {
        return Err(ApiError::upgrade_required());
    }
    if version < Version::HTTP_11 || !has_token(header::CONNECTION, "upgrade") {
        return Err(ApiError::invalid_upgrade("`Connection: Upgrade` over HTTP/1.1 is required."));
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13")) {
        return Err(ApiError::unsupported_websocket_version());
    }
    let key =
        headers.get(header::SEC_WEBSOCKET_KEY).filter(|k| k.len() == 24).ok_or_else(|| {
            ApiError::invalid_upgrade("A valid `Sec-WebSocket-Key` is required.")
                .with_param("Sec-WebSocket-Key")
        })?;
    Ok(derive_accept_key(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_found_and_decoded() {
        assert_eq!(query_param(Some("a=1&token=mt%5Ftest&x"), "token").as_deref(), Some("mt_test"));
        assert_eq!(query_param(Some("a=1"), "token"), None);
        assert_eq!(query_param(None, "token"), None);
    }

    #[test]
    fn handshake_headers_are_checked() {
        let mut h = HeaderMap::new();
        assert_eq!(websocket_accept(Version::HTTP_11, &h).unwrap_err().code, "upgrade_required");
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert_eq!(
            websocket_accept(Version::HTTP_11, &h).unwrap_err().code,
            "unsupported_websocket_version"
        );
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="));
        // RFC 6455 §1.3's worked example.
        assert_eq!(websocket_accept(Version::HTTP_11, &h).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(websocket_accept(Version::HTTP_10, &h).is_err());
    }
}
