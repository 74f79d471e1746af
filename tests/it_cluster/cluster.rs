//! What only a Redis Cluster has: channels spread over shards, sharded subscriptions that
//! follow their slot, a master's failover (SPEC §9, with the gap repair of §7).

use std::time::{Duration, Instant};

use miteos_stream::scope::{Environment, Scope};
use serde_json::{json, Value};

use crate::support::{RedisCluster, TestServer, WsClient};

/// The `PUBSUB SHARDCHANNELS` of every master, merged and sorted.
async fn shard_channels(cluster: &RedisCluster) -> Vec<String> {
    let mut all = Vec::new();
    for port in cluster.masters().await {
        all.extend(cluster.shard_channels(port).await);
    }
    all.sort();
    all
}

/// Polls `f` until it holds, for up to 10 s.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_harness_makes_three_masters_that_share_the_slots() {
    let cluster = RedisCluster::start_with(3, 1).await;
    let map = cluster.slot_map().await;
    assert_eq!(cluster.masters().await.len(), 3);
    let covered: u32 = map.iter().map(|(a, b, _)| u32::from(*b) - u32::from(*a) + 1).sum();
    assert_eq!(covered, 16384);
    let mut c = cluster.conn().await;
    for k in ["a", "b", "c", "d"] {
        let _: () = redis::cmd("SET").arg(k).arg(k).query_async(&mut c).await.unwrap();
        let v: String = redis::cmd("GET").arg(k).query_async(&mut c).await.unwrap();
        assert_eq!(v, k);
    }
}

#[tokio::test]
async fn events_of_many_accounts_over_all_shards_reach_both_nodes_once_in_order() {
    let cluster = RedisCluster::start_with(3, 0).await;
    let a = TestServer::on_cluster(&cluster, |_| {}).await;
    let b = TestServer::on_cluster(&cluster, |_| {}).await;
    let accounts: Vec<String> = (0..12).map(|i| format!("acct_s{i}")).collect();
    let mut clients = Vec::new();
    for (i, acct) in accounts.iter().enumerate() {
        let (token, _) = a.key(acct, Environment::Live, &[Scope::TasksRead]).await;
        let node = if i % 2 == 0 { &a } else { &b };
        clients.push(WsClient::authed(&node.ws_url(&token), &token).await.0);
    }
    // The channels are spread over all three masters.
    let channels = shard_channels(&cluster).await;
    assert_eq!(channels.len(), accounts.len(), "{channels:?}");
    for port in cluster.masters().await {
        assert!(!cluster.shard_channels(port).await.is_empty(), "master {port} holds none");
    }
    let mut admin = a.admin().await;
    for n in 1..=5 {
        for acct in &accounts {
            a.publish(&mut admin, acct, "live", "tasks", "task.updated", json!({ "n": n })).await;
        }
    }
    for c in &mut clients {
        let got: Vec<Value> = c.recv_until_offset(5).await;
        let ns: Vec<i64> = got.iter().map(|e| e["data"]["n"].as_i64().unwrap()).collect();
        assert_eq!(ns, [1, 2, 3, 4, 5]);
    }
    drop(clients);
    eventually("no shard channel left", || async { shard_channels(&cluster).await.is_empty() })
        .await;
    a.shutdown().await;
    b.shutdown().await;
}
