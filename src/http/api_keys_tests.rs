//! Unit tests of `/v1/api-keys` request parsing and routing.

use super::*;

fn create(v: Value) -> Result<CreateRequest, &'static str> {
    parse_create(v).map_err(|e| e.code)
}

#[test]
fn create_validation_codes() {
    let ok = json!({"name": "n", "scopes": ["tasks.read"]});
    assert!(create(ok).is_ok());
    assert_eq!(create(json!({"scopes": ["tasks.read"]})).unwrap_err(), "missing_param");
    assert_eq!(
        create(json!({"name": "  ", "scopes": ["tasks.read"]})).unwrap_err(),
        "missing_param"
    );
    assert_eq!(
        create(json!({"name": "x".repeat(201), "scopes": ["tasks.read"]})).unwrap_err(),
        "invalid_param"
    );
    assert_eq!(create(json!({"name": "n", "scopes": []})).unwrap_err(), "missing_param");
    assert_eq!(
        create(json!({"name": "n", "scopes": ["tasks.admin"]})).unwrap_err(),
        "unknown_scope"
    );
    assert_eq!(
        create(json!({"name": "n", "scopes": ["tasks.read"], "ip_allowlist": ["10.0.0.0/33"]}))
            .unwrap_err(),
        "invalid_cidr"
    );
    assert_eq!(
        create(
            json!({"name": "n", "scopes": ["tasks.read"], "expires_at": "2001-01-01T00:00:00Z"})
        )
        .unwrap_err(),
        "invalid_param"
    );
    assert_eq!(
        create(json!({"name": "n", "scopes": ["tasks.read"], "admin": true})).unwrap_err(),
        "unknown_param"
    );
    assert_eq!(create(json!(["n"])).unwrap_err(), "invalid_json");
    let r = create(json!({"name": "n", "scopes": ["tasks.read"], "ip_allowlist": ["10.1.2.3/8", "::1"], "expires_at": 4102444800i64})).unwrap();
    assert_eq!(
        r.ip_allowlist,
        vec!["10.0.0.0/8".parse::<IpNet>().unwrap(), "::1/128".parse().unwrap()]
    );
    assert!(r.expires_at.is_some());
}

#[test]
fn rotate_grace_is_bounded() {
    assert_eq!(parse_rotate(json!({})).unwrap(), 0);
    assert_eq!(parse_rotate(json!({"grace_period_seconds": 604800})).unwrap(), 604800);
    assert_eq!(
        parse_rotate(json!({"grace_period_seconds": 604801})).unwrap_err().code,
        "invalid_param"
    );
    assert_eq!(
        parse_rotate(json!({"grace_period_seconds": -1})).unwrap_err().code,
        "invalid_param"
    );
    assert_eq!(parse_rotate(json!({"grace": 1})).unwrap_err().code, "unknown_param");
}

#[test]
fn routes() {
    assert!(matches!(route("/v1/api-keys"), Some(Route::Collection)));
    assert!(matches!(route("/v1/api-keys/"), Some(Route::Collection)));
    assert!(matches!(route("/v1/api-keys/key_1"), Some(Route::Key(_))));
    assert!(matches!(route("/v1/api-keys/key_1/rotate"), Some(Route::Rotate(_))));
    assert!(route("/v1/api-keys/key_1/x").is_none());
}
