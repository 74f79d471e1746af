//! SPEC §4: a client that stops reading is closed with 4009 and never slows anyone else.

use std::time::Duration;

use serde_json::json;

use crate::support::{TestServer, WsClient};

#[tokio::test]
async fn a_stalled_client_gets_4009_while_another_receives_everything_in_order() {
    const EVENTS: usize = 12_000; // 12 MB of 1 KiB events: more than kernel buffers + queue
    let s = TestServer::with(|c| {
        c.outbox_capacity = 1024;
        c.close_timeout = Duration::from_secs(60);
    })
    .await;
    let url = s.ws_url(&s.bootstrap);
    let mut slow = WsClient::connect_small_rcvbuf(s.addr, &url).await;
    slow.send(json!({"type": "auth", "token": s.bootstrap})).await;
    assert_eq!(slow.recv().await["type"], "auth.success");
    let (mut fast, _) = WsClient::authed(&url, &s.bootstrap).await;

    // The fast client reads everything concurrently.
    let reader = tokio::spawn(async move {
        for i in 0..EVENTS {
            let e = fast.recv().await;
            assert_eq!(e["data"]["seq"], i, "fast client: out of order or lost");
        }
        fast
    });
    let pad = "x".repeat(1000);
    let mut admin = s.admin().await;
    for i in 0..EVENTS {
        s.publish(
            &mut admin,
            "acct_local",
            "test",
            "tasks",
            "task.big",
            json!({"seq": i, "pad": pad}),
        )
        .await;
    }
    let mut fast = reader.await.expect("fast client got every event in order");
    fast.send(json!({"type": "ping"})).await;
    assert_eq!(fast.recv().await["type"], "pong");

    // The slow client resumes reading: a gap-free prefix of the events, then 4009.
    let mut next: u64 = 0;
    let code = slow
        .close_after(|e| {
            assert_eq!(e["data"]["seq"], next, "slow client: events out of order");
            next += 1;
        })
        .await;
    assert_eq!(code, 4009);
    assert!(next < EVENTS as u64, "the slow client was not cut off");
    assert_eq!(s.metric("miteos_slow_consumer_closes_total"), 1.0);
    s.shutdown().await;
}
