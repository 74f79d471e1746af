//! Connection caps per key and per account (`max_connections_per_key`/`_per_account`).
//!
//! A session holds a `Slot` (RAII) for its lifetime. In embedded mode slots are counters in
//! this process; in Redis mode they are members of sorted sets shared by all nodes
//! (`mt:conns:{<account>}:key:<id>`, `mt:conns:{<account>}`: tagged by account, so the
//! script that checks and takes both stays in one cluster slot), scored with an expiry that
//! each node refreshes for its live sessions, so a crashed node's slots lapse on their own.
//!
//! Owns: slot accounting.  May use: ids, keys (`StoreError`), redis_link.
//! Never: close sockets (callers do: 4029).

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use dashmap::DashMap;

use crate::{
    ids::{random_base62, AccountId, ConnId, KeyId},
    keys::StoreError,
    redis_link::RedisLink,
};

/// The two caps; 0 = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub per_key: usize,
    pub per_account: usize,
}

/// Why a slot was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Key,
    Account,
}

fn over(count: usize, cap: usize) -> bool {
    cap != 0 && count >= cap
}

#[async_trait::async_trait]
pub trait SlotStore: Send + Sync + 'static {
    /// Open connections of a key and of an account, right now.
    async fn counts(&self, key: &KeyId, account: &AccountId) -> Result<(usize, usize), StoreError>;
    /// Takes a slot if both caps allow it (atomically).
    async fn acquire(
        &self,
        key: &KeyId,
        account: &AccountId,
        conn: ConnId,
        caps: Caps,
    ) -> Result<Result<(), Full>, StoreError>;
    /// Gives a slot back (never blocks).
    fn release(&self, key: &KeyId, account: &AccountId, conn: ConnId);
}

/// A held slot; dropping it releases it.
pub struct Slot {
    store: Arc<dyn SlotStore>,
    key: KeyId,
    account: AccountId,
    conn: ConnId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.store.release(&self.key, &self.account, self.conn);
    }
}

/// Checks the caps without taking a slot (the cheap pre-upgrade refusal).
pub async fn check(
    store: &dyn SlotStore,
    key: &KeyId,
    account: &AccountId,
    caps: Caps,
) -> Result<Result<(), Full>, StoreError> {
    if caps.per_key == 0 && caps.per_account == 0 {
        return Ok(Ok(()));
    }
    let (k, a) = store.counts(key, account).await?;
    Ok(if over(k, caps.per_key) {
        Err(Full::Key)
    } else if over(a, caps.per_account) {
        Err(Full::Account)
    } else {
        Ok(())
    })
}

/// Takes a slot for a session.
pub async fn acquire(
    store: &Arc<dyn SlotStore>,
    key: &KeyId,
    account: &AccountId,
    conn: ConnId,
    caps: Caps,
) -> Result<Result<Slot, Full>, StoreError> {
    Ok(store.acquire(key, account, conn, caps).await?.map(|()| Slot {
        store: store.clone(),
        key: key.clone(),
        account: account.clone(),
        conn,
    }))
}

// === in-process ===

#[derive(Default)]
pub struct MemorySlots {
    keys: DashMap<KeyId, usize>,
    accounts: DashMap<AccountId, usize>,
}

#[async_trait::async_trait]
impl SlotStore for MemorySlots {
    async fn counts(&self, key: &KeyId, account: &AccountId) -> Result<(usize, usize), StoreError> {
        Ok((self.keys.get(key).map_or(0, |c| *c), self.accounts.get(account).map_or(0, |c| *c)))
    }

    async fn acquire(
        &self,
        key: &KeyId,
        account: &AccountId,
        _conn: ConnId,
        caps: Caps,
    ) -> Result<Result<(), Full>, StoreError> {
        // Lock order is always key, then account.
        let mut k = self.keys.entry(key.clone()).or_insert(0);
        if over(*k, caps.per_key) {
            return Ok(Err(Full::Key));
        }
        let mut a = self.accounts.entry(account.clone()).or_insert(0);
        if over(*a, caps.per_account) {
            let key_unused = *k == 0;
            drop((k, a));
            if key_unused {
                self.keys.remove_if(key, |_, n| *n == 0);
            }
            return Ok(Err(Full::Account));
        }
        *k += 1;
        *a += 1;
        Ok(Ok(()))
    }

    fn release(&self, key: &KeyId, account: &AccountId, _conn: ConnId) {
        self.keys.remove_if_mut(key, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
        self.accounts.remove_if_mut(account, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

// === Redis ===

/// How long a slot lives without a refresh, and how often live slots are refreshed.
const SLOT_TTL: Duration = Duration::from_secs(30);
const REFRESH_EVERY: Duration = Duration::from_secs(10);

/// Atomically: drop lapsed members, check both caps, add the member to both sets.
const ACQUIRE: &str = r"
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local kc, ac = tonumber(ARGV[4]), tonumber(ARGV[5])
if kc > 0 and redis.call('ZCARD', KEYS[1]) >= kc then return 1 end
if ac > 0 and redis.call('ZCARD', KEYS[2]) >= ac then return 2 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return 0
";

pub struct RedisSlots {
    link: Arc<RedisLink>,
    node: String,
    script: redis::Script,
    /// This node's live slots, refreshed every `REFRESH_EVERY`.
    mine: DashMap<ConnId, (KeyId, AccountId)>,
}

fn key_set(a: &AccountId, k: &KeyId) -> String {
    format!("mt:conns:{{{a}}}:key:{k}")
}
fn account_set(a: &AccountId) -> String {
    format!("mt:conns:{{{a}}}")
}
fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
fn down(e: redis::RedisError) -> StoreError {
    StoreError::RedisDown(e.to_string())
}

impl RedisSlots {
    /// Starts the refresh task (it ends when the store is dropped).
    pub fn start(link: Arc<RedisLink>) -> Arc<Self> {
        let me = Arc::new(Self {
            link,
            node: random_base62(12),
            script: redis::Script::new(ACQUIRE),
            mine: DashMap::new(),
        });
        tokio::spawn(refresh(Arc::downgrade(&me)));
        me
    }

    fn member(&self, conn: ConnId) -> String {
        format!("{}:{conn}", self.node)
    }
}

/// Refreshes this node's slots every `REFRESH_EVERY`. Members are re-added (not only
/// extended), so slots lost to a Redis that restarted empty come back and the caps hold
/// again; a slot released while the refresh was in flight is removed again right after.
async fn refresh(weak: Weak<RedisSlots>) {
    loop {
        tokio::time::sleep(REFRESH_EVERY).await;
        let Some(me) = weak.upgrade() else { return };
        let held: Vec<(ConnId, KeyId, AccountId)> =
            me.mine.iter().map(|e| (*e.key(), e.value().0.clone(), e.value().1.clone())).collect();
        if held.is_empty() {
            continue; // nothing to refresh (and an empty pipeline is an error)
        }
        let expiry = now_ms() + SLOT_TTL.as_millis() as i64;
        let ttl = (SLOT_TTL * 2).as_millis() as i64;
        // One pipeline per account: its sets share a slot (a pipeline may not cross slots
        // in a cluster); they go out together on the multiplexed connection.
        let mut per_account: std::collections::HashMap<&AccountId, redis::Pipeline> =
            std::collections::HashMap::new();
        for (conn, key, account) in &held {
            let member = me.member(*conn);
            let p = per_account.entry(account).or_default();
            for set in [key_set(account, key), account_set(account)] {
                p.cmd("ZADD").arg(&set).arg(expiry).arg(&member).ignore();
                p.pexpire(&set, ttl).ignore();
            }
        }
        let Ok(c) = me.link.conn().await else { continue };
        let sent = per_account.values().map(|p| {
            let mut c = c.clone();
            async move { p.query_async::<()>(&mut c).await }
        });
        if let Some(Err(e)) = futures::future::join_all(sent).await.into_iter().find(Result::is_err)
        {
            tracing::warn!(error = %e, "could not refresh connection slots");
            continue;
        }
        // Released meanwhile: take those out again.
        for (conn, key, account) in held.iter().filter(|(c, _, _)| !me.mine.contains_key(c)) {
            let member = me.member(*conn);
            let mut c = c.clone();
            let _ = redis::pipe()
                .zrem(key_set(account, key), &member)
                .ignore()
                .zrem(account_set(account), &member)
                .ignore()
                .query_async::<()>(&mut c)
                .await;
        }
    }
}

#[async_trait::async_trait]
impl SlotStore for RedisSlots {
    async fn counts(&self, key: &KeyId, account: &AccountId) -> Result<(usize, usize), StoreError> {
        let now = now_ms();
        let mut c = self.link.conn().await.map_err(down)?;
        redis::pipe()
            .zcount(key_set(account, key), now, "+inf")
            .zcount(account_set(account), now, "+inf")
            .query_async(&mut c)
            .await
            .map_err(down)
    }

    async fn acquire(
        &self,
        key: &KeyId,
        account: &AccountId,
        conn: ConnId,
        caps: Caps,
    ) -> Result<Result<(), Full>, StoreError> {
        let now = now_ms();
        let ttl = SLOT_TTL.as_millis() as i64;
        let mut c = self.link.conn().await.map_err(down)?;
        let outcome: i64 = self
            .script
            .key(key_set(account, key))
            .key(account_set(account))
            .arg(now)
            .arg(now + ttl)
            .arg(self.member(conn))
            .arg(caps.per_key)
            .arg(caps.per_account)
            .arg(ttl * 2)
            .invoke_async(&mut c)
            .await
            .map_err(down)?;
        Ok(match outcome {
            0 => {
                self.mine.insert(conn, (key.clone(), account.clone()));
                Ok(())
            }
            1 => Err(Full::Key),
            _ => Err(Full::Account),
        })
    }

    fn release(&self, key: &KeyId, account: &AccountId, conn: ConnId) {
        if self.mine.remove(&conn).is_none() {
            return;
        }
        let (link, member) = (self.link.clone(), self.member(conn));
        let (ks, acs) = (key_set(account, key), account_set(account));
        tokio::spawn(async move {
            if let Ok(mut c) = link.conn().await {
                let _ = redis::pipe()
                    .zrem(ks, &member)
                    .zrem(acs, &member)
                    .query_async::<()>(&mut c)
                    .await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_slots_cap_per_key_and_account_and_release() {
        let store: Arc<dyn SlotStore> = Arc::new(MemorySlots::default());
        let caps = Caps { per_key: 2, per_account: 3 };
        let acct = AccountId::parse("a").unwrap();
        let (k1, k2) = (KeyId::generate(), KeyId::generate());
        let s1 = acquire(&store, &k1, &acct, ConnId::generate(), caps).await.unwrap().unwrap();
        let _s2 = acquire(&store, &k1, &acct, ConnId::generate(), caps).await.unwrap().unwrap();
        assert_eq!(
            acquire(&store, &k1, &acct, ConnId::generate(), caps).await.unwrap().err(),
            Some(Full::Key)
        );
        let _s3 = acquire(&store, &k2, &acct, ConnId::generate(), caps).await.unwrap().unwrap();
        assert_eq!(
            acquire(&store, &k2, &acct, ConnId::generate(), caps).await.unwrap().err(),
            Some(Full::Account)
        );
        assert_eq!(check(store.as_ref(), &k1, &acct, caps).await.unwrap(), Err(Full::Key));
        drop(s1);
        assert_eq!(store.counts(&k1, &acct).await.unwrap(), (1, 2));
        assert_eq!(check(store.as_ref(), &k1, &acct, caps).await.unwrap(), Ok(()));
        let unlimited = Caps { per_key: 0, per_account: 0 };
        for _ in 0..10 {
            std::mem::forget(
                acquire(&store, &k1, &acct, ConnId::generate(), unlimited).await.unwrap().unwrap(),
            );
        }
    }
}
