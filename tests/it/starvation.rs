//! No tenant or host starves others of connection slots (issue 10 item 4): unauthenticated
//! sockets per key and per account, connections per client IP, slow bodies, the whole-request
//! timeout, and the admin listener's own budget — each while other clients keep being served.

use std::{net::SocketAddr, time::Duration};

use miteos_stream::scope::{Environment, Scope};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::{raw_http::connect_from, TestServer, WsClient};

/// Reads what the server answers until it closes or `limit` passes.
async fn answer(stream: &mut TcpStream, limit: Duration) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

async fn healthz_from(src: &str, addr: SocketAddr) -> String {
    let mut s = connect_from(src, addr).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    answer(&mut s, Duration::from_secs(5)).await
}

#[tokio::test]
async fn one_key_or_account_cannot_hold_every_unauthenticated_slot() {
    let s = TestServer::with(|c| {
        c.max_unauthenticated_per_key = 2;
        c.max_unauthenticated_per_account = 3;
    })
    .await;
    let (k1, _) = s.key("acct_greedy", Environment::Live, &[Scope::TasksRead]).await;
    let (k2, _) = s.key("acct_greedy", Environment::Live, &[Scope::TasksRead]).await;
    let (other, _) = s.key("acct_fine", Environment::Live, &[Scope::TasksRead]).await;
    // Upgrades that never send their auth message.
    let mut waiting =
        vec![WsClient::connect(&s.ws_url(&k1)).await, WsClient::connect(&s.ws_url(&k1)).await];
    let refused = WsClient::try_connect(&s.ws_url(&k1)).await.err().expect("key at its cap");
    assert_eq!(refused.status, 429);
    waiting.push(WsClient::connect(&s.ws_url(&k2)).await);
    let refused = WsClient::try_connect(&s.ws_url(&k2)).await.err().expect("account at its cap");
    assert_eq!(refused.status, 429);
    // Another tenant is served meanwhile.
    let (_fine, ok) = WsClient::authed(&s.ws_url(&other), &other).await;
    assert_eq!(ok["type"], "auth.success");
    // Authenticating gives the slot back.
    waiting[0].send(serde_json::json!({"type": "auth", "token": k1})).await;
    assert_eq!(waiting[0].recv().await["type"], "auth.success");
    assert!(WsClient::try_connect(&s.ws_url(&k1)).await.is_ok());
    assert_eq!(s.metric("miteos_rate_limited_total{limit=\"unauthenticated_per_key\"}"), 1.0);
    assert_eq!(s.metric("miteos_rate_limited_total{limit=\"unauthenticated_per_account\"}"), 1.0);
    s.shutdown().await;
}

#[tokio::test]
async fn one_host_cannot_hold_every_connection() {
    let s = TestServer::with(|c| c.max_connections_per_ip = 5).await;
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(connect_from("127.0.0.2", s.addr).await);
    }
    let head = healthz_from("127.0.0.2", s.addr).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(healthz_from("127.0.0.1", s.addr).await.starts_with("HTTP/1.1 200"));
    assert_eq!(s.metric("miteos_rate_limited_total{limit=\"connections_per_ip\"}"), 1.0);
    drop(idle);
    // The slots come back once the host lets go (the server notices the closes).
    let mut ok = false;
    for _ in 0..100 {
        if healthz_from("127.0.0.2", s.addr).await.starts_with("HTTP/1.1 200") {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "127.0.0.2 never got its slots back");
    s.shutdown().await;
}

/// A POST that declares 200 body bytes and sends one every `every`; resolves to what the
/// server answered and when.
fn trickle(
    src: &'static str,
    addr: SocketAddr,
    key: String,
    every: Duration,
) -> tokio::task::JoinHandle<(String, Duration)> {
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let stream = connect_from(src, addr).await;
        let (mut r, mut w) = stream.into_split();
        let head = format!(
            "POST /v1/ws/tickets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
        );
        w.write_all(head.as_bytes()).await.unwrap();
        let writer = tokio::spawn(async move {
            for _ in 0..200 {
                if w.write_all(b" ").await.is_err() {
                    return;
                }
                tokio::time::sleep(every).await;
            }
        });
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(30), r.read(&mut buf))
            .await
            .map_or(0, |r| r.unwrap_or(0));
        writer.abort();
        (String::from_utf8_lossy(&buf[..n]).into_owned(), started.elapsed())
    })
}

#[tokio::test]
async fn slow_bodies_are_cut_and_others_keep_being_served() {
    let s = TestServer::with(|c| {
        c.body_read_timeout = Duration::from_secs(4);
        c.min_body_bytes_per_second = 100;
    })
    .await;
    let key = s.bootstrap.clone();
    let slow: Vec<_> = (0..50)
        .map(|_| trickle("127.0.0.2", s.addr, key.clone(), Duration::from_millis(500)))
        .collect();
    // Meanwhile another client is answered at once, again and again.
    for _ in 0..10 {
        let t = std::time::Instant::now();
        assert!(healthz_from("127.0.0.1", s.addr).await.starts_with("HTTP/1.1 200"));
        assert!(t.elapsed() < Duration::from_secs(1));
    }
    for h in slow {
        let (answer, took) = h.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("request_timeout"), "{answer}");
        assert!(took < Duration::from_secs(5), "cut after {took:?}");
    }
    assert_eq!(s.metric("miteos_rate_limited_total{limit=\"body_timeout\"}"), 50.0);
    s.shutdown().await;
}

#[tokio::test]
async fn a_request_is_answered_within_request_timeout() {
    let s = TestServer::with(|c| {
        c.request_timeout = Duration::from_secs(1);
        c.min_body_bytes_per_second = 0;
    })
    .await;
    // Fast enough for any body rate, too slow for the whole-request bound.
    let (answer, took) =
        trickle("127.0.0.2", s.addr, s.bootstrap.clone(), Duration::from_millis(100))
            .await
            .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(3), "{took:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn the_admin_listener_has_its_own_budget() {
    let s = TestServer::with(|c| c.max_connections = 3).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(connect_from("127.0.0.1", s.addr).await);
    }
    assert!(healthz_from("127.0.0.1", s.addr).await.starts_with("HTTP/1.1 503"), "public full");
    let r = s.admin().await.get("/metrics", None).await;
    assert_eq!(r.status, 200, "the admin listener still answers");
    let mut admin = s.admin().await;
    s.publish(&mut admin, "acct_local", "test", "tasks", "task.still", serde_json::json!({})).await;
    s.shutdown().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_address_has_its_own_budget() {
    let s = TestServer::with(|c| {
        c.max_connections_per_ip = 2;
        c.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let via_proxy = |client: &str| {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = s.ws_url(&s.bootstrap).into_client_request().unwrap();
        req.headers_mut().insert("x-forwarded-for", client.parse().unwrap());
        tokio_tungstenite::connect_async(req)
    };
    let a1 = via_proxy("10.1.1.1").await.expect("first");
    let a2 = via_proxy("10.1.1.1").await.expect("second");
    match via_proxy("10.1.1.1").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 429),
        other => panic!("a third stream of one client was not refused: {:?}", other.is_ok()),
    }
    let b = via_proxy("10.1.1.2").await.expect("another client behind the same proxy");
    drop((a1, a2, b));
    s.shutdown().await;
}
