//! The two listeners: health, readiness, metrics and the admin publish endpoint.

use serde_json::json;

use crate::support::{server::ADMIN_TOKEN, TestServer, WsClient};

#[tokio::test]
async fn health_and_readiness_answer_on_the_public_listener() {
    let s = TestServer::start().await;
    let mut http = s.http().await;
    let r = http.get("/healthz", None).await;
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
    let r = http.get("/readyz", None).await;
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ready")));
    // Admin-only routes are not on the public listener.
    assert_eq!(http.get("/metrics", None).await.status, 404);
    assert_eq!(http.post_json("/internal/v1/publish", Some(ADMIN_TOKEN), "{}").await.status, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn metrics_count_connections_events_deliveries_and_auth_failures() {
    let s = TestServer::start().await;
    let (mut c, _) = WsClient::authed(&s.ws_url(&s.bootstrap), &s.bootstrap).await;
    let _ = WsClient::try_connect(&s.ws_url("mt_test_sk_nope")).await;
    let mut admin = s.admin().await;
    s.publish(&mut admin, "acct_local", "test", "tasks", "task.one", json!({})).await;
    assert_eq!(c.recv().await["event"], "task.one");
    let r = admin.get("/metrics", None).await;
    assert_eq!(r.status, 200);
    for line in [
        "miteos_connections_open 1",
        "miteos_auth_failures_total{code=\"invalid_api_key\"} 1",
        "miteos_events_published_total 1",
        "miteos_deliveries_total 1",
        "miteos_slow_consumer_closes_total 0",
    ] {
        assert!(r.body.lines().any(|l| l == line), "missing `{line}` in:\n{}", r.body);
    }
    s.shutdown().await;
}

#[tokio::test]
async fn publish_requires_the_admin_token() {
    let s = TestServer::start().await;
    let mut admin = s.admin().await;
    let body = json!({"account_id": "acct_local", "environment": "test", "channel": "tasks", "event": "e", "data": {}}).to_string();
    for bearer in [None, Some("wrong-token-wrong-token"), Some(s.bootstrap.as_str())] {
        let r = admin.post_json("/internal/v1/publish", bearer, &body).await;
        assert_eq!(r.status, 401, "{bearer:?}");
        assert_eq!(r.json()["error"]["type"], "authentication_error");
        assert!(r.header("www-authenticate").is_some());
    }
    assert_eq!(s.metric("miteos_events_published_total"), 0.0);
    s.shutdown().await;
}

#[tokio::test]
async fn publish_validates_its_body() {
    let s = TestServer::with(|c| c.max_body_bytes = 2048).await;
    let mut admin = s.admin().await;
    let cases = [
        (json!({"account_id": "acct_local", "environment": "test", "channel": "nope", "event": "e"}).to_string(), 400, "invalid_param"),
        (json!({"account_id": "acct_local", "environment": "prod", "channel": "tasks", "event": "e"}).to_string(), 400, "invalid_param"),
        (json!({"account_id": "a:b", "environment": "test", "channel": "tasks", "event": "e"}).to_string(), 400, "invalid_param"),
        (json!({"account_id": "acct_local", "environment": "test", "channel": "tasks", "event": ""}).to_string(), 400, "invalid_param"),
        (json!({"environment": "test", "channel": "tasks", "event": "e"}).to_string(), 400, "missing_param"),
        ("{not json".to_owned(), 400, "invalid_json"),
        (json!({"account_id": "acct_local", "environment": "test", "channel": "tasks", "event": "e", "data": "x".repeat(3000)}).to_string(), 413, "body_too_large"),
    ];
    for (body, status, code) in cases {
        let r = admin.post_json("/internal/v1/publish", Some(ADMIN_TOKEN), &body).await;
        assert_eq!((r.status, r.json()["error"]["code"].as_str()), (status, Some(code)), "{body}");
    }
    // Not JSON at all: 415.
    let req = hyper::Request::post("/internal/v1/publish")
        .header("host", "x")
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .header("content-type", "text/plain")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"hello")))
        .unwrap();
    let r = admin.send(req).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    s.shutdown().await;
}
