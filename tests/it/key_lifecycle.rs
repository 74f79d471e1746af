//! Revocation, expiry and rotation as open streams see them (SPEC §3 DELETE/rotate, 4003).

use std::time::{Duration, Instant};

use miteos_stream::scope::{Environment, Scope};
use serde_json::json;

use crate::support::{http::HttpClient, TestServer, WsClient};

const KEYS: &str = "/v1/api-keys";

async fn delete(http: &mut HttpClient, path: &str, bearer: &str) -> u16 {
    let req = hyper::Request::delete(path)
        .header("host", "x")
        .header("authorization", format!("Bearer {bearer}"))
        .body(Default::default())
        .unwrap();
    http.send(req).await.status
}

#[tokio::test]
async fn revoking_a_key_closes_its_streams_with_4003_within_a_second() {
    let s = TestServer::start().await;
    let (token, id) = s.key("acct_local", Environment::Test, &[Scope::TasksRead]).await;
    let (other, _) = s.key("acct_local", Environment::Test, &[Scope::TasksRead]).await;
    let (mut a, _) = WsClient::authed(&s.ws_url(&token), &token).await;
    let (mut b, _) = WsClient::authed(&s.ws_url(&token), &token).await;
    let (mut keep, _) = WsClient::authed(&s.ws_url(&other), &other).await;

    let mut http = s.http().await;
    let started = Instant::now();
    assert_eq!(delete(&mut http, &format!("{KEYS}/{id}"), &s.bootstrap).await, 200);
    assert_eq!(a.expect_close().await, 4003);
    assert_eq!(b.expect_close().await, 4003);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "streams closed {took:?} after the revocation");

    // Another key's stream is untouched; the revoked key is refused from now on.
    keep.send(json!({"type": "ping"})).await;
    assert_eq!(keep.recv().await["type"], "pong");
    let r = WsClient::try_connect(&s.ws_url(&token)).await.err().unwrap();
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (401, Some("revoked_api_key")));
    let again = http.get(&format!("{KEYS}/{id}"), Some(&s.bootstrap)).await.json();
    assert!(again["revoked_at"].is_string());
    s.shutdown().await;
}

#[tokio::test]
async fn an_expiring_key_closes_its_stream_at_expires_at() {
    let s = TestServer::start().await;
    let expires = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(1500);
    let body = json!({"name": "short", "scopes": ["tasks.read"], "expires_at": expires.format(&time::format_description::well_known::Rfc3339).unwrap()});
    let r = s.http().await.post_json(KEYS, Some(&s.bootstrap), &body.to_string()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let token = r.json()["key"].as_str().unwrap().to_owned();
    let (mut c, _) = WsClient::authed(&s.ws_url(&token), &token).await;
    assert_eq!(c.expect_close().await, 4003);
    let now = time::OffsetDateTime::now_utc();
    assert!(now >= expires, "closed before expires_at");
    assert!(
        now - expires < time::Duration::seconds(1),
        "closed {} after expires_at",
        now - expires
    );
    let r = WsClient::try_connect(&s.ws_url(&token)).await.err().unwrap();
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (401, Some("expired_api_key")));
    s.shutdown().await;
}

#[tokio::test]
async fn rotation_with_grace_keeps_the_old_secret_until_the_grace_ends() {
    let s = TestServer::start().await;
    let (old, id) =
        s.key("acct_local", Environment::Test, &[Scope::TasksRead, Scope::TeamsRead]).await;
    let (mut old_stream, _) = WsClient::authed(&s.ws_url(&old), &old).await;
    let mut http = s.http().await;
    // The server's grace ends 2 s after it handled the rotation, so no earlier than this + 2 s.
    let grace_ends = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let r = http
        .post_json(
            &format!("{KEYS}/{id}/rotate"),
            Some(&s.bootstrap),
            "{\"grace_period_seconds\": 2}",
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let rotated = r.json();
    assert_eq!(rotated["id"], id.as_str(), "rotation keeps the key id");
    let new = rotated["key"].as_str().unwrap().to_owned();
    assert_ne!(new, old);

    // During the grace both secrets work, for HTTP and WebSocket.
    assert_eq!(http.get(&format!("{KEYS}/{id}"), Some(&old)).await.status, 200);
    assert_eq!(http.get(&format!("{KEYS}/{id}"), Some(&new)).await.status, 200);
    let (_also_old, _) = WsClient::authed(&s.ws_url(&old), &old).await;
    let (mut new_stream, _) = WsClient::authed(&s.ws_url(&new), &new).await;
    let metrics = s.admin().await.get("/metrics", None).await.body;
    assert!(metrics.contains("miteos_connections_by_secret{secret=\"previous\"} 2"), "{metrics}");
    assert!(metrics.contains("miteos_connections_by_secret{secret=\"current\"} 1"), "{metrics}");

    // When it ends, the old secret's streams close with 4003 and the old secret is refused.
    assert_eq!(old_stream.expect_close().await, 4003);
    let closed_at = time::OffsetDateTime::now_utc();
    assert!(closed_at >= grace_ends, "closed {} before the grace ended", grace_ends - closed_at);
    assert!(closed_at < grace_ends + time::Duration::seconds(3), "closed late: {closed_at}");
    let r = http.get(&format!("{KEYS}/{id}"), Some(&old)).await;
    assert_eq!(r.status, 401);
    new_stream.send(json!({"type": "ping"})).await;
    assert_eq!(new_stream.recv().await["type"], "pong", "the new secret's stream stays open");
    s.shutdown().await;
}

#[tokio::test]
async fn rotation_without_grace_cuts_the_old_secret_at_once() {
    let s = TestServer::start().await;
    let (old, id) = s.key("acct_local", Environment::Test, &[Scope::TasksRead]).await;
    let (mut stream, _) = WsClient::authed(&s.ws_url(&old), &old).await;
    let mut http = s.http().await;
    let r = http.post_json(&format!("{KEYS}/{id}/rotate"), Some(&s.bootstrap), "").await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(stream.expect_close().await, 4003);
    let refused = WsClient::try_connect(&s.ws_url(&old)).await.err().unwrap();
    assert_eq!(refused.status, 401);
    let new = r.json()["key"].as_str().unwrap().to_owned();
    let (_c, ok) = WsClient::authed(&s.ws_url(&new), &new).await;
    assert_eq!(ok["key_id"], id.as_str());
    let r = http
        .post_json(
            &format!("{KEYS}/{id}/rotate"),
            Some(&s.bootstrap),
            "{\"grace_period_seconds\": 604801}",
        )
        .await;
    assert_eq!(r.status, 400);
    s.shutdown().await;
}

#[tokio::test]
async fn a_rotation_racing_a_revocation_never_revives_the_key() {
    // Up to 40 refused connections from one address: not a brute force to lock out here.
    let s = TestServer::with(|c| c.auth_failures_per_minute = 0).await;
    for _ in 0..20 {
        let (old, id) = s.key("acct_local", Environment::Test, &[Scope::TasksRead]).await;
        let id = miteos_stream::ids::KeyId::from_string(id);
        let (keys_a, keys_b, id_a, id_b) =
            (s.state.keys.clone(), s.state.keys.clone(), id.clone(), id.clone());
        let rotate = tokio::spawn(async move { keys_a.rotate(&id_a, 0).await });
        let revoke = tokio::spawn(async move { keys_b.revoke(&id_b).await });
        let rotated = rotate.await.unwrap();
        revoke.await.unwrap().unwrap();
        let rec = s.state.keys.get(&id).await.unwrap().unwrap();
        assert!(rec.revoked_at.is_some(), "the revocation stands whatever the order");
        for secret in std::iter::once(old).chain(rotated.ok().map(|c| c.token.expose().to_owned()))
        {
            let r = WsClient::try_connect(&s.ws_url(&secret)).await.err().expect("refused");
            assert_eq!(r.status, 401);
        }
    }
    s.shutdown().await;
}
