//! The refusal log: one `info` line per refused connection or request (its reason, what was
//! refused, the client address and the redacted credential), rate-limited so that an attack
//! cannot flood the log. Lines that did not fit are counted and reported on the next line
//! that does (`suppressed`), so nothing is dropped silently.
//!
//! Owns: the process-wide limiter of refusal lines.  May use: governor, tracing, ids, token
//! (redaction).  Never: log a credential other than through `token::redact`.

use std::{
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        atomic::{AtomicU64, Ordering},
        LazyLock,
    },
};

use governor::{DefaultDirectRateLimiter, Quota};

use crate::ids::KeyId;

/// Refusal lines per second once the burst is spent.
pub const LINES_PER_SECOND: u32 = 10;
/// Refusal lines that may be written back to back.
pub const BURST: u32 = 20;

struct RefusalLog {
    limiter: DefaultDirectRateLimiter,
    suppressed: AtomicU64,
}

static LOG: LazyLock<RefusalLog> = LazyLock::new(|| RefusalLog {
    limiter: DefaultDirectRateLimiter::direct(
        Quota::per_second(NonZeroU32::new(LINES_PER_SECOND).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(BURST).unwrap_or(NonZeroU32::MIN)),
    ),
    suppressed: AtomicU64::new(0),
});

/// What was refused.
#[derive(Debug, Clone, Copy)]
pub enum Refused {
    /// A TCP connection, before any request was read.
    Connection,
    /// An HTTP request (a `/v1/ws` upgrade included).
    Request,
    /// A WebSocket after its upgrade (the auth message, a cap).
    Stream,
}

impl Refused {
    fn as_str(self) -> &'static str {
        match self {
            Self::Connection => "connection",
            Self::Request => "request",
            Self::Stream => "stream",
        }
    }
}

/// Logs one refusal unless the limiter says the log is full; `credential` is the raw
/// credential the client offered, if any, and is only ever logged redacted.
pub fn refused(what: Refused, reason: &str, client: IpAddr, credential: Option<&str>) {
    if let Some(suppressed) = admit() {
        let key = credential.map(crate::token::redact);
        let key = key.as_deref().unwrap_or("-");
        tracing::info!(refused = what.as_str(), reason, %client, key, suppressed, "refused");
    }
}

/// Logs one refusal of an authenticated stream, named by its key id (not a secret).
pub fn refused_key(what: Refused, reason: &str, key_id: &KeyId) {
    if let Some(suppressed) = admit() {
        tracing::info!(refused = what.as_str(), reason, %key_id, suppressed, "refused");
    }
}

/// `Some(lines suppressed since the last one)` when a line may be written now.
fn admit() -> Option<u64> {
    if !tracing::enabled!(tracing::Level::INFO) {
        return None;
    }
    let log = &*LOG;
    if log.limiter.check().is_err() {
        log.suppressed.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    Some(log.suppressed.swap(0, Ordering::Relaxed))
}
