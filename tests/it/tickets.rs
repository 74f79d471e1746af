//! SPEC §3 `POST /v1/ws/tickets`: single-use browser tickets that die with their key.

use std::time::Duration;

use miteos_stream::scope::{Environment, Scope};
use serde_json::json;

use crate::support::{TestServer, WsClient};

async fn ticket(s: &TestServer, key: &str) -> (u16, serde_json::Value) {
    let r = s.http().await.post_json("/v1/ws/tickets", Some(key), "").await;
    (r.status, r.json())
}

fn ticket_url(s: &TestServer, t: &str) -> String {
    format!("ws://{}/v1/ws?ticket={t}", s.addr)
}

#[tokio::test]
async fn a_ticket_opens_one_stream_once() {
    let s = TestServer::start().await;
    let (key, key_id) = s.key("acct_t", Environment::Live, &[Scope::TasksRead]).await;
    let (status, body) = ticket(&s, &key).await;
    assert_eq!(status, 201);
    let t = body["ticket"].as_str().unwrap().to_owned();
    assert!(t.starts_with("mt_live_tk_") && !t.contains(&key));
    assert!(body["expires_at"].is_string());

    let mut c = WsClient::connect(&ticket_url(&s, &t)).await;
    c.send(json!({"type": "auth", "ticket": t})).await;
    let ok = c.recv().await;
    assert_eq!(
        (ok["type"].as_str(), ok["key_id"].as_str()),
        (Some("auth.success"), Some(key_id.as_str()))
    );
    assert_eq!(ok["channels"], json!(["tasks"]));
    let mut admin = s.admin().await;
    s.publish(&mut admin, "acct_t", "live", "tasks", "task.via_ticket", json!({})).await;
    assert_eq!(c.recv().await["event"], "task.via_ticket");

    let reused = WsClient::try_connect(&ticket_url(&s, &t)).await.err().expect("single use");
    assert_eq!(
        (reused.status, reused.body["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    s.shutdown().await;
}

#[tokio::test]
async fn the_first_message_must_repeat_the_same_ticket() {
    let s = TestServer::start().await;
    let (key, _) = s.key("acct_t", Environment::Live, &[Scope::TasksRead]).await;
    let t1 = ticket(&s, &key).await.1["ticket"].as_str().unwrap().to_owned();
    let t2 = ticket(&s, &key).await.1["ticket"].as_str().unwrap().to_owned();
    let mut c = WsClient::connect(&ticket_url(&s, &t1)).await;
    c.send(json!({"type": "auth", "ticket": t2})).await;
    assert_eq!(c.expect_close().await, 4001);
    let mut c = WsClient::connect(&ticket_url(&s, &t2)).await;
    c.send(json!({"type": "auth", "token": key})).await;
    assert_eq!(c.expect_close().await, 4001, "the API key is not the ticket");
    s.shutdown().await;
}

#[tokio::test]
async fn an_expired_ticket_is_refused() {
    let s = TestServer::with(|c| c.ticket_ttl = Duration::from_millis(200)).await;
    let (key, _) = s.key("acct_t", Environment::Test, &[Scope::TasksRead]).await;
    let (_, body) = ticket(&s, &key).await;
    let t = body["ticket"].as_str().unwrap().to_owned();
    let expires_at = time::OffsetDateTime::parse(
        body["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    // Wait for the ticket's own deadline (a timer, not a guess about server progress).
    let left = expires_at - time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::try_from(left).unwrap_or_default() + Duration::from_millis(20))
        .await;
    let r = WsClient::try_connect(&ticket_url(&s, &t)).await.err().expect("expired");
    assert_eq!(r.status, 401);
    s.shutdown().await;
}

#[tokio::test]
async fn a_ticket_dies_with_its_key() {
    let s = TestServer::start().await;
    let (key, key_id) = s.key("acct_t", Environment::Test, &[Scope::TasksRead]).await;
    let opened = ticket(&s, &key).await.1["ticket"].as_str().unwrap().to_owned();
    let unused = ticket(&s, &key).await.1["ticket"].as_str().unwrap().to_owned();
    let mut c = WsClient::connect(&ticket_url(&s, &opened)).await;
    c.send(json!({"type": "auth", "ticket": opened})).await;
    assert_eq!(c.recv().await["type"], "auth.success");

    s.state.keys.revoke(&miteos_stream::ids::KeyId::from_string(key_id)).await.unwrap();
    assert_eq!(c.expect_close().await, 4003, "the ticket-opened stream closes with its key");
    let r = WsClient::try_connect(&ticket_url(&s, &unused)).await.err().expect("refused");
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (401, Some("revoked_api_key")));
    s.shutdown().await;
}

#[tokio::test]
async fn tickets_need_a_read_scope_and_a_real_key() {
    let s = TestServer::start().await;
    let (writer, _) = s.key("acct_t", Environment::Test, &[Scope::TasksWrite]).await;
    let (status, body) = ticket(&s, &writer).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("insufficient_scope")));
    let (status, body) = ticket(&s, "mt_test_sk_nope").await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_api_key")));
    // A ticket is not an API key.
    let t = ticket(&s, &s.bootstrap).await.1["ticket"].as_str().unwrap().to_owned();
    let r = s.http().await.get("/v1/api-keys", Some(&t)).await;
    assert_eq!(r.status, 401);
    let r = WsClient::try_connect(&s.ws_url(&t)).await.err().unwrap();
    assert_eq!(r.status, 401);
    s.shutdown().await;
}
