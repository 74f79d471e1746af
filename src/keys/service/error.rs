//! `KeyError`: why the key service refused a caller's request, in domain terms. The HTTP
//! edge maps each variant to its API error (`http::domain_errors`); the CLI prints it.
//!
//! Owns: the refusals of the privilege rules (SPEC §2).  May use: keys, scope, thiserror.
//! Never: name an HTTP status or error code.

use crate::{
    keys::StoreError,
    scope::{Environment, Scope},
};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The caller asked for a key of another environment than its own.
    #[error("a {0} key can only create {0} keys")]
    EnvironmentMismatch(Environment),
    /// The new (or rotated) key would hold a scope the caller does not.
    #[error("the caller does not hold scope {}", .0.as_str())]
    ScopeEscalation(Scope),
    /// The key would expire later than the caller's own key (or never, when the caller's does).
    #[error("a key cannot outlive the key that creates, rotates or updates it")]
    OutlivesCaller,
    /// The key would work from addresses outside the caller's IP allowlist.
    #[error("a key restricted by an IP allowlist can only mint keys inside it")]
    OutsideCallersAllowlist,
    /// The account holds its quota of keys (`max_keys_per_account`).
    #[error("the account already holds {0} keys")]
    KeyLimitReached(usize),
    /// The caller's own key is no longer in the store.
    #[error("the calling key no longer exists")]
    CallerUnknown,
    /// An update of a revoked key (a revocation is final).
    #[error("a revoked key cannot be updated")]
    Revoked,
    /// An update of an expired key (it does not come back through an update).
    #[error("an expired key cannot be updated")]
    Expired,
    /// No such key in the caller's account and environment (another account's key is the
    /// same as none).
    #[error("no such key")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}
