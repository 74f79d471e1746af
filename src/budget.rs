//! Per-key counters with a cap, for budgets that one tenant or one host must not exhaust:
//! open connections per client IP, upgraded-but-unauthenticated sockets per key and per
//! account. A taken unit is a `Held` guard; dropping it gives the unit back, and a counter
//! that reaches zero is removed, so the map holds only keys with something open.
//! A TCP connection's shares (its listener's permit, its client IP's unit) travel together
//! as a `ConnPermit`, which the accept loop takes and an upgraded WebSocket keeps.
//!
//! Owns: the counting and the shares a connection holds.  May use: dashmap, parking_lot,
//! tokio's semaphore permits.  Never: block, await.

use std::{
    hash::Hash,
    net::IpAddr,
    sync::{Arc, OnceLock},
};

use dashmap::{mapref::entry::Entry, DashMap};
use tokio::sync::OwnedSemaphorePermit;

/// Counters per key, each at most `cap` (0 = no cap).
pub struct Budget<K: Hash + Eq + Clone> {
    counts: DashMap<K, usize>,
    cap: usize,
}

/// One unit of a key's budget, given back on drop.
pub struct Held<K: Hash + Eq + Clone> {
    budget: Arc<Budget<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Budget<K> {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self { counts: DashMap::new(), cap })
    }

    /// Takes one unit for `key`, or `None` when the key is at its cap.
    pub fn try_take(self: &Arc<Self>, key: K) -> Option<Held<K>> {
        let mut n = self.counts.entry(key.clone()).or_insert(0);
        if self.cap != 0 && *n >= self.cap {
            return None;
        }
        *n += 1;
        drop(n);
        Some(Held { budget: self.clone(), key })
    }

    /// Units held for `key` right now.
    pub fn held(&self, key: &K) -> usize {
        self.counts.get(key).map_or(0, |n| *n)
    }

    /// Keys with at least one unit held.
    pub fn keys(&self) -> usize {
        self.counts.len()
    }
}

impl<K: Hash + Eq + Clone> Drop for Held<K> {
    fn drop(&mut self) {
        if let Entry::Occupied(mut e) = self.budget.counts.entry(self.key.clone()) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// A TCP connection's share of its listener's budget and of its client IP's. Every request
/// carries a clone in its extensions, so an upgraded WebSocket keeps them as long as it lives.
#[derive(Clone)]
pub struct ConnPermit(Arc<ConnShares>);

struct ConnShares {
    _connection: OwnedSemaphorePermit,
    /// The socket peer's share of `max_connections_per_ip` (not taken for a trusted proxy).
    _peer: Option<Held<IpAddr>>,
    /// Behind a trusted proxy: the proxied client's share, taken by a WebSocket upgrade.
    client: OnceLock<Held<IpAddr>>,
}

impl ConnPermit {
    pub fn new(connection: OwnedSemaphorePermit, peer: Option<Held<IpAddr>>) -> Self {
        Self(Arc::new(ConnShares { _connection: connection, _peer: peer, client: OnceLock::new() }))
    }

    /// Keeps a client's share (a proxied WebSocket's) for as long as this connection.
    pub fn keep_client(&self, held: Held<IpAddr>) {
        let _ = self.0.client.set(held);
    }
}

/// Behind a trusted proxy: the forwarded client's share for one request, held until the
/// response is ready; an upgrade takes it out for its WebSocket (`ConnPermit::keep_client`).
#[derive(Clone)]
pub struct RequestClient(Arc<parking_lot::Mutex<Option<Held<IpAddr>>>>);

impl RequestClient {
    pub fn new(held: Held<IpAddr>) -> Self {
        Self(Arc::new(parking_lot::Mutex::new(Some(held))))
    }

    pub fn take(&self) -> Option<Held<IpAddr>> {
        self.0.lock().take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_capped_and_units_come_back_on_drop() {
        let b = Budget::new(2);
        let (x1, x2) = (b.try_take("x").unwrap(), b.try_take("x").unwrap());
        assert!(b.try_take("x").is_none(), "x is at its cap");
        let y = b.try_take("y").expect("another key has its own budget");
        drop(x1);
        let x3 = b.try_take("x").expect("a unit came back");
        drop((x2, x3, y));
        assert_eq!(b.keys(), 0, "no empty counters are kept");
        let unlimited = Budget::new(0);
        let all: Vec<_> = (0..1000).map(|_| unlimited.try_take(1u8).unwrap()).collect();
        assert_eq!(unlimited.held(&1), all.len());
    }
}
