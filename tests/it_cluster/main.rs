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
