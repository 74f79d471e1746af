//! The body of `PATCH /v1/api-keys/{id}` (SPEC §3, §8): any of `name`, `scopes`,
//! `ip_allowlist`, `expires_at`, each checked like at creation; `expires_at: null` clears the
//! expiry, `ip_allowlist: null` or `[]` allows any address. Anything else is 400 with `param`.
//!
//! May use: api_keys (its field parsers), error, keys::service; scope in its tests.

use serde_json::Value;

use super::api_keys::{
    object, only_known, parse_cidr, parse_scopes, parse_time, MAX_CIDRS, MAX_NAME_CHARS,
};
use crate::{error::ApiError, keys::service::Changes};

/// The changes a PATCH body asks for (an empty object asks for none).
pub fn parse(v: Value) -> Result<Changes, ApiError> {
    let obj = object(v)?;
    only_known(&obj, &["name", "scopes", "ip_allowlist", "expires_at"])?;
    let mut changes = Changes::default();
    if let Some(v) = obj.get("name") {
        changes.name = Some(match v {
            Value::String(s) if s.trim().is_empty() => {
                return Err(ApiError::invalid_param("name", "`name` cannot be empty."))
            }
            Value::String(s) if s.trim().chars().count() > MAX_NAME_CHARS => {
                return Err(ApiError::invalid_param(
                    "name",
                    format!("`name` must be at most {MAX_NAME_CHARS} characters."),
                ))
            }
            Value::String(s) => s.trim().to_owned(),
            _ => return Err(ApiError::invalid_param("name", "`name` must be a string.")),
        });
    }
    if let Some(v) = obj.get("scopes") {
        changes.scopes = Some(match v {
            Value::Array(a) if a.is_empty() => {
                return Err(ApiError::invalid_param(
                    "scopes",
                    "`scopes` must list at least one scope (revoke a key to stop it).",
                ))
            }
            Value::Array(a) => parse_scopes(a)?,
            _ => {
                return Err(ApiError::invalid_param(
                    "scopes",
                    "`scopes` must be an array of scope names.",
                ))
            }
        });
    }
    if let Some(v) = obj.get("ip_allowlist") {
        changes.ip_allowlist = Some(match v {
            Value::Null => Vec::new(),
            Value::Array(a) if a.len() > MAX_CIDRS => {
                return Err(ApiError::invalid_param(
                    "ip_allowlist",
                    format!("At most {MAX_CIDRS} networks."),
                ))
            }
            Value::Array(a) => a.iter().map(parse_cidr).collect::<Result<_, _>>()?,
            _ => {
                return Err(ApiError::invalid_param(
                    "ip_allowlist",
                    "`ip_allowlist` must be an array of CIDRs, or null.",
                ))
            }
        });
    }
    if let Some(v) = obj.get("expires_at") {
        // A time already past is allowed: the key expires (and its streams close) at once.
        changes.expires_at = Some(match v {
            Value::Null => None,
            v => Some(parse_time(v)?),
        });
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::Scope;
    use serde_json::json;

    fn err(v: Value) -> (&'static str, Option<String>) {
        let e = parse(v).unwrap_err();
        (e.code, e.param)
    }

    #[test]
    fn each_field_is_optional_and_null_clears_expiry_and_allowlist() {
        assert!(parse(json!({})).unwrap().is_empty());
        let c = parse(json!({"name": " n ", "scopes": ["tasks.read", "tasks.read"], "ip_allowlist": ["10.1.2.3/8"], "expires_at": 4102444800i64})).unwrap();
        assert_eq!(c.name.as_deref(), Some("n"));
        assert_eq!(c.scopes, Some(vec![Scope::TasksRead]));
        assert_eq!(c.ip_allowlist, Some(vec!["10.0.0.0/8".parse().unwrap()]));
        assert!(c.expires_at.is_some_and(|e| e.is_some()));
        let cleared = parse(json!({"expires_at": null, "ip_allowlist": null})).unwrap();
        assert_eq!((cleared.expires_at, cleared.ip_allowlist), (Some(None), Some(vec![])));
        assert!(parse(json!({"expires_at": "2001-01-01T00:00:00Z"})).is_ok(), "expire now");
    }

    #[test]
    fn bad_values_and_unknown_fields_name_their_param() {
        let p = |s: &str| Some(s.to_owned());
        assert_eq!(err(json!({"admin": true})), ("unknown_param", p("admin")));
        assert_eq!(err(json!({"environment": "live"})), ("unknown_param", p("environment")));
        assert_eq!(err(json!({"name": ""})), ("invalid_param", p("name")));
        assert_eq!(err(json!({"name": null})), ("invalid_param", p("name")));
        assert_eq!(err(json!({"name": "x".repeat(201)})), ("invalid_param", p("name")));
        assert_eq!(err(json!({"scopes": []})), ("invalid_param", p("scopes")));
        assert_eq!(err(json!({"scopes": null})), ("invalid_param", p("scopes")));
        assert_eq!(err(json!({"scopes": "tasks.read"})), ("invalid_param", p("scopes")));
        assert_eq!(err(json!({"scopes": ["tasks.admin"]})).0, "unknown_scope");
        assert_eq!(err(json!({"ip_allowlist": ["10.0.0.0/33"]})).0, "invalid_cidr");
        assert_eq!(
            err(json!({"ip_allowlist": "10.0.0.0/8"})),
            ("invalid_param", p("ip_allowlist"))
        );
        assert_eq!(err(json!({"expires_at": "tomorrow"})), ("invalid_param", p("expires_at")));
        assert_eq!(err(json!({"expires_at": true})), ("invalid_param", p("expires_at")));
        assert_eq!(err(json!(["name"])).0, "invalid_json");
    }
}
