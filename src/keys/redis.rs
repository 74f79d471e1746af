//! The Redis key store, shared by every node on one Redis.
//!
//! Layout: `mt:key:{id}` → JSON record; `mt:key:{id}:used` → last use (RFC 3339, written
//! alone so it never races a revoke); `mt:keyhash:{sha256 hex}` → id; `mt:acct:{account}` →
//! set of ids; `mt:keys:exist` → marks a store that has held a key (bootstrap happens once).
//! Multi-key writes are MULTI/EXEC transactions.
//!
//! Owns: that layout.  May use: keys, redis_link.  Never: store a full secret.

use std::sync::Arc;

use redis::AsyncCommands;
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use super::{KeyRecord, KeyStore, StoreError};
use crate::{
    ids::{AccountId, KeyId},
    redis_link::RedisLink,
    scope::Environment,
    token::TokenHash,
};

const EXIST: &str = "mt:keys:exist";

fn key_of(id: &str) -> String {
    format!("mt:key:{id}")
}
fn used_of(id: &str) -> String {
    format!("mt:key:{id}:used")
}
fn hash_of(h: &TokenHash) -> String {
    format!("mt:keyhash:{}", h.to_hex())
}
fn account_of(a: &AccountId) -> String {
    format!("mt:acct:{a}")
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub struct RedisKeyStore {
    link: Arc<RedisLink>,
}

impl RedisKeyStore {
    pub fn new(link: Arc<RedisLink>) -> Self {
        Self { link }
    }

    async fn conn(&self) -> Result<redis::aio::ConnectionManager, StoreError> {
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

    fn encode(rec: &KeyRecord) -> Result<String, StoreError> {
        serde_json::to_string(rec).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    async fn write(&self, rec: &KeyRecord, removed: &[TokenHash]) -> Result<(), StoreError> {
        let json = Self::encode(rec)?;
        let mut p = redis::pipe();
        p.atomic().set(key_of(rec.id.as_str()), json).ignore();
        for h in removed {
            p.del(hash_of(h)).ignore();
        }
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
        self.write(rec, &[]).await
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
        if first {
            self.write(rec, &[]).await?;
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

    async fn update(&self, rec: &KeyRecord) -> Result<(), StoreError> {
        let old = self.load(rec.id.as_str()).await?.ok_or(StoreError::NotFound)?;
        let removed: Vec<TokenHash> = old
            .secrets
            .iter()
            .map(|s| s.hash)
            .filter(|h| !rec.secrets.iter().any(|n| n.hash == *h))
            .collect();
        self.write(rec, &removed).await
    }

    async fn touch(&self, id: &KeyId, at: OffsetDateTime) -> Result<(), StoreError> {
        let stamp = at.format(&Rfc3339).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut c = self.conn().await?;
        c.set::<_, _, ()>(used_of(id.as_str()), stamp).await.map_err(unavailable)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        redis::cmd("PING").query_async::<String>(&mut c).await.map(|_| ()).map_err(unavailable)
    }
}
