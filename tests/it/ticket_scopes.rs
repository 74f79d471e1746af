//! Tickets for browsers (issue 10 item 8): narrowed to some read scopes, minted under the
//! key's IP allowlist but redeemable from any address, and used up only by a stream that
//! really opens.

use miteos_stream::{
    ids::AccountId,
    keys::service::NewKey,
    scope::{Environment, Scope},
};
use serde_json::json;

use crate::support::{http::HttpClient, TestServer, WsClient};

fn ticket_url(s: &TestServer, t: &str) -> String {
    format!("ws://{}/v1/ws?ticket={t}", s.addr)
}

async fn mint(s: &TestServer, key: &str, body: &str) -> (u16, serde_json::Value) {
    let r = s.http().await.post_json("/v1/ws/tickets", Some(key), body).await;
    (r.status, r.json())
}

#[tokio::test]
async fn a_ticket_can_be_narrowed_to_some_read_scopes() {
    let s = TestServer::start().await;
    let scopes = [Scope::TasksRead, Scope::AgentsRead, Scope::TasksWrite];
    let (key, _) = s.key("acct_n", Environment::Live, &scopes).await;

    let (status, all) = mint(&s, &key, "").await;
    assert_eq!(status, 201);
    assert_eq!(all["scopes"], json!(["agents.read", "tasks.read"]), "read scopes only");

    let (status, body) = mint(&s, &key, r#"{"scopes":["tasks.read"]}"#).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["scopes"], json!(["tasks.read"]));
    let t = body["ticket"].as_str().unwrap().to_owned();
    let mut c = WsClient::connect(&ticket_url(&s, &t)).await;
    c.send(json!({"type": "auth", "ticket": t})).await;
    let ok = c.recv().await;
    assert_eq!(ok["channels"], json!(["tasks"]), "{ok}");
    c.send(json!({"type": "subscribe", "channels": ["agents"]})).await;
    let refused = c.recv().await;
    assert_eq!(
        (refused["code"].as_str(), refused["param"].as_str()),
        (Some("insufficient_scope"), Some("agents.read"))
    );

    let (status, e) = mint(&s, &key, r#"{"scopes":["billing.read"]}"#).await;
    assert_eq!((status, e["error"]["code"].as_str()), (403, Some("scope_escalation")));
    let (status, e) = mint(&s, &key, r#"{"scopes":["tasks.write"]}"#).await;
    assert_eq!((status, e["error"]["param"].as_str()), (400, Some("scopes")));
    let (status, e) = mint(&s, &key, r#"{"scopes":["tasks.nope"]}"#).await;
    assert_eq!((status, e["error"]["code"].as_str()), (400, Some("unknown_scope")));
    let (status, e) = mint(&s, &key, r#"{"scopes":[]}"#).await;
    assert_eq!((status, e["error"]["code"].as_str()), (400, Some("invalid_param")));
    s.shutdown().await;
}

#[tokio::test]
async fn the_minting_request_is_checked_against_the_allowlist_and_the_browser_is_not() {
    let s = TestServer::start().await;
    let (key, _) = s
        .key_with(NewKey {
            name: "backend".into(),
            account: AccountId::parse("acct_n").unwrap(),
            environment: Environment::Live,
            scopes: vec![Scope::TasksRead],
            ip_allowlist: vec!["127.0.0.2/32".parse().unwrap()],
            expires_at: None,
        })
        .await;
    // From the browser's address (127.0.0.1) the key itself is refused...
    let (status, e) = mint(&s, &key, "").await;
    assert_eq!((status, e["error"]["code"].as_str()), (403, Some("ip_not_allowed")));
    // ...the backend (127.0.0.2) mints, and the browser redeems from 127.0.0.1.
    let mut backend = HttpClient::connect_from("127.0.0.2".parse().unwrap(), s.addr).await;
    let r = backend.post_json("/v1/ws/tickets", Some(&key), "").await;
    assert_eq!(r.status, 201, "{}", r.body);
    let t = r.json()["ticket"].as_str().unwrap().to_owned();
    let mut c = WsClient::connect(&ticket_url(&s, &t)).await;
    c.send(json!({"type": "auth", "ticket": t})).await;
    assert_eq!(c.recv().await["type"], "auth.success");
    s.shutdown().await;
}

#[tokio::test]
async fn a_refused_upgrade_does_not_burn_the_ticket_and_racing_uses_open_one_stream() {
    let s = TestServer::start().await;
    let (key, _) = s.key("acct_n", Environment::Live, &[Scope::TasksRead]).await;
    let (_, body) = mint(&s, &key, "").await;
    let t = body["ticket"].as_str().unwrap().to_owned();
    // A plain GET (no WebSocket handshake) is refused with 426 after the credential checks.
    let r = s.http().await.get(&format!("/v1/ws?ticket={t}"), None).await;
    assert_eq!(r.status, 426, "{}", r.body);
    // The ticket still opens its stream, once.
    assert!(WsClient::try_connect(&ticket_url(&s, &t)).await.is_ok());
    let again = WsClient::try_connect(&ticket_url(&s, &t)).await.err().expect("used up");
    assert_eq!(again.status, 401);

    let (_, body) = mint(&s, &key, "").await;
    let t = body["ticket"].as_str().unwrap().to_owned();
    let url = ticket_url(&s, &t);
    let tries = (0..10).map(|_| WsClient::try_connect(&url));
    let opened = futures::future::join_all(tries).await.iter().filter(|r| r.is_ok()).count();
    assert_eq!(opened, 1, "one ticket, one stream");
    s.shutdown().await;
}
