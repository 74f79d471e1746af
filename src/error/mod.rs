//! `ApiError`: the one HTTP error of SPEC §3, with a constructor per code and the single
//! place that turns it into a JSON response with its `WWW-Authenticate`/`Retry-After` headers.
//!
//! The constructors, one per code, are in `codes`.
//!
//! Owns: error types, codes and the JSON envelope.  May use: hyper, serde_json.
//! Never: I/O. Invariants: every error body is `{"error":{type,code,message,param?}}`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Response, StatusCode};
use serde::Serialize;

mod codes;

/// An HTTP API error: status, type, code, message and optional `param`.
/// The `code` of an error response, kept in its extensions for the access and refusal logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub retry_after_secs: Option<u64>,
    /// The `Allow` header of a 405: the methods the path accepts.
    pub allow: Option<&'static str>,
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

pub(crate) const INVALID_REQUEST: &str = "invalid_request_error";
pub(crate) const AUTHENTICATION: &str = "authentication_error";
pub(crate) const PERMISSION: &str = "permission_error";

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            message: message.into(),
            param: None,
            retry_after_secs: None,
            allow: None,
        }
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

    /// A 405 that names the methods the path accepts (`Allow`).
    pub fn with_allow(mut self, methods: &'static str) -> Self {
        self.allow = Some(methods);
        self
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
        if let Some(methods) = self.allow {
            b = b.header(header::ALLOW, methods);
        }
        if let Some(secs) = self.retry_after_secs {
            b = b.header(header::RETRY_AFTER, secs.to_string());
        }
        if self.status == StatusCode::UPGRADE_REQUIRED {
            b = b.header(header::UPGRADE, "websocket").header(header::SEC_WEBSOCKET_VERSION, "13");
        }
        let body = Full::new(Bytes::from(self.body()));
        b = b.extension(ErrorCode(self.code));
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
