//! The limits of the privilege rule (SPEC §2) beyond scopes: what a key created, rotated
//! or updated by a caller may not exceed, checked against the caller's own record.
//!
//! May use: keys, error.

use ipnet::IpNet;
use time::OffsetDateTime;

use crate::{error::ApiError, keys::KeyRecord};

/// The limits of `within_callers_limits`, against the caller's record `parent`.
pub(super) fn callers_limits(
    parent: &KeyRecord,
    expires_at: Option<OffsetDateTime>,
    ip_allowlist: &[IpNet],
) -> Result<(), ApiError> {
    if let Some(limit) = parent.expires_at {
        if expires_at.is_none_or(|t| t > limit) {
            return Err(ApiError::scope_escalation("expires_at").with_message(
                "A key cannot outlive the key that creates, rotates or updates it: set `expires_at` no later than the caller's.",
            ));
        }
    }
    if !parent.ip_allowlist.is_empty() {
        let inside = |net: &IpNet| parent.ip_allowlist.iter().any(|p| p.contains(net));
        if ip_allowlist.is_empty() || !ip_allowlist.iter().all(inside) {
            return Err(ApiError::scope_escalation("ip_allowlist").with_message(
                "A key restricted by an IP allowlist can only give keys networks inside it.",
            ));
        }
    }
    Ok(())
}
