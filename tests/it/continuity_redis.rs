//! SPEC §7 across nodes on one private redis-server: a resume honoured by another node, and
//! a node repairing its own gap after Redis drops its pub/sub connection (or reporting a
//! `gap` when history is too short to cover it).

use serde_json::{json, Value};

use miteos_stream::scope::{Environment, Scope};

use crate::support::{RedisServer, TestServer, WsClient};

const ACCT: &str = "acct_r";

async fn publish_range(s: &TestServer, from: u64, to: u64) {
    let mut admin = s.admin().await;
    for i in from..=to {
        let a =
            s.publish(&mut admin, ACCT, "test", "tasks", &format!("task.n{i}"), json!({})).await;
        assert!(a["offset"].as_u64().is_some(), "no offset in Redis mode: {a}");
    }
}

/// Messages until the event with offset `last`, every message kept.
async fn recv_until(c: &mut WsClient, last: u64) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let m = c.recv().await;
        let done = m["type"] == "event" && m["offset"] == last;
        got.push(m);
        if done {
            return got;
        }
    }
}

fn offsets(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().filter(|m| m["type"] == "event").filter_map(|m| m["offset"].as_u64()).collect()
}

type Conn = redis::aio::MultiplexedConnection;

/// Drops every pub/sub connection and refuses new connections (the test's own `conn` stays).
async fn cut_pubsub(conn: &mut Conn) {
    let _: () =
        redis::cmd("CONFIG").arg("SET").arg("maxclients").arg("1").query_async(conn).await.unwrap();
    let _: i64 =
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(conn).await.unwrap();
}

async fn accept_clients(conn: &mut Conn) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg("10000")
        .query_async(conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_client_resumes_on_another_node_with_nothing_lost_or_twice() {
    let redis = RedisServer::start().await;
    let a = TestServer::on_redis(&redis, |_| {}).await;
    let b = TestServer::on_redis(&redis, |_| {}).await;
    let (token, _) = a.key(ACCT, Environment::Test, &[Scope::TasksRead]).await;
    let (mut c, ok) = WsClient::authed(&a.ws_url(&token), &token).await;
    let epoch = ok["positions"]["tasks"]["epoch"].clone();
    assert!(epoch.is_string(), "{ok}");
    publish_range(&a, 1, 3).await;
    assert_eq!(offsets(&recv_until(&mut c, 3).await), [1, 2, 3]);
    drop(c);
    publish_range(&a, 4, 8).await;
    let mut c = WsClient::connect(&b.ws_url(&token)).await;
    c.send(
        json!({"type": "auth", "token": token, "resume": {"tasks": {"offset": 3, "epoch": epoch}}}),
    )
    .await;
    let ok = c.recv().await;
    assert_eq!(ok["positions"]["tasks"], json!({"offset": 8, "epoch": epoch, "recovered": true}));
    publish_range(&a, 9, 10).await;
    assert_eq!(offsets(&recv_until(&mut c, 10).await), [4, 5, 6, 7, 8, 9, 10]);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_node_whose_pubsub_connection_is_killed_repairs_the_gap_from_history() {
    let redis = RedisServer::start().await;
    let a = TestServer::on_redis(&redis, |_| {}).await;
    let producer = TestServer::on_redis(&redis, |_| {}).await;
    let (token, _) = a.key(ACCT, Environment::Test, &[Scope::TasksRead]).await;
    let (mut c, _) = WsClient::authed(&a.ws_url(&token), &token).await;
    publish_range(&producer, 1, 5).await;
    assert_eq!(offsets(&recv_until(&mut c, 5).await), [1, 2, 3, 4, 5]);
    // New connections are refused while the pub/sub ones are killed: node A stays cut off
    // while events 6..=30 are published, then reconnects.
    let mut conn = redis.conn().await;
    cut_pubsub(&mut conn).await;
    a.wait_ready(503).await;
    publish_range(&producer, 6, 30).await;
    accept_clients(&mut conn).await;
    a.wait_ready(200).await;
    publish_range(&producer, 31, 40).await;
    let got = recv_until(&mut c, 40).await;
    assert_eq!(offsets(&got), (6..=40).collect::<Vec<_>>(), "{got:?}");
    assert!(got.iter().all(|m| m["type"] == "event"), "no gap message: {got:?}");
    assert!(a.metric("miteos_gaps_repaired_total") >= 1.0);
    a.shutdown().await;
    producer.shutdown().await;
}

#[tokio::test]
async fn a_gap_history_no_longer_covers_is_announced_then_delivery_goes_on() {
    let redis = RedisServer::start().await;
    let a = TestServer::on_redis(&redis, |c| c.history_size = 3).await;
    let producer = TestServer::on_redis(&redis, |c| c.history_size = 3).await;
    let (token, _) = a.key(ACCT, Environment::Test, &[Scope::TasksRead]).await;
    let (mut c, ok) = WsClient::authed(&a.ws_url(&token), &token).await;
    let epoch = ok["positions"]["tasks"]["epoch"].clone();
    publish_range(&producer, 1, 2).await;
    assert_eq!(offsets(&recv_until(&mut c, 2).await), [1, 2]);
    let mut conn = redis.conn().await;
    cut_pubsub(&mut conn).await;
    a.wait_ready(503).await;
    publish_range(&producer, 3, 20).await; // history keeps 18..=20
    accept_clients(&mut conn).await;
    a.wait_ready(200).await;
    publish_range(&producer, 21, 22).await;
    let got = recv_until(&mut c, 22).await;
    let gap = got.iter().position(|m| m["type"] == "gap").expect("a gap message");
    assert_eq!(
        got[gap],
        json!({"type": "gap", "channel": "tasks", "position": {"offset": 17, "epoch": epoch}})
    );
    assert_eq!(offsets(&got[gap..]), [18, 19, 20, 21, 22], "{got:?}");
    assert!(offsets(&got[..gap]).is_empty(), "{got:?}");
    assert!(a.metric("miteos_gaps_unrepaired_total") >= 1.0);
    a.shutdown().await;
    producer.shutdown().await;
}
