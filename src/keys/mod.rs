//! API-key records and the `KeyStore` seam (embedded file or Redis).
//!
//! Owns: `KeyRecord`, its public view, `KeyStore`, `StoreError`.  May use: ids, scope, token.
//! Never: hold a full secret (only SHA-256 hashes are stored).
//! Invariants: a record's hash index always matches its `secrets`.

pub mod cache;
pub mod embedded;
mod principal;
pub mod redis;
pub mod service;

pub use principal::Principal;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    ids::{AccountId, KeyId},
    scope::{Environment, Scope},
    token::TokenHash,
};

/// One secret of a key: the current one, or an older one kept during a rotation's grace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    pub hash: TokenHash,
    /// When this secret stops working (set on the old secret by a rotation).
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub retires_at: Option<OffsetDateTime>,
}

/// A stored API key (SPEC §2). `secrets[0]` is the current secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: KeyId,
    pub name: String,
    pub account_id: AccountId,
    pub environment: Environment,
    pub scopes: Vec<Scope>,
    pub ip_allowlist: Vec<IpNet>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_used_at: Option<OffsetDateTime>,
    /// `mt_live_sk_…` + the last four characters of the current secret.
    pub redacted: String,
    pub secrets: Vec<Secret>,
}

impl KeyRecord {
    /// The record as every API response and the CLI show it: no hashes, no secret.
    pub fn view(&self) -> KeyView<'_> {
        KeyView {
            id: &self.id,
            object: "api_key",
            name: &self.name,
            account_id: &self.account_id,
            environment: self.environment,
            scopes: &self.scopes,
            ip_allowlist: &self.ip_allowlist,
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            last_used_at: self.last_used_at,
            redacted: &self.redacted,
        }
    }
}

/// The public shape of a key record.
#[derive(Debug, Serialize)]
pub struct KeyView<'a> {
    pub id: &'a KeyId,
    pub object: &'static str,
    pub name: &'a str,
    pub account_id: &'a AccountId,
    pub environment: Environment,
    pub scopes: &'a [Scope],
    pub ip_allowlist: &'a [IpNet],
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    pub redacted: &'a str,
}

/// A change for `KeyStore::modify`; may run several times, always on a fresh record.
pub type Change = std::sync::Arc<dyn Fn(&mut KeyRecord) -> bool + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the key store at {0} is in use by another process (is a server running? stop it, or use the HTTP API)")]
    Locked(String),
    #[error("key store unavailable: {0}")]
    Unavailable(String),
    /// Redis (the broker and store of Redis mode) does not answer.
    #[error("redis unavailable: {0}")]
    RedisDown(String),
    #[error("key store data is corrupt: {0}")]
    Corrupt(String),
    #[error("no such key")]
    NotFound,
    #[error("the key is revoked")]
    Revoked,
    #[error("the record kept changing under concurrent writers; retry")]
    Contended,
    /// The change is stored, but the control message telling every node failed.
    #[error("stored, but not announced to every node: {0}")]
    NotAnnounced(String),
}

/// Where key records live. Control-plane only: a boxed future per call is fine.
#[async_trait::async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Stores a new record and indexes its secrets' hashes.
    async fn insert(&self, rec: &KeyRecord) -> Result<(), StoreError>;
    /// Stores `rec` only if the store holds no key at all; returns whether it did.
    async fn insert_first(&self, rec: &KeyRecord) -> Result<bool, StoreError>;
    /// The record one of whose secrets hashes to `hash`.
    async fn by_hash(&self, hash: &TokenHash) -> Result<Option<KeyRecord>, StoreError>;
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError>;
    /// An account's keys, oldest first, optionally of one environment.
    async fn list(
        &self,
        account: &AccountId,
        env: Option<Environment>,
    ) -> Result<Vec<KeyRecord>, StoreError>;
    /// Changes one record atomically: `change` runs on the freshest copy (more than once if
    /// another writer got there first) and returns whether to write. Hashes no longer in
    /// `secrets` stop resolving. Returns the record as stored afterwards.
    async fn modify(&self, id: &KeyId, change: Change) -> Result<KeyRecord, StoreError>;
    /// Sets only `last_used_at` (never overwrites a concurrent revoke or rotate).
    async fn touch(&self, id: &KeyId, at: OffsetDateTime) -> Result<(), StoreError>;
    /// Answers when the store is usable (`/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;
}
