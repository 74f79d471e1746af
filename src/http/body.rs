//! Request bodies in and JSON responses out: content type (415), size limit (413) and
//! JSON parsing (400 `invalid_json`) for every endpoint alike.
//!
//! Owns: body limits and the JSON response helper.  May use: error, http-body-util, serde.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, header, Request, Response, StatusCode};
use serde::{de::DeserializeOwned, Serialize};

use crate::error::ApiError;

/// Reads and parses a JSON body of at most `limit` bytes. An empty body reads as `{}` (for
/// POSTs whose parameters are all optional).
pub async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
    limit: usize,
) -> Result<T, ApiError> {
    let content_type =
        req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::body_too_large(limit));
    }
    let bytes = Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::body_too_large(limit)
            } else {
                ApiError::invalid_json("the body could not be read")
            }
        })?
        .to_bytes();
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
