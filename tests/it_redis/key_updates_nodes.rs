//! Issue 13 item 2 across nodes: every rule of `key_updates` with the PATCH sent to node A
//! and the streams on node B, two nodes on one private redis-server (tests/it_redis) or one
//! private Redis Cluster (tests/it_cluster: the updates cross the cluster's control channel).
//! What a node that could not hear an update does is in `key_updates_outage`.

use crate::support::{Shared, TestServer};

/// Two nodes on `shared`; B trusts the proxy 127.0.0.3 (for the forwarded-client rule).
pub async fn two_nodes(shared: &Shared) -> (TestServer, TestServer) {
    let a = TestServer::on_shared(shared, |_| {}).await;
    let b = TestServer::on_shared(shared, |c| {
        c.trusted_proxies = vec!["127.0.0.3/32".parse().unwrap()];
    })
    .await;
    assert!(!a.bootstrap.is_empty(), "A holds the bootstrap key");
    (a, b)
}

macro_rules! across_nodes {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let shared = Shared::start().await;
            let (a, b) = two_nodes(&shared).await;
            let caller = a.bootstrap.clone();
            crate::key_updates::$name(&a, &b, &caller).await;
            a.shutdown().await;
            b.shutdown().await;
        }
    )*};
}

across_nodes!(
    removed_read_scopes_are_unsubscribed,
    no_readable_topic_left_closes,
    allowlist_closes_excluded_addresses,
    allowlist_checks_the_forwarded_client,
    new_expiry_closes_at_that_time,
    cleared_expiry_keeps_the_stream,
    added_scopes_subscribe_nothing,
    every_secret_of_the_key_follows,
    ticket_streams_follow_their_key,
    new_values_are_seen_at_once,
);

/// The PATCH and the revocation on A, the rotation on B, 16 times.
#[tokio::test]
async fn a_patch_racing_a_rotation_and_a_revocation_on_two_nodes_loses_no_update() {
    let shared = Shared::start().await;
    let (a, b) = two_nodes(&shared).await;
    let caller = a.bootstrap.clone();
    for round in 0..16 {
        crate::key_update_api::one_race(&a, &b, &caller, round).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}
