//! Key lifecycle: create, list, get, revoke, bootstrap. Revocation is announced to every
//! node through the broker's control channel (this node's included).
//!
//! Owns: the rules that turn requests into records.  May use: keys, token, scope, broker
//! (the trait only).  Never: touch sessions or sockets directly.

use std::sync::Arc;

use ipnet::IpNet;
use time::OffsetDateTime;

use super::{KeyRecord, KeyStore, Secret, StoreError};
use crate::{
    broker::{Broker, ControlMessage},
    ids::{AccountId, KeyId},
    scope::{Environment, Scope},
    token::Token,
};

/// What a new key should be.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub account: AccountId,
    pub environment: Environment,
    pub scopes: Vec<Scope>,
    pub ip_allowlist: Vec<IpNet>,
    pub expires_at: Option<OffsetDateTime>,
}

/// A freshly created key and its secret, shown exactly once.
#[derive(Debug)]
pub struct Created {
    pub record: KeyRecord,
    pub token: Token,
}

impl Created {
    /// The record's public view plus `key`: the only JSON that ever carries the secret.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self.record.view()).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("key".into(), self.token.expose().into());
        }
        v
    }
}

#[derive(Clone)]
pub struct KeyService {
    store: Arc<dyn KeyStore>,
    broker: Arc<dyn Broker>,
}

/// The account and environment of the key the server creates on an empty store.
pub const BOOTSTRAP_ACCOUNT: &str = "acct_local";

impl KeyService {
    pub fn new(store: Arc<dyn KeyStore>, broker: Arc<dyn Broker>) -> Self {
        Self { store, broker }
    }

    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    fn record(new: NewKey, token: &Token, now: OffsetDateTime) -> KeyRecord {
        KeyRecord {
            id: KeyId::generate(),
            name: new.name,
            account_id: new.account,
            environment: new.environment,
            scopes: new.scopes,
            ip_allowlist: new.ip_allowlist,
            created_at: now,
            expires_at: new.expires_at,
            revoked_at: None,
            last_used_at: None,
            redacted: token.redacted(),
            secrets: vec![Secret { hash: token.hash(), retires_at: None }],
        }
    }

    /// Creates a key. Callers have already checked who may create what.
    pub async fn create(&self, new: NewKey) -> Result<Created, StoreError> {
        let token = Token::generate(new.environment);
        let record = Self::record(new, &token, OffsetDateTime::now_utc());
        self.store.insert(&record).await?;
        Ok(Created { record, token })
    }

    /// On an empty store, creates the bootstrap key (`acct_local`, `test`, every scope).
    pub async fn bootstrap(&self) -> Result<Option<Created>, StoreError> {
        let account =
            AccountId::parse(BOOTSTRAP_ACCOUNT).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let new = NewKey {
            name: "bootstrap".into(),
            account,
            environment: Environment::Test,
            scopes: Scope::ALL.to_vec(),
            ip_allowlist: Vec::new(),
            expires_at: None,
        };
        let token = Token::generate(new.environment);
        let record = Self::record(new, &token, OffsetDateTime::now_utc());
        Ok(self.store.insert_first(&record).await?.then_some(Created { record, token }))
    }

    pub async fn list(
        &self,
        account: &AccountId,
        env: Option<Environment>,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.store.list(account, env).await
    }

    pub async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.store.get(id).await
    }

    /// Marks the key revoked (idempotent) and tells every node to close its streams.
    pub async fn revoke(&self, id: &KeyId) -> Result<KeyRecord, StoreError> {
        let mut rec = self.store.get(id).await?.ok_or(StoreError::NotFound)?;
        if rec.revoked_at.is_none() {
            rec.revoked_at = Some(OffsetDateTime::now_utc());
            self.store.update(&rec).await?;
        }
        // Announce even when already revoked: a node that missed it closes the streams now.
        if let Err(e) =
            self.broker.publish_control(&ControlMessage::Revoke { key_id: rec.id.clone() }).await
        {
            tracing::warn!(key_id = %rec.id, error = %e, "revocation stored but not announced to other nodes");
        }
        Ok(rec)
    }
}
