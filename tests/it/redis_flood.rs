//! Redis ingress under a flood (issue 10 item 3): a producer publishing far faster than a
//! node fans out must not grow the node's memory; the node is cut off (a counted gap), and a
//! revocation published during the flood still closes its stream within a second.

use std::time::{Duration, Instant};

use miteos_stream::scope::{Environment, Scope};
use serde_json::json;

use crate::support::{RedisServer, TestServer, WsClient};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_producer_is_a_counted_gap_with_bounded_memory_and_revocation_still_arrives() {
    let redis = RedisServer::start().await;
    // Redis cuts a subscriber off once 4 MiB are queued for it (default: 32 MiB).
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("client-output-buffer-limit")
        .arg("pubsub 4mb 1mb 1")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    let s = TestServer::on_redis(&redis, |c| {
        c.max_connections_per_key = 0;
        c.max_connections_per_account = 0;
        c.new_connections_per_key_per_second = 0;
        // A small ingress bound, so falling behind is certain whatever the machine's speed.
        c.max_broker_queue_bytes = 256 * 1024;
    })
    .await;
    let (token, _) = s.key("acct_f", Environment::Live, &[Scope::TasksRead]).await;
    // The victim is on another channel: what is measured is the control path, not its outbox.
    let (victim_token, victim_id) = s.key("acct_f", Environment::Live, &[Scope::AgentsRead]).await;
    // Many subscribers that read everything they get.
    let mut readers = Vec::new();
    for _ in 0..100 {
        let (mut c, _) = WsClient::authed(&s.ws_url(&token), &token).await;
        readers.push(tokio::spawn(async move { c.close_after(|_| {}).await }));
    }
    let (mut victim, _) = WsClient::authed(&s.ws_url(&victim_token), &victim_token).await;
    let before = rss_kib();

    let payload = json!({"event": "task.flood", "data": {"pad": "x".repeat(2000)}}).to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (url, payload, stop) = (redis.url(), payload.clone(), stop.clone());
        tokio::spawn(async move {
            let mut c =
                redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
            let started = Instant::now();
            let mut sent = 0u64;
            // Until the test saw the gap (or 30 s on a very loaded machine).
            while !stop.load(std::sync::atomic::Ordering::SeqCst)
                && started.elapsed() < Duration::from_secs(30)
            {
                let mut p = redis::pipe();
                for _ in 0..500 {
                    p.cmd("PUBLISH").arg("mt:live:acct_f:tasks").arg(&payload).ignore();
                }
                if p.query_async::<()>(&mut c).await.is_err() {
                    break;
                }
                sent += 500;
            }
            sent
        })
    };
    // Once the flood has overwhelmed the node (its first overflow), revoke the victim's key
    // through the control channel.
    let deadline = Instant::now() + Duration::from_secs(25);
    while s.metric("miteos_broker_overflows_total") < 1.0 {
        assert!(Instant::now() < deadline, "the flood never overwhelmed the node");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let revoke = json!({"node": "flood-test", "msg": {"type": "revoke", "key_id": victim_id}});
    let published = Instant::now();
    redis.publish("mt:control", &revoke.to_string()).await;
    let code = tokio::time::timeout(Duration::from_secs(1), victim.expect_close())
        .await
        .expect("the revocation closed the stream within 1 s during the flood");
    let took = published.elapsed();
    eprintln!("revocation took {took:?}, gaps so far {}", s.metric("miteos_broker_gaps_total"));
    assert_eq!(code, 4003);

    let deadline = Instant::now() + Duration::from_secs(25);
    while s.metric("miteos_broker_gaps_total") < 1.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let sent = flood.await.unwrap();
    let gaps = s.metric("miteos_broker_gaps_total");
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    eprintln!(
        "flood: {sent} messages of {} B, gaps {gaps}, RSS +{grown_mib} MiB, revocation {took:?}",
        payload.len()
    );
    assert!(gaps >= 1.0, "the node fell behind and was cut off: a counted gap");
    let overflows = s.metric("miteos_broker_overflows_total");
    eprintln!("overflows {overflows}");
    assert!(grown_mib < 150, "node memory stayed bounded: +{grown_mib} MiB");
    for r in readers {
        r.abort();
    }
    s.shutdown().await;
}
