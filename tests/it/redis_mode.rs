//! Redis mode (issue 4): several nodes on one private redis-server behave as one service.

use std::time::{Duration, Instant};

use miteos_stream::{
    keys::redis::RedisKeyStore,
    redis_link::RedisLink,
    scope::{Environment, Scope},
};
use serde_json::json;

use crate::support::{RedisServer, TestServer, WsClient};

fn event(name: &str, n: i64) -> String {
    json!({"event": name, "data": {"n": n}}).to_string()
}

#[tokio::test]
async fn key_store_conforms_on_redis() {
    let redis = RedisServer::start().await;
    let link = std::sync::Arc::new(RedisLink::new(&redis.url()).unwrap());
    crate::key_store::conformance(std::sync::Arc::new(RedisKeyStore::new(link))).await;
}

#[tokio::test]
async fn one_publish_reaches_subscribers_on_both_nodes_exactly_once() {
    let redis = RedisServer::start().await;
    let a = TestServer::on_redis(&redis, |_| {}).await;
    let b = TestServer::on_redis(&redis, |_| {}).await;
    assert!(
        !a.bootstrap.is_empty() && b.bootstrap.is_empty(),
        "one bootstrap key per shared store"
    );
    let (token, _) = a.key("acct_r", Environment::Live, &[Scope::TasksRead]).await;
    let (mut on_a, _) = WsClient::authed(&a.ws_url(&token), &token).await;
    let (mut on_b, _) = WsClient::authed(&b.ws_url(&token), &token).await;

    // A producer publishes once with plain PUBLISH; exactly one Redis subscriber per node.
    assert_eq!(redis.publish("mt:live:acct_r:tasks", &event("task.one", 1)).await, 2);
    // And once through node A's admin endpoint.
    let mut admin = a.admin().await;
    a.publish(&mut admin, "acct_r", "live", "tasks", "task.two", json!({})).await;
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(c.recv().await["event"], "task.one");
        assert_eq!(c.recv().await["event"], "task.two", "no duplicate of the first event");
    }
    assert_eq!(a.metric("miteos_deliveries_total") + b.metric("miteos_deliveries_total"), 4.0);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn revocation_on_one_node_closes_streams_on_the_other_within_a_second() {
    let redis = RedisServer::start().await;
    let a = TestServer::on_redis(&redis, |_| {}).await;
    let b = TestServer::on_redis(&redis, |_| {}).await;
    let (token, id) =
        a.key("acct_r", Environment::Test, &[Scope::TasksRead, Scope::TeamsWrite]).await;
    let (mut on_b, _) = WsClient::authed(&b.ws_url(&token), &token).await;
    // B has the key in its cache now; revocation must evict it there too.
    let started = Instant::now();
    let revoked = a.revoke(&id, &token).await;
    assert_eq!(revoked.status, 200);
    assert_eq!(on_b.expect_close().await, 4003);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "closed on the other node after {took:?}");
    let refused = WsClient::try_connect(&b.ws_url(&token)).await.err().expect("refused on B too");
    assert_eq!(refused.body["error"]["code"], "revoked_api_key");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_ticket_minted_on_one_node_works_once_on_another() {
    let redis = RedisServer::start().await;
    let a = TestServer::on_redis(&redis, |_| {}).await;
    let b = TestServer::on_redis(&redis, |_| {}).await;
    let (token, _) = a.key("acct_r", Environment::Live, &[Scope::AgentsRead]).await;
    let r = a.http().await.post_json("/v1/ws/tickets", Some(&token), "").await;
    assert_eq!(r.status, 201);
    let ticket = r.json()["ticket"].as_str().unwrap().to_owned();
    let url = |s: &TestServer| format!("ws://{}/v1/ws?ticket={ticket}", s.addr);
    let mut c = WsClient::connect(&url(&b)).await;
    c.send(json!({"type": "auth", "ticket": ticket})).await;
    assert_eq!(c.recv().await["channels"], json!(["agents"]));
    for node in [&a, &b] {
        let reused =
            WsClient::try_connect(&url(node)).await.err().expect("single use across nodes");
        assert_eq!(reused.status, 401);
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn malformed_producer_messages_are_dropped_and_the_next_valid_one_arrives() {
    let redis = RedisServer::start().await;
    let s = TestServer::on_redis(&redis, |c| c.max_event_bytes = 1024).await;
    let (token, _) = s.key("acct_r", Environment::Live, &[Scope::TasksRead]).await;
    let (mut c, _) = WsClient::authed(&s.ws_url(&token), &token).await;
    let channel = "mt:live:acct_r:tasks";
    for bad in [
        "not json",
        "{\"data\":{}}",
        "{\"event\":42}",
        "[]",
        &format!("{{\"event\":\"big\",\"data\":\"{}\"}}", "x".repeat(2000)),
    ] {
        redis.publish(channel, bad).await;
    }
    redis.publish(channel, &event("task.good", 7)).await;
    let e = c.recv().await;
    assert_eq!((e["event"].as_str(), e["data"]["n"].as_i64()), (Some("task.good"), Some(7)));
    assert!(e["id"].as_str().unwrap().starts_with("evt_"), "id filled in");
    assert_eq!(s.metric("miteos_events_malformed_total"), 5.0);
    s.shutdown().await;
}

#[tokio::test]
async fn a_redis_crash_keeps_clients_connected_and_streams_resume_after_restart() {
    let mut redis = RedisServer::start().await;
    let s = TestServer::on_redis(&redis, |_| {}).await;
    let (token, _) = s.key("acct_r", Environment::Live, &[Scope::TasksRead]).await;
    let (mut c, _) = WsClient::authed(&s.ws_url(&token), &token).await;

    redis.kill();
    s.wait_ready(503).await;
    let r = s.http().await.get("/readyz", None).await.json();
    // It says which part is down, and why.
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.starts_with("broker unavailable: ") && reason.contains("redis"), "{r}");
    // The client is still connected and served.
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.recv().await["type"], "pong");
    // New streams are refused while the broker is down.
    let refused = WsClient::try_connect(&s.ws_url(&token)).await.err().expect("refused");
    assert_eq!(
        (refused.status, refused.body["error"]["code"].as_str()),
        (503, Some("broker_unavailable"))
    );

    redis.restart().await;
    s.wait_ready(200).await;
    // The key store was in the crashed (non-persistent) Redis: the open stream keeps going,
    // and an event published after the restart reaches it within 5 s.
    let published = Instant::now();
    assert_eq!(
        redis.publish("mt:live:acct_r:tasks", &event("task.after", 1)).await,
        1,
        "resubscribed"
    );
    // Redis lost the channel's history: the node says so (a new epoch), then goes on.
    let gap = tokio::time::timeout(Duration::from_secs(5), c.recv()).await.expect("gap in 5 s");
    assert_eq!((&gap["type"], &gap["channel"]), (&json!("gap"), &json!("tasks")), "{gap}");
    let e = tokio::time::timeout(Duration::from_secs(5), c.recv()).await.expect("event within 5 s");
    assert_eq!(e["event"], "task.after");
    assert!(published.elapsed() < Duration::from_secs(5));
    assert_eq!(s.metric("miteos_broker_gaps_total"), 1.0);
    s.shutdown().await;
}

#[tokio::test]
async fn two_hundred_clients_leave_no_redis_subscription_behind() {
    let redis = RedisServer::start().await;
    let s = TestServer::on_redis(&redis, |_| {}).await;
    let mut clients = Vec::new();
    for i in 0..200 {
        let (token, _) = s
            .key(
                &format!("acct_{}", i % 50),
                Environment::Live,
                &[Scope::TasksRead, Scope::AgentsRead],
            )
            .await;
        clients.push(WsClient::authed(&s.ws_url(&token), &token).await.0);
    }
    assert_eq!(
        redis.channels("mt:live:*").await.len(),
        100,
        "one SUBSCRIBE per channel, not per client"
    );
    assert_eq!(redis.channels("mt:control").await, vec!["mt:control".to_owned()]);
    // Half the clients unsubscribe explicitly, the rest just disconnect.
    for (i, mut c) in clients.into_iter().enumerate() {
        if i % 2 == 0 {
            c.send(json!({"type": "unsubscribe", "channels": ["tasks", "agents"]})).await;
            assert_eq!(c.recv().await["type"], "unsubscribed");
        }
    }
    // The node unsubscribes ~1 s after the last local subscriber left (a timer, not an
    // event): poll PUBSUB CHANNELS for up to 10 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !redis.channels("mt:live:*").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "stale subscriptions: {:?}",
            redis.channels("mt:live:*").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(s.state.hub.channel_count(), 0);
    s.shutdown().await;
}

#[tokio::test]
async fn a_revocation_missed_during_a_broker_gap_is_applied_after_reconnecting() {
    use miteos_stream::keys::KeyStore;
    let redis = RedisServer::start().await;
    let s = TestServer::on_redis(&redis, |_| {}).await;
    let (token, id) = s.key("acct_g", Environment::Live, &[Scope::TasksRead]).await;
    let (mut c, _) = WsClient::authed(&s.ws_url(&token), &token).await;
    // Revoke in the store only, as if the control message had been lost.
    let store = RedisKeyStore::new(std::sync::Arc::new(RedisLink::new(&redis.url()).unwrap()));
    let id = miteos_stream::ids::KeyId::from_string(id);
    store
        .modify(
            &id,
            std::sync::Arc::new(|r| {
                r.revoked_at = Some(time::OffsetDateTime::now_utc());
                true
            }),
        )
        .await
        .unwrap();
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.recv().await["type"], "pong", "nothing told the node yet");
    // Drop the node's subscription connection: it reconnects, counts a gap, revalidates.
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    assert!(killed >= 1);
    assert_eq!(c.expect_close().await, 4003);
    // The control connection's gap may close the stream before the event connection's own
    // reconnect is counted: wait for that count (bounded) rather than race it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.metric("miteos_broker_gaps_total") < 1.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.metric("miteos_broker_gaps_total"), 1.0);
    s.shutdown().await;
}

#[tokio::test]
async fn the_binary_in_redis_mode_cli_publish_and_cluster_wide_cli_revocation() {
    let redis = RedisServer::start().await;
    crate::support::bin::cli_keys_publish_revoke("--redis-url", "MITEOS_REDIS_URL", &redis.url())
        .await;
}

#[tokio::test]
async fn connection_caps_hold_across_nodes() {
    let redis = RedisServer::start().await;
    let a = TestServer::on_redis(&redis, |c| c.max_connections_per_key = 2).await;
    let b = TestServer::on_redis(&redis, |c| c.max_connections_per_key = 2).await;
    let (k, _) = a.key("acct_caps", Environment::Live, &[Scope::TasksRead]).await;
    let (on_a, _) = WsClient::authed(&a.ws_url(&k), &k).await;
    let (_on_b, _) = WsClient::authed(&b.ws_url(&k), &k).await;
    for node in [&a, &b] {
        let r = WsClient::try_connect(&node.ws_url(&k))
            .await
            .err()
            .expect("cap of 2 across both nodes");
        assert_eq!(r.status, 429);
    }
    let members: i64 = redis::cmd("ZCARD")
        .arg(format!("mt:conns:{{acct_caps}}:key:{}", a.state.hub.session_keys()[0].0))
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    assert_eq!(members, 2, "one slot per open connection, shared in Redis");
    // Closing one on A frees a slot for B (released when A's session ends).
    drop(on_a);
    let mut reopened = false;
    for _ in 0..100 {
        if WsClient::try_connect(&b.ws_url(&k)).await.is_ok() {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reopened, "the slot released on A never became usable on B");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_crashed_nodes_lapsed_slots_do_not_count() {
    let redis = RedisServer::start().await;
    let s = TestServer::on_redis(&redis, |c| c.max_connections_per_key = 2).await;
    let (k, id) = s.key("acct_crash", Environment::Live, &[Scope::TasksRead]).await;
    // Two slots left by a node that died: their refresh stopped, so their expiry passed.
    let lapsed = time::OffsetDateTime::now_utc().unix_timestamp() * 1000 - 1000;
    let set = format!("mt:conns:{{acct_crash}}:key:{id}");
    let _: i64 = redis::cmd("ZADD")
        .arg(&set)
        .arg(lapsed)
        .arg("dead:conn_1")
        .arg(lapsed)
        .arg("dead:conn_2")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    let (_c, _) = WsClient::authed(&s.ws_url(&k), &k).await;
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(&set)
        .arg(0)
        .arg(-1)
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    assert_eq!(members.len(), 1, "lapsed slots were dropped: {members:?}");
    assert!(!members[0].starts_with("dead:"));
    s.shutdown().await;
}

#[tokio::test]
async fn a_key_store_of_the_untagged_layout_is_renamed_and_its_keys_keep_working() {
    let redis = RedisServer::start().await;
    let s = TestServer::on_redis(&redis, |_| {}).await;
    assert!(!s.bootstrap.is_empty());
    let (token, _) = s.key("acct_m", Environment::Live, &[Scope::TasksRead]).await;
    s.shutdown().await;
    // Put the store back into the layout of earlier versions, as they left it.
    let mut c = redis.conn().await;
    let names: Vec<String> =
        redis::cmd("KEYS").arg("{mt:keys}:*").query_async(&mut c).await.unwrap();
    assert!(names.len() >= 4, "{names:?}");
    for name in names {
        let rest = name.strip_prefix("{mt:keys}:").unwrap();
        let old = match rest.split_once(':') {
            Some(("hash", h)) => format!("mt:keyhash:{h}"),
            Some((kind, more)) => format!("mt:{kind}:{more}"),
            None => format!("mt:keys:{rest}"),
        };
        let _: () = redis::cmd("RENAME").arg(&name).arg(&old).query_async(&mut c).await.unwrap();
    }
    // A node of this version starts on it: no second bootstrap key, the old keys authenticate.
    let s = TestServer::on_redis(&redis, |_| {}).await;
    assert_eq!(s.bootstrap, "", "the store had keys: no bootstrap key");
    let (mut ws, _) = WsClient::authed(&s.ws_url(&token), &token).await;
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.recv().await["type"], "pong");
    let left: Vec<String> = redis::cmd("KEYS").arg("mt:*").query_async(&mut c).await.unwrap();
    assert!(left.iter().all(|k| !k.starts_with("mt:key")), "not renamed: {left:?}");
    s.shutdown().await;
}
