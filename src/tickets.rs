//! Single-use, 60-second WebSocket tickets (SPEC §3 `POST /v1/ws/tickets`): a browser gets
//! one from its backend and connects with `?ticket=` without ever holding the API key.
//!
//! A ticket stores only who minted it (key id + the hash of the minting secret) and the read
//! scopes it carries (all of the key's, or the ones the minting request narrowed it to);
//! redeeming it re-reads the key, so a ticket dies with its key (revoked, expired, rotated
//! past grace) and never carries more than the key holds now. The minting request was
//! checked against the key's IP allowlist; the redeeming browser is not (SPEC §3).
//! A ticket is validated (`peek`) before the upgrade and consumed (`take`) only when the
//! upgrade is committed, so a refused upgrade does not burn it.
//!
//! Owns: `TicketStore` and the in-process implementation.  May use: keys (`Principal`,
//! `StoreError`), token, ids, scope, redis_link, dashmap.
//! Invariants: `take` hands a ticket out at most once.

use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use time::OffsetDateTime;

use crate::{
    ids::KeyId,
    keys::Principal,
    keys::StoreError,
    token::{Token, TokenHash, TokenKind},
};

/// What a ticket remembers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TicketRecord {
    pub key_id: KeyId,
    /// Hash of the API-key secret that minted it.
    pub secret: TokenHash,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// The read scopes the ticket was narrowed to (`None`: every read scope of the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<crate::scope::Scope>>,
    /// The address of the minting request: its stream is closed if the key's allowlist
    /// changes to exclude it (SPEC §8). `None` for tickets minted before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minted_from: Option<std::net::IpAddr>,
}

/// Where tickets wait to be redeemed.
#[async_trait::async_trait]
pub trait TicketStore: Send + Sync + 'static {
    async fn put(&self, hash: TokenHash, rec: TicketRecord) -> Result<(), StoreError>;
    /// The ticket, left in place (validation before an upgrade that may still be refused).
    async fn peek(&self, hash: &TokenHash) -> Result<Option<TicketRecord>, StoreError>;
    /// Removes and returns the ticket: a second `take` of the same hash gets `None`.
    async fn take(&self, hash: &TokenHash) -> Result<Option<TicketRecord>, StoreError>;
}

/// Mints a ticket for `principal`, asked for from `client`, valid for `ttl`; returns the
/// secret ticket and its expiry. `scopes` narrows the ticket (the caller checked they are
/// read scopes the key holds).
pub async fn mint(
    store: &dyn TicketStore,
    principal: &Principal,
    client: std::net::IpAddr,
    ttl: std::time::Duration,
    scopes: Option<Vec<crate::scope::Scope>>,
) -> Result<(Token, OffsetDateTime), StoreError> {
    let ticket = Token::generate_kind(principal.environment, TokenKind::Ticket);
    let expires_at = OffsetDateTime::now_utc() + ttl;
    let rec = TicketRecord {
        key_id: principal.key_id.clone(),
        secret: principal.secret,
        expires_at,
        scopes,
        minted_from: Some(client),
    };
    store.put(ticket.hash(), rec).await?;
    Ok((ticket, expires_at))
}

/// In-process tickets (embedded mode). Expired tickets are swept every 1,024 mints.
#[derive(Default)]
pub struct MemoryTickets {
    map: DashMap<TokenHash, TicketRecord>,
    mints: AtomicU64,
}

#[async_trait::async_trait]
impl TicketStore for MemoryTickets {
    async fn put(&self, hash: TokenHash, rec: TicketRecord) -> Result<(), StoreError> {
        if self.mints.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
            let now = OffsetDateTime::now_utc();
            self.map.retain(|_, t| t.expires_at > now);
        }
        self.map.insert(hash, rec);
        Ok(())
    }

    async fn peek(&self, hash: &TokenHash) -> Result<Option<TicketRecord>, StoreError> {
        Ok(self.map.get(hash).map(|r| r.clone()))
    }

    async fn take(&self, hash: &TokenHash) -> Result<Option<TicketRecord>, StoreError> {
        Ok(self.map.remove(hash).map(|(_, rec)| rec))
    }
}

/// Tickets in Redis (Redis mode): `SET mt:ticket:{hash} … PX ttl` and `GETDEL`, so a ticket
/// minted on one node is redeemable once, on any node.
pub struct RedisTickets {
    link: std::sync::Arc<crate::redis_link::RedisLink>,
}

impl RedisTickets {
    pub fn new(link: std::sync::Arc<crate::redis_link::RedisLink>) -> Self {
        Self { link }
    }
}

fn ticket_key(hash: &TokenHash) -> String {
    format!("mt:ticket:{}", hash.to_hex())
}

fn redis_down(e: impl std::fmt::Display) -> StoreError {
    StoreError::RedisDown(e.to_string())
}

#[async_trait::async_trait]
impl TicketStore for RedisTickets {
    async fn put(&self, hash: TokenHash, rec: TicketRecord) -> Result<(), StoreError> {
        let ttl_ms =
            (rec.expires_at - OffsetDateTime::now_utc()).whole_milliseconds().max(1) as u64;
        let json = serde_json::to_string(&rec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut c = self.link.conn().await.map_err(redis_down)?;
        redis::cmd("SET")
            .arg(ticket_key(&hash))
            .arg(json)
            .arg("PX")
            .arg(ttl_ms)
            .arg("NX")
            .query_async::<Option<String>>(&mut c)
            .await
            .map_err(redis_down)?;
        Ok(())
    }

    async fn peek(&self, hash: &TokenHash) -> Result<Option<TicketRecord>, StoreError> {
        self.read("GET", hash).await
    }

    async fn take(&self, hash: &TokenHash) -> Result<Option<TicketRecord>, StoreError> {
        self.read("GETDEL", hash).await
    }
}

impl RedisTickets {
    /// Reads a ticket with `GET` (leave it) or `GETDEL` (use it up).
    async fn read(
        &self,
        command: &str,
        hash: &TokenHash,
    ) -> Result<Option<TicketRecord>, StoreError> {
        let mut c = self.link.conn().await.map_err(redis_down)?;
        let raw: Option<String> = redis::cmd(command)
            .arg(ticket_key(hash))
            .query_async(&mut c)
            .await
            .map_err(redis_down)?;
        raw.map(|r| serde_json::from_str(&r).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ids::AccountId, scope::Environment};

    fn principal() -> Principal {
        Principal {
            key_id: KeyId::generate(),
            account: AccountId::parse("acct_t").unwrap(),
            environment: Environment::Live,
            scopes: crate::scope::ScopeSet::default(),
            secret: TokenHash::of("s"),
            expires_at: None,
        }
    }

    #[tokio::test]
    async fn a_ticket_is_taken_once() {
        let store = MemoryTickets::default();
        let (ticket, expires_at) = mint(
            &store,
            &principal(),
            [127, 0, 0, 1].into(),
            std::time::Duration::from_secs(60),
            None,
        )
        .await
        .unwrap();
        assert!(ticket.expose().starts_with("mt_live_tk_"));
        assert!(expires_at > OffsetDateTime::now_utc() + time::Duration::seconds(59));
        assert!(store.take(&ticket.hash()).await.unwrap().is_some());
        assert!(store.take(&ticket.hash()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn expired_tickets_are_swept() {
        let store = MemoryTickets::default();
        let old = TicketRecord {
            key_id: KeyId::generate(),
            secret: TokenHash::of("x"),
            expires_at: OffsetDateTime::now_utc(),
            scopes: None,
            minted_from: None,
        };
        store.put(TokenHash::of("old"), old).await.unwrap();
        for _ in 0..1023 {
            mint(
                &store,
                &principal(),
                [127, 0, 0, 1].into(),
                std::time::Duration::from_secs(60),
                None,
            )
            .await
            .unwrap();
        }
        assert!(store.take(&TokenHash::of("old")).await.unwrap().is_none());
        assert_eq!(store.map.len(), 1023);
    }
}
