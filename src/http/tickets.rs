//! `POST /v1/ws/tickets`: a key with any `*.read` scope mints a single-use, 60-second ticket
//! for a browser to connect with `/v1/ws?ticket=` (SPEC §3).
//!
//! `{"scopes": ["tasks.read"]}` narrows the ticket to some of the key's read scopes. The
//! minting request is checked against the key's IP allowlist (the redeeming browser is not).
//!
//! May use: state, auth, keys (`Principal`), tickets, body, error, scope.

use std::{net::IpAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response, StatusCode};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;

use super::{api_keys, body};
use crate::{
    error::ApiError,
    keys::Principal,
    scope::{parse_scopes, Scope},
    state::AppState,
    tickets,
};

pub async fn handle(
    req: Request<Incoming>,
    client: IpAddr,
    state: &Arc<AppState>,
) -> Response<Full<Bytes>> {
    match mint(req, client, state).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn mint(
    req: Request<Incoming>,
    client: IpAddr,
    state: &Arc<AppState>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let caller = state.auth.authenticate(body::bearer(&req), client).await?;
    if caller.scopes.read_topics().is_empty() {
        state.metrics.auth_failure("insufficient_scope");
        return Err(ApiError::insufficient_scope("*.read")
            .with_message("A ticket needs a key with at least one `*.read` scope."));
    }
    let obj = api_keys::object(body::read_json(req, body::Limits::of(&state.config)).await?)?;
    api_keys::only_known(&obj, &["scopes"])?;
    let narrowed = match obj.get("scopes") {
        None | Some(Value::Null) => None,
        Some(v) => Some(narrow(&caller, v)?),
    };
    let (ticket, expires_at) = tickets::mint(
        state.auth.tickets().as_ref(),
        &caller,
        client,
        state.config.ticket_ttl,
        narrowed.clone(),
    )
    .await?;
    let expires_at = expires_at.format(&Rfc3339).map_err(|_| ApiError::internal())?;
    let carried = narrowed.unwrap_or_else(|| {
        caller.scopes.to_vec().into_iter().filter(|s| s.read_topic().is_some()).collect()
    });
    let mut scopes: Vec<&str> = carried.iter().map(|s| s.as_str()).collect();
    scopes.sort_unstable();
    Ok(body::json(
        StatusCode::CREATED,
        &json!({"object": "ws_ticket", "ticket": ticket.expose(), "expires_at": expires_at, "scopes": scopes}),
    ))
}

/// The read scopes a ticket is narrowed to: a non-empty list of `*.read` scopes the caller
/// holds (an unknown one is 400, a write scope 400 `invalid_param`, one not held 403).
fn narrow(caller: &Principal, v: &Value) -> Result<Vec<Scope>, ApiError> {
    let names = v
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            ApiError::invalid_param("scopes", "`scopes` must be a non-empty array of read scopes.")
        })?
        .iter()
        .map(|n| {
            n.as_str().map(str::to_owned).ok_or_else(|| {
                ApiError::invalid_param("scopes", "`scopes` must contain scope names.")
            })
        })
        .collect::<Result<Vec<String>, ApiError>>()?;
    let scopes = parse_scopes(&names).map_err(|e| ApiError::unknown_scope(&e.0))?;
    if let Some(w) = scopes.iter().find(|s| s.read_topic().is_none()) {
        return Err(ApiError::invalid_param(
            "scopes",
            format!("A ticket only carries read scopes; `{}` is not one.", w.as_str()),
        ));
    }
    if let Some(missing) = scopes.iter().find(|s| !caller.has(**s)) {
        return Err(ApiError::scope_escalation(missing.as_str()));
    }
    let mut scopes = scopes;
    scopes.sort_by_key(|s| s.as_str());
    scopes.dedup();
    Ok(scopes)
}
