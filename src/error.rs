//! `ApiError`: the one HTTP error of SPEC §3, with a constructor per code and the single
//! place that turns it into a JSON response with its `WWW-Authenticate`/`Retry-After` headers.
//!
//! Owns: error types, codes and the JSON envelope.  May use: http types, serde_json.
//! Never: I/O. Invariants: every error body is `{"error":{type,code,message,param?}}`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Response, StatusCode};
use serde::Serialize;

/// An HTTP API error: status, type, code, message and optional `param`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub retry_after_secs: Option<u64>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    param: Option<&'a str>,
}

const INVALID_REQUEST: &str = "invalid_request_error";
const AUTHENTICATION: &str = "authentication_error";
const PERMISSION: &str = "permission_error";

impl ApiError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self { status, kind, code, message: message.into(), param: None, retry_after_secs: None }
    }

    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    // --- 400 ---
    pub fn invalid_json(detail: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "invalid_json",
            format!("Request body is not valid JSON for this endpoint: {detail}"),
        )
    }
    pub fn unknown_scope(scope: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "unknown_scope",
            format!("Unknown scope `{scope}`."),
        )
        .with_param(scope)
    }
    pub fn missing_param(param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "missing_param",
            format!("Missing required parameter `{param}`."),
        )
        .with_param(param)
    }
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, INVALID_REQUEST, "invalid_param", message)
            .with_param(param)
    }
    pub fn unknown_param(param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "unknown_param",
            format!("Unknown parameter `{param}`."),
        )
        .with_param(param)
    }
    pub fn invalid_cidr(value: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "invalid_cidr",
            format!("`{value}` is not a valid IPv4 or IPv6 CIDR."),
        )
        .with_param("ip_allowlist")
    }
    pub fn invalid_upgrade(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, INVALID_REQUEST, "invalid_upgrade", message)
    }

    // --- 401 ---
    pub fn missing_api_key() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, AUTHENTICATION, "missing_api_key", "No API key provided. Pass it as `Authorization: Bearer <key>` (HTTP) or `?token=<key>` (WebSocket).")
    }
    pub fn invalid_api_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            AUTHENTICATION,
            "invalid_api_key",
            "Invalid API key provided.",
        )
    }
    pub fn expired_api_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            AUTHENTICATION,
            "expired_api_key",
            "This API key has expired.",
        )
    }
    pub fn revoked_api_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            AUTHENTICATION,
            "revoked_api_key",
            "This API key has been revoked.",
        )
    }
    pub fn invalid_admin_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            AUTHENTICATION,
            "invalid_api_key",
            "Missing or invalid admin token.",
        )
    }

    // --- 403 ---
    pub fn insufficient_scope(scope: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            PERMISSION,
            "insufficient_scope",
            format!("This API key lacks the `{scope}` scope."),
        )
        .with_param(scope)
    }
    pub fn ip_not_allowed() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            PERMISSION,
            "ip_not_allowed",
            "Requests from this IP address are not allowed for this API key.",
        )
    }
    pub fn environment_mismatch(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, PERMISSION, "environment_mismatch", message)
    }
    pub fn scope_escalation(scope: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            PERMISSION,
            "scope_escalation",
            format!("Cannot grant `{scope}`: the calling key does not hold it."),
        )
        .with_param(scope)
    }

    // --- 404 / 405 / 413 / 415 / 426 ---
    pub fn resource_missing(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            INVALID_REQUEST,
            "resource_missing",
            format!("No such {what}."),
        )
    }
    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            INVALID_REQUEST,
            "resource_missing",
            "Unrecognized request URL.",
        )
    }
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            INVALID_REQUEST,
            "method_not_allowed",
            "This method is not allowed on this URL.",
        )
    }
    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            INVALID_REQUEST,
            "body_too_large",
            format!("Request body exceeds {limit} bytes."),
        )
    }
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            INVALID_REQUEST,
            "unsupported_media_type",
            "Request body must be `Content-Type: application/json`.",
        )
    }
    pub fn unsupported_websocket_version() -> Self {
        Self::new(
            StatusCode::UPGRADE_REQUIRED,
            INVALID_REQUEST,
            "unsupported_websocket_version",
            "Only WebSocket version 13 is supported (`Sec-WebSocket-Version: 13`).",
        )
        .with_param("Sec-WebSocket-Version")
    }
    pub fn upgrade_required() -> Self {
        Self::new(
            StatusCode::UPGRADE_REQUIRED,
            INVALID_REQUEST,
            "upgrade_required",
            "This endpoint only speaks WebSocket: send a GET with `Upgrade: websocket`.",
        )
    }

    // --- 429 / 5xx ---
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limited",
            "Too many requests; retry later.",
        );
        e.retry_after_secs = Some(retry_after_secs.max(1));
        e
    }
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "internal_error",
            "An internal error occurred.",
        )
    }
    pub fn store_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "store_unavailable",
            "The key store is unavailable; retry later.",
        )
    }
    pub fn overloaded() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "overloaded",
            "This node has too many open connections; retry later or elsewhere.",
        );
        e.retry_after_secs = Some(1);
        e
    }
    pub fn origin_not_allowed() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            PERMISSION,
            "origin_not_allowed",
            "This Origin may not open WebSocket connections.",
        )
    }
    pub fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "shutting_down",
            "The server is shutting down; reconnect to another node.",
        )
    }
    pub fn broker_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "broker_unavailable",
            "The event broker is unavailable; retry later.",
        )
    }

    /// The JSON body, `{"error":{...}}`.
    pub fn body(&self) -> String {
        let env = Envelope {
            error: Body {
                kind: self.kind,
                code: self.code,
                message: &self.message,
                param: self.param.as_deref(),
            },
        };
        serde_json::to_string(&env).unwrap_or_else(|_| {
            String::from(
                "{\"error\":{\"type\":\"api_error\",\"code\":\"internal_error\",\"message\":\"\"}}",
            )
        })
    }

    /// The response: status, JSON body and the headers SPEC §3 and RFC 6750 ask for.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut b = Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-store");
        if self.status == StatusCode::UNAUTHORIZED {
            b = b.header(
                header::WWW_AUTHENTICATE,
                "Bearer realm=\"miteos\", error=\"invalid_token\"",
            );
        }
        if self.code == "insufficient_scope" {
            let scope = self.param.as_deref().unwrap_or_default();
            b = b.header(
                header::WWW_AUTHENTICATE,
                format!("Bearer realm=\"miteos\", error=\"insufficient_scope\", scope=\"{scope}\""),
            );
        }
        if let Some(secs) = self.retry_after_secs {
            b = b.header(header::RETRY_AFTER, secs.to_string());
        }
        if self.status == StatusCode::UPGRADE_REQUIRED {
            b = b.header(header::UPGRADE, "websocket").header(header::SEC_WEBSOCKET_VERSION, "13");
        }
        let body = Full::new(Bytes::from(self.body()));
        b.body(body.clone()).unwrap_or_else(|_| Response::new(body))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_spec_shape() {
        let v: serde_json::Value =
            serde_json::from_str(&ApiError::unknown_scope("x.y").body()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "unknown_scope");
        assert_eq!(v["error"]["param"], "x.y");
        let v: serde_json::Value =
            serde_json::from_str(&ApiError::invalid_api_key().body()).unwrap();
        assert!(v["error"].get("param").is_none());
    }

    #[test]
    fn headers_follow_rfc6750_and_retry_after() {
        let r = ApiError::missing_api_key().into_response();
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"miteos\", error=\"invalid_token\""
        );
        let r = ApiError::insufficient_scope("teams.write").into_response();
        assert!(r.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains("scope=\"teams.write\""));
        let r = ApiError::rate_limited(0).into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
