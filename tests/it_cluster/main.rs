//! Redis Cluster mode (SPEC §9): every `TestServer` of the suites below runs on a private
//! cluster of three masters that the harness starts itself (tests/it/support/cluster.rs);
//! `cluster.rs` has the tests of what only a cluster has: shards, failover, migration.

/// Read by `support::server`: Redis mode…
pub const REDIS_MODE: bool = true;
/// …on a Redis Cluster.
pub const CLUSTER_MODE: bool = true;

#[path = "../it/support/mod.rs"]
mod support;

mod cluster;
mod flood;
#[path = "../it_redis/key_updates_nodes.rs"]
mod key_updates_nodes;
mod readiness;

// The suites of tests/it_redis, each node on its own cluster.
#[path = "../it/api_keys.rs"]
mod api_keys;
#[path = "../it/browser_keys.rs"]
mod browser_keys;
#[path = "../it/continuity.rs"]
mod continuity;
#[path = "../it/http_admin.rs"]
mod http_admin;
#[path = "../it/ip_allowlist.rs"]
mod ip_allowlist;
#[path = "../it/key_lifecycle.rs"]
mod key_lifecycle;
#[path = "../it/key_pages.rs"]
mod key_pages;
#[path = "../it/key_update_api.rs"]
mod key_update_api;
#[path = "../it/key_updates.rs"]
mod key_updates;
#[path = "../it/protection.rs"]
mod protection;
#[path = "../it/scope_diffs.rs"]
mod scope_diffs;
#[path = "../it/ticket_scopes.rs"]
mod ticket_scopes;
#[path = "../it/tickets.rs"]
mod tickets;
#[path = "../it/ws_auth.rs"]
mod ws_auth;
#[path = "../it/ws_heartbeat.rs"]
mod ws_heartbeat;
#[path = "../it/ws_slow_consumer.rs"]
mod ws_slow_consumer;
#[path = "../it/ws_stream.rs"]
mod ws_stream;
