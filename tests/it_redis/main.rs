//! The WebSocket and key-API suites of `tests/it` again, with every `TestServer` in Redis
//! mode on its own private redis-server: one behaviour, two backends.

/// Read by `support::server`: start each node on a private Redis.
pub const REDIS_MODE: bool = true;
/// Read by `support::server`: one Redis, not a cluster (see `tests/it_cluster`).
pub const CLUSTER_MODE: bool = false;

#[path = "../it/support/mod.rs"]
mod support;

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
mod key_updates_nodes;
mod key_updates_outage;
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

// Redis only: history through the function library (SPEC §5, §7).
mod history;
mod history_bench;
mod history_function;
