//! SPEC §4.6: server pings; a client that answers nothing is closed with 4004.

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{
    raw::{RawWs, OP_PING, OP_TEXT},
    TestServer, WsClient,
};

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed_4004() {
    let s = TestServer::with(|c| {
        c.ping_interval = Duration::from_millis(200);
        c.pong_timeout = Duration::from_millis(300);
    })
    .await;
    let mut raw = RawWs::connect(s.addr, &format!("/v1/ws?token={}", s.bootstrap)).await;
    raw.send_text(&json!({"type": "auth", "token": s.bootstrap}).to_string()).await;
    let (op, payload) = raw.read_frame().await;
    assert_eq!(op, OP_TEXT);
    assert!(String::from_utf8_lossy(&payload).contains("auth.success"));
    let (code, seen) = raw.read_until_close().await;
    assert_eq!(code, 4004);
    assert!(seen.contains(&OP_PING), "the server pinged before giving up: {seen:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_connected() {
    let s = TestServer::with(|c| {
        c.ping_interval = Duration::from_millis(100);
        c.pong_timeout = Duration::from_millis(200);
    })
    .await;
    let (mut c, _) = WsClient::authed(&s.ws_url(&s.bootstrap), &s.bootstrap).await;
    // tungstenite answers each ping while we read; five pings span well over one
    // ping_interval + pong_timeout, so an unanswered heartbeat would have closed us.
    let mut pings = 0;
    while pings < 5 {
        let msg = tokio::time::timeout(Duration::from_secs(10), c.ws.next())
            .await
            .expect("a ping in time");
        match msg {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("expected pings only, got {other:?}"),
        }
    }
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.recv().await["type"], "pong");
    assert_eq!(s.metric("miteos_ws_closes_total{code=\"4004\"}"), 0.0);
    s.shutdown().await;
}
