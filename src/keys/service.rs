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
    auth::Principal,
    broker::{Broker, ControlMessage},
    error::ApiError,
    ids::{AccountId, KeyId},
    scope::{Environment, Scope},
    token::Token,
};

/// The longest grace period a rotation may give the old secret: 7 days.
pub const MAX_GRACE_SECONDS: u64 = 7 * 24 * 3600;

/// What a caller asks for when creating a key over the API (account and environment are
/// always the caller's own).
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub name: String,
    pub environment: Option<Environment>,
    pub scopes: Vec<Scope>,
    pub ip_allowlist: Vec<IpNet>,
    pub expires_at: Option<OffsetDateTime>,
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::resource_missing("API key"),
        StoreError::Unavailable(e) => {
            tracing::error!(error = %e, "key store unavailable");
            ApiError::store_unavailable()
        }
        other => {
            tracing::error!(error = %other, "key store failed");
            ApiError::internal()
        }
    }
}

/// The first of `wanted` the caller does not hold: minting it would be an escalation.
fn escalation(caller: &Principal, wanted: &[Scope]) -> Option<Scope> {
    wanted.iter().copied().find(|s| !caller.has(*s))
}

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

    // === on behalf of an API caller (privilege rules of SPEC §2) ===

    /// Creates a key in the caller's account and environment with a subset of its scopes.
    pub async fn create_for(
        &self,
        caller: &Principal,
        req: CreateRequest,
    ) -> Result<Created, ApiError> {
        if req.environment.is_some_and(|e| e != caller.environment) {
            return Err(ApiError::environment_mismatch(format!(
                "A {} key can only create {} keys.",
                caller.environment, caller.environment
            ))
            .with_param("environment"));
        }
        if let Some(scope) = escalation(caller, &req.scopes) {
            return Err(ApiError::scope_escalation(scope.as_str()));
        }
        let new = NewKey {
            name: req.name,
            account: caller.account.clone(),
            environment: caller.environment,
            scopes: req.scopes,
            ip_allowlist: req.ip_allowlist,
            expires_at: req.expires_at,
        };
        self.create(new).await.map_err(store_error)
    }

    pub async fn list_for(&self, caller: &Principal) -> Result<Vec<KeyRecord>, ApiError> {
        self.store.list(&caller.account, Some(caller.environment)).await.map_err(store_error)
    }

    /// A key of the caller's own account and environment; anything else is 404, exactly
    /// like a key that does not exist.
    pub async fn get_for(&self, caller: &Principal, id: &KeyId) -> Result<KeyRecord, ApiError> {
        match self.store.get(id).await.map_err(store_error)? {
            Some(rec)
                if rec.account_id == caller.account && rec.environment == caller.environment =>
            {
                Ok(rec)
            }
            _ => Err(ApiError::resource_missing("API key")),
        }
    }

    pub async fn revoke_for(&self, caller: &Principal, id: &KeyId) -> Result<KeyRecord, ApiError> {
        self.get_for(caller, id).await?;
        self.revoke(id).await.map_err(store_error)
    }

    /// Rotates a key the caller could have minted itself (no escalation through rotation).
    pub async fn rotate_for(
        &self,
        caller: &Principal,
        id: &KeyId,
        grace_seconds: u64,
    ) -> Result<Created, ApiError> {
        let rec = self.get_for(caller, id).await?;
        if let Some(scope) = escalation(caller, &rec.scopes) {
            return Err(ApiError::scope_escalation(scope.as_str()));
        }
        if rec.revoked_at.is_some() {
            return Err(ApiError::invalid_param("id", "A revoked key cannot be rotated.")
                .with_code("key_revoked"));
        }
        self.rotate(id, grace_seconds).await.map_err(store_error)
    }

    /// Issues a new secret for the key (same id). The old secret keeps working for
    /// `grace_seconds` (0 = stops now); then its streams are closed on every node.
    pub async fn rotate(&self, id: &KeyId, grace_seconds: u64) -> Result<Created, StoreError> {
        let mut rec = self.store.get(id).await?.ok_or(StoreError::NotFound)?;
        let now = OffsetDateTime::now_utc();
        let retire_at = now + time::Duration::seconds(grace_seconds.min(MAX_GRACE_SECONDS) as i64);
        let token = Token::generate(rec.environment);
        // The current secret retires at `retire_at`; older ones still in their own grace keep
        // it, but never outlive the newer one. Every retiring secret is announced.
        let mut secrets = vec![Secret { hash: token.hash(), retires_at: None }];
        let mut retiring = Vec::new();
        for s in &rec.secrets {
            let at = s.retires_at.map_or(retire_at, |t| t.min(retire_at));
            if s.retires_at.is_none_or(|t| t > now) {
                retiring.push(ControlMessage::Retire {
                    key_id: rec.id.clone(),
                    secret: s.hash,
                    at,
                });
            }
            if at > now {
                secrets.push(Secret { hash: s.hash, retires_at: Some(at) });
            }
        }
        rec.secrets = secrets;
        rec.redacted = token.redacted();
        self.store.update(&rec).await?;
        for msg in &retiring {
            if let Err(e) = self.broker.publish_control(msg).await {
                tracing::warn!(key_id = %rec.id, error = %e, "rotation stored but not announced to other nodes");
            }
        }
        Ok(Created { record: rec, token })
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
