//! Live key updates as open streams see them (issue 13 item 2, SPEC §8). Each rule is a
//! function of the node the PATCH goes to (`p`) and the node the streams are on (`s`); the
//! tests here run them on one node, `tests/it_redis/key_updates_nodes.rs` across two nodes
//! on one Redis and on one Redis Cluster. Every change is asserted within 1 s of the PATCH's
//! answer.

use std::time::{Duration, Instant};

use miteos_stream::{
    ids::AccountId,
    keys::service::NewKey,
    scope::{Environment, Scope},
};
use serde_json::{json, Value};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};
use tokio_tungstenite::{client_async, tungstenite::client::IntoClientRequest, MaybeTlsStream};

use crate::support::{raw_http::connect_from, TestServer, WsClient};

pub const WITHIN: Duration = Duration::from_secs(1);
use Scope::*;

/// PATCHes key `id` on `p` as `caller`; asserts 200 and returns when the answer came.
pub async fn patch_ok(p: &TestServer, caller: &str, id: &str, body: Value) -> Instant {
    let path = format!("/v1/api-keys/{id}");
    let r = p.http().await.patch_json(&path, Some(caller), &body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    Instant::now()
}

/// A key of `acct_local`/test, the bootstrap key's, so the bootstrap key may update it.
pub async fn key(p: &TestServer, scopes: &[Scope]) -> (String, String) {
    p.key("acct_local", Environment::Test, scopes).await
}

pub async fn publish(s: &TestServer, channel: &str, event: &str) {
    let mut admin = s.admin().await;
    s.publish(&mut admin, "acct_local", "test", channel, event, json!({})).await;
}

pub fn within(since: Instant, what: &str) {
    let took = since.elapsed();
    assert!(took < WITHIN, "{what} {took:?} after the PATCH answered");
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap()
}

/// A stream of `token` on `s` from the loopback address `src`.
pub async fn authed_from(s: &TestServer, src: &str, token: &str) -> WsClient {
    let url = s.ws_url(token);
    let mut c = WsClient::try_connect_from(src.parse().unwrap(), s.addr, &url).await.unwrap();
    c.send(json!({"type": "auth", "token": token})).await;
    assert_eq!(c.recv().await["type"], "auth.success");
    c
}

/// Asserts the stream is still served (a ping is answered).
pub async fn still_open(c: &mut WsClient) {
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.recv().await["type"], "pong");
}

/// Removed read scopes: their topics are left with `scope_removed`, nothing of them comes
/// after it, the kept topic still streams, and the lost one cannot be subscribed again.
pub async fn removed_read_scopes_are_unsubscribed(p: &TestServer, s: &TestServer, caller: &str) {
    let (token, id) = key(p, &[TasksRead, AgentsRead, BillingRead, TeamsWrite]).await;
    let (mut c, ok) = WsClient::authed(&s.ws_url(&token), &token).await;
    assert_eq!(ok["channels"], json!(["agents", "billing", "tasks"]));
    publish(s, "agents", "agent.before").await;
    assert_eq!(c.recv().await["event"], "agent.before");

    let answered = patch_ok(p, caller, &id, json!({"scopes": ["tasks.read", "teams.write"]})).await;
    let m = c.recv().await;
    within(answered, "unsubscribed");
    assert_eq!(
        m,
        json!({"type": "unsubscribed", "channels": ["agents", "billing"], "reason": "scope_removed"})
    );
    publish(s, "agents", "agent.after").await;
    publish(s, "billing", "billing.after").await;
    publish(s, "tasks", "task.marker").await;
    assert_eq!(c.recv().await["event"], "task.marker", "no event of a removed topic after it");
    c.send(json!({"type": "subscribe", "channels": ["agents"]})).await;
    let e = c.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["param"].as_str()),
        (Some("insufficient_scope"), Some("agents.read"))
    );
}

/// A stream left with no readable topic closes with 4003.
pub async fn no_readable_topic_left_closes(p: &TestServer, s: &TestServer, caller: &str) {
    let (token, id) = key(p, &[TasksRead, TasksWrite]).await;
    let (mut c, _) = WsClient::authed(&s.ws_url(&token), &token).await;
    let answered = patch_ok(p, caller, &id, json!({"scopes": ["tasks.write"]})).await;
    assert_eq!(c.expect_close().await, 4003);
    within(answered, "closed");
}

/// A new allowlist closes the streams whose client address it excludes, only those.
pub async fn allowlist_closes_excluded_addresses(p: &TestServer, s: &TestServer, caller: &str) {
    let (token, id) = key(p, &[TasksRead]).await;
    let mut inside = authed_from(s, "127.0.0.1", &token).await;
    let mut outside = authed_from(s, "127.0.0.2", &token).await;
    let answered = patch_ok(p, caller, &id, json!({"ip_allowlist": ["127.0.0.1/32"]})).await;
    assert_eq!(outside.expect_close().await, 4003);
    within(answered, "closed");
    still_open(&mut inside).await;
    let answered = patch_ok(p, caller, &id, json!({"ip_allowlist": ["10.0.0.0/8"]})).await;
    assert_eq!(inside.expect_close().await, 4003);
    within(answered, "closed");
}

/// A stream via `s`'s trusted proxy (127.0.0.3) on behalf of `client`.
pub async fn via_proxy(s: &TestServer, token: &str, client: &str) -> WsClient {
    let mut req = s.ws_url(token).into_client_request().unwrap();
    req.headers_mut().insert("x-forwarded-for", client.parse().unwrap());
    let stream = connect_from("127.0.0.3", s.addr).await;
    let (ws, _) = client_async(req, MaybeTlsStream::Plain(stream)).await.expect("upgrade");
    let mut c = WsClient { ws };
    c.send(json!({"type": "auth", "token": token})).await;
    assert_eq!(c.recv().await["type"], "auth.success");
    c
}

/// Behind a trusted proxy the forwarded client's address is checked, not the proxy's
/// (`s` trusts 127.0.0.3).
pub async fn allowlist_checks_the_forwarded_client(p: &TestServer, s: &TestServer, caller: &str) {
    let (token, id) = key(p, &[TasksRead]).await;
    let mut kept = via_proxy(s, &token, "203.0.113.7").await;
    let mut dropped = via_proxy(s, &token, "198.51.100.9").await;
    let nets = json!({"ip_allowlist": ["203.0.113.0/24", "127.0.0.3/32"]});
    let answered = patch_ok(p, caller, &id, nets).await;
    assert_eq!(dropped.expect_close().await, 4003, "the proxy's address does not count");
    within(answered, "closed");
    still_open(&mut kept).await;
}

/// A new expiry closes the stream (4003) at that time; one already past closes it now.
pub async fn new_expiry_closes_at_that_time(p: &TestServer, s: &TestServer, caller: &str) {
    let (token, id) = key(p, &[TasksRead]).await;
    let (mut c, _) = WsClient::authed(&s.ws_url(&token), &token).await;
    let (mut other, _) = WsClient::authed(&s.ws_url(&token), &token).await;
    let at = OffsetDateTime::now_utc() + time::Duration::milliseconds(1500);
    patch_ok(p, caller, &id, json!({"expires_at": rfc3339(at)})).await;
    still_open(&mut c).await;
    assert_eq!(c.expect_close().await, 4003);
    let late = OffsetDateTime::now_utc() - at;
    assert!(late >= time::Duration::ZERO, "closed {} before expires_at", -late);
    assert!(late < time::Duration::seconds(1), "closed {late} after expires_at");
    // The other stream closed then too; a key whose expiry is moved into the past is
    // refused from then on (it cannot be updated either: it is expired).
    assert_eq!(other.expect_close().await, 4003);
    let r = WsClient::try_connect(&s.ws_url(&token)).await.err().expect("expired");
    assert_eq!(r.body["error"]["code"], "expired_api_key");

    let (token, id) = key(p, &[TasksRead]).await;
    let (mut c, _) = WsClient::authed(&s.ws_url(&token), &token).await;
    let answered = patch_ok(p, caller, &id, json!({"expires_at": "2020-01-01T00:00:00Z"})).await;
    assert_eq!(c.expect_close().await, 4003);
    within(answered, "a past expiry closed the stream");
}

/// A cleared expiry: the stream outlives the old `expires_at`.
pub async fn cleared_expiry_keeps_the_stream(p: &TestServer, s: &TestServer, caller: &str) {
    let old = OffsetDateTime::now_utc() + time::Duration::milliseconds(1500);
    let (token, id) = p
        .key_with(NewKey {
            name: "expiring".into(),
            account: AccountId::parse("acct_local").unwrap(),
            environment: Environment::Test,
            scopes: vec![TasksRead],
            ip_allowlist: vec![],
            expires_at: Some(old),
        })
        .await;
    let (mut c, _) = WsClient::authed(&s.ws_url(&token), &token).await;
    patch_ok(p, caller, &id, json!({"expires_at": null})).await;
    // Time is the thing under test: wait until well past the old expiry.
    let past = Duration::try_from(old - OffsetDateTime::now_utc()).unwrap_or_default();
    tokio::time::sleep(past + Duration::from_millis(700)).await;
    still_open(&mut c).await;
    WsClient::authed(&s.ws_url(&token), &token).await;
}

/// Added scopes subscribe nothing by themselves; the client may subscribe to them at once.
pub async fn added_scopes_subscribe_nothing(p: &TestServer, s: &TestServer, caller: &str) {
    let (token, id) = key(p, &[TasksRead]).await;
    let (mut c, _) = WsClient::authed(&s.ws_url(&token), &token).await;
    patch_ok(p, caller, &id, json!({"scopes": ["tasks.read", "agents.read"]})).await;
    c.send(json!({"type": "subscribe", "channels": ["agents"]})).await;
    let m = c.recv().await;
    assert_eq!(
        (m["type"].clone(), m["channels"].clone()),
        (json!("subscribed"), json!(["agents"]))
    );
    publish(s, "agents", "agent.now").await;
    assert_eq!(c.recv().await["event"], "agent.now");

    // Another stream of the key: the grant alone sends nothing and joins nothing.
    let (token2, id2) = key(p, &[TasksRead]).await;
    let (mut d, _) = WsClient::authed(&s.ws_url(&token2), &token2).await;
    patch_ok(p, caller, &id2, json!({"scopes": ["tasks.read", "agents.read"]})).await;
    publish(s, "agents", "agent.unasked").await;
    publish(s, "tasks", "task.marker").await;
    assert_eq!(d.recv().await["event"], "task.marker", "no message, no agents event");
}

/// Streams opened with the current secret and with one in a rotation's grace both follow.
pub async fn every_secret_of_the_key_follows(p: &TestServer, s: &TestServer, caller: &str) {
    let (old, id) = key(p, &[TasksRead, AgentsRead]).await;
    let (mut on_old, _) = WsClient::authed(&s.ws_url(&old), &old).await;
    let path = format!("/v1/api-keys/{id}/rotate");
    let r = p.http().await.post_json(&path, Some(caller), r#"{"grace_period_seconds":600}"#).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let new = r.json()["key"].as_str().unwrap().to_owned();
    let (mut on_new, _) = WsClient::authed(&s.ws_url(&new), &new).await;
    let answered = patch_ok(p, caller, &id, json!({"scopes": ["tasks.read"]})).await;
    for c in [&mut on_old, &mut on_new] {
        assert_eq!(c.recv().await["channels"], json!(["agents"]));
    }
    within(answered, "both streams unsubscribed");
}

/// A stream opened with a ticket follows the key that minted it: its scopes, and the key's
/// allowlist against the address that minted the ticket.
pub async fn ticket_streams_follow_their_key(p: &TestServer, s: &TestServer, caller: &str) {
    let (token, id) = key(p, &[TasksRead, AgentsRead]).await;
    let r = s.http().await.post_json("/v1/ws/tickets", Some(&token), "").await;
    assert_eq!(r.status, 201, "{}", r.body);
    let ticket = r.json()["ticket"].as_str().unwrap().to_owned();
    let mut c = WsClient::connect(&format!("ws://{}/v1/ws?ticket={ticket}", s.addr)).await;
    c.send(json!({"type": "auth", "ticket": ticket})).await;
    assert_eq!(c.recv().await["channels"], json!(["agents", "tasks"]));
    let answered = patch_ok(p, caller, &id, json!({"scopes": ["tasks.read"]})).await;
    let m = c.recv().await;
    within(answered, "unsubscribed");
    assert_eq!(
        (m["channels"].clone(), m["reason"].clone()),
        (json!(["agents"]), json!("scope_removed"))
    );
    // The ticket was minted from 127.0.0.1: an allowlist without it closes the stream.
    let answered = patch_ok(p, caller, &id, json!({"ip_allowlist": ["10.0.0.0/8"]})).await;
    assert_eq!(c.expect_close().await, 4003);
    within(answered, "closed");
}

/// Once the PATCH answered, requests and new connections see the new values on `s` (which
/// had the key cached: it was just used there).
pub async fn new_values_are_seen_at_once(p: &TestServer, s: &TestServer, caller: &str) {
    let (token, id) = key(p, &[TasksRead, AgentsRead, TeamsRead]).await;
    let mut http = s.http().await;
    assert_eq!(http.get("/v1/api-keys", Some(&token)).await.status, 200);
    WsClient::authed(&s.ws_url(&token), &token).await;
    patch_ok(p, caller, &id, json!({"scopes": ["tasks.read"]})).await;
    let r = http.get("/v1/api-keys", Some(&token)).await;
    assert_eq!((r.status, r.json()["error"]["code"].clone()), (403, json!("insufficient_scope")));
    let (_, ok) = WsClient::authed(&s.ws_url(&token), &token).await;
    assert_eq!(ok["channels"], json!(["tasks"]));
    patch_ok(p, caller, &id, json!({"ip_allowlist": ["10.0.0.0/8"]})).await;
    let r = WsClient::try_connect(&s.ws_url(&token)).await.err().expect("refused");
    assert_eq!(r.body["error"]["code"], "ip_not_allowed");
}

// === on one node ===

macro_rules! on_one_node {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let s = TestServer::with(|c| c.trusted_proxies = vec!["127.0.0.3/32".parse().unwrap()]).await;
            let caller = s.bootstrap.clone();
            super::$name(&s, &s, &caller).await;
            s.shutdown().await;
        }
    )*};
}

mod one_node {
    use crate::support::TestServer;
    on_one_node!(
        removed_read_scopes_are_unsubscribed,
        no_readable_topic_left_closes,
        allowlist_closes_excluded_addresses,
        allowlist_checks_the_forwarded_client,
        new_expiry_closes_at_that_time,
        cleared_expiry_keeps_the_stream,
        added_scopes_subscribe_nothing,
        every_secret_of_the_key_follows,
        ticket_streams_follow_their_key,
        new_values_are_seen_at_once,
    );
}
