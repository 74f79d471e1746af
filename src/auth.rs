//! Authentication: from a presented credential and client address to a `Principal`.
//!
//! Owns: the order of checks (format → store → revoked → expired → IP allowlist) and the
//! `AuthError` each failure is (the HTTP edge answers it).  May use: keys, tickets, token,
//! scope, ids, rate_limit, metrics.
//! Never: log a credential. Invariants: a malformed token never reaches the store.

use std::{net::IpAddr, sync::Arc, time::Instant};

use dashmap::DashMap;
use time::OffsetDateTime;

use crate::{
    ids::KeyId,
    keys::StoreError,
    keys::{cache::KeyCache, KeyRecord, KeyStore, Principal},
    metrics::Metrics,
    rate_limit::{Limited, Limits},
    scope::{Scope, ScopeSet},
    tickets::{TicketRecord, TicketStore},
    token::{Token, TokenHash, TokenKind},
};

/// `last_used_at` is written at most this often per key.
const TOUCH_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Why a credential was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no API key presented")]
    Missing,
    #[error("invalid API key")]
    Invalid,
    #[error("invalid, expired or already used ticket")]
    InvalidTicket,
    #[error("the key is revoked")]
    Revoked,
    #[error("the key (or this secret of it) has expired")]
    Expired,
    #[error("the client address is outside the key's IP allowlist")]
    IpNotAllowed,
    /// The client's address is locked out after too many failures (checked first).
    #[error(transparent)]
    LockedOut(#[from] Limited),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AuthError {
    /// The label of `miteos_auth_failures_total`: the code of the API error the edge answers
    /// with (a test at the edge keeps the two equal).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_api_key",
            AuthError::Invalid | AuthError::InvalidTicket => "invalid_api_key",
            AuthError::Revoked => "revoked_api_key",
            AuthError::Expired => "expired_api_key",
            AuthError::IpNotAllowed => "ip_not_allowed",
            AuthError::LockedOut(_) => "rate_limited",
            AuthError::Store(e) => match e {
                StoreError::NotFound => "resource_missing",
                StoreError::Revoked => "key_revoked",
                StoreError::Unavailable(_) | StoreError::Contended => "store_unavailable",
                StoreError::RedisDown(_) | StoreError::NotAnnounced(_) => "broker_unavailable",
                StoreError::Locked(_) | StoreError::Corrupt(_) => "internal_error",
            },
        }
    }

    /// Whether the failure spends the client's budget of failed authentications: a bad
    /// credential or address does, a lock-out or a store outage does not.
    fn spends_budget(&self) -> bool {
        !matches!(self, AuthError::LockedOut(_) | AuthError::Store(_))
    }
}

pub struct Authenticator {
    store: Arc<dyn KeyStore>,
    tickets: Arc<dyn TicketStore>,
    cache: Arc<KeyCache>,
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
    /// When this node last wrote `last_used_at` for a key.
    touched: DashMap<KeyId, Instant>,
}

impl Authenticator {
    pub fn new(
        store: Arc<dyn KeyStore>,
        tickets: Arc<dyn TicketStore>,
        cache: Arc<KeyCache>,
        limits: Arc<Limits>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self { store, tickets, cache, limits, metrics, touched: DashMap::new() }
    }

    pub fn tickets(&self) -> &Arc<dyn TicketStore> {
        &self.tickets
    }

    /// Checks an API key presented from `client`; counts every failure by code.
    pub async fn authenticate(
        &self,
        credential: Option<&str>,
        client: IpAddr,
    ) -> Result<Principal, AuthError> {
        self.limits.check_ip(client, &self.metrics)?;
        let result = self.check_key(credential, client).await;
        self.count(result, client)
    }

    /// Validates a single-use ticket presented from `client` without using it up; the caller
    /// `redeem`s it once the stream is really opened.
    pub async fn authenticate_ticket(
        &self,
        ticket: &str,
        client: IpAddr,
    ) -> Result<Principal, AuthError> {
        self.limits.check_ip(client, &self.metrics)?;
        let result = self.check_ticket(ticket).await;
        self.count(result, client)
    }

    /// Uses the ticket up and returns it: `Ok(None)` if another connection used it first.
    pub async fn redeem_ticket(&self, ticket: &str) -> Result<Option<TicketRecord>, AuthError> {
        let (ticket, _env) =
            Token::parse_kind(ticket, TokenKind::Ticket).map_err(|_| AuthError::Invalid)?;
        Ok(self.tickets.take(&ticket.hash()).await?)
    }

    /// Counts a failure by code; authentication failures also spend the client's budget.
    fn count(
        &self,
        result: Result<Principal, AuthError>,
        client: IpAddr,
    ) -> Result<Principal, AuthError> {
        if let Err(e) = &result {
            self.metrics.auth_failure(e.code());
            if e.spends_budget() {
                self.limits.auth_failed(client);
            }
        }
        result
    }

    async fn check_key(
        &self,
        credential: Option<&str>,
        client: IpAddr,
    ) -> Result<Principal, AuthError> {
        let credential = credential.filter(|c| !c.is_empty()).ok_or(AuthError::Missing)?;
        let (token, _env) = Token::parse(credential).map_err(|_| AuthError::Invalid)?;
        let hash = token.hash();
        let rec = match self.cache.get(&hash) {
            Some(rec) => rec,
            None => {
                let generation = self.cache.generation();
                let rec = self.store.by_hash(&hash).await?;
                let rec = Arc::new(rec.ok_or(AuthError::Invalid)?);
                self.cache.put(hash, rec.clone(), generation);
                rec
            }
        };
        let principal = principal_for(&rec, hash, Some(client), OffsetDateTime::now_utc())?;
        self.touch(&rec).await;
        Ok(principal)
    }

    /// A ticket's principal: its key as it is now, limited to the ticket's read scopes. The
    /// key's IP allowlist was applied when the ticket was minted, not to the browser.
    async fn check_ticket(&self, ticket: &str) -> Result<Principal, AuthError> {
        let invalid = || AuthError::InvalidTicket;
        let (ticket, _env) = Token::parse_kind(ticket, TokenKind::Ticket).map_err(|_| invalid())?;
        let rec = self.tickets.peek(&ticket.hash()).await?.ok_or_else(invalid)?;
        let now = OffsetDateTime::now_utc();
        if rec.expires_at <= now {
            return Err(invalid());
        }
        let key = self.store.get(&rec.key_id).await?.ok_or_else(invalid)?;
        let mut principal = principal_for(&key, rec.secret, None, now)?;
        let reads: Vec<Scope> =
            Scope::ALL.iter().copied().filter(|s| s.read_topic().is_some()).collect();
        let read_only = ScopeSet::of(&reads);
        let carried = rec.scopes.as_deref().map_or(read_only, ScopeSet::of);
        principal.scopes = principal.scopes.intersect(carried).intersect(read_only);
        self.touch(&key).await;
        Ok(principal)
    }

    /// Records use of a key, at most once per `TOUCH_EVERY` per key (no write per request).
    /// A failed write is logged, never fatal to the request.
    async fn touch(&self, rec: &KeyRecord) {
        let now = Instant::now();
        let wall = OffsetDateTime::now_utc();
        if rec.last_used_at.is_some_and(|t| wall - t < TOUCH_EVERY) {
            return;
        }
        if self.touched.get(&rec.id).is_some_and(|t| now.duration_since(*t) < TOUCH_EVERY) {
            return;
        }
        if self.touched.len() > 100_000 {
            self.touched.retain(|_, t| now.duration_since(*t) < TOUCH_EVERY);
        }
        self.touched.insert(rec.id.clone(), now);
        if let Err(e) = self.store.touch(&rec.id, wall).await {
            tracing::warn!(key_id = %rec.id, error = %e, "could not record last_used_at");
        }
    }
}

/// Applies the record's state to a presented secret: revoked, expired, retired, and the IP
/// allowlist when `peer` is given (a ticket's redeemer is not checked).
pub fn principal_for(
    rec: &KeyRecord,
    hash: TokenHash,
    peer: Option<IpAddr>,
    now: OffsetDateTime,
) -> Result<Principal, AuthError> {
    let secret = rec.secrets.iter().find(|s| s.hash.ct_eq(&hash)).ok_or(AuthError::Invalid)?;
    if rec.revoked_at.is_some() {
        return Err(AuthError::Revoked);
    }
    let expires_at = match (rec.expires_at, secret.retires_at) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if expires_at.is_some_and(|t| t <= now) {
        return Err(AuthError::Expired);
    }
    if let Some(peer) = peer {
        if !allowed(&rec.ip_allowlist, peer) {
            return Err(AuthError::IpNotAllowed);
        }
    }
    Ok(Principal {
        key_id: rec.id.clone(),
        account: rec.account_id.clone(),
        environment: rec.environment,
        scopes: ScopeSet::of(&rec.scopes),
        secret: hash,
        expires_at,
    })
}

/// Whether `peer` is inside the allowlist (empty = any address). An IPv4-mapped IPv6
/// address and its IPv4 form are the same address, in the list as in the peer.
pub fn allowed(allowlist: &[ipnet::IpNet], peer: IpAddr) -> bool {
    let peer = canonical(peer);
    allowlist.is_empty() || allowlist.iter().any(|net| canonical_net(*net).contains(&peer))
}

/// A network written as IPv4-mapped IPv6 (`::ffff:10.0.0.0/104`) as its IPv4 form.
fn canonical_net(net: ipnet::IpNet) -> ipnet::IpNet {
    match net {
        ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, Into::into),
            None => net,
        },
        other => other,
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:1.2.3.4`, seen on dual-stack sockets) as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ids::AccountId, keys::Secret, scope::Environment};
    use time::Duration;

    fn record(token: &Token) -> KeyRecord {
        KeyRecord {
            id: KeyId::generate(),
            name: "t".into(),
            account_id: AccountId::parse("acct_a").unwrap(),
            environment: Environment::Live,
            scopes: vec![Scope::TasksRead],
            ip_allowlist: vec![],
            created_at: OffsetDateTime::now_utc(),
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
            redacted: token.redacted(),
            secrets: vec![Secret { hash: token.hash(), retires_at: None }],
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sip(s: &str) -> Option<IpAddr> {
        Some(ip(s))
    }

    #[test]
    fn ipv4_mapped_addresses_match_their_ipv4_form_both_ways() {
        let nets = |s: &str| vec![s.parse::<ipnet::IpNet>().unwrap()];
        assert!(allowed(&nets("::ffff:127.0.0.1/128"), ip("127.0.0.1")));
        assert!(allowed(&nets("::ffff:10.0.0.0/104"), ip("10.9.8.7")));
        assert!(!allowed(&nets("::ffff:10.0.0.0/104"), ip("11.0.0.1")));
        assert!(allowed(&nets("127.0.0.1/32"), ip("::ffff:127.0.0.1")));
        assert!(allowed(&nets("::ffff:127.0.0.1/128"), ip("::ffff:127.0.0.1")));
        assert!(!allowed(&nets("::1/128"), ip("127.0.0.1")));
        assert!(allowed(&[], ip("8.8.8.8")));
    }

    #[test]
    fn revoked_expired_and_ip_checks_give_their_codes() {
        let t = Token::generate(Environment::Live);
        let now = OffsetDateTime::now_utc();
        let mut rec = record(&t);
        assert!(principal_for(&rec, t.hash(), sip("10.0.0.1"), now).is_ok());

        rec.ip_allowlist = vec!["10.0.0.0/8".parse().unwrap(), "2001:db8::/32".parse().unwrap()];
        assert!(principal_for(&rec, t.hash(), sip("10.1.2.3"), now).is_ok());
        assert!(principal_for(&rec, t.hash(), sip("::ffff:10.1.2.3"), now).is_ok());
        assert!(principal_for(&rec, t.hash(), sip("2001:db8::1"), now).is_ok());
        assert_eq!(
            principal_for(&rec, t.hash(), sip("11.0.0.1"), now).unwrap_err().code(),
            "ip_not_allowed"
        );

        rec.expires_at = Some(now - Duration::seconds(1));
        assert_eq!(
            principal_for(&rec, t.hash(), sip("10.0.0.1"), now).unwrap_err().code(),
            "expired_api_key"
        );
        rec.revoked_at = Some(now);
        assert_eq!(
            principal_for(&rec, t.hash(), sip("10.0.0.1"), now).unwrap_err().code(),
            "revoked_api_key"
        );
    }

    #[test]
    fn a_retired_secret_is_expired_and_its_retirement_is_the_principals_expiry() {
        let old = Token::generate(Environment::Live);
        let new = Token::generate(Environment::Live);
        let now = OffsetDateTime::now_utc();
        let mut rec = record(&new);
        let retire = now + Duration::seconds(30);
        rec.secrets.push(Secret { hash: old.hash(), retires_at: Some(retire) });
        assert_eq!(
            principal_for(&rec, old.hash(), sip("1.1.1.1"), now).unwrap().expires_at,
            Some(retire)
        );
        assert_eq!(principal_for(&rec, new.hash(), sip("1.1.1.1"), now).unwrap().expires_at, None);
        let later = now + Duration::seconds(31);
        assert_eq!(
            principal_for(&rec, old.hash(), sip("1.1.1.1"), later).unwrap_err().code(),
            "expired_api_key"
        );
        let other = Token::generate(Environment::Live);
        assert_eq!(
            principal_for(&rec, other.hash(), sip("1.1.1.1"), now).unwrap_err().code(),
            "invalid_api_key"
        );
    }
}
