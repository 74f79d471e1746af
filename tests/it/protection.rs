//! Issue 5: limits and hostile input — the server keeps serving everyone else.

use std::{net::IpAddr, time::Duration};

use futures::StreamExt;
use miteos_stream::scope::{Environment, Scope};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::{TestServer, WsClient};

#[tokio::test]
async fn brute_force_from_one_ip_gets_429_while_other_addresses_still_connect() {
    let s = TestServer::with(|c| c.auth_failures_per_minute = 20).await;
    let (good, _) =
        s.key("acct_bf", Environment::Live, &[Scope::TasksRead, Scope::TeamsRead]).await;
    let attacker: IpAddr = "127.0.0.1".parse().unwrap();
    let mut statuses = Vec::new();
    for i in 0..200 {
        let bad = format!("mt_live_sk_{}", "x".repeat(40 + i % 7));
        let r = WsClient::try_connect_from(attacker, s.addr, &s.ws_url(&bad))
            .await
            .err()
            .expect("never upgraded");
        if r.status == 429 {
            assert_eq!(r.body["error"]["code"], "rate_limited");
            assert_eq!(r.body["error"]["type"], "rate_limit_error");
        }
        statuses.push(r.status);
    }
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(
        statuses[..20].iter().all(|s| *s == 401),
        "the budget is spent first: {:?}",
        &statuses[..25]
    );
    assert!(limited >= 170, "{limited} of 200 were rate limited");
    // Locked out before any key lookup: even the good key is refused from this address…
    let r = WsClient::try_connect_from(attacker, s.addr, &s.ws_url(&good))
        .await
        .err()
        .expect("locked out");
    assert_eq!(r.status, 429);
    let mut http = s.http().await;
    let r = http.get("/v1/api-keys", Some(&good)).await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    // …while the same good key from another client address is served.
    let mut c = WsClient::try_connect_from("127.0.0.2".parse().unwrap(), s.addr, &s.ws_url(&good))
        .await
        .expect("other IP unaffected");
    c.send(json!({"type": "auth", "token": good})).await;
    assert_eq!(c.recv().await["type"], "auth.success");
    assert!(s.metric("miteos_rate_limited_total{limit=\"auth_failures\"}") >= 170.0);
    s.shutdown().await;
}

#[tokio::test]
async fn per_key_and_per_account_connection_caps() {
    let s = TestServer::with(|c| {
        c.max_connections_per_key = 2;
        c.max_connections_per_account = 3;
    })
    .await;
    let (k1, _) = s.key("acct_cap", Environment::Live, &[Scope::TasksRead]).await;
    let (k2, _) = s.key("acct_cap", Environment::Live, &[Scope::TasksRead]).await;
    let (other, _) = s.key("acct_other", Environment::Live, &[Scope::TasksRead]).await;
    let (a, _) = WsClient::authed(&s.ws_url(&k1), &k1).await;
    let (_b, _) = WsClient::authed(&s.ws_url(&k1), &k1).await;
    let r = WsClient::try_connect(&s.ws_url(&k1)).await.err().expect("key cap");
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (429, Some("rate_limited")));
    let (_c, _) = WsClient::authed(&s.ws_url(&k2), &k2).await;
    let r = WsClient::try_connect(&s.ws_url(&k2)).await.err().expect("account cap (3 open)");
    assert_eq!(r.status, 429);
    let _ = WsClient::authed(&s.ws_url(&other), &other).await; // other accounts are unaffected
                                                               // A slot comes back when its connection ends.
    drop(a);
    let mut freed = false;
    for _ in 0..100 {
        // The server notices the closed socket on its own schedule: retry briefly.
        if WsClient::try_connect(&s.ws_url(&k1)).await.is_ok() {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "the slot was never released");
    assert!(s.metric("miteos_rate_limited_total{limit=\"connections_per_key\"}") >= 1.0);
    s.shutdown().await;
}

#[tokio::test]
async fn a_burst_past_the_cap_never_leaves_more_than_the_cap_open() {
    let s = TestServer::with(|c| c.max_connections_per_key = 2).await;
    let (k, _) = s.key("acct_race", Environment::Live, &[Scope::TasksRead]).await;
    let attempts = (0..12).map(|_| {
        let (url, k) = (s.ws_url(&k), k.clone());
        tokio::spawn(async move {
            match WsClient::try_connect(&url).await {
                Err(r) => (r.status, None),
                Ok(mut c) => {
                    c.send(json!({"type": "auth", "token": k})).await;
                    match c.ws.next().await {
                        Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))
                            if t.contains("auth.success") =>
                        {
                            (101, Some(c))
                        }
                        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f)))) => {
                            (u16::from(f.code), None)
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
        })
    });
    let outcomes = futures::future::join_all(attempts).await;
    let codes: Vec<u16> = outcomes.iter().map(|o| o.as_ref().unwrap().0).collect();
    assert_eq!(codes.iter().filter(|c| **c == 101).count(), 2, "{codes:?}");
    assert!(codes.iter().all(|c| [101, 429, 4029].contains(c)), "{codes:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_message_flood_closes_4008() {
    let s = TestServer::with(|c| {
        c.client_messages_per_second = 5;
        c.client_message_burst = 10;
    })
    .await;
    let (mut c, _) = WsClient::authed(&s.ws_url(&s.bootstrap), &s.bootstrap).await;
    for _ in 0..40 {
        c.send(json!({"type": "ping"})).await;
    }
    let mut pongs = 0;
    let code = c
        .close_after(|m| {
            assert_eq!(m["type"], "pong");
            pongs += 1;
        })
        .await;
    assert_eq!(code, 4008);
    assert!((10..40).contains(&pongs), "{pongs} pongs before the close");
    s.shutdown().await;
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_while_others_are_served() {
    let s = TestServer::with(|c| c.header_read_timeout = Duration::from_millis(500)).await;
    let mut slow = TcpStream::connect(s.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    // Normal clients are served meanwhile.
    for _ in 0..5 {
        assert_eq!(s.http().await.get("/healthz", None).await.status, 200);
    }
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the slow connection was not cut off");
    let text = String::from_utf8_lossy(&buf);
    assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    s.shutdown().await;
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let s = TestServer::start().await;
    let mut raw = TcpStream::connect(s.addr).await.unwrap();
    let req =
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
    let _ = raw.write_all(req.as_bytes()).await; // the server may close before we finish
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf))
        .await
        .expect("answered")
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || head.starts_with("HTTP/1.1 431"), "{head}");
    assert_eq!(s.http().await.get("/healthz", None).await.status, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn origin_allowlist_refuses_cross_origin_upgrades() {
    let s = TestServer::with(|c| c.allowed_origins = vec!["https://app.example.com".into()]).await;
    let with_origin = |origin: &'static str| {
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                s.ws_url(&s.bootstrap),
            )
            .unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        req
    };
    match tokio_tungstenite::connect_async(with_origin("https://evil.example.com")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 403);
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "origin_not_allowed");
        }
        other => {
            panic!("cross-origin upgrade was not refused: {:?}", other.map(|(_, r)| r.status()))
        }
    }
    assert!(tokio_tungstenite::connect_async(with_origin("https://app.example.com")).await.is_ok());
    assert!(
        WsClient::try_connect(&s.ws_url(&s.bootstrap)).await.is_ok(),
        "no Origin: not a browser, allowed"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn only_websocket_version_13_is_accepted() {
    let s = TestServer::start().await;
    let mut raw = TcpStream::connect(s.addr).await.unwrap();
    let req = format!(
        "GET /v1/ws?token={} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
        s.bootstrap
    );
    raw.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = raw.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 426"), "{head}");
    assert!(head.contains("sec-websocket-version: 13"), "{head}");
    s.shutdown().await;
}

#[tokio::test]
async fn the_global_connection_cap_refuses_gracefully() {
    let s = TestServer::with(|c| c.max_connections = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut h = s.http().await;
        assert_eq!(h.get("/healthz", None).await.status, 200);
        held.push(h); // keep-alive: each holds a connection
    }
    let mut raw = TcpStream::connect(s.addr).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf))
        .await
        .expect("refused promptly")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("\"overloaded\""), "{text}");
    assert!(s.metric("miteos_rate_limited_total{limit=\"max_connections\"}") >= 1.0);
    s.shutdown().await;
}

#[tokio::test]
async fn unauthenticated_sockets_have_their_own_small_cap() {
    let s = TestServer::with(|c| c.max_unauthenticated = 1).await;
    let mut first = WsClient::connect(&s.ws_url(&s.bootstrap)).await; // upgraded, not authenticated
    let r = WsClient::try_connect(&s.ws_url(&s.bootstrap))
        .await
        .err()
        .expect("second pending socket refused");
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (503, Some("overloaded")));
    first.send(json!({"type": "auth", "token": s.bootstrap})).await;
    assert_eq!(first.recv().await["type"], "auth.success");
    // The permit is given back once the first socket authenticated.
    let (_second, _) = WsClient::authed(&s.ws_url(&s.bootstrap), &s.bootstrap).await;
    s.shutdown().await;
}

#[tokio::test]
async fn new_connections_per_key_are_rate_limited() {
    let s = TestServer::with(|c| c.new_connections_per_key_per_second = 3).await;
    let (k, _) = s.key("acct_rate", Environment::Live, &[Scope::TasksRead]).await;
    let (other, _) = s.key("acct_rate", Environment::Live, &[Scope::TasksRead]).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(match WsClient::try_connect(&s.ws_url(&k)).await {
            Ok(_) => 101,
            Err(r) => {
                assert_eq!(r.body["error"]["code"], "rate_limited");
                r.status
            }
        });
    }
    // Three in the first second (the quota's burst), then refusals; other keys are unaffected.
    assert_eq!(&statuses[..3], &[101, 101, 101]);
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    assert!(WsClient::try_connect(&s.ws_url(&other)).await.is_ok());
    assert!(s.metric("miteos_rate_limited_total{limit=\"new_connections_per_key\"}") >= 1.0);
    s.shutdown().await;
}
