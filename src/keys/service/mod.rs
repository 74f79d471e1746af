//! Key lifecycle: create, list, get, revoke, rotate, update (`update`), bootstrap.
//! Revocations, retirements and updates are announced to every node through the broker's
//! control channel (this node's included).
//!
//! Owns: the rules that turn requests into records.  May use: keys, ids, token, scope,
//! broker (the trait only).  Never: touch sessions or sockets directly.

use std::sync::Arc;

use ipnet::IpNet;
use time::OffsetDateTime;

mod error;
mod limits;
mod update;

pub use error::KeyError;
use limits::callers_limits;
pub use update::Changes;

use super::{KeyRecord, KeyStore, Principal, Secret, StoreError};
use crate::{
    broker::{Broker, ControlMessage},
    ids::{AccountId, KeyId},
    scope::{Environment, Scope},
    token::Token,
};

/// The longest grace period a rotation may give the old secret: 7 days.
pub const MAX_GRACE_SECONDS: u64 = 7 * 24 * 3600;

/// How long announcing a control message may take, retries included, before the request
/// that caused it answers 503 (the change itself is stored).
pub const ANNOUNCE_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);
/// Pause before each retry of an announcement.
const ANNOUNCE_BACKOFF: [u64; 4] = [50, 150, 400, 800];

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
    /// Older secrets a key may have inside a rotation's grace at once.
    max_previous_secrets: usize,
    /// Keys (not revoked) an account may hold when created over the API (0 = no limit).
    max_keys_per_account: usize,
}

/// The account and environment of the key the server creates on an empty store.
pub const BOOTSTRAP_ACCOUNT: &str = "acct_local";

impl KeyService {
    pub fn new(store: Arc<dyn KeyStore>, broker: Arc<dyn Broker>) -> Self {
        Self { store, broker, max_previous_secrets: 1, max_keys_per_account: 0 }
    }

    /// Sets how many older secrets may be in grace at once (`rotation_max_previous_secrets`).
    pub fn with_max_previous_secrets(mut self, n: usize) -> Self {
        self.max_previous_secrets = n;
        self
    }

    /// Sets the per-account key quota of API creation (`max_keys_per_account`).
    pub fn with_max_keys_per_account(mut self, n: usize) -> Self {
        self.max_keys_per_account = n;
        self
    }

    /// Publishes a control message to every node, retrying within `ANNOUNCE_WITHIN`.
    async fn announce(&self, msg: &ControlMessage) -> Result<(), StoreError> {
        self.announce_as(msg, false).await
    }

    /// Like `announce`, returning once every node handled it (`publish_control_confirmed`);
    /// the broker's confirmation wait comes on top of `ANNOUNCE_WITHIN`.
    async fn announce_confirmed(&self, msg: &ControlMessage) -> Result<(), StoreError> {
        self.announce_as(msg, true).await
    }

    async fn announce_as(&self, msg: &ControlMessage, confirmed: bool) -> Result<(), StoreError> {
        let attempts = async {
            let mut last = None;
            for pause in std::iter::once(0).chain(ANNOUNCE_BACKOFF) {
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                let sent = if confirmed {
                    self.broker.publish_control_confirmed(msg).await
                } else {
                    self.broker.publish_control(msg).await
                };
                match sent {
                    Ok(()) => return Ok(()),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.map(|e| e.to_string()).unwrap_or_default())
        };
        let within = ANNOUNCE_WITHIN
            + if confirmed { self.broker.confirm_within() } else { Default::default() };
        let failed = match tokio::time::timeout(within, attempts).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => "timed out".to_owned(),
        };
        tracing::error!(error = %failed, "a key change is stored but could not be announced to other nodes");
        Err(StoreError::NotAnnounced(failed))
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
    ) -> Result<Created, KeyError> {
        if req.environment.is_some_and(|e| e != caller.environment) {
            return Err(KeyError::EnvironmentMismatch(caller.environment));
        }
        if let Some(scope) = escalation(caller, &req.scopes) {
            return Err(KeyError::ScopeEscalation(scope));
        }
        self.within_callers_limits(caller, req.expires_at, &req.ip_allowlist).await?;
        if self.max_keys_per_account > 0 {
            let held = self.store.list(&caller.account, None).await?;
            if held.iter().filter(|r| r.revoked_at.is_none()).count() >= self.max_keys_per_account {
                return Err(KeyError::KeyLimitReached(self.max_keys_per_account));
            }
        }
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

    /// A key minted (or rotated, which hands out its secret, or updated) by `caller` may not
    /// outlive it nor work from addresses it cannot: `expires_at` no later than the
    /// caller's, and every allowed network inside the caller's allowlist when it has one.
    async fn within_callers_limits(
        &self,
        caller: &Principal,
        expires_at: Option<OffsetDateTime>,
        ip_allowlist: &[IpNet],
    ) -> Result<(), KeyError> {
        let parent = self.callers_record(caller).await?;
        callers_limits(&parent, expires_at, ip_allowlist)
    }

    async fn callers_record(&self, caller: &Principal) -> Result<KeyRecord, KeyError> {
        self.store.get(&caller.key_id).await?.ok_or(KeyError::CallerUnknown)
    }

    pub async fn list_for(&self, caller: &Principal) -> Result<Vec<KeyRecord>, KeyError> {
        Ok(self.store.list(&caller.account, Some(caller.environment)).await?)
    }

    /// A key of the caller's own account and environment; anything else is 404, exactly
    /// like a key that does not exist.
    pub async fn get_for(&self, caller: &Principal, id: &KeyId) -> Result<KeyRecord, KeyError> {
        match self.store.get(id).await? {
            Some(rec)
                if rec.account_id == caller.account && rec.environment == caller.environment =>
            {
                Ok(rec)
            }
            _ => Err(KeyError::NotFound),
        }
    }

    pub async fn revoke_for(&self, caller: &Principal, id: &KeyId) -> Result<KeyRecord, KeyError> {
        self.get_for(caller, id).await?;
        Ok(self.revoke(id).await?)
    }

    /// Rotates a key the caller could have minted itself (no escalation through rotation).
    pub async fn rotate_for(
        &self,
        caller: &Principal,
        id: &KeyId,
        grace_seconds: u64,
    ) -> Result<Created, KeyError> {
        let rec = self.get_for(caller, id).await?;
        if let Some(scope) = escalation(caller, &rec.scopes) {
            return Err(KeyError::ScopeEscalation(scope));
        }
        self.within_callers_limits(caller, rec.expires_at, &rec.ip_allowlist).await?;
        if rec.revoked_at.is_some() {
            return Err(StoreError::Revoked.into());
        }
        Ok(self.rotate(id, grace_seconds).await?)
    }

    /// Issues a new secret for the key (same id). The previous secret keeps working for
    /// `grace_seconds` (0 = stops now); then its streams are closed on every node. At most
    /// `max_previous_secrets` older secrets stay in grace: a rotation ends the grace of the
    /// oldest beyond that at once. Secrets whose grace is over stay in the record until the
    /// next rotation (they answer `expired_api_key`), so a record holds at most
    /// 1 + `max_previous_secrets` + the ones that just ended.
    /// Atomic against a concurrent revoke or rotate: a revoked key is never rotated back
    /// to life, and two rotations never lose a secret they handed out.
    pub async fn rotate(&self, id: &KeyId, grace_seconds: u64) -> Result<Created, StoreError> {
        let env = self.store.get(id).await?.ok_or(StoreError::NotFound)?.environment;
        let token = Token::generate(env);
        let (hash, redacted) = (token.hash(), token.redacted());
        let grace = time::Duration::seconds(grace_seconds.min(MAX_GRACE_SECONDS) as i64);
        let keep = self.max_previous_secrets;
        let ended = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let ended_in = ended.clone();
        let rec = self
            .store
            .modify(
                id,
                Arc::new(move |r| {
                    if r.revoked_at.is_some() {
                        return false;
                    }
                    let now = OffsetDateTime::now_utc();
                    // What to announce: the secret this rotation retires, and every grace it
                    // ends (the oldest beyond the limit, or all of them when grace is zero).
                    let mut announce = Vec::new();
                    let mut secrets = vec![Secret { hash, retires_at: None }];
                    let mut kept = 0;
                    for s in r.secrets.iter().filter(|s| s.hash != hash) {
                        if s.retires_at.is_some_and(|t| t <= now) {
                            continue; // ended before: dropped now
                        }
                        let at = s.retires_at.map_or(now + grace, |t| t.min(now + grace));
                        if at > now && kept < keep {
                            kept += 1;
                            secrets.push(Secret { hash: s.hash, retires_at: Some(at) });
                            if s.retires_at.is_none() {
                                announce.push((s.hash, at));
                            }
                        } else {
                            // Ends now. The replaced secret stays listed, ended, so that it
                            // answers `expired_api_key` until the next rotation.
                            if s.retires_at.is_none() {
                                secrets.push(Secret { hash: s.hash, retires_at: Some(now) });
                            }
                            announce.push((s.hash, now));
                        }
                    }
                    *ended_in.lock() = announce;
                    r.secrets = secrets;
                    r.redacted = redacted.clone();
                    true
                }),
            )
            .await?;
        if rec.revoked_at.is_some() {
            return Err(StoreError::Revoked);
        }
        // Announce the newly retired secret, and the graces this rotation ended (due now).
        let announce = std::mem::take(&mut *ended.lock());
        // A failed announcement does not fail the rotation: a 503 here would lose the only
        // copy of the new secret (and a retry would cut the caller off). The other nodes
        // apply the retirement at their next revalidation (within `key_cache_ttl`).
        for (secret, at) in announce {
            let msg = ControlMessage::Retire { key_id: rec.id.clone(), secret, at };
            let _ = self.announce(&msg).await;
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
        self.announce(&ControlMessage::Revoke { key_id: rec.id.clone() }).await?;
        Ok(rec)
    }
}
