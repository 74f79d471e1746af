//! What a node does when it may have missed control messages: after the broker reconnects
//! (a `Gap`), every open session's key is checked against the store again, so a revocation or
//! rotation published during the outage still closes its streams here.
//!
//! Owns: the revalidation pass.  May use: hub, keys (store).  Never: block the Hub; close a
//! stream because its record is missing (data loss is not revocation).

use std::{collections::HashMap, sync::Arc};

use time::OffsetDateTime;

use crate::{
    broker::ControlMessage, hub::Hub, ids::KeyId, keys::KeyStore, protocol::close::CloseCode,
    shutdown::Shutdown, token::TokenHash,
};

/// Runs a revalidation after every broker gap, until shutdown.
pub fn spawn_revalidation(hub: Arc<Hub>, store: Arc<dyn KeyStore>, shutdown: &Shutdown) {
    let token = shutdown.token.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = hub.gap_seen() => revalidate(&hub, store.as_ref()).await,
            }
        }
    });
}

/// Closes (4003) the sessions whose key or secret is no longer valid, and re-arms the
/// retirement of secrets inside a rotation's grace.
pub async fn revalidate(hub: &Hub, store: &dyn KeyStore) {
    let mut by_key: HashMap<KeyId, Vec<TokenHash>> = HashMap::new();
    for (key_id, secret) in hub.session_keys() {
        by_key.entry(key_id).or_default().push(secret);
    }
    let now = OffsetDateTime::now_utc();
    for (key_id, secrets) in by_key {
        let rec = match store.get(&key_id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(key_id = %key_id, error = %e, "cannot revalidate sessions now");
                return;
            }
        };
        // Only positive evidence closes a stream: a record that vanished (a Redis restarted
        // without persistence) says nothing about revocation.
        let Some(rec) = rec else { continue };
        if rec.revoked_at.is_some() || rec.expires_at.is_some_and(|t| t <= now) {
            hub.close_key(&key_id, None, CloseCode::KeyRevoked);
            continue;
        }
        for secret in secrets {
            match rec.secrets.iter().find(|s| s.hash == secret) {
                None => {
                    hub.close_key(&key_id, Some(&secret), CloseCode::KeyRevoked);
                }
                Some(s) => {
                    if let Some(at) = s.retires_at {
                        hub.apply(ControlMessage::Retire { key_id: key_id.clone(), secret, at });
                    }
                }
            }
        }
    }
}
