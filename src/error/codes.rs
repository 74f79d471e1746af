//! One constructor per error code of SPEC §3 (and the few this server adds).
//!
//! May use: the parent module.  Never: I/O.

use hyper::StatusCode;

use super::{ApiError, AUTHENTICATION, INVALID_REQUEST, PERMISSION};

impl ApiError {
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

    // --- requests hyper cannot parse (its bodiless answers, replaced by `conn_io`) ---
    pub fn malformed_request() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "malformed_request",
            "The request is not valid HTTP/1.1: a malformed request line or header, or a \
             conflicting or unsupported Content-Length / Transfer-Encoding.",
        )
    }
    pub fn headers_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            INVALID_REQUEST,
            "headers_too_large",
            format!("The request line and headers exceed {limit} bytes."),
        )
    }
    pub fn uri_too_long() -> Self {
        Self::new(StatusCode::URI_TOO_LONG, INVALID_REQUEST, "uri_too_long", "The URI is too long.")
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

    pub fn live_key_in_browser() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            PERMISSION,
            "live_key_in_browser",
            "A production (mt_live_) key may not be used from a browser: mint a ticket on your \
             backend (POST /v1/ws/tickets) and connect with ?ticket=.",
        )
    }
    pub fn key_limit_reached(limit: usize) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "key_limit_reached",
            format!("This account already holds {limit} keys: revoke some before creating more."),
        )
    }
    pub fn body_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            INVALID_REQUEST,
            "request_timeout",
            "The request body arrived too slowly.",
        )
    }
    pub fn request_timeout() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "request_timeout",
            "The request took too long to answer; retry later.",
        )
    }
}
