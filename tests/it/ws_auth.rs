//! SPEC §4.1–4.3: pre-upgrade refusals, the first-message handshake and `auth.success`.

use std::time::Duration;

use miteos_stream::{
    ids::AccountId,
    keys::service::NewKey,
    scope::{Environment, Scope},
    token::Token,
};
use serde_json::json;

use crate::support::{TestServer, WsClient};

const INVALID_TOKEN_HEADER: &str = "Bearer realm=\"miteos\", error=\"invalid_token\"";

async fn refused(server: &TestServer, url: &str) -> crate::support::ws::Refused {
    match WsClient::try_connect(url).await {
        Ok(_) => panic!("{url} was upgraded"),
        Err(r) => {
            // Nothing was registered for a refused request.
            assert_eq!(server.state.hub.session_count(), 0);
            r
        }
    }
}

#[tokio::test]
async fn missing_invalid_and_bad_checksum_tokens_get_401_without_upgrade() {
    let s = TestServer::start().await;
    let good = Token::generate(Environment::Live).expose().to_owned();
    let mut bad_checksum = good.clone();
    bad_checksum.replace_range(20..21, if &good[20..21] == "a" { "b" } else { "a" });
    let cases = [
        (format!("ws://{}/v1/ws", s.addr), "missing_api_key"),
        (s.ws_url(""), "missing_api_key"),
        (s.ws_url("not-a-token"), "invalid_api_key"),
        (s.ws_url(&bad_checksum), "invalid_api_key"),
        // Well-formed, right checksum, but no such key in the store.
        (s.ws_url(&good), "invalid_api_key"),
    ];
    for (url, code) in cases {
        let r = refused(&s, &url).await;
        assert_eq!(r.status, 401, "{url}");
        assert_eq!(r.body["error"]["type"], "authentication_error");
        assert_eq!(r.body["error"]["code"], code, "{url}");
        assert_eq!(r.www_authenticate.as_deref(), Some(INVALID_TOKEN_HEADER));
    }
    assert_eq!(s.metric("miteos_auth_failures_total{code=\"invalid_api_key\"}"), 3.0);
    s.shutdown().await;
}

#[tokio::test]
async fn key_without_read_scope_gets_403_insufficient_scope() {
    let s = TestServer::start().await;
    let (token, _) =
        s.key("acct_w", Environment::Live, &[Scope::TasksWrite, Scope::TeamsWrite]).await;
    let r = refused(&s, &s.ws_url(&token)).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body["error"]["type"], "permission_error");
    assert_eq!(r.body["error"]["code"], "insufficient_scope");
    s.shutdown().await;
}

#[tokio::test]
async fn revoked_expired_and_ip_restricted_keys_are_refused_before_upgrade() {
    let s = TestServer::start().await;
    let (revoked, id) = s.key("acct_r", Environment::Test, &[Scope::TasksRead]).await;
    s.state.keys.revoke(&miteos_stream::ids::KeyId::from_string(id)).await.unwrap();
    let new = |ips: Vec<ipnet::IpNet>, expires_at| NewKey {
        name: "n".into(),
        account: AccountId::parse("acct_r").unwrap(),
        environment: Environment::Test,
        scopes: vec![Scope::TasksRead],
        ip_allowlist: ips,
        expires_at,
    };
    let past = time::OffsetDateTime::now_utc() - time::Duration::seconds(5);
    let (expired, _) = s.key_with(new(vec![], Some(past))).await;
    let (elsewhere, _) = s
        .key_with(new(vec!["10.0.0.0/8".parse().unwrap(), "2001:db8::/32".parse().unwrap()], None))
        .await;
    let (local, _) = s.key_with(new(vec!["127.0.0.0/8".parse().unwrap()], None)).await;

    let r = refused(&s, &s.ws_url(&revoked)).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (401, Some("revoked_api_key")));
    let r = refused(&s, &s.ws_url(&expired)).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (401, Some("expired_api_key")));
    let r = refused(&s, &s.ws_url(&elsewhere)).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (403, Some("ip_not_allowed")));
    let (_c, ok) = WsClient::authed(&s.ws_url(&local), &local).await;
    assert_eq!(ok["type"], "auth.success");
    s.shutdown().await;
}

#[tokio::test]
async fn auth_success_has_every_field_and_sorted_channels() {
    let s = TestServer::start().await;
    let scopes = [Scope::TasksRead, Scope::AgentsRead, Scope::BillingRead, Scope::TasksWrite];
    let (token, key_id) = s.key("acct_1", Environment::Live, &scopes).await;
    let (_c, ok) = WsClient::authed(&s.ws_url(&token), &token).await;
    assert_eq!(ok["message"], "Authenticated successfully");
    assert!(ok["connection_id"].as_str().unwrap().starts_with("conn_"));
    assert_eq!(ok["key_id"], key_id.as_str());
    assert_eq!(ok["environment"], "live");
    assert_eq!(ok["channels"], json!(["agents", "billing", "tasks"]));
    let (_c2, ok2) = WsClient::authed(&s.ws_url(&token), &token).await;
    assert_ne!(ok["connection_id"], ok2["connection_id"]);
    s.shutdown().await;
}

#[tokio::test]
async fn first_message_must_be_auth_with_the_same_token() {
    let s = TestServer::start().await;
    let (a, _) = s.key("acct_1", Environment::Live, &[Scope::TasksRead]).await;
    let (b, _) = s.key("acct_1", Environment::Live, &[Scope::TasksRead]).await;
    let firsts = [
        json!({"type": "auth", "token": b}).to_string(), // another valid key
        json!({"type": "auth"}).to_string(),
        json!({"type": "ping"}).to_string(),
        json!({"type": "subscribe", "channels": ["tasks"]}).to_string(),
        "{\"type\":\"auth\",\"token\":".to_owned(), // malformed JSON
        "hello".to_owned(),
    ];
    for first in firsts {
        let mut c = WsClient::connect(&s.ws_url(&a)).await;
        c.send_text(&first).await;
        assert_eq!(c.expect_close().await, 4001, "first message {first}");
    }
    // A binary first frame is not an auth message either.
    let mut c = WsClient::connect(&s.ws_url(&a)).await;
    futures::SinkExt::send(
        &mut c.ws,
        tokio_tungstenite::tungstenite::Message::binary(vec![1, 2, 3]),
    )
    .await
    .unwrap();
    assert_eq!(c.expect_close().await, 4001);
    assert!(s.metric("miteos_auth_failures_total{code=\"ws_auth_mismatch\"}") >= 1.0);
    s.shutdown().await;
}

#[tokio::test]
async fn no_auth_message_within_the_timeout_closes_4002() {
    let s = TestServer::with(|c| c.auth_timeout = Duration::from_millis(300)).await;
    let mut c = WsClient::connect(&s.ws_url(&s.bootstrap)).await;
    assert_eq!(c.expect_close().await, 4002);
    assert_eq!(s.metric("miteos_ws_closes_total{code=\"4002\"}"), 1.0);
    s.shutdown().await;
}

#[tokio::test]
async fn non_get_and_non_websocket_requests_are_refused() {
    let s = TestServer::start().await;
    let mut http = s.http().await;
    let path = format!("/v1/ws?token={}", s.bootstrap);
    let r = http.post_json(&path, None, "{}").await;
    assert_eq!(r.status, 405);
    let r = http.get(&path, None).await;
    assert_eq!(r.status, 426, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "upgrade_required");
    let r = http.get("/v1/ws", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "missing_api_key");
    let r = http.get("/nope", None).await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (404, Some("resource_missing")));
    s.shutdown().await;
}
