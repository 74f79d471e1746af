//! Authentication: from a presented credential and client address to a `Principal`.
//!
//! Owns: the order of checks (format → store → revoked → expired → IP allowlist) and the
//! error each failure becomes.  May use: keys, token, scope, metrics.
//! Never: log a credential. Invariants: a malformed token never reaches the store.

use std::{net::IpAddr, sync::Arc};

use time::OffsetDateTime;

use crate::{
    error::ApiError,
    ids::{AccountId, KeyId},
    keys::{KeyRecord, KeyStore},
    metrics::Metrics,
    scope::{Environment, Scope},
    token::{Token, TokenHash},
};

/// Who is calling: the key's identity and permissions, as of authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: KeyId,
    pub account: AccountId,
    pub environment: Environment,
    pub scopes: Vec<Scope>,
    /// Hash of the secret that was presented (a key has two during a rotation's grace).
    pub secret: TokenHash,
    /// When this credential stops working: the key's expiry or the secret's retirement.
    pub expires_at: Option<OffsetDateTime>,
}

impl Principal {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn KeyStore>,
    metrics: Arc<Metrics>,
}

impl Authenticator {
    pub fn new(store: Arc<dyn KeyStore>, metrics: Arc<Metrics>) -> Self {
        Self { store, metrics }
    }

    /// Checks an API key presented by `peer`; counts every failure by code.
    pub async fn authenticate(
        &self,
        credential: Option<&str>,
        peer: IpAddr,
    ) -> Result<Principal, ApiError> {
        let result = self.check(credential, peer, OffsetDateTime::now_utc()).await;
        if let Err(e) = &result {
            self.metrics.auth_failure(e.code);
        }
        result
    }

    async fn check(
        &self,
        credential: Option<&str>,
        peer: IpAddr,
        now: OffsetDateTime,
    ) -> Result<Principal, ApiError> {
        let credential =
            credential.filter(|c| !c.is_empty()).ok_or_else(ApiError::missing_api_key)?;
        let (token, _env) = Token::parse(credential).map_err(|_| ApiError::invalid_api_key())?;
        let hash = token.hash();
        let rec = self
            .store
            .by_hash(&hash)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "key store lookup failed");
                ApiError::internal()
            })?
            .ok_or_else(ApiError::invalid_api_key)?;
        principal_for(&rec, hash, peer, now)
    }
}

/// Applies the record's state to a presented secret: revoked, expired, retired, IP.
pub fn principal_for(
    rec: &KeyRecord,
    hash: TokenHash,
    peer: IpAddr,
    now: OffsetDateTime,
) -> Result<Principal, ApiError> {
    let secret =
        rec.secrets.iter().find(|s| s.hash.ct_eq(&hash)).ok_or_else(ApiError::invalid_api_key)?;
    if rec.revoked_at.is_some() {
        return Err(ApiError::revoked_api_key());
    }
    let expires_at = match (rec.expires_at, secret.retires_at) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if expires_at.is_some_and(|t| t <= now) {
        return Err(ApiError::expired_api_key());
    }
    if !rec.ip_allowlist.is_empty()
        && !rec.ip_allowlist.iter().any(|net| net.contains(&canonical(peer)))
    {
        return Err(ApiError::ip_not_allowed());
    }
    Ok(Principal {
        key_id: rec.id.clone(),
        account: rec.account_id.clone(),
        environment: rec.environment,
        scopes: rec.scopes.clone(),
        secret: hash,
        expires_at,
    })
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
    use crate::keys::Secret;
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

    #[test]
    fn revoked_expired_and_ip_checks_give_their_codes() {
        let t = Token::generate(Environment::Live);
        let now = OffsetDateTime::now_utc();
        let mut rec = record(&t);
        assert!(principal_for(&rec, t.hash(), ip("10.0.0.1"), now).is_ok());

        rec.ip_allowlist = vec!["10.0.0.0/8".parse().unwrap(), "2001:db8::/32".parse().unwrap()];
        assert!(principal_for(&rec, t.hash(), ip("10.1.2.3"), now).is_ok());
        assert!(principal_for(&rec, t.hash(), ip("::ffff:10.1.2.3"), now).is_ok());
        assert!(principal_for(&rec, t.hash(), ip("2001:db8::1"), now).is_ok());
        assert_eq!(
            principal_for(&rec, t.hash(), ip("11.0.0.1"), now).unwrap_err().code,
            "ip_not_allowed"
        );

        rec.expires_at = Some(now - Duration::seconds(1));
        assert_eq!(
            principal_for(&rec, t.hash(), ip("10.0.0.1"), now).unwrap_err().code,
            "expired_api_key"
        );
        rec.revoked_at = Some(now);
        assert_eq!(
            principal_for(&rec, t.hash(), ip("10.0.0.1"), now).unwrap_err().code,
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
            principal_for(&rec, old.hash(), ip("1.1.1.1"), now).unwrap().expires_at,
            Some(retire)
        );
        assert_eq!(principal_for(&rec, new.hash(), ip("1.1.1.1"), now).unwrap().expires_at, None);
        let later = now + Duration::seconds(31);
        assert_eq!(
            principal_for(&rec, old.hash(), ip("1.1.1.1"), later).unwrap_err().code,
            "expired_api_key"
        );
        let other = Token::generate(Environment::Live);
        assert_eq!(
            principal_for(&rec, other.hash(), ip("1.1.1.1"), now).unwrap_err().code,
            "invalid_api_key"
        );
    }
}
