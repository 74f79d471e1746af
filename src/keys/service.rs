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

/// How long a retired secret stays in its record after its grace ended (so it answers
/// `expired_api_key` rather than `invalid_api_key`), before a later rotation drops it.
const RETIRED_KEPT: time::Duration = time::Duration::days(1);

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
        self.within_callers_limits(caller, req.expires_at, &req.ip_allowlist).await?;
        let new = NewKey {
            name: req.name,
            account: caller.account.clone(),
            environment: caller.environment,
            scopes: req.scopes,
            ip_allowlist: req.ip_allowlist,
            expires_at: req.expires_at,
        };
        Ok(self.create(new).await?)
    }

    /// A key minted (or rotated, which hands out its secret) by `caller` may not outlive it
    /// nor work from addresses it cannot: `expires_at` no later than the caller's, and every
    /// allowed network inside the caller's allowlist when it has one.
    async fn within_callers_limits(
        &self,
        caller: &Principal,
        expires_at: Option<OffsetDateTime>,
        ip_allowlist: &[IpNet],
    ) -> Result<(), ApiError> {
        let parent = self.store.get(&caller.key_id).await?.ok_or_else(ApiError::invalid_api_key)?;
        if let Some(limit) = parent.expires_at {
            if expires_at.is_none_or(|t| t > limit) {
                return Err(ApiError::scope_escalation("expires_at").with_message(
                    "A key cannot outlive the key that creates or rotates it: set `expires_at` no later than the caller's.",
                ));
            }
        }
        if !parent.ip_allowlist.is_empty() {
            let inside = |net: &IpNet| parent.ip_allowlist.iter().any(|p| p.contains(net));
            if ip_allowlist.is_empty() || !ip_allowlist.iter().all(inside) {
                return Err(ApiError::scope_escalation("ip_allowlist").with_message(
                    "A key restricted by an IP allowlist can only mint keys restricted to networks inside it.",
                ));
            }
        }
        Ok(())
    }

    pub async fn list_for(&self, caller: &Principal) -> Result<Vec<KeyRecord>, ApiError> {
        Ok(self.store.list(&caller.account, Some(caller.environment)).await?)
    }

    /// A key of the caller's own account and environment; anything else is 404, exactly
    /// like a key that does not exist.
    pub async fn get_for(&self, caller: &Principal, id: &KeyId) -> Result<KeyRecord, ApiError> {
        match self.store.get(id).await? {
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
        Ok(self.revoke(id).await?)
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
        self.within_callers_limits(caller, rec.expires_at, &rec.ip_allowlist).await?;
        if rec.revoked_at.is_some() {
            return Err(StoreError::Revoked.into());
        }
        Ok(self.rotate(id, grace_seconds).await?)
    }

    /// Issues a new secret for the key (same id). The old secret keeps working for
    /// `grace_seconds` (0 = stops now); then its streams are closed on every node.
    /// Atomic against a concurrent revoke or rotate: a revoked key is never rotated back
    /// to life, and two rotations never lose a secret they handed out.
    pub async fn rotate(&self, id: &KeyId, grace_seconds: u64) -> Result<Created, StoreError> {
        let env = self.store.get(id).await?.ok_or(StoreError::NotFound)?.environment;
        let token = Token::generate(env);
        let (hash, redacted) = (token.hash(), token.redacted());
        let grace = time::Duration::seconds(grace_seconds.min(MAX_GRACE_SECONDS) as i64);
        let rec = self
            .store
            .modify(
                id,
                Arc::new(move |r| {
                    if r.revoked_at.is_some() {
                        return false;
                    }
                    let now = OffsetDateTime::now_utc();
                    let retire_at = now + grace;
                    // The current secret retires at `retire_at`; older ones keep their own
                    // grace but never outlive the newer one. Retired secrets stay listed a
                    // little while (they answer `expired_api_key`), then are dropped.
                    let mut secrets = vec![Secret { hash, retires_at: None }];
                    for s in r.secrets.iter().filter(|s| s.hash != hash) {
                        let at = s.retires_at.map_or(retire_at, |t| t.min(retire_at));
                        if at > now - RETIRED_KEPT {
                            secrets.push(Secret { hash: s.hash, retires_at: Some(at) });
                        }
                    }
                    r.secrets = secrets;
                    r.redacted = redacted.clone();
                    true
                }),
            )
            .await?;
        if rec.revoked_at.is_some() {
            return Err(StoreError::Revoked);
        }
        // Announce every retiring secret (already-due ones close at once on every node).
        for s in rec.secrets.iter().skip(1) {
            let Some(at) = s.retires_at else { continue };
            let msg = ControlMessage::Retire { key_id: rec.id.clone(), secret: s.hash, at };
            if let Err(e) = self.broker.publish_control(&msg).await {
                tracing::warn!(key_id = %rec.id, error = %e, "rotation stored but not announced to other nodes");
            }
        }
        Ok(Created { record: rec, token })
    }

    /// Marks the key revoked (idempotent, atomic) and tells every node to close its streams.
    pub async fn revoke(&self, id: &KeyId) -> Result<KeyRecord, StoreError> {
        let rec = self
            .store
            .modify(
                id,
                Arc::new(|r| {
                    let first = r.revoked_at.is_none();
                    if first {
                        r.revoked_at = Some(OffsetDateTime::now_utc());
                    }
                    first
                }),
            )
            .await?;
        // Announce even when already revoked: a node that missed it closes the streams now.
        if let Err(e) =
            self.broker.publish_control(&ControlMessage::Revoke { key_id: rec.id.clone() }).await
        {
            tracing::warn!(key_id = %rec.id, error = %e, "revocation stored but not announced to other nodes");
        }
        Ok(rec)
    }
}
