//! `/v1/api-keys`: create, list, get, update, revoke, rotate (SPEC §3), authenticated with
//! `Authorization: Bearer <key>` and acting only inside the caller's account and environment.
//!
//! Owns: request parsing and validation for these endpoints (every error in the one shape).
//! May use: state, auth, keys, keys::service, ids,
//! scope, error, body.  Never: return a secret except in the 201 of
//! create and rotate.

use std::{net::IpAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Method, Request, Response, StatusCode};
use ipnet::IpNet;
use serde_json::{json, Map, Value};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use super::{body, key_update};
use crate::{
    error::ApiError,
    ids::KeyId,
    keys::service::{CreateRequest, MAX_GRACE_SECONDS},
    keys::Principal,
    scope::{Environment, Scope},
    state::AppState,
};

pub(super) const MAX_NAME_CHARS: usize = 200;
pub(super) const MAX_CIDRS: usize = 100;
/// Page size of `GET /v1/api-keys`: the default and the largest `limit`.
pub const MAX_PAGE: usize = 100;

/// `?limit=&starting_after=` of a list request.
struct Page {
    limit: usize,
    starting_after: Option<KeyId>,
}

fn parse_page(query: Option<&str>) -> Result<Page, ApiError> {
    let mut page = Page { limit: MAX_PAGE, starting_after: None };
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "limit" => {
                page.limit =
                    v.parse().ok().filter(|n| (1..=MAX_PAGE).contains(n)).ok_or_else(|| {
                        ApiError::invalid_param(
                            "limit",
                            format!("`limit` must be 1 to {MAX_PAGE}."),
                        )
                    })?;
            }
            "starting_after" => {
                page.starting_after = Some(KeyId::parse(&v).ok_or_else(|| {
                    ApiError::invalid_param("starting_after", "`starting_after` must be a key id.")
                })?);
            }
            other => return Err(ApiError::unknown_param(other)),
        }
    }
    Ok(page)
}

/// Which endpoint a path names.
enum Route {
    Collection,
    /// `None`: not a well-formed key id (404 after authentication, like a missing key).
    Key(Option<KeyId>),
    Rotate(Option<KeyId>),
}

fn route(path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/v1/api-keys")?;
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [] => Some(Route::Collection),
        [id] => Some(Route::Key(KeyId::parse(id))),
        [id, "rotate"] => Some(Route::Rotate(KeyId::parse(id))),
        _ => None,
    }
}

pub async fn handle(
    req: Request<Incoming>,
    client: IpAddr,
    state: &Arc<AppState>,
) -> Response<Full<Bytes>> {
    match dispatch(req, client, state).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn dispatch(
    req: Request<Incoming>,
    client: IpAddr,
    state: &Arc<AppState>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let route = route(req.uri().path()).ok_or_else(ApiError::not_found)?;
    let method = req.method().clone();
    let needs = match (&route, &method) {
        (Route::Collection, &Method::GET) | (Route::Key(_), &Method::GET) => Scope::TeamsRead,
        (Route::Collection, &Method::POST)
        | (Route::Key(_), &Method::DELETE | &Method::PATCH)
        | (Route::Rotate(_), &Method::POST) => Scope::TeamsWrite,
        (Route::Collection, _) => {
            return Err(ApiError::method_not_allowed().with_allow("GET, POST"));
        }
        (Route::Key(_), _) => {
            return Err(ApiError::method_not_allowed().with_allow("GET, PATCH, DELETE"))
        }
        (Route::Rotate(_), _) => return Err(ApiError::method_not_allowed().with_allow("POST")),
    };
    let caller = authorize(&req, client, state, needs).await?;
    let keys = &state.keys;
    let limit = body::Limits::of(&state.config);
    match (route, method) {
        (Route::Collection, Method::POST) => {
            let req = parse_create(body::read_json(req, limit).await?)?;
            let created = keys.create_for(&caller, req).await?;
            tracing::info!(key_id = %created.record.id, by = %caller.key_id, "api key created");
            Ok(body::json(StatusCode::CREATED, &created.to_json()))
        }
        (Route::Collection, _) => {
            let page = parse_page(req.uri().query())?;
            let list = keys.list_for(&caller).await?;
            let start = match &page.starting_after {
                None => 0,
                Some(id) => match list.iter().position(|r| r.id == *id) {
                    Some(i) => i + 1,
                    None => {
                        return Err(ApiError::invalid_param(
                            "starting_after",
                            "`starting_after` must be the id of a key in this list.",
                        ))
                    }
                },
            };
            let rest = &list[start..];
            let data: Vec<_> = rest.iter().take(page.limit).map(|r| r.view()).collect();
            let has_more = rest.len() > page.limit;
            Ok(body::json(
                StatusCode::OK,
                &json!({"object": "list", "data": data, "has_more": has_more}),
            ))
        }
        (Route::Key(None) | Route::Rotate(None), _) => Err(ApiError::resource_missing("API key")),
        (Route::Key(Some(id)), Method::DELETE) => {
            let rec = keys.revoke_for(&caller, &id).await?;
            tracing::info!(key_id = %rec.id, by = %caller.key_id, "api key revoked");
            Ok(body::json(StatusCode::OK, &rec.view()))
        }
        (Route::Key(Some(id)), Method::PATCH) => {
            let changes = key_update::parse(body::read_json(req, limit).await?)?;
            let rec = keys.update_for(&caller, &id, changes).await?;
            tracing::info!(key_id = %rec.id, by = %caller.key_id, "api key updated");
            Ok(body::json(StatusCode::OK, &rec.view()))
        }
        (Route::Key(Some(id)), _) => {
            Ok(body::json(StatusCode::OK, &keys.get_for(&caller, &id).await?.view()))
        }
        (Route::Rotate(Some(id)), _) => {
            let grace = parse_rotate(body::read_json(req, limit).await?)?;
            let created = keys.rotate_for(&caller, &id, grace).await?;
            tracing::info!(key_id = %created.record.id, by = %caller.key_id, grace, "api key rotated");
            Ok(body::json(StatusCode::CREATED, &created.to_json()))
        }
    }
}

/// Authenticates the bearer key from `client` and requires `scope`.
pub async fn authorize(
    req: &Request<Incoming>,
    client: IpAddr,
    state: &AppState,
    scope: Scope,
) -> Result<Principal, ApiError> {
    let caller = state.auth.authenticate(body::bearer(req), client).await?;
    if !caller.has(scope) {
        state.metrics.auth_failure("insufficient_scope");
        return Err(ApiError::insufficient_scope(scope.as_str()));
    }
    Ok(caller)
}

/// Rejects any key of `obj` not in `allowed`.
pub fn only_known(obj: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(ApiError::unknown_param(unknown)),
        None => Ok(()),
    }
}

/// The body as a JSON object.
pub fn object(v: Value) -> Result<Map<String, Value>, ApiError> {
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::invalid_json("the body must be a JSON object")),
    }
}

fn parse_create(v: Value) -> Result<CreateRequest, ApiError> {
    let obj = object(v)?;
    only_known(&obj, &["name", "scopes", "ip_allowlist", "expires_at", "environment"])?;
    let name = match obj.get("name") {
        None | Some(Value::Null) => return Err(ApiError::missing_param("name")),
        Some(Value::String(s)) if s.trim().is_empty() => {
            return Err(ApiError::missing_param("name"))
        }
        Some(Value::String(s)) if s.trim().chars().count() > MAX_NAME_CHARS => {
            return Err(ApiError::invalid_param(
                "name",
                format!("`name` must be at most {MAX_NAME_CHARS} characters."),
            ))
        }
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(_) => return Err(ApiError::invalid_param("name", "`name` must be a string.")),
    };
    let scopes = match obj.get("scopes") {
        None | Some(Value::Null) => return Err(ApiError::missing_param("scopes")),
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::missing_param("scopes")
                .with_message("`scopes` must list at least one scope."))
        }
        Some(Value::Array(a)) => parse_scopes(a)?,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "scopes",
                "`scopes` must be an array of scope names.",
            ))
        }
    };
    let ip_allowlist = match obj.get("ip_allowlist") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) if a.len() > MAX_CIDRS => {
            return Err(ApiError::invalid_param(
                "ip_allowlist",
                format!("At most {MAX_CIDRS} networks."),
            ))
        }
        Some(Value::Array(a)) => a.iter().map(parse_cidr).collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "ip_allowlist",
                "`ip_allowlist` must be an array of CIDRs.",
            ))
        }
    };
    let expires_at = match obj.get("expires_at") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_time(v)?),
    };
    if expires_at.is_some_and(|t| t <= OffsetDateTime::now_utc()) {
        return Err(ApiError::invalid_param("expires_at", "`expires_at` must be in the future."));
    }
    let environment = match obj.get("environment") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.parse::<Environment>().map_err(|_| {
            ApiError::invalid_param("environment", "`environment` must be `live` or `test`.")
        })?),
        Some(_) => {
            return Err(ApiError::invalid_param(
                "environment",
                "`environment` must be `live` or `test`.",
            ))
        }
    };
    Ok(CreateRequest { name, environment, scopes, ip_allowlist, expires_at })
}

pub(super) fn parse_scopes(names: &[Value]) -> Result<Vec<Scope>, ApiError> {
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let Value::String(name) = n else {
            return Err(ApiError::invalid_param(
                "scopes",
                "`scopes` must be an array of scope names.",
            ));
        };
        let scope: Scope = name.parse().map_err(|_| ApiError::unknown_scope(name))?;
        if !out.contains(&scope) {
            out.push(scope);
        }
    }
    Ok(out)
}

pub(super) fn parse_cidr(v: &Value) -> Result<IpNet, ApiError> {
    let Value::String(s) = v else { return Err(ApiError::invalid_cidr(&v.to_string())) };
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| ApiError::invalid_cidr(s))
}

/// RFC 3339 text or Unix seconds.
pub(super) fn parse_time(v: &Value) -> Result<OffsetDateTime, ApiError> {
    let bad = || {
        ApiError::invalid_param(
            "expires_at",
            "`expires_at` must be an RFC 3339 time or Unix seconds.",
        )
    };
    match v {
        Value::String(s) => OffsetDateTime::parse(s, &Rfc3339).map_err(|_| bad()),
        Value::Number(n) => {
            n.as_i64().and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok()).ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

fn parse_rotate(v: Value) -> Result<u64, ApiError> {
    let obj = object(v)?;
    only_known(&obj, &["grace_period_seconds"])?;
    match obj.get("grace_period_seconds") {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n.as_u64().filter(|s| *s <= MAX_GRACE_SECONDS).ok_or_else(|| {
            ApiError::invalid_param(
                "grace_period_seconds",
                format!(
                    "`grace_period_seconds` must be a whole number from 0 to {MAX_GRACE_SECONDS}."
                ),
            )
        }),
        Some(_) => Err(ApiError::invalid_param(
            "grace_period_seconds",
            "`grace_period_seconds` must be a number.",
        )),
    }
}

#[cfg(test)]
#[path = "api_keys_tests.rs"]
mod tests;
