//! `AppState`: the shared handles every request and session works with. Built only by
//! `node.rs`; everything else sees backends through the `Broker`/`KeyStore` traits.
//!
//! Owns: nothing but `Arc`s.  May use: L0–L2 modules.

use std::{net::IpAddr, sync::Arc};

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use tokio::sync::Semaphore;

use crate::{
    auth::Authenticator,
    budget::Budget,
    config::Config,
    control::Control,
    hub::Hub,
    ids::{AccountId, KeyId},
    keys::service::KeyService,
    metrics::Metrics,
    rate_limit::Limits,
    shutdown::Shutdown,
    slots::{Caps, SlotStore},
};

pub struct AppState {
    pub config: Arc<Config>,
    pub limits: Arc<Limits>,
    pub slots: Arc<dyn SlotStore>,
    /// Open TCP connections (`max_connections`); a WebSocket keeps its connection's permit.
    pub connections: Arc<Semaphore>,
    /// Upgraded sockets not yet authenticated (`max_unauthenticated`).
    pub unauthenticated: Arc<Semaphore>,
    /// ... and per key and per account (`max_unauthenticated_per_key` / `_per_account`).
    pub unauthenticated_per_key: Arc<Budget<KeyId>>,
    pub unauthenticated_per_account: Arc<Budget<AccountId>>,
    /// Open connections per client IP (`max_connections_per_ip`).
    pub per_ip: Arc<Budget<IpAddr>>,
    /// The admin listener's own connection budget (`admin_max_connections`).
    pub admin_connections: Arc<Semaphore>,
    pub hub: Arc<Hub>,
    /// Revocations, retirements and the periodic revalidation of open streams' keys.
    pub control: Arc<Control>,
    pub keys: KeyService,
    pub auth: Authenticator,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
    /// Bearer token of the admin listener's publish endpoint.
    pub admin_token: String,
}

impl AppState {
    /// The per-key and per-account connection caps.
    pub fn caps(&self) -> Caps {
        Caps {
            per_key: self.config.max_connections_per_key,
            per_account: self.config.max_connections_per_account,
        }
    }

    /// The tungstenite limits for every accepted socket, from the config.
    pub fn ws_config(&self) -> WebSocketConfig {
        let c = &self.config;
        WebSocketConfig::default()
            .read_buffer_size(c.ws_read_buffer_bytes)
            .write_buffer_size(c.ws_write_buffer_bytes)
            // One buffer's worth plus the largest frame we send (an event) plus headers.
            .max_write_buffer_size(c.ws_write_buffer_bytes + c.max_event_bytes * 2 + 1024)
            .max_message_size(Some(c.max_message_bytes))
            .max_frame_size(Some(c.max_message_bytes))
    }
}
