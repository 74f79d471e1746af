//! `/readyz` on a cluster (SPEC §9): 503 only while the node cannot reach a shard it needs,
//! with a reason that names the shard by its slots (never by its address), and 200 again
//! once the shard answers.

use std::time::{Duration, Instant};

use miteos_stream::scope::{Environment, Scope};
use serde_json::{json, Value};

use crate::support::{cluster::node_conn, RedisCluster, TestServer, WsClient};

/// Polls `/readyz` until its answer satisfies `done`, for up to `secs` (a silent shard is
/// noticed by the link's health ping: within two ping periods).
async fn readyz_until(s: &TestServer, secs: u64, done: impl Fn(u16, &Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = s.http().await.get("/readyz", None).await;
        let body = r.json();
        if done(r.status, &body) {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz never as wanted: {} {}", r.status, r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_node_that_cannot_reach_a_shard_it_needs_is_unready_and_names_the_shards_slots() {
    let cluster = RedisCluster::start_with(3, 0).await;
    let a = TestServer::on_cluster(&cluster, |_| {}).await;
    // A master holding neither the control channel nor the key records: only the
    // subscriber's channel needs it.
    let control = cluster.master_of_slot(cluster.slot_of("mt:control").await).await;
    let keys = cluster.master_of_slot(cluster.slot_of("{mt:keys}").await).await;
    let (acct, master) =
        cluster.account_whose_tasks("acct_ready", |m| m != control && m != keys).await;
    let (token, _) = a.key(&acct, Environment::Live, &[Scope::TasksRead]).await;
    let (mut c, _) = WsClient::authed(&a.ws_url(&token), &token).await;
    a.wait_ready(200).await;

    let (first, last, _) = *cluster.slot_map().await.iter().find(|(_, _, p)| *p == master).unwrap();
    cluster.pause(master, true);
    // While the cluster marks the master failed, other checks fail too (CLUSTERDOWN); the
    // node says which shard it lacks once its link to it is found dead.
    let wanted = format!("cannot reach the shard serving slots {first}-{last}");
    let body = readyz_until(&a, 20, |status, b| {
        assert!(status == 503 || b["status"] == "ready", "{b}");
        status == 503 && b["reason"].as_str().is_some_and(|r| r.contains(&wanted))
    })
    .await;
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(!reason.contains("127.0.0.1") && !reason.contains(&master.to_string()), "{reason}");

    cluster.pause(master, false);
    readyz_until(&a, 20, |status, _| status == 200).await;
    let mut admin = a.admin().await;
    let sent = a.publish(&mut admin, &acct, "live", "tasks", "task.updated", json!({"n": 1})).await;
    let got = c.recv_until_offset(sent["offset"].as_u64().unwrap()).await;
    assert_eq!(got.last().unwrap()["data"]["n"], 1, "the subscription is back on its shard");
    a.shutdown().await;
}

/// Whether every master but `down` marks it failed (`CLUSTER NODES` flag `fail`).
async fn marked_failed(masters: &[u16], down: u16) -> bool {
    for &port in masters.iter().filter(|&&p| p != down) {
        let mut c = node_conn(port).await;
        let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut c).await.unwrap();
        let line = nodes.lines().find(|l| l.contains(&format!(":{down}@"))).unwrap_or_default();
        if !line.split(' ').nth(2).is_some_and(|f| f.split(',').any(|f| f == "fail")) {
            return false;
        }
    }
    true
}

#[tokio::test]
async fn a_master_the_node_does_not_need_can_hang_and_the_node_stays_ready() {
    let cluster = RedisCluster::start_with(3, 0).await;
    let masters = cluster.masters().await;
    // The other shards keep serving while one is down.
    for &port in &masters {
        cluster.config_set(port, "cluster-require-full-coverage", "no").await;
    }
    let a = TestServer::on_cluster(&cluster, |_| {}).await;
    let control = cluster.master_of_slot(cluster.slot_of("mt:control").await).await;
    let keys = cluster.master_of_slot(cluster.slot_of("{mt:keys}").await).await;
    let unneeded = *masters.iter().find(|&&p| p != control && p != keys).unwrap();
    // A subscriber on a shard the node needs anyway.
    let (acct, _) = cluster.account_whose_tasks("acct_need", |m| m != unneeded).await;
    let (token, _) = a.key(&acct, Environment::Live, &[Scope::TasksRead]).await;
    let (mut c, _) = WsClient::authed(&a.ws_url(&token), &token).await;

    cluster.pause(unneeded, true);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !marked_failed(&masters, unneeded).await {
        assert!(Instant::now() < deadline, "the cluster never marked {unneeded} failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        let r = a.http().await.get("/readyz", None).await;
        assert_eq!(r.status, 200, "a hung master the node does not use: {}", r.body);
    }
    let mut admin = a.admin().await;
    let sent = a.publish(&mut admin, &acct, "live", "tasks", "task.updated", json!({"n": 2})).await;
    let got = c.recv_until_offset(sent["offset"].as_u64().unwrap()).await;
    assert_eq!(got.last().unwrap()["data"]["n"], 2);
    cluster.pause(unneeded, false);
    a.shutdown().await;
}
