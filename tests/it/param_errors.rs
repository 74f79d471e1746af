//! Errors that name the parameter (issue 11 item 2): the admin publish's missing, mistyped,
//! unknown and bad fields, and 405 with an `Allow` header on every known path.

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use serde_json::{json, Value};

use crate::support::{server::ADMIN_TOKEN, TestServer};

#[tokio::test]
async fn the_admin_publish_names_the_field_at_fault() {
    let s = TestServer::start().await;
    let mut admin = s.admin().await;
    let ok = json!({"account_id": "acct_local", "environment": "test", "channel": "tasks", "event": "e"});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = ok.clone();
        b.as_object_mut().unwrap().remove(k);
        b
    };
    let cases = [
        (without("account_id"), "missing_param", "account_id"),
        (without("channel"), "missing_param", "channel"),
        (without("event"), "missing_param", "event"),
        (with("channel", json!("nope")), "invalid_param", "channel"),
        (with("environment", json!("prod")), "invalid_param", "environment"),
        (with("event", json!(5)), "invalid_param", "event"),
        (with("account_id", json!("")), "invalid_param", "account_id"),
        (with("colour", json!("blue")), "unknown_param", "colour"),
    ];
    for (body, code, param) in cases {
        let r = admin.post_json("/internal/v1/publish", Some(ADMIN_TOKEN), &body.to_string()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let e = r.json();
        assert_eq!(
            (e["error"]["code"].as_str(), e["error"]["param"].as_str()),
            (Some(code), Some(param)),
            "{body}"
        );
    }
    let r = admin
        .post_json(
            "/internal/v1/publish",
            Some(ADMIN_TOKEN),
            &with("channel", json!("nope")).to_string(),
        )
        .await;
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("nope"));
    let r = admin.post_json("/internal/v1/publish", Some(ADMIN_TOKEN), &ok.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    s.shutdown().await;
}

#[tokio::test]
async fn a_wrong_method_on_a_known_path_is_405_with_allow() {
    let s = TestServer::start().await;
    let cases = [
        (false, "GET", "/v1/ws/tickets", "POST"),
        (false, "POST", "/v1/ws", "GET"),
        (false, "PUT", "/v1/api-keys", "GET, POST"),
        (false, "POST", "/v1/api-keys/key_x", "GET, PATCH, DELETE"),
        (false, "GET", "/v1/api-keys/key_x/rotate", "POST"),
        (false, "POST", "/healthz", "GET"),
        (true, "GET", "/internal/v1/publish", "POST"),
        (true, "DELETE", "/metrics", "GET"),
    ];
    for (admin, method, path, allow) in cases {
        let mut http = if admin { s.admin().await } else { s.http().await };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "x")
            .header("authorization", format!("Bearer {}", s.bootstrap))
            .body(Full::<Bytes>::default())
            .unwrap();
        let r = http.send(req).await;
        assert_eq!(r.status, 405, "{method} {path}: {}", r.body);
        assert_eq!(r.header("allow").as_deref(), Some(allow), "{method} {path}");
        assert_eq!(r.json()["error"]["code"], "method_not_allowed");
    }
    s.shutdown().await;
}
