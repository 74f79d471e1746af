//! SPEC §7 under a resume storm, on a private redis-server: many clients resuming the same
//! channel at once cost the node's one Redis connection one history read, not one each
//! (counted by Redis itself: `INFO commandstats`), and take the channel's head from the
//! node; a history read that fails closes the stream with 1013 instead of telling the
//! client `recovered: false` (its events are still in history).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use miteos_stream::scope::{Environment, Scope};

use crate::support::{proxy::TcpProxy, ws::event_offsets, RedisServer, TestServer, WsClient};

const ACCT: &str = "acct_storm";

async fn publish_range(s: &TestServer, from: u64, to: u64) {
    let mut admin = s.admin().await;
    for i in from..=to {
        let a =
            s.publish(&mut admin, ACCT, "test", "tasks", &format!("task.n{i}"), json!({})).await;
        assert_eq!(a["offset"].as_u64(), Some(i), "{a}");
    }
}

/// How many FCALLs (every head, history read and publish of the history library) Redis ran.
async fn fcalls(redis: &RedisServer) -> u64 {
    let mut conn = redis.conn().await;
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_fcall:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// A client on tasks + agents that left tasks, so that it can resume tasks with `subscribe`.
async fn off_tasks(s: &TestServer, token: &str) -> WsClient {
    let (mut c, _) = WsClient::authed(&s.ws_url(token), token).await;
    c.send(json!({"type": "unsubscribe", "channels": ["tasks"]})).await;
    assert_eq!(c.recv().await["type"], "unsubscribed");
    c
}

fn resume_tasks(offset: u64, epoch: &Value) -> Value {
    json!({"type": "subscribe", "channels": ["tasks"], "resume": {"tasks": {"offset": offset, "epoch": epoch}}})
}

const HISTORY_SENT: &str = "miteos_broker_reads_total{op=\"history\"} ";
const HISTORY_SHARED: &str = "miteos_broker_reads_shared_total{op=\"history\"} ";
const HEAD_SENT: &str = "miteos_broker_reads_total{op=\"head\"} ";

#[tokio::test]
async fn many_concurrent_resumes_of_a_channel_cost_one_history_read_and_no_head_read() {
    const N: usize = 40;
    let redis = RedisServer::start().await;
    let s = TestServer::on_redis(&redis, |_| {}).await;
    let (token, _) = s.key(ACCT, Environment::Test, &[Scope::TasksRead, Scope::AgentsRead]).await;
    // The observer keeps tasks subscribed on the node, which knows its position.
    let (mut observer, ok) = WsClient::authed(&s.ws_url(&token), &token).await;
    let epoch = ok["positions"]["tasks"]["epoch"].clone();
    let mut clients = Vec::new();
    for _ in 0..N {
        clients.push(off_tasks(&s, &token).await);
    }
    publish_range(&s, 1, 5).await;
    assert_eq!(event_offsets(&observer.recv_until_offset(5).await), [1, 2, 3, 4, 5]);

    let (calls, sent, shared) =
        (fcalls(&redis).await, s.metric(HISTORY_SENT), s.metric(HISTORY_SHARED));
    let heads = s.metric(HEAD_SENT);
    // Redis answers nothing for 1.5 s (less than the node's 2 s response timeout): the first
    // resume's history read waits in Redis, and every other resume arrives meanwhile.
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("ALL")
        .query_async(&mut conn)
        .await
        .unwrap();
    let paused = Instant::now();
    for c in &mut clients {
        c.send(resume_tasks(2, &epoch)).await;
    }
    // Every resume waits for the read sent first, or shares the one pending behind it (all
    // but its first caller count as shared).
    while s.metric(HISTORY_SHARED) < shared + (N - 2) as f64 {
        assert!(paused.elapsed() < Duration::from_millis(1400), "resumes not all waiting yet");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for c in &mut clients {
        let reply = c.recv().await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        let want = json!({"offset": 5, "epoch": epoch, "recovered": true});
        assert_eq!(reply["positions"]["tasks"], want);
        assert_eq!(event_offsets(&c.recv_until_offset(5).await), [3, 4, 5]);
    }
    // One read, or two when some resumes came after the first was sent.
    let reads = s.metric(HISTORY_SENT) - sent;
    assert!(reads == 1.0 || reads == 2.0, "{reads} history reads for {N} resumes");
    assert_eq!(s.metric(HEAD_SENT) - heads, 0.0, "the node knew the channel's head");
    assert_eq!((fcalls(&redis).await - calls) as f64, reads, "Redis ran every read, no other");
    assert_eq!(s.metric("miteos_resumes_recovered_total "), N as f64);
    assert_eq!(s.metric("miteos_resumes_unrecovered_total "), 0.0);
    s.shutdown().await;
}

#[tokio::test]
async fn a_failed_history_read_closes_the_stream_1013_instead_of_answering_not_recovered() {
    let redis = RedisServer::start().await;
    let proxy = TcpProxy::start(redis.port).await;
    let url = proxy.url();
    let s = TestServer::with(|c| c.redis_url = Some(url)).await;
    let (token, _) = s.key(ACCT, Environment::Test, &[Scope::TasksRead, Scope::AgentsRead]).await;
    let (mut observer, ok) = WsClient::authed(&s.ws_url(&token), &token).await;
    let epoch = ok["positions"]["tasks"]["epoch"].clone();
    let mut c = off_tasks(&s, &token).await;
    publish_range(&s, 1, 3).await;
    assert_eq!(event_offsets(&observer.recv_until_offset(3).await), [1, 2, 3]);

    proxy.cut(); // the node's Redis connections drop; events 2..=3 stay in history
    c.send(resume_tasks(1, &epoch)).await;
    let mut seen = Vec::new();
    assert_eq!(c.close_after(|m| seen.push(m)).await, 1013);
    assert!(seen.iter().all(|m| m["type"] != "subscribed" && m["type"] != "event"), "{seen:?}");
    assert_eq!(s.metric("miteos_resumes_failed_total "), 1.0);
    assert_eq!(s.metric("miteos_resumes_unrecovered_total "), 0.0);
    assert_eq!(s.metric("miteos_ws_closes_total{code=\"1013\"} "), 1.0);
    s.shutdown().await;
}
