//! The Redis key store, shared by every node on one Redis or one Redis Cluster.
//!
//! Layout, every name under the hash tag `{mt:keys}` so that the multi-key writes stay in one
//! cluster slot: `{mt:keys}:key:<id>` → JSON record; `{mt:keys}:key:<id>:used` → last use
//! (RFC 3339, written alone so it never races a revoke); `{mt:keys}:hash:<sha256 hex>` → id;
//! `{mt:keys}:acct:<account>` → set of ids; `{mt:keys}:exist` → marks a store that has held
//! a key (bootstrap happens once). One shard holds the key store; nodes read it through their
//! key cache, and it is written only when keys change. Multi-key writes are MULTI/EXEC
//! transactions or one script. A store of the untagged layout before it (`mt:key:<id>`, …) is
//! renamed into this one by the first node that starts (`insert_first`).
//!
//! Owns: that layout.  May use: keys, ids, scope, token, redis_link.  Never: store a full secret.

use std::sync::Arc;

use redis::AsyncCommands;
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use super::{Change, KeyRecord, KeyStore, StoreError};
use crate::{
    ids::{AccountId, KeyId},
    redis_link::RedisLink,
    scope::Environment,
    token::TokenHash,
};

const EXIST: &str = "{mt:keys}:exist";

fn key_of(id: &str) -> String {
    format!("{{mt:keys}}:key:{id}")
}
fn used_of(id: &str) -> String {
    format!("{{mt:keys}}:key:{id}:used")
}
fn hash_of(h: &TokenHash) -> String {
    format!("{{mt:keys}}:hash:{}", h.to_hex())
}
fn account_of(a: &AccountId) -> String {
    format!("{{mt:keys}}:acct:{a}")
}

/// The untagged layout of earlier versions (one Redis only): its marker, and each of its
/// prefixes with the one that replaces it.
const OLD_EXIST: &str = "mt:keys:exist";
const OLD_PREFIXES: [(&str, &str); 3] = [
    ("mt:key:", "{mt:keys}:key:"),
    ("mt:keyhash:", "{mt:keys}:hash:"),
    ("mt:acct:", "{mt:keys}:acct:"),
];

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::RedisDown(e.to_string())
}

pub struct RedisKeyStore {
    link: Arc<RedisLink>,
    cas: redis::Script,
}

/// Compare-and-set of a record: KEYS[1] the record, then the hash keys to delete, then the
/// hash keys to point at the id; ARGV: expected JSON, new JSON, id, number of deletions.
const CAS: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
local deletions = tonumber(ARGV[4])
for i = 2, 1 + deletions do redis.call('DEL', KEYS[i]) end
for i = 2 + deletions, #KEYS do redis.call('SET', KEYS[i], ARGV[3]) end
return 1
";

/// How often `modify` retries under contention before giving up.
const MODIFY_ATTEMPTS: usize = 16;

impl RedisKeyStore {
    pub fn new(link: Arc<RedisLink>) -> Self {
        Self { link, cas: redis::Script::new(CAS) }
    }

    async fn conn(&self) -> Result<crate::redis_link::Conn, StoreError> {
        self.link.conn().await.map_err(unavailable)
    }

    /// Decodes a record and merges its separately stored `last_used_at`.
    fn decode(raw: &str, used: Option<String>) -> Result<KeyRecord, StoreError> {
        let mut rec: KeyRecord =
            serde_json::from_str(raw).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if let Some(t) = used.and_then(|u| OffsetDateTime::parse(&u, &Rfc3339).ok()) {
            rec.last_used_at = Some(rec.last_used_at.map_or(t, |old| old.max(t)));
        }
        Ok(rec)
    }

    async fn load(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let mut c = self.conn().await?;
        let (raw, used): (Option<String>, Option<String>) = redis::pipe()
            .get(key_of(id))
            .get(used_of(id))
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        raw.map(|r| Self::decode(&r, used)).transpose()
    }

    /// Renames a store of the untagged layout into this one (one Redis: a cluster never
    /// held it); `true` if there was one.
    async fn migrate_old_layout(
        &self,
        c: &mut crate::redis_link::Conn,
    ) -> Result<bool, StoreError> {
        if self.link.is_cluster() || !c.exists::<_, bool>(OLD_EXIST).await.map_err(unavailable)? {
            return Ok(false);
        }
        for (old, new) in OLD_PREFIXES {
            let mut names = Vec::new();
            let mut scan =
                c.scan_match::<_, String>(format!("{old}*")).await.map_err(unavailable)?;
            while let Some(name) = futures::StreamExt::next(&mut scan).await {
                names.push(name.map_err(unavailable)?);
            }
            drop(scan);
            for name in names {
                let Some(rest) = name.strip_prefix(old) else { continue };
                let renamed = format!("{new}{rest}");
                c.rename::<_, _, ()>(&name, renamed).await.map_err(unavailable)?;
            }
        }
        c.del::<_, ()>(OLD_EXIST).await.map_err(unavailable)?;
        tracing::info!("renamed the key store into the cluster-ready layout ({{mt:keys}}:…)");
        Ok(true)
    }

    fn encode(rec: &KeyRecord) -> Result<String, StoreError> {
        serde_json::to_string(rec).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    /// Writes a new record and its indexes in one MULTI/EXEC.
    async fn write(&self, rec: &KeyRecord) -> Result<(), StoreError> {
        let json = Self::encode(rec)?;
        let mut p = redis::pipe();
        p.atomic().set(key_of(rec.id.as_str()), json).ignore();
        for s in &rec.secrets {
            p.set(hash_of(&s.hash), rec.id.as_str()).ignore();
        }
        p.sadd(account_of(&rec.account_id), rec.id.as_str()).ignore().set(EXIST, 1).ignore();
        let mut c = self.conn().await?;
        p.query_async::<()>(&mut c).await.map_err(unavailable)
    }
}

#[async_trait::async_trait]
impl KeyStore for RedisKeyStore {
    async fn insert(&self, rec: &KeyRecord) -> Result<(), StoreError> {
        self.write(rec).await
    }

    async fn insert_first(&self, rec: &KeyRecord) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let first: bool = redis::cmd("SET")
            .arg(EXIST)
            .arg(1)
            .arg("NX")
            .query_async::<Option<String>>(&mut c)
            .await
            .map_err(unavailable)?
            .is_some();
        if first && self.migrate_old_layout(&mut c).await? {
            return Ok(false); // an earlier version's store, renamed: it has keys
        }
        if first {
            self.write(rec).await?;
        }
        Ok(first)
    }

    async fn by_hash(&self, hash: &TokenHash) -> Result<Option<KeyRecord>, StoreError> {
        let mut c = self.conn().await?;
        let id: Option<String> = c.get(hash_of(hash)).await.map_err(unavailable)?;
        match id {
            Some(id) => self.load(&id).await,
            None => Ok(None),
        }
    }

    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.load(id.as_str()).await
    }

    async fn list(
        &self,
        account: &AccountId,
        env: Option<Environment>,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let mut c = self.conn().await?;
        let ids: Vec<String> = c.smembers(account_of(account)).await.map_err(unavailable)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        for id in &ids {
            p.get(key_of(id)).get(used_of(id));
        }
        let rows: Vec<Option<String>> = p.query_async(&mut c).await.map_err(unavailable)?;
        let mut out = Vec::with_capacity(ids.len());
        for pair in rows.chunks(2) {
            if let [Some(raw), used] = pair {
                let rec = Self::decode(raw, used.clone())?;
                if rec.account_id == *account && env.is_none_or(|e| e == rec.environment) {
                    out.push(rec);
                }
            }
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn modify(&self, id: &KeyId, change: Change) -> Result<KeyRecord, StoreError> {
        // Optimistic: read, change, then compare-and-set the JSON in one script; retry if
        // another writer changed the record in between.
        for _ in 0..MODIFY_ATTEMPTS {
            let mut c = self.conn().await?;
            let (raw, used): (Option<String>, Option<String>) = redis::pipe()
                .get(key_of(id.as_str()))
                .get(used_of(id.as_str()))
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            let raw = raw.ok_or(StoreError::NotFound)?;
            let old = Self::decode(&raw, used)?;
            let mut new = old.clone();
            if !change(&mut new) {
                return Ok(new);
            }
            let removed: Vec<String> = old
                .secrets
                .iter()
                .filter(|s| !new.secrets.iter().any(|n| n.hash == s.hash))
                .map(|s| hash_of(&s.hash))
                .collect();
            let mut inv = self.cas.prepare_invoke();
            inv.key(key_of(id.as_str()));
            for k in &removed {
                inv.key(k);
            }
            for s in &new.secrets {
                inv.key(hash_of(&s.hash));
            }
            inv.arg(&raw).arg(Self::encode(&new)?).arg(id.as_str()).arg(removed.len());
            let swapped: i64 = inv.invoke_async(&mut c).await.map_err(unavailable)?;
            if swapped == 1 {
                return Ok(new);
            }
        }
        Err(StoreError::Contended)
    }

    async fn touch(&self, id: &KeyId, at: OffsetDateTime) -> Result<(), StoreError> {
        let stamp = at.format(&Rfc3339).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut c = self.conn().await?;
        c.set::<_, _, ()>(used_of(id.as_str()), stamp).await.map_err(unavailable)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        // A keyed read, so that on a cluster it asks the one shard of the key records (a PING
        // would ask every node, and fail for a dead master the store does not use).
        redis::cmd("EXISTS")
            .arg(EXIST)
            .query_async::<i64>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}
