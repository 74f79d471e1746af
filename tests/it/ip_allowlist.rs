//! IP allowlists on HTTP and WebSocket, IPv4 and IPv6, with and without a trusted proxy;
//! a client that is not a trusted proxy cannot spoof `X-Forwarded-For`.

use miteos_stream::{
    ids::AccountId,
    keys::service::NewKey,
    scope::{Environment, Scope},
};

use crate::support::{http::HttpResponse, TestServer, WsClient};

async fn key_for(s: &TestServer, cidrs: &[&str]) -> String {
    s.key_with(NewKey {
        name: "ip".into(),
        account: AccountId::parse("acct_ip").unwrap(),
        environment: Environment::Live,
        scopes: vec![Scope::TasksRead, Scope::TeamsRead],
        ip_allowlist: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        expires_at: None,
    })
    .await
    .0
}

/// GET /v1/api-keys with an optional X-Forwarded-For.
async fn list(s: &TestServer, key: &str, xff: Option<&str>) -> HttpResponse {
    let mut b = hyper::Request::get("/v1/api-keys")
        .header("host", "x")
        .header("authorization", format!("Bearer {key}"));
    if let Some(x) = xff {
        b = b.header("x-forwarded-for", x);
    }
    s.http().await.send(b.body(Default::default()).unwrap()).await
}

#[tokio::test]
async fn ipv4_allowlist_applies_to_http_and_websocket() {
    let s = TestServer::start().await;
    let here = key_for(&s, &["127.0.0.0/8"]).await;
    let elsewhere = key_for(&s, &["10.0.0.0/8", "192.168.1.7/32"]).await;
    assert_eq!(list(&s, &here, None).await.status, 200);
    let r = list(&s, &elsewhere, None).await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (403, Some("ip_not_allowed")));
    let _ = WsClient::authed(&s.ws_url(&here), &here).await;
    let refused = WsClient::try_connect(&s.ws_url(&elsewhere)).await.err().expect("no upgrade");
    assert_eq!(
        (refused.status, refused.body["error"]["code"].as_str()),
        (403, Some("ip_not_allowed"))
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let s = TestServer::start().await; // no trusted proxies
    let elsewhere = key_for(&s, &["10.0.0.0/8"]).await;
    let r = list(&s, &elsewhere, Some("10.1.2.3")).await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (403, Some("ip_not_allowed")));
    s.shutdown().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_checked() {
    let s = TestServer::with(|c| c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    let v4 = key_for(&s, &["10.0.0.0/8"]).await;
    let v6 = key_for(&s, &["2001:db8::/32"]).await;
    assert_eq!(list(&s, &v4, Some("10.1.2.3")).await.status, 200);
    // The right-most untrusted hop counts, not what the client wrote on the left.
    assert_eq!(list(&s, &v4, Some("10.9.9.9, 203.0.113.5")).await.status, 403);
    assert_eq!(list(&s, &v6, Some("2001:db8::42")).await.status, 200);
    assert_eq!(list(&s, &v6, Some("2001:db9::42")).await.status, 403);
    // Without the header the proxy itself is the client.
    assert_eq!(list(&s, &v4, None).await.status, 403);
    // The same rule guards the WebSocket upgrade.
    let req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        s.ws_url(&v4),
    )
    .unwrap();
    let mut req = req;
    req.headers_mut().insert("x-forwarded-for", "10.7.7.7".parse().unwrap());
    let (mut ws, _) =
        tokio_tungstenite::connect_async(req).await.expect("upgrade through the trusted proxy");
    futures::SinkExt::send(
        &mut ws,
        tokio_tungstenite::tungstenite::Message::text(
            serde_json::json!({"type":"auth","token": v4}).to_string(),
        ),
    )
    .await
    .unwrap();
    let mut c = WsClient { ws };
    assert_eq!(c.recv().await["type"], "auth.success");
    s.shutdown().await;
}

#[tokio::test]
async fn ipv6_allowlist_on_an_ipv6_listener() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipping: this machine has no IPv6 loopback");
        return;
    }
    let s = TestServer::with(|c| c.listen = "[::1]:0".parse().unwrap()).await;
    let here = key_for(&s, &["::1/128"]).await;
    let elsewhere = key_for(&s, &["2001:db8::/32", "127.0.0.1/32"]).await;
    assert_eq!(list(&s, &here, None).await.status, 200);
    assert_eq!(list(&s, &elsewhere, None).await.status, 403);
    let url = format!("ws://[::1]:{}/v1/ws?token={here}", s.addr.port());
    let _ = WsClient::authed(&url, &here).await;
    let url = format!("ws://[::1]:{}/v1/ws?token={elsewhere}", s.addr.port());
    assert_eq!(WsClient::try_connect(&url).await.err().expect("no upgrade").status, 403);
    s.shutdown().await;
}
