//! Test harness: an in-process server (`TestServer`), a WebSocket client that awaits frames
//! with timeouts (`WsClient`), a raw-frame client for heartbeat tests (`RawWs`), a small HTTP
//! client, and helpers to run the real binary.

#![allow(dead_code)]

pub mod bin;
pub mod cluster;
pub mod http;
pub mod proxy;
pub mod raw;
pub mod raw_http;
pub mod redis;
pub mod server;
pub mod ws;

pub use cluster::RedisCluster;
pub use redis::RedisServer;
// `Shared` serves the suites that several binaries include (not every binary uses it).
#[allow(unused_imports)]
pub use server::{Shared, TestServer};
pub use ws::WsClient;
