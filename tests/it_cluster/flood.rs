//! The control channel on a cluster is never delayed behind event traffic (SPEC §9): with the
//! shard that carries `mt:control` flooded by a producer faster than the node fans out (the
//! node is overwhelmed and drops that shard's subscription), a revocation still closes its
//! stream within a second.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use miteos_stream::scope::{Environment, Scope};
use serde_json::json;

use crate::support::{cluster::node_conn, RedisCluster, TestServer, WsClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_arrives_within_a_second_while_the_control_shard_floods() {
    let cluster = RedisCluster::start_with(3, 0).await;
    let control = cluster.master_of_slot(cluster.slot_of("mt:control").await).await;
    // Redis cuts a subscriber off once 4 MiB are queued for it (default: 32 MiB).
    cluster.config_set(control, "client-output-buffer-limit", "pubsub 4mb 1mb 1").await;
    let s = TestServer::on_cluster(&cluster, |c| {
        c.max_connections_per_key = 0;
        c.max_connections_per_account = 0;
        c.new_connections_per_key_per_second = 0;
        // A small ingress bound, so falling behind is certain whatever the machine's speed.
        c.max_broker_queue_bytes = 256 * 1024;
    })
    .await;
    // An account whose tasks channel lives on the control channel's master.
    let (acct, _) = cluster.account_whose_tasks("acct_fl", |m| m == control).await;
    let channel = format!("mt:live:{acct}:tasks");
    let (token, _) = s.key(&acct, Environment::Live, &[Scope::TasksRead, Scope::TeamsWrite]).await;
    // The victim reads another topic: what is measured is the control path, not its outbox.
    let (victim_token, victim_id) = s.key(&acct, Environment::Live, &[Scope::AgentsRead]).await;
    let mut readers = Vec::new();
    for _ in 0..100 {
        let (mut c, _) = WsClient::authed(&s.ws_url(&token), &token).await;
        readers.push(tokio::spawn(async move { c.close_after(|_| {}).await }));
    }
    let (mut victim, _) = WsClient::authed(&s.ws_url(&victim_token), &victim_token).await;

    let payload = json!({"event": "task.flood", "data": {"pad": "x".repeat(2000)}}).to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let (payload, stop, channel) = (payload.clone(), stop.clone(), channel.clone());
        tokio::spawn(async move {
            let mut c = node_conn(control).await;
            let started = Instant::now();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(30) {
                let mut p = redis::pipe();
                for _ in 0..500 {
                    p.cmd("SPUBLISH").arg(&channel).arg(&payload).ignore();
                }
                if p.query_async::<()>(&mut c).await.is_err() {
                    break;
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(25);
    while s.metric("miteos_broker_overflows_total") < 1.0 {
        assert!(Instant::now() < deadline, "the flood never overwhelmed the node");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let revoked = s.revoke(&victim_id, &token).await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    let code = tokio::time::timeout(Duration::from_secs(1), victim.expect_close())
        .await
        .expect("the revocation closed the stream within 1 s during the flood");
    assert_eq!(code, 4003);
    eprintln!("revocation took {:?} during the flood", started.elapsed());
    stop.store(true, Ordering::SeqCst);
    flood.await.unwrap();
    for r in readers {
        r.abort();
    }
    s.shutdown().await;
}
