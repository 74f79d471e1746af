//! Issue 10 item 4, slow bodies in detail: a trickle is cut by the minimum rate long before
//! `body_read_timeout` and the node recovers at once (the 100 POSTs at 1 B / 2 s);
//! with a per-IP cap others are served throughout; the read timeout and `request_timeout`
//! each bound a body that keeps the minimum rate; a body fast enough in pieces passes.
//! (408 and 503 both carry the code `request_timeout`.)

use std::time::{Duration, Instant};

use miteos_stream::scope::{Environment, Scope};
use tokio::io::AsyncWriteExt;

use crate::support::{
    raw_http::{connect_from, padded_object, post_head, read_response, trickle},
    TestServer,
};

/// Starts a POST of a 20-byte body from `src` that sends one byte every `every`; returns a
/// task answering (status, body, seconds until the response).
async fn slow_post(
    s: &TestServer,
    src: &str,
    key: &str,
    every: Duration,
) -> tokio::task::JoinHandle<(u16, String, f64)> {
    let stream = connect_from(src, s.addr).await;
    let (mut r, mut w) = stream.into_split();
    w.write_all(post_head("/v1/ws/tickets", key, 20, &[]).as_bytes()).await.unwrap();
    let start = Instant::now();
    trickle(w, padded_object(20), every);
    tokio::spawn(async move {
        let (status, _, body) = read_response(&mut r, Duration::from_secs(30)).await;
        (status, body, start.elapsed().as_secs_f64())
    })
}

/// One `GET /healthz` on a new connection from `src`: its status (0 = closed unanswered).
async fn healthz_from(s: &TestServer, src: &str) -> u16 {
    let mut c = connect_from(src, s.addr).await;
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    read_response(&mut c, Duration::from_secs(5)).await.0
}

/// Retries `/healthz` from 127.0.0.1 until a 200, for up to `within`; returns the wait.
async fn served_within(s: &TestServer, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if healthz_from(s, "127.0.0.1").await == 200 {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test]
async fn a_hundred_trickling_bodies_are_cut_by_the_minimum_rate_and_the_node_recovers() {
    // The attack: 100 authenticated POSTs at 1 byte / 2 s fill `max_connections`;
    // their 20-byte bodies would hold the node for 40 s.
    let s = TestServer::with(|c| {
        c.max_connections = 100;
        c.max_connections_per_ip = 0;
    })
    .await;
    let (key, _) = s.key("acct_slow", Environment::Live, &[Scope::TasksRead]).await;
    let mut attack = Vec::new();
    for _ in 0..100 {
        attack.push(slow_post(&s, "127.0.0.2", &key, Duration::from_secs(2)).await);
    }
    let waited = served_within(&s, Duration::from_secs(10)).await;
    for a in attack {
        let (status, body, secs) = a.await.unwrap();
        assert_eq!(status, 408, "{body}");
        assert!(body.contains("\"request_timeout\""), "{body}");
        // Cut by the minimum rate (1 s grace), well before `body_read_timeout` (10 s).
        assert!(secs < 6.0, "cut after {secs:.1} s");
    }
    let waited = waited.expect("another client was served while the attack ran");
    assert!(waited < Duration::from_secs(6), "served after {waited:?}");
    assert!(s.metric("miteos_rate_limited_total{limit=\"body_timeout\"}") >= 100.0);
    s.shutdown().await;
}

#[tokio::test]
async fn with_a_per_ip_cap_other_clients_are_served_throughout_a_slow_body_attack() {
    let s = TestServer::with(|c| {
        c.max_connections = 100;
        c.max_connections_per_ip = 50;
        c.min_body_bytes_per_second = 0;
        c.body_read_timeout = Duration::from_secs(3);
    })
    .await;
    let (key, _) = s.key("acct_slow", Environment::Live, &[Scope::TasksRead]).await;
    let mut attack = Vec::new();
    for _ in 0..100 {
        attack.push(slow_post(&s, "127.0.0.2", &key, Duration::from_secs(2)).await);
    }
    // While the attack holds its 50 connections, every request from elsewhere is answered.
    for _ in 0..10 {
        assert_eq!(healthz_from(&s, "127.0.0.1").await, 200, "refused during the attack");
    }
    let mut statuses = Vec::new();
    for a in attack {
        statuses.push(a.await.unwrap().0);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 50, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 408).count(), 50, "{statuses:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn the_body_read_timeout_bounds_a_body_that_keeps_the_minimum_rate() {
    let s = TestServer::with(|c| {
        c.min_body_bytes_per_second = 0;
        c.body_read_timeout = Duration::from_secs(1);
    })
    .await;
    let (key, _) = s.key("acct_slow", Environment::Live, &[Scope::TasksRead]).await;
    let (status, body, secs) =
        slow_post(&s, "127.0.0.1", &key, Duration::from_millis(200)).await.await.unwrap();
    assert_eq!(status, 408, "{body} {secs}");
    assert!(body.contains("\"request_timeout\""), "{body}");
    assert!((0.9..3.5).contains(&secs), "cut after {secs:.1} s (timeout 1 s, body takes 4 s)");
    assert!(s.metric("miteos_rate_limited_total{limit=\"body_timeout\"}") >= 1.0);
    s.shutdown().await;
}

#[tokio::test]
async fn a_body_arriving_fast_enough_in_pieces_is_accepted() {
    let s = TestServer::with(|c| c.min_body_bytes_per_second = 100).await;
    let (key, _) = s.key("acct_slow", Environment::Live, &[Scope::TasksRead]).await;
    let mut c = connect_from("127.0.0.1", s.addr).await;
    c.write_all(post_head("/v1/ws/tickets", &key, 200, &[]).as_bytes()).await.unwrap();
    let body = padded_object(200);
    // 50 bytes every 300 ms: 1.2 s in all, above 100 B/s after the first second.
    for piece in body.chunks(50) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.write_all(piece).await.unwrap();
    }
    let (status, _, body) = read_response(&mut c, Duration::from_secs(5)).await;
    assert_eq!(status, 201, "{body}");
    s.shutdown().await;
}

#[tokio::test]
async fn the_request_timeout_bounds_the_whole_request() {
    let s = TestServer::with(|c| {
        c.min_body_bytes_per_second = 0;
        c.body_read_timeout = Duration::from_secs(60);
        c.request_timeout = Duration::from_secs(1);
    })
    .await;
    let (key, _) = s.key("acct_slow", Environment::Live, &[Scope::TasksRead]).await;
    let (status, body, secs) =
        slow_post(&s, "127.0.0.1", &key, Duration::from_millis(500)).await.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"request_timeout\""), "{body}");
    assert!((0.9..3.5).contains(&secs), "answered after {secs:.1} s");
    assert!(s.metric("miteos_rate_limited_total{limit=\"request_timeout\"}") >= 1.0);
    s.shutdown().await;
}
