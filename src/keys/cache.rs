//! `KeyCache`: verified key records by secret hash, so a burst of connections with an
//! already-seen key does not hit the store each time. Bounded in size and age, and emptied
//! for a key by the same control messages that revoke or rotate it (on every node).
//!
//! Owns: the cache.  May use: keys, token.  Never: cache a miss (unknown keys always reach
//! the store; brute force is the rate limiter's job).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use dashmap::DashMap;

use super::KeyRecord;
use crate::{ids::KeyId, token::TokenHash};

pub struct KeyCache {
    map: DashMap<TokenHash, (Arc<KeyRecord>, Instant)>,
    max_entries: usize,
    max_age: Duration,
}

impl KeyCache {
    pub fn new(max_entries: usize, max_age: Duration) -> Self {
        Self { map: DashMap::new(), max_entries, max_age }
    }

    /// A record cached less than `max_age` ago.
    pub fn get(&self, hash: &TokenHash) -> Option<Arc<KeyRecord>> {
        let hit = self.map.get(hash)?;
        (hit.1.elapsed() < self.max_age).then(|| hit.0.clone())
    }

    pub fn put(&self, hash: TokenHash, rec: Arc<KeyRecord>) {
        if self.max_entries == 0 || self.max_age.is_zero() {
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
    }

    /// Forgets every secret of `key_id`.
    pub fn invalidate(&self, key_id: &KeyId) {
        self.map.retain(|_, (rec, _)| rec.id != *key_id);
    }

    pub fn clear(&self) {
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
        c.put(TokenHash::of("a1"), rec(&a));
        c.put(TokenHash::of("a2"), rec(&a));
        c.put(TokenHash::of("b1"), rec(&b));
        c.invalidate(&a);
        assert!(c.get(&TokenHash::of("a1")).is_none() && c.get(&TokenHash::of("a2")).is_none());
        assert!(c.get(&TokenHash::of("b1")).is_some());
    }

    #[test]
    fn size_and_age_are_bounded() {
        let c = KeyCache::new(100, Duration::from_secs(60));
        for i in 0..10_000 {
            c.put(TokenHash::of(&i.to_string()), rec(&KeyId::generate()));
            assert!(c.len() <= 100);
        }
        let old = KeyCache::new(100, Duration::from_millis(1));
        old.put(TokenHash::of("x"), rec(&KeyId::generate()));
        std::thread::sleep(Duration::from_millis(5)); // age is the thing under test
        assert!(old.get(&TokenHash::of("x")).is_none());
        let off = KeyCache::new(0, Duration::from_secs(60));
        off.put(TokenHash::of("x"), rec(&KeyId::generate()));
        assert!(off.is_empty());
    }
}
