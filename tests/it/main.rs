//! The integration suite: one test binary (links once) whose modules start real servers on
//! 127.0.0.1 port 0 and talk to them with real HTTP and WebSocket clients.

/// Read by `support::server`: nodes run embedded (see `tests/it_redis` for Redis mode).
pub const REDIS_MODE: bool = false;
/// Read by `support::server`: not on a Redis Cluster (see `tests/it_cluster`).
pub const CLUSTER_MODE: bool = false;

mod support;

mod api_keys;
mod binary;
mod broker_conformance;
mod browser_keys;
mod cli_update;
mod config_file;
mod continuity;
mod continuity_chaos;
mod continuity_redis;
mod framing_errors;
mod history_conformance;
mod http_admin;
mod ip_allowlist;
mod key_lifecycle;
mod key_pages;
mod key_store;
mod key_update_api;
mod key_updates;
mod log_secrets;
mod metrics;
mod module_graph;
mod operability;
mod param_errors;
mod parsers;
mod protection;
mod proxied_clients;
mod redis_flood;
mod redis_mode;
mod redis_outage;
mod refusal_log;
mod resume_storm;
mod rotation_bounds;
mod scope_diffs;
mod slow_bodies;
mod starvation;
mod store_faults;
mod ticket_scopes;
mod tickets;
mod ws_auth;
mod ws_heartbeat;
mod ws_protocol;
mod ws_slow_consumer;
mod ws_stream;
