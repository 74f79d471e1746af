//! `Principal`: who is calling, as authentication found it (the key's identity, scopes and
//! the secret presented). Every layer above the key store reads it: `auth` builds it, the
//! key service, tickets, the HTTP handlers and sessions check it.
//!
//! Owns: the caller's identity as a value.  May use: ids, scope, token.  Never: I/O.

use time::OffsetDateTime;

use crate::{
    ids::{AccountId, KeyId},
    scope::{Environment, Scope, ScopeSet},
    token::TokenHash,
};

/// Who is calling: the key's identity and permissions, as of authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: KeyId,
    pub account: AccountId,
    pub environment: Environment,
    pub scopes: ScopeSet,
    /// Hash of the secret that was presented (a key has two during a rotation's grace).
    pub secret: TokenHash,
    /// When this credential stops working: the key's expiry or the secret's retirement.
    pub expires_at: Option<OffsetDateTime>,
}

impl Principal {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(scope)
    }
}
