//! Updating a key in place (SPEC §8): its name, scopes, IP allowlist or expiry. The change
//! is decided on the freshest record inside `KeyStore::modify`, so it is atomic against a
//! concurrent rotate, revoke or update (no lost update), and announced *confirmed*: when the
//! call returns, every node has evicted its cached copy and applied the record to the key's
//! open streams (`control`).
//!
//! May use: the parent module, keys (and its `Principal`), broker (ControlMessage), ids, scope.

use std::sync::Arc;

use ipnet::IpNet;
use parking_lot::Mutex;
use time::OffsetDateTime;

use super::{callers_limits, KeyError, KeyService};
use crate::{
    broker::ControlMessage,
    ids::KeyId,
    keys::{KeyRecord, Principal},
    scope::{Scope, ScopeSet},
};

/// What an update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub name: Option<String>,
    pub scopes: Option<Vec<Scope>>,
    /// `Some(vec![])`: any address.
    pub ip_allowlist: Option<Vec<IpNet>>,
    /// `Some(None)` clears the expiry. A time already past expires the key at once.
    pub expires_at: Option<Option<OffsetDateTime>>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }

    fn apply_to(&self, r: &mut KeyRecord) {
        if let Some(n) = &self.name {
            r.name.clone_from(n);
        }
        if let Some(s) = &self.scopes {
            r.scopes.clone_from(s);
        }
        if let Some(a) = &self.ip_allowlist {
            r.ip_allowlist.clone_from(a);
        }
        if let Some(e) = self.expires_at {
            r.expires_at = e;
        }
    }
}

/// The privilege rule of an API caller: its scopes and its own record (its limits).
struct Rule {
    scopes: ScopeSet,
    parent: KeyRecord,
}

impl KeyService {
    /// Updates a key of the caller's account and environment (404 otherwise) into one the
    /// caller could have created: its scopes within the caller's, expiring no later than the
    /// caller and inside the caller's allowlist. A revoked or expired key is refused
    /// (`KeyError::Revoked` / `Expired`).
    pub async fn update_for(
        &self,
        caller: &Principal,
        id: &KeyId,
        changes: Changes,
    ) -> Result<KeyRecord, KeyError> {
        self.get_for(caller, id).await?;
        let parent = self.callers_record(caller).await?;
        self.apply_update(id, changes, Some(Rule { scopes: caller.scopes, parent })).await
    }

    /// Updates a key with no privilege rule (the operator's CLI).
    pub async fn update(&self, id: &KeyId, changes: Changes) -> Result<KeyRecord, KeyError> {
        self.apply_update(id, changes, None).await
    }

    async fn apply_update(
        &self,
        id: &KeyId,
        changes: Changes,
        rule: Option<Rule>,
    ) -> Result<KeyRecord, KeyError> {
        // What the last run of the change decided (it may run again on a fresher record).
        let decided: Arc<Mutex<Result<bool, KeyError>>> = Arc::new(Mutex::new(Ok(false)));
        let out = decided.clone();
        let rec = self
            .store
            .modify(
                id,
                Arc::new(move |r| {
                    let verdict = decide(r, &changes, rule.as_ref());
                    let write = verdict.as_ref().is_ok_and(|new| new.is_some());
                    *out.lock() = verdict.map(|new| match new {
                        Some(new) => {
                            *r = new;
                            true
                        }
                        None => false,
                    });
                    write
                }),
            )
            .await?;
        let changed = std::mem::replace(&mut *decided.lock(), Ok(false))?;
        if changed {
            // Every node forgets its cached copy before this answers; a failure leaves the
            // change stored (503, and a retry is safe: the same values change nothing).
            let msg = ControlMessage::Update { key_id: rec.id.clone() };
            self.announce_confirmed(&msg).await?;
        }
        Ok(rec)
    }
}

/// The record after `changes`, `None` when they change nothing, or why they are refused.
fn decide(
    r: &KeyRecord,
    changes: &Changes,
    rule: Option<&Rule>,
) -> Result<Option<KeyRecord>, KeyError> {
    if r.revoked_at.is_some() {
        return Err(KeyError::Revoked);
    }
    if r.expires_at.is_some_and(|t| t <= OffsetDateTime::now_utc()) {
        return Err(KeyError::Expired);
    }
    let mut new = r.clone();
    changes.apply_to(&mut new);
    if let Some(rule) = rule {
        if let Some(s) = new.scopes.iter().find(|s| !rule.scopes.contains(**s)) {
            return Err(KeyError::ScopeEscalation(*s));
        }
        callers_limits(&rule.parent, new.expires_at, &new.ip_allowlist)?;
    }
    Ok((new != *r).then_some(new))
}
