//! Domain errors as API errors: the one place where a refusal of `auth`, the rate limits, the
//! key service or a store becomes its SPEC status, code and message. The domain modules never
//! name an HTTP status; `?` in a handler (and in `ws::upgrade`, the WebSocket's HTTP request:
//! trait impls hold crate-wide) converts through these impls.
//!
//! Owns: the mapping.  May use: error, auth, rate_limit, keys (their error enums).
//! Never: decide a refusal. Invariants: `AuthError::code` is the code it maps to.

use crate::{
    auth::AuthError,
    error::ApiError,
    keys::{service::KeyError, StoreError},
    rate_limit::Limited,
};

impl From<StoreError> for ApiError {
    /// The one mapping of store failures to API errors (logged here, once).
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::resource_missing("API key"),
            StoreError::Revoked => {
                ApiError::invalid_param("id", "A revoked key cannot be rotated.")
                    .with_code("key_revoked")
            }
            StoreError::Unavailable(_) | StoreError::Contended => {
                tracing::error!(error = %e, "key store unavailable");
                ApiError::store_unavailable()
            }
            StoreError::RedisDown(_) => {
                tracing::warn!(error = %e, "redis unavailable");
                ApiError::broker_unavailable()
            }
            StoreError::NotAnnounced(_) => ApiError::broker_unavailable().with_message(
                "The change is stored but could not be announced to every node yet; retry the request.",
            ),
            StoreError::Locked(_) | StoreError::Corrupt(_) => {
                tracing::error!(error = %e, "key store failed");
                ApiError::internal()
            }
        }
    }
}

impl From<Limited> for ApiError {
    fn from(e: Limited) -> Self {
        let message = match e {
            Limited::AuthFailures { .. } => {
                "Too many failed authentications from this address; retry later."
            }
            Limited::NewConnections { .. } => "This key opens connections too fast; retry later.",
        };
        ApiError::rate_limited(e.retry_after()).with_message(message)
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing => ApiError::missing_api_key(),
            AuthError::Invalid => ApiError::invalid_api_key(),
            AuthError::InvalidTicket => {
                ApiError::invalid_api_key().with_message("Invalid, expired or already used ticket.")
            }
            AuthError::Revoked => ApiError::revoked_api_key(),
            AuthError::Expired => ApiError::expired_api_key(),
            AuthError::IpNotAllowed => ApiError::ip_not_allowed(),
            AuthError::LockedOut(limited) => limited.into(),
            AuthError::Store(e) => e.into(),
        }
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::EnvironmentMismatch(env) => {
                ApiError::environment_mismatch(format!("A {env} key can only create {env} keys."))
                    .with_param("environment")
            }
            KeyError::ScopeEscalation(scope) => ApiError::scope_escalation(scope.as_str()),
            KeyError::OutlivesCaller => ApiError::scope_escalation("expires_at").with_message(
                "A key cannot outlive the key that creates, rotates or updates it: set `expires_at` no later than the caller's.",
            ),
            KeyError::OutsideCallersAllowlist => ApiError::scope_escalation("ip_allowlist").with_message(
                "A key restricted by an IP allowlist can only mint keys restricted to networks inside it.",
            ),
            KeyError::KeyLimitReached(n) => ApiError::key_limit_reached(n),
            KeyError::CallerUnknown => ApiError::invalid_api_key(),
            KeyError::NotFound => ApiError::resource_missing("API key"),
            KeyError::Revoked => ApiError::invalid_param("id", "A revoked key cannot be updated.")
                .with_code("key_revoked"),
            KeyError::Expired => {
                ApiError::invalid_param("id", "An expired key cannot be updated.")
                    .with_code("key_expired")
            }
            KeyError::Store(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_auth_error() -> Vec<AuthError> {
        let store = || {
            vec![
                StoreError::Locked("x".into()),
                StoreError::Unavailable("x".into()),
                StoreError::RedisDown("x".into()),
                StoreError::Corrupt("x".into()),
                StoreError::NotFound,
                StoreError::Revoked,
                StoreError::Contended,
                StoreError::NotAnnounced("x".into()),
            ]
        };
        let mut all = vec![
            AuthError::Missing,
            AuthError::Invalid,
            AuthError::InvalidTicket,
            AuthError::Revoked,
            AuthError::Expired,
            AuthError::IpNotAllowed,
            AuthError::LockedOut(Limited::AuthFailures { retry_after: 7 }),
        ];
        all.extend(store().into_iter().map(AuthError::Store));
        all
    }

    #[test]
    fn an_auth_failure_is_counted_under_the_code_it_answers_with() {
        for e in every_auth_error() {
            let code = e.code();
            let api = ApiError::from(e);
            assert_eq!(api.code, code, "{api:?}");
        }
    }

    #[test]
    fn rate_limits_answer_429_with_their_retry_after() {
        let e = ApiError::from(Limited::NewConnections { retry_after: 3 });
        assert_eq!((e.status.as_u16(), e.code, e.retry_after_secs), (429, "rate_limited", Some(3)));
        let e = ApiError::from(AuthError::LockedOut(Limited::AuthFailures { retry_after: 0 }));
        assert_eq!(e.retry_after_secs, Some(1), "never `Retry-After: 0`");
        assert!(e.message.contains("failed authentications"), "{}", e.message);
    }
}
