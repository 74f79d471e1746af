//! Issue 10 items 1–2: rotation keeps a bounded number of secrets and timers, and a
//! revocation is never lost (announcements are retried or answered 503; a node that missed
//! one heals at its next revalidation, every `key_cache_ttl`).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use miteos_stream::{
    broker::{Broker, BrokerError, ChannelKey, ControlMessage, HistoryPage, Position},
    ids::{AccountId, KeyId},
    keys::{embedded::EmbeddedKeyStore, service::KeyService, service::NewKey, StoreError},
    scope::{Environment, Scope},
};

use crate::support::{RedisServer, TestServer, WsClient};

/// Whether `secret` authenticates an HTTP request right now.
async fn authenticates(s: &TestServer, secret: &str) -> bool {
    let r = s.http().await.get("/v1/api-keys", Some(secret)).await;
    assert!(r.status == 200 || r.status == 401, "{} {}", r.status, r.body);
    r.status == 200
}

#[tokio::test]
async fn a_thousand_rotations_keep_exactly_the_current_and_one_previous_secret() {
    let s = TestServer::start().await;
    let (first, id) = s.key("acct_local", Environment::Test, &[Scope::TeamsRead]).await;
    let id = KeyId::from_string(id);
    let mut secrets = vec![first];
    for _ in 0..1000 {
        let created = s.state.keys.rotate(&id, 3600).await.expect("rotate");
        secrets.push(created.token.expose().to_owned());
    }
    let rec = s.state.keys.get(&id).await.unwrap().unwrap();
    assert!(rec.secrets.len() <= 2, "{} secrets kept in the record", rec.secrets.len());
    assert_eq!(s.state.control.pending_timers(), 1, "one timer: the one secret in grace");
    let n = secrets.len();
    assert!(authenticates(&s, &secrets[n - 1]).await, "the current secret");
    assert!(authenticates(&s, &secrets[n - 2]).await, "the previous one, in its grace");
    for old in [&secrets[n - 3], &secrets[n - 10], &secrets[0]] {
        assert!(!authenticates(&s, old).await, "an older secret still works");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn a_rotation_ends_the_oldest_grace_at_once_and_closes_its_streams() {
    let s = TestServer::start().await;
    let (s0, id) =
        s.key("acct_local", Environment::Test, &[Scope::TasksRead, Scope::TeamsRead]).await;
    let (mut on_s0, _) = WsClient::authed(&s.ws_url(&s0), &s0).await;
    let id = KeyId::from_string(id);
    let s1 = s.state.keys.rotate(&id, 3600).await.unwrap().token.expose().to_owned();
    let (mut on_s1, _) = WsClient::authed(&s.ws_url(&s1), &s1).await;
    on_s0.send(serde_json::json!({"type": "ping"})).await;
    assert_eq!(on_s0.recv().await["type"], "pong", "s0 is in its grace");
    // A second rotation: s1 goes into grace, s0's grace ends now.
    let s2 = s.state.keys.rotate(&id, 3600).await.unwrap().token.expose().to_owned();
    assert_eq!(on_s0.expect_close().await, 4003);
    on_s1.send(serde_json::json!({"type": "ping"})).await;
    assert_eq!(on_s1.recv().await["type"], "pong", "s1 keeps its grace");
    assert!(!authenticates(&s, &s0).await);
    assert!(authenticates(&s, &s1).await && authenticates(&s, &s2).await);
    s.shutdown().await;
}

#[tokio::test]
async fn more_previous_secrets_can_be_allowed() {
    let s = TestServer::with(|c| c.rotation_max_previous_secrets = 3).await;
    let (first, id) = s.key("acct_local", Environment::Test, &[Scope::TeamsRead]).await;
    let id = KeyId::from_string(id);
    let mut secrets = vec![first];
    for _ in 0..6 {
        secrets.push(s.state.keys.rotate(&id, 3600).await.unwrap().token.expose().to_owned());
    }
    let valid: Vec<bool> =
        futures::future::join_all(secrets.iter().map(|t| authenticates(&s, t))).await;
    assert_eq!(valid, [false, false, false, true, true, true, true]);
    assert_eq!(s.state.control.pending_timers(), 3);
    s.shutdown().await;
}

#[tokio::test]
async fn a_node_that_missed_a_revocation_closes_the_streams_at_its_next_revalidation() {
    let redis = RedisServer::start().await;
    let a = TestServer::on_redis(&redis, |_| {}).await;
    let b = TestServer::on_redis(&redis, |c| c.key_cache_ttl = Duration::from_secs(1)).await;
    let (token, id) = a.key("acct_r", Environment::Live, &[Scope::TasksRead]).await;
    let (mut on_b, _) = WsClient::authed(&b.ws_url(&token), &token).await;
    // The revocation reaches the store but its control message is lost: that is what a
    // failed announcement looks like to node B.
    let id = KeyId::from_string(id);
    a.state
        .keys
        .store()
        .modify(
            &id,
            Arc::new(|r| {
                r.revoked_at = Some(time::OffsetDateTime::now_utc());
                true
            }),
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(on_b.expect_close().await, 4003);
    assert!(started.elapsed() < Duration::from_secs(4), "healed after {:?}", started.elapsed());
    let refused = WsClient::try_connect(&b.ws_url(&token)).await.err().expect("refused");
    assert_eq!(refused.status, 401);
    a.shutdown().await;
    b.shutdown().await;
}

/// A broker whose control messages never get through.
struct Unreachable;

#[async_trait::async_trait]
impl Broker for Unreachable {
    async fn subscribe(&self, _: &ChannelKey) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn unsubscribe(&self, _: &ChannelKey) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn publish(&self, _: &ChannelKey, _: Bytes) -> Result<Option<Position>, BrokerError> {
        Ok(None)
    }
    async fn head(&self, _: &ChannelKey) -> Result<Option<Position>, BrokerError> {
        Ok(None)
    }
    async fn history(
        &self,
        _: &ChannelKey,
        _: Option<u64>,
        _: usize,
    ) -> Result<Option<HistoryPage>, BrokerError> {
        Ok(None)
    }
    async fn publish_control(&self, _: &ControlMessage) -> Result<(), BrokerError> {
        Err(BrokerError::Unavailable("down".into()))
    }
    async fn publish_control_confirmed(&self, _: &ControlMessage) -> Result<(), BrokerError> {
        Err(BrokerError::Unavailable("down".into()))
    }
    async fn ping(&self) -> Result<(), BrokerError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_revocation_that_cannot_be_announced_is_stored_and_answered_503() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedKeyStore::open(dir.path()).unwrap());
    let keys = KeyService::new(store.clone(), Arc::new(Unreachable));
    let created = keys
        .create(NewKey {
            name: "k".into(),
            account: AccountId::parse("acct_x").unwrap(),
            environment: Environment::Live,
            scopes: vec![Scope::TasksRead],
            ip_allowlist: vec![],
            expires_at: None,
        })
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = keys.revoke(&created.record.id).await.expect_err("not announced");
    assert!(matches!(err, StoreError::NotAnnounced(_)), "{err:?}");
    let waited = started.elapsed();
    assert!(waited <= miteos_stream::keys::service::ANNOUNCE_WITHIN + Duration::from_secs(1));
    assert!(waited >= Duration::from_millis(500), "it retried ({waited:?})");
    let api: miteos_stream::error::ApiError = err.into();
    assert_eq!((api.status.as_u16(), api.code), (503, "broker_unavailable"));
    let rec = keys.get(&created.record.id).await.unwrap().unwrap();
    assert!(rec.revoked_at.is_some(), "the revocation itself is stored");
}
