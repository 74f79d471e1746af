//! The integration suite: one test binary (links once) whose modules start real servers on
//! 127.0.0.1 port 0 and talk to them with real HTTP and WebSocket clients.

mod support;

mod binary;
mod config_file;
mod http_admin;
mod key_store;
mod ws_auth;
mod ws_heartbeat;
mod ws_slow_consumer;
mod ws_stream;
