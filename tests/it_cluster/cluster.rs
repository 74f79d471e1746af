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

/// Publishes `n` through node `s`'s admin endpoint until it is accepted (a failover answers
/// 503 for a while); returns the answer.
async fn publish_until_accepted(s: &TestServer, acct: &str, n: u64) -> Value {
    publish_via(s.admin_addr, acct, n).await
}

#[tokio::test]
async fn a_master_killed_mid_stream_fails_over_and_subscribers_miss_nothing() {
    let mut cluster = RedisCluster::start_with(3, 1).await;
    let a = TestServer::on_cluster(&cluster, |_| {}).await;
    let acct = "acct_failover";
    let (token, _) = a.key(acct, Environment::Live, &[Scope::TasksRead]).await;
    let (mut c, _) = WsClient::authed(&a.ws_url(&token), &token).await;
    let channel = format!("mt:live:{acct}:tasks");
    let master = cluster.master_of_slot(cluster.slot_of(&channel).await).await;
    let mut accepted = Vec::new();
    for n in 1..=20 {
        accepted.push(publish_until_accepted(&a, acct, n).await);
    }
    // The replica has the first 20 (else it would be promoted behind: see the rollback
    // test), then the master dies while the producer keeps going.
    let synced: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut crate::support::cluster::node_conn(master).await)
        .await
        .unwrap();
    assert_eq!(synced, 1);
    cluster.kill(master);
    for n in 21..=40 {
        accepted.push(publish_until_accepted(&a, acct, n).await);
    }
    cluster.await_failover(master).await;
    a.wait_ready(200).await;
    for n in 41..=50 {
        accepted.push(publish_until_accepted(&a, acct, n).await);
    }
    // The subscription followed the slot to the promoted replica: nothing is left on the
    // dead master, the channel is subscribed on its new owner.
    let owner = cluster.master_of_slot(cluster.slot_of(&channel).await).await;
    assert_ne!(owner, master);
    assert_eq!(cluster.shard_channels(owner).await, [channel]);
    // Every accepted event arrives once, in order.
    let last = accepted.last().unwrap()["offset"].as_u64().unwrap();
    let mut got = Vec::new();
    let mut gap = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let m = c.recv().await;
        gap |= m["type"] == "gap";
        let done = m["type"] == "event" && m["offset"] == last;
        got.push(m);
        if done {
            break;
        }
    }
    let ids: Vec<&str> =
        got.iter().filter(|m| m["type"] == "event").map(|m| m["id"].as_str().unwrap()).collect();
    let want: Vec<&str> = accepted.iter().map(|a| a["id"].as_str().unwrap()).collect();
    // The promoted replica had every accepted event: the gap is repaired from its history.
    assert!(!gap, "no gap message: the history covered the failover");
    assert_eq!(ids, want, "every accepted event arrives once, in order");
    assert!(a.metric("miteos_broker_gaps_total") >= 1.0, "the node noticed the lost shard");
    assert!(a.metric("miteos_gaps_repaired_total") >= 1.0, "and repaired it");
    a.shutdown().await;
}

#[tokio::test]
async fn migrating_a_busy_channels_slot_loses_no_event() {
    let cluster = RedisCluster::start_with(3, 0).await;
    let a = TestServer::on_cluster(&cluster, |_| {}).await;
    let acct = "acct_migrate";
    let (token, _) = a.key(acct, Environment::Live, &[Scope::TasksRead]).await;
    let (mut c, _) = WsClient::authed(&a.ws_url(&token), &token).await;
    let channel = format!("mt:live:{acct}:tasks");
    let slot = cluster.slot_of(&channel).await;
    let from = cluster.master_of_slot(slot).await;
    let to = *cluster.masters().await.iter().find(|p| **p != from).unwrap();
    let mut accepted = Vec::new();
    for n in 1..=20 {
        accepted.push(publish_until_accepted(&a, acct, n).await);
    }
    // The slot moves while a producer keeps publishing.
    let producer = {
        let (addr, acct) = (a.admin_addr, acct.to_owned());
        tokio::spawn(async move {
            let mut got = Vec::new();
            for n in 21..=60 {
                got.push(publish_via(addr, &acct, n).await);
            }
            got
        })
    };
    cluster.migrate_slot(slot, to).await;
    accepted.extend(producer.await.unwrap());
    for n in 61..=70 {
        accepted.push(publish_until_accepted(&a, acct, n).await);
    }
    eventually("the subscription followed the slot", || async {
        cluster.shard_channels(to).await == [channel.clone()]
            && cluster.shard_channels(from).await.is_empty()
    })
    .await;
    let last = accepted.last().unwrap()["offset"].as_u64().unwrap();
    let got = c.recv_until_offset(last).await;
    assert!(got.iter().all(|m| m["type"] == "event"), "no gap: {got:?}");
    let ids: Vec<&str> = got.iter().map(|m| m["id"].as_str().unwrap()).collect();
    let want: Vec<&str> = accepted.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids, want, "every accepted event once, in order");
    a.shutdown().await;
}

/// `publish_until_accepted` through an admin address (also for a producer task).
async fn publish_via(admin: std::net::SocketAddr, acct: &str, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut http = crate::support::http::HttpClient::connect(admin).await;
        let body = json!({"account_id": acct, "environment": "live", "channel": "tasks",
                          "event": "task.updated", "data": {"n": n}});
        let r = http
            .post_json(
                "/internal/v1/publish",
                Some(crate::support::server::ADMIN_TOKEN),
                &body.to_string(),
            )
            .await;
        if r.status == 200 {
            return r.json();
        }
        assert!(Instant::now() < deadline, "never accepted: {} {}", r.status, r.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn across_nodes_on_a_cluster_revocation_takes_under_a_second_tickets_and_caps_hold() {
    let cluster = RedisCluster::start_with(3, 0).await;
    let a = TestServer::on_cluster(&cluster, |c| c.max_connections_per_key = 2).await;
    let b = TestServer::on_cluster(&cluster, |c| c.max_connections_per_key = 2).await;
    assert!(!a.bootstrap.is_empty() && b.bootstrap.is_empty(), "one store for the cluster");
    // A ticket minted on A works once, on B.
    let (token, id) =
        a.key("acct_c", Environment::Test, &[Scope::TasksRead, Scope::TeamsWrite]).await;
    let r = a.http().await.post_json("/v1/ws/tickets", Some(&token), "").await;
    assert_eq!(r.status, 201);
    let ticket = r.json()["ticket"].as_str().unwrap().to_owned();
    let url = |s: &TestServer| format!("ws://{}/v1/ws?ticket={ticket}", s.addr);
    let mut by_ticket = WsClient::connect(&url(&b)).await;
    by_ticket.send(json!({"type": "auth", "ticket": ticket})).await;
    assert_eq!(by_ticket.recv().await["type"], "auth.success");
    let reused = WsClient::try_connect(&url(&a)).await.err().expect("single use across nodes");
    assert_eq!(reused.status, 401);
    // Caps: the ticket's stream and one more fill the key's 2 slots, on any node.
    let (mut on_a, _) = WsClient::authed(&a.ws_url(&token), &token).await;
    for node in [&a, &b] {
        let full = WsClient::try_connect(&node.ws_url(&token)).await.err().expect("cap of 2");
        assert_eq!(full.status, 429);
    }
    // Revocation on B closes the streams on both nodes within a second.
    let started = Instant::now();
    let revoked = b.revoke(&id, &token).await;
    assert_eq!(revoked.status, 200);
    assert_eq!(on_a.expect_close().await, 4003);
    assert_eq!(by_ticket.expect_close().await, 4003);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "closed after {took:?}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_replica_promoted_behind_its_master_starts_a_new_epoch_instead_of_repeating_offsets() {
    let mut cluster = RedisCluster::start_with(3, 1).await;
    let a = TestServer::on_cluster(&cluster, |_| {}).await;
    let acct = "acct_rollback";
    let (token, _) = a.key(acct, Environment::Live, &[Scope::TasksRead]).await;
    let (mut c, _) = WsClient::authed(&a.ws_url(&token), &token).await;
    let channel = format!("mt:live:{acct}:tasks");
    let master = cluster.master_of_slot(cluster.slot_of(&channel).await).await;
    let replica = cluster.replica_of(master).await;
    for n in 1..=10 {
        publish_until_accepted(&a, acct, n).await;
    }
    let mut m = crate::support::cluster::node_conn(master).await;
    let synced: i64 = redis::cmd("WAIT").arg(1).arg(5000).query_async(&mut m).await.unwrap();
    assert_eq!(synced, 1);
    // The replica stops hearing its master (stopped, and its link cut while it cannot
    // reconnect): 11..=15 reach the subscriber, not the replica.
    cluster.pause(replica, true);
    let cut: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query_async(&mut m)
        .await
        .unwrap();
    assert_eq!(cut, 1);
    let mut old = Value::Null;
    for n in 11..=15 {
        old = publish_until_accepted(&a, acct, n).await;
    }
    let got = c.recv_until_offset(15).await;
    assert_eq!(crate::support::ws::event_offsets(&got), (1..=15).collect::<Vec<_>>());
    cluster.kill(master);
    cluster.pause(replica, false);
    cluster.await_failover(master).await;
    // The promoted replica numbers new events 11, 12, … again in the same epoch: the node must
    // notice and start a new epoch rather than deliver (or silently drop) them.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 16;
    while a.metric("miteos_history_rollbacks_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the rollback was never noticed (gaps {}, repaired {}, unrepaired {})",
            a.metric("miteos_broker_gaps_total"),
            a.metric("miteos_gaps_repaired_total"),
            a.metric("miteos_gaps_unrepaired_total")
        );
        publish_until_accepted(&a, acct, n).await;
        n += 1;
    }
    let fresh = publish_until_accepted(&a, acct, 1000).await;
    assert_ne!(fresh["epoch"], old["epoch"], "a new epoch after the rollback");
    // The subscriber: a gap, then the new epoch's events; never an offset it had again
    // without a gap first.
    let mut after_gap = false;
    loop {
        let msg = c.recv().await;
        if msg["type"] == "gap" {
            after_gap = true;
            assert_eq!(msg["position"]["epoch"], fresh["epoch"]);
            continue;
        }
        assert_eq!(msg["type"], "event", "{msg}");
        assert!(after_gap, "an event after the rollback without a gap first: {msg}");
        if msg["data"]["n"] == 1000 {
            assert_eq!(msg["offset"], fresh["offset"]);
            break;
        }
    }
    // A client resuming from before the rollback is told the truth (once the node is ready
    // again: its control connection may have been on the dead master too).
    a.wait_ready(200).await;
    let (token2, _) = a.key(acct, Environment::Live, &[Scope::TasksRead]).await;
    let mut r = WsClient::connect(&a.ws_url(&token2)).await;
    let resume = json!({"tasks": {"offset": 15, "epoch": old["epoch"]}});
    r.send(json!({"type": "auth", "token": token2, "resume": resume})).await;
    let ok = r.recv().await;
    assert_eq!(ok["positions"]["tasks"]["recovered"], false, "{ok}");
    a.shutdown().await;
}

#[tokio::test]
async fn the_binary_and_its_cli_work_on_a_cluster() {
    let cluster = RedisCluster::start_with(3, 0).await;
    crate::support::bin::cli_keys_publish_revoke(
        "--redis-cluster",
        "MITEOS_REDIS_CLUSTER",
        &cluster.seeds(),
    )
    .await;
}
