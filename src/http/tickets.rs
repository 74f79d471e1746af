//! `POST /v1/ws/tickets`: a key with any `*.read` scope mints a single-use, 60-second ticket
//! for a browser to connect with `/v1/ws?ticket=` (SPEC §3).
//!
//! May use: auth, tickets, body, error.

use std::{net::IpAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response, StatusCode};
use serde_json::json;
use time::format_description::well_known::Rfc3339;

use super::{api_keys, body};
use crate::{error::ApiError, state::AppState, tickets};

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
    let obj = api_keys::object(body::read_json(req, state.config.max_body_bytes).await?)?;
    api_keys::only_known(&obj, &[])?;
    let (ticket, expires_at) =
        tickets::mint(state.auth.tickets().as_ref(), &caller, state.config.ticket_ttl).await?;
    let expires_at = expires_at.format(&Rfc3339).map_err(|_| ApiError::internal())?;
    Ok(body::json(
        StatusCode::CREATED,
        &json!({"object": "ws_ticket", "ticket": ticket.expose(), "expires_at": expires_at}),
    ))
}
