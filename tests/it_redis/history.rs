//! History in Redis (SPEC §5, §7) through whole nodes on a private redis-server: offsets
//! under concurrent producers on two nodes, history equal to what subscribers received,
//! exact trimming, expiry, the function library after Redis lost it, and raw PUBLISH.
//! The function's own checks are in `history_function`.

use std::time::Duration;

use miteos_stream::{
    broker::{redis::history_keys, ChannelKey},
    scope::{Environment, Scope},
};
use serde_json::{json, Value};

use crate::support::{http::HttpClient, server::ADMIN_TOKEN, RedisServer, TestServer, WsClient};

fn tasks(account: &str) -> ChannelKey {
    ChannelKey::parse(&format!("mt:live:{account}:tasks")).unwrap()
}

/// One event through a node's admin endpoint; returns its answer.
pub async fn publish(
    admin: std::net::SocketAddr,
    account: &str,
    event: &str,
    data: Value,
) -> Value {
    let body = json!({"account_id": account, "environment": "live", "channel": "tasks",
        "event": event, "data": data});
    let resp = HttpClient::connect(admin)
        .await
        .post_json("/internal/v1/publish", Some(ADMIN_TOKEN), &body.to_string())
        .await;
    assert_eq!(resp.status, 200, "publish failed: {}", resp.body);
    resp.json()
}

/// `FCALL mt_publish` as a backend producer calls it.
async fn fcall(redis: &RedisServer, channel: &ChannelKey, payload: &str) -> (u64, String) {
    redis::cmd("FCALL")
        .arg("mt_publish")
        .arg(2)
        .arg(&history_keys(channel)[..])
        .arg(payload)
        .query_async(&mut redis.conn().await)
        .await
        .expect("mt_publish")
}

/// The next event frame (other messages, e.g. a gap notice, are skipped).
async fn next_event(c: &mut WsClient) -> Value {
    loop {
        let m = c.recv().await;
        if m["type"] == "event" {
            return m;
        }
    }
}

async fn subscriber(node: &TestServer, account: &str) -> WsClient {
    let (token, _) = node.key(account, Environment::Live, &[Scope::TasksRead]).await;
    WsClient::authed(&node.ws_url(&token), &token).await.0
}

/// Polls `check` every 20 ms for up to 10 s.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_consecutive_across_concurrent_producers_on_two_nodes() {
    let redis = RedisServer::start().await;
    let a = TestServer::on_redis(&redis, |_| {}).await;
    let b = TestServer::on_redis(&redis, |_| {}).await;
    let (mut on_a, mut on_b) = (subscriber(&a, "acct_c").await, subscriber(&b, "acct_c").await);
    // Eight producers at once, four through each node's admin endpoint.
    let producers = (0..8).map(|p| {
        let admin = if p % 2 == 0 { a.admin_addr } else { b.admin_addr };
        tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..25 {
                got.push(publish(admin, "acct_c", "task.n", json!({"p": p, "i": i})).await);
            }
            got
        })
    });
    let mut answers = Vec::new();
    for p in producers {
        answers.extend(p.await.unwrap());
    }
    let mut offsets: Vec<u64> = answers.iter().map(|a| a["offset"].as_u64().unwrap()).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (1..=200).collect::<Vec<_>>(), "each offset once, no hole");
    let epoch = &answers[0]["epoch"];
    assert!(answers.iter().all(|a| &a["epoch"] == epoch), "one epoch");
    // Subscribers on both nodes see them in offset order.
    for c in [&mut on_a, &mut on_b] {
        for want in 1..=200u64 {
            assert_eq!(next_event(c).await["offset"], want);
        }
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn history_holds_exactly_the_events_subscribers_received() {
    let redis = RedisServer::start().await;
    let node = TestServer::on_redis(&redis, |_| {}).await;
    let mut c = subscriber(&node, "acct_h").await;
    let ch = tasks("acct_h");
    publish(node.admin_addr, "acct_h", "task.admin", json!({"list": [], "o": {}})).await;
    let (two, epoch) = fcall(&redis, &ch, r#"{"event":"task.bare"}"#).await;
    assert_eq!(two, 2);
    let given = r#" { "event" : "task.given", "id":"evt_mine", "created_at":"2020-01-01T00:00:00Z",
        "data":{"text":"é ✓ \"q\" \u00e9","n":[1,2.5,-3e2],"empty":[]} } "#;
    assert_eq!(fcall(&redis, &ch, given).await, (3, epoch.clone()));
    // A raw PUBLISH in between: delivered live, without offset, and not in history.
    redis.publish(&ch.name(), r#"{"event":"task.raw","data":{}}"#).await;
    publish(node.admin_addr, "acct_h", "task.last", json!([1, 2])).await;

    let mut live = Vec::new();
    for _ in 0..5 {
        live.push(next_event(&mut c).await);
    }
    assert_eq!(live[3]["event"], "task.raw");
    assert!(live[3].get("offset").is_none(), "a raw PUBLISH has no offset: {}", live[3]);
    live.remove(3);
    assert_eq!(live[0]["data"], json!({"list": [], "o": {}}), "[] stays [] (no re-encoding)");
    assert_eq!(live[2]["data"]["text"], "é ✓ \"q\" é");
    assert_eq!(
        (live[2]["id"].as_str(), live[2]["created_at"].as_str()),
        (Some("evt_mine"), Some("2020-01-01T00:00:00Z"))
    );
    // Filled in by the function: a unique id, and the publish time (RFC 3339 UTC, ms).
    assert_eq!(live[1]["id"], format!("evt_{epoch}_2"));
    let at = live[1]["created_at"].as_str().unwrap();
    let at = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339");
    assert!((time::OffsetDateTime::now_utc() - at).abs() < time::Duration::seconds(10));
    assert_eq!(at.nanosecond() % 1_000_000, 0, "milliseconds");

    let page = node.state.hub.broker().history(&ch, None, 100).await.unwrap().unwrap();
    let frames: Vec<Value> =
        page.events.iter().map(|e| serde_json::from_str(e.frame.as_str()).unwrap()).collect();
    assert_eq!(frames, live, "history frames are the live frames");
    assert_eq!((page.head.offset, &*page.head.epoch, page.first), (4, epoch.as_str(), 1));
    node.shutdown().await;
}

#[tokio::test]
async fn history_is_trimmed_to_exactly_history_size() {
    let redis = RedisServer::start().await;
    let node = TestServer::on_redis(&redis, |c| c.history_size = 5).await;
    let ch = tasks("acct_t");
    for i in 0..12 {
        publish(node.admin_addr, "acct_t", "task.n", json!({"i": i})).await;
    }
    let [h, _] = history_keys(&ch);
    let mut conn = redis.conn().await;
    let len: u64 = redis::cmd("XLEN").arg(&h).query_async(&mut conn).await.unwrap();
    assert_eq!(len, 5);
    let page = node.state.hub.broker().history(&ch, Some(2), 100).await.unwrap().unwrap();
    let offsets: Vec<u64> = page.events.iter().filter_map(|e| e.offset).collect();
    assert_eq!((offsets, page.first), (vec![8, 9, 10, 11, 12], 8));
    assert!(!page.covers(2) && page.covers(7), "offset 2 is really gone");
    node.shutdown().await;
}

#[tokio::test]
async fn an_idle_channel_expires_after_the_ttl_and_starts_a_new_epoch() {
    let redis = RedisServer::start().await;
    let node = TestServer::on_redis(&redis, |c| c.history_ttl = Duration::from_secs(1)).await;
    let first = publish(node.admin_addr, "acct_e", "task.one", json!({})).await;
    assert_eq!(first["offset"], 1);
    let keys = history_keys(&tasks("acct_e"));
    let mut conn = redis.conn().await;
    for k in &keys {
        let ttl: i64 = redis::cmd("PTTL").arg(k).query_async(&mut conn).await.unwrap();
        assert!(ttl > 0 && ttl <= 1000, "{k}: {ttl} ms");
    }
    until("the history keys to expire", async || {
        let n: u64 = redis::cmd("EXISTS").arg(&keys[..]).query_async(&mut conn).await.unwrap();
        n == 0
    })
    .await;
    let again = publish(node.admin_addr, "acct_e", "task.two", json!({})).await;
    assert_eq!(again["offset"], 1);
    assert_ne!(again["epoch"], first["epoch"], "a new epoch");
    node.shutdown().await;
}

pub async fn library_loaded(conn: &mut redis::aio::MultiplexedConnection) -> bool {
    let libs = redis::cmd("FUNCTION")
        .arg("LIST")
        .arg("LIBRARYNAME")
        .arg("miteos")
        .query_async::<redis::Value>(conn)
        .await;
    matches!(libs, Ok(redis::Value::Array(a)) if !a.is_empty())
}

#[tokio::test]
async fn after_an_empty_redis_restart_the_node_reloads_the_functions_in_a_new_epoch() {
    let mut redis = RedisServer::start().await;
    let node = TestServer::on_redis(&redis, |_| {}).await;
    let mut c = subscriber(&node, "acct_r").await;
    let before = publish(node.admin_addr, "acct_r", "task.before", json!({})).await;
    assert_eq!(next_event(&mut c).await["offset"], 1);
    redis.restart().await;
    let mut conn = redis.conn().await;
    assert!(!library_loaded(&mut conn).await, "an empty restart has no functions");
    // Loaded by the node's reconnect, before any publish asks for it.
    until("the node to reload its functions", async || library_loaded(&mut conn).await).await;
    node.wait_ready(200).await;
    let after = publish(node.admin_addr, "acct_r", "task.after", json!({})).await;
    assert_eq!(after["offset"], 1);
    assert_ne!(after["epoch"], before["epoch"], "Redis lost the history: a new epoch");
    let e = next_event(&mut c).await;
    assert_eq!((e["event"].as_str(), e["offset"].as_u64()), (Some("task.after"), Some(1)));
    node.shutdown().await;
}

#[tokio::test]
async fn a_node_reloads_the_functions_when_a_call_finds_them_missing() {
    let redis = RedisServer::start().await;
    let node = TestServer::on_redis(&redis, |_| {}).await;
    assert_eq!(publish(node.admin_addr, "acct_f", "task.one", json!({})).await["offset"], 1);
    let mut conn = redis.conn().await;
    let _: String = redis::cmd("FUNCTION").arg("FLUSH").query_async(&mut conn).await.unwrap();
    assert!(!library_loaded(&mut conn).await);
    assert_eq!(publish(node.admin_addr, "acct_f", "task.two", json!({})).await["offset"], 2);
    assert!(library_loaded(&mut conn).await);
    node.shutdown().await;
}

#[tokio::test]
async fn a_raw_publish_is_delivered_live_without_an_offset_and_takes_none() {
    let redis = RedisServer::start().await;
    let node = TestServer::on_redis(&redis, |_| {}).await;
    let mut c = subscriber(&node, "acct_p").await;
    let ch = tasks("acct_p");
    assert_eq!(redis.publish(&ch.name(), r#"{"event":"task.raw"}"#).await, 1);
    let raw = next_event(&mut c).await;
    assert_eq!(raw["event"], "task.raw");
    assert!(raw.get("offset").is_none(), "{raw}");
    assert_eq!(publish(node.admin_addr, "acct_p", "task.kept", json!({})).await["offset"], 1);
    assert_eq!(next_event(&mut c).await["offset"], 1);
    let page = node.state.hub.broker().history(&ch, None, 10).await.unwrap().unwrap();
    assert_eq!(page.events.iter().map(|e| &*e.name).collect::<Vec<_>>(), ["task.kept"]);
    node.shutdown().await;
}

async fn loaded_settings(conn: &mut redis::aio::MultiplexedConnection) -> (u64, u64, u64) {
    redis::cmd("FCALL_RO").arg("mt_settings").arg(0).query_async(conn).await.unwrap()
}

/// A one-shot command (the CLI) with other settings than the nodes' never replaces their
/// library; on a Redis without one, its publish installs it.
#[tokio::test]
async fn a_command_with_other_settings_leaves_the_nodes_library_alone() {
    let redis = RedisServer::start().await;
    let node = TestServer::on_redis(&redis, |_| {}).await;
    let mut conn = redis.conn().await;
    assert_eq!(loaded_settings(&mut conn).await, (1000, 600_000, 64 * 1024));
    let config = miteos_stream::Config {
        redis_url: Some(redis.url()),
        history_size: 7,
        ..miteos_stream::Config::default()
    };
    let command = miteos_stream::node::Backends::build_for_command(&config).unwrap();
    let broker = command.hub.broker();
    let ch = tasks("acct_cli");
    let bytes = bytes::Bytes::from_static(br#"{"event":"task.cli"}"#);
    assert_eq!(broker.publish(&ch, bytes.clone()).await.unwrap().unwrap().offset, 1);
    until("the command's broker to connect", async || broker.ready()).await;
    assert_eq!(loaded_settings(&mut conn).await.0, 1000, "the nodes' settings stay");

    let _: String = redis::cmd("FUNCTION").arg("FLUSH").query_async(&mut conn).await.unwrap();
    assert_eq!(broker.publish(&ch, bytes).await.unwrap().unwrap().offset, 2);
    assert_eq!(loaded_settings(&mut conn).await.0, 7, "installed when missing");
    node.shutdown().await;
}
