//! `KeyCache`: verified key records by secret hash, so a burst of connections with an
//! already-seen key does not hit the store each time. Bounded in size and age, and emptied
//! for a key by the same control messages that revoke, rotate or update it (on every node).
//! While the node cannot hear control messages (its control subscription is lost, or not up
//! yet) the cache is *suspended*: empty, and nothing is cached, so every lookup reads the
//! store and no node authenticates with a copy a missed message should have evicted.
//!
//! Owns: the cache.  May use: keys, ids, scope, token.  Never: cache a miss (unknown keys
//! always reach the store; brute force is the rate limiter's job).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use dashmap::DashMap;

use super::KeyRecord;
use crate::{ids::KeyId, token::TokenHash};

pub struct KeyCache {
    map: DashMap<TokenHash, (Arc<KeyRecord>, Instant)>,
    max_entries: usize,
    max_age: Duration,
    /// Bumped by every invalidation: a record read from the store before an invalidation
    /// must not be cached after it (it may be the revoked one).
    generation: AtomicU64,
    /// Suspended: misses every lookup and caches nothing (see the module doc).
    suspended: AtomicBool,
}

impl KeyCache {
    pub fn new(max_entries: usize, max_age: Duration) -> Self {
        Self {
            map: DashMap::new(),
            max_entries,
            max_age,
            generation: AtomicU64::new(0),
            suspended: AtomicBool::new(false),
        }
    }

    /// Empties the cache and stops caching until `resume` (control messages may be missed).
    pub fn suspend(&self) {
        self.suspended.store(true, Ordering::SeqCst);
        self.clear();
    }

    /// Caches again. What was read from the store before this call is not cached (the
    /// generation moves on), as it may predate a message the node missed.
    pub fn resume(&self) {
        self.clear();
        self.suspended.store(false, Ordering::SeqCst);
    }

    pub fn is_suspended(&self) -> bool {
        self.suspended.load(Ordering::SeqCst)
    }

    /// Read before a store lookup and pass to `put`.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// A record cached less than `max_age` ago.
    pub fn get(&self, hash: &TokenHash) -> Option<Arc<KeyRecord>> {
        if self.is_suspended() {
            return None;
        }
        let hit = self.map.get(hash)?;
        (hit.1.elapsed() < self.max_age).then(|| hit.0.clone())
    }

    /// Caches a record read from the store when the cache was at `generation`; does nothing
    /// if an invalidation happened since.
    pub fn put(&self, hash: TokenHash, rec: Arc<KeyRecord>, generation: u64) {
        if self.max_entries == 0 || self.max_age.is_zero() || self.is_suspended() {
            return;
        }
        if self.map.len() >= self.max_entries {
            // Drop what is stale; if that is not enough, start over (a cache, not a store).
            self.map.retain(|_, (_, at)| at.elapsed() < self.max_age);
            if self.map.len() >= self.max_entries {
                self.map.clear();
            }
        }
        self.map.insert(hash, (rec, Instant::now()));
        // An invalidation that raced the insert removes nothing it should have: undo.
        if self.generation() != generation {
            self.map.remove(&hash);
        }
    }

    /// Forgets every secret of `key_id`.
    pub fn invalidate(&self, key_id: &KeyId) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.map.retain(|_, (rec, _)| rec.id != *key_id);
    }

    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.map.clear();
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ids::AccountId, keys::Secret, scope::Environment};

    fn rec(id: &KeyId) -> Arc<KeyRecord> {
        Arc::new(KeyRecord {
            id: id.clone(),
            name: "n".into(),
            account_id: AccountId::parse("a").unwrap(),
            environment: Environment::Live,
            scopes: vec![],
            ip_allowlist: vec![],
            created_at: time::OffsetDateTime::now_utc(),
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
            redacted: String::new(),
            secrets: vec![Secret { hash: TokenHash::of("x"), retires_at: None }],
        })
    }

    #[test]
    fn invalidation_drops_every_secret_of_the_key() {
        let c = KeyCache::new(10, Duration::from_secs(60));
        let (a, b) = (KeyId::generate(), KeyId::generate());
        c.put(TokenHash::of("a1"), rec(&a), 0);
        c.put(TokenHash::of("a2"), rec(&a), 0);
        c.put(TokenHash::of("b1"), rec(&b), 0);
        c.invalidate(&a);
        assert!(c.get(&TokenHash::of("a1")).is_none() && c.get(&TokenHash::of("a2")).is_none());
        assert!(c.get(&TokenHash::of("b1")).is_some());
    }

    #[test]
    fn a_record_read_before_an_invalidation_is_not_cached_after_it() {
        let c = KeyCache::new(10, Duration::from_secs(60));
        let k = KeyId::generate();
        let seen = c.generation();
        c.invalidate(&k); // the revocation lands while the store read is in flight
        c.put(TokenHash::of("k"), rec(&k), seen);
        assert!(c.get(&TokenHash::of("k")).is_none());
        c.put(TokenHash::of("k"), rec(&k), c.generation());
        assert!(c.get(&TokenHash::of("k")).is_some());
    }

    #[test]
    fn a_suspended_cache_misses_and_keeps_nothing_read_before_it_resumed() {
        let c = KeyCache::new(10, Duration::from_secs(60));
        let k = KeyId::generate();
        c.put(TokenHash::of("k"), rec(&k), c.generation());
        c.suspend();
        assert!(c.get(&TokenHash::of("k")).is_none(), "emptied");
        let seen = c.generation(); // a store read while suspended
        c.put(TokenHash::of("k"), rec(&k), seen);
        assert!(c.is_empty(), "nothing cached while suspended");
        c.resume();
        c.put(TokenHash::of("k"), rec(&k), seen);
        assert!(c.is_empty(), "a read from before the resume is not cached");
        c.put(TokenHash::of("k"), rec(&k), c.generation());
        assert!(c.get(&TokenHash::of("k")).is_some());
    }

    #[test]
    fn size_and_age_are_bounded() {
        let c = KeyCache::new(100, Duration::from_secs(60));
        for i in 0..10_000 {
            c.put(TokenHash::of(&i.to_string()), rec(&KeyId::generate()), 0);
            assert!(c.len() <= 100);
        }
        let old = KeyCache::new(100, Duration::from_millis(1));
        old.put(TokenHash::of("x"), rec(&KeyId::generate()), 0);
        std::thread::sleep(Duration::from_millis(5)); // age is the thing under test
        assert!(old.get(&TokenHash::of("x")).is_none());
        let off = KeyCache::new(0, Duration::from_secs(60));
        off.put(TokenHash::of("x"), rec(&KeyId::generate()), 0);
        assert!(off.is_empty());
    }
}
