//! Per-key counters with a cap, for budgets that one tenant or one host must not exhaust:
//! open connections per client IP, upgraded-but-unauthenticated sockets per key and per
//! account. A taken unit is a `Held` guard; dropping it gives the unit back, and a counter
//! that reaches zero is removed, so the map holds only keys with something open.
//!
//! Owns: the counting.  May use: dashmap.  Never: block, await.

use std::{hash::Hash, sync::Arc};

use dashmap::{mapref::entry::Entry, DashMap};

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
