//! The limits of the privilege rule (SPEC §2) beyond scopes: what a key created, rotated
//! or updated by a caller may not exceed, checked against the caller's own record.
//!
//! May use: keys, the parent module's `KeyError`.

use ipnet::IpNet;
use time::OffsetDateTime;

use super::KeyError;
use crate::keys::KeyRecord;

/// A key may not outlive `parent` (the caller's record) nor work from addresses it cannot:
/// `expires_at` no later than the caller's, and every allowed network inside the caller's
/// allowlist when it has one.
pub(super) fn callers_limits(
    parent: &KeyRecord,
    expires_at: Option<OffsetDateTime>,
    ip_allowlist: &[IpNet],
) -> Result<(), KeyError> {
    if let Some(limit) = parent.expires_at {
        if expires_at.is_none_or(|t| t > limit) {
            return Err(KeyError::OutlivesCaller);
        }
    }
    if !parent.ip_allowlist.is_empty() {
        let inside = |net: &IpNet| parent.ip_allowlist.iter().any(|p| p.contains(net));
        if ip_allowlist.is_empty() || !ip_allowlist.iter().all(inside) {
            return Err(KeyError::OutsideCallersAllowlist);
        }
    }
    Ok(())
}
