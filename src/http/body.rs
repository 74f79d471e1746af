//! Request bodies in and JSON responses out: content type (415), size limit (413), read
//! timeout and minimum rate (408, so slow uploads cannot hold connections) and JSON parsing
//! (400 `invalid_json`) for every endpoint alike.
//!
//! Owns: body limits and the JSON response helper.  May use: config, error, http-body-util,
//! serde.

use bytes::Bytes;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, header, Request, Response, StatusCode};
use serde::{de::DeserializeOwned, Serialize};
use tokio::time::Instant;

use crate::{config::Config, error::ApiError};

/// How a body must arrive: at most `max_bytes`, within `read_timeout`, and (after a short
/// grace) no slower than `min_bytes_per_second`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: usize,
    pub read_timeout: Duration,
    pub min_bytes_per_second: usize,
}

impl Limits {
    pub fn of(config: &Config) -> Self {
        Self {
            max_bytes: config.max_body_bytes,
            read_timeout: config.body_read_timeout,
            min_bytes_per_second: config.min_body_bytes_per_second,
        }
    }

    /// When the byte after `received` must have arrived.
    fn next_deadline(&self, start: Instant, received: usize) -> Instant {
        let by_timeout = start + self.read_timeout;
        if self.min_bytes_per_second == 0 {
            return by_timeout;
        }
        let secs = (received + 1) as f64 / self.min_bytes_per_second as f64;
        let by_rate = start + RATE_GRACE + Duration::from_secs_f64(secs.min(3600.0));
        by_rate.min(by_timeout)
    }
}

/// A slow start (connection set-up, a first packet) is not a trickle.
const RATE_GRACE: Duration = Duration::from_secs(2);

/// Reads a body within `limits` (413 when too large, 408 when too slow).
async fn read_bytes(req: Request<Incoming>, limits: Limits) -> Result<Bytes, ApiError> {
    let limit = limits.max_bytes;
    let mut body = req.into_body();
    let (start, mut out) = (Instant::now(), Vec::new());
    loop {
        let frame = tokio::time::timeout_at(limits.next_deadline(start, out.len()), body.frame())
            .await
            .map_err(|_| ApiError::body_timeout())?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|_| ApiError::invalid_json("the body could not be read"))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(ApiError::body_too_large(limit));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(out))
}

/// Reads and parses a JSON body within `limits`. An empty body reads as `{}` (for
/// POSTs whose parameters are all optional).
pub async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
    limits: Limits,
) -> Result<T, ApiError> {
    let content_type =
        req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_bytes as u64) {
        return Err(ApiError::body_too_large(limits.max_bytes));
    }
    let bytes = read_bytes(req, limits).await?;
    if bytes.is_empty() {
        return serde_json::from_slice(b"{}").map_err(ApiError::invalid_json);
    }
    if !content_type.as_deref().is_some_and(is_json) {
        return Err(ApiError::unsupported_media_type());
    }
    serde_json::from_slice(&bytes).map_err(ApiError::invalid_json)
}

fn is_json(content_type: &str) -> bool {
    let mime = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// A JSON response with `status`.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = match serde_json::to_vec(value) {
        Ok(b) => b,
        Err(_) => return ApiError::internal().into_response(),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    resp
}

/// The credential of an `Authorization: Bearer <credential>` header.
pub fn bearer(req: &Request<Incoming>) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
    }
}
