//! The `KeyStore` conformance suite, run against every implementation (embedded here; Redis
//! joins with Redis mode).

use std::sync::Arc;

use miteos_stream::{
    ids::{AccountId, KeyId},
    keys::{embedded::EmbeddedKeyStore, KeyRecord, KeyStore, Secret, StoreError},
    scope::{Environment, Scope},
    token::Token,
};
use time::OffsetDateTime;

fn record(account: &str, env: Environment) -> (KeyRecord, Token) {
    let token = Token::generate(env);
    let rec = KeyRecord {
        id: KeyId::generate(),
        name: "k".into(),
        account_id: AccountId::parse(account).unwrap(),
        environment: env,
        scopes: vec![Scope::TasksRead],
        ip_allowlist: vec!["10.0.0.0/8".parse().unwrap()],
        created_at: OffsetDateTime::now_utc(),
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
        redacted: token.redacted(),
        secrets: vec![Secret { hash: token.hash(), retires_at: None }],
    };
    (rec, token)
}

/// Every rule a `KeyStore` must keep.
pub async fn conformance(store: Arc<dyn KeyStore>) {
    store.ping().await.unwrap();
    let (first, first_token) = record("acct_a", Environment::Live);
    assert!(store.insert_first(&first).await.unwrap(), "empty store takes the first key");
    let (second, _) = record("acct_a", Environment::Live);
    assert!(!store.insert_first(&second).await.unwrap(), "a non-empty store refuses insert_first");
    assert!(store.get(&second.id).await.unwrap().is_none());

    // Lookup by hash and by id give back exactly what was stored.
    assert_eq!(store.by_hash(&first_token.hash()).await.unwrap(), Some(first.clone()));
    assert_eq!(store.get(&first.id).await.unwrap(), Some(first.clone()));
    assert_eq!(store.by_hash(&Token::generate(Environment::Live).hash()).await.unwrap(), None);

    // list: per account, optionally per environment, oldest first.
    store.insert(&second).await.unwrap();
    let (test_key, _) = record("acct_a", Environment::Test);
    let (other, _) = record("acct_b", Environment::Live);
    store.insert(&test_key).await.unwrap();
    store.insert(&other).await.unwrap();
    let a = AccountId::parse("acct_a").unwrap();
    let all: Vec<_> = store.list(&a, None).await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0], first.id);
    let live = store.list(&a, Some(Environment::Live)).await.unwrap();
    assert_eq!(live.iter().map(|r| &r.id).collect::<Vec<_>>(), vec![&first.id, &second.id]);

    // update: a replaced secret stops resolving, a new one starts, fields persist.
    let mut rotated = first.clone();
    let new_token = Token::generate(Environment::Live);
    rotated.secrets = vec![Secret { hash: new_token.hash(), retires_at: None }];
    rotated.revoked_at = Some(OffsetDateTime::now_utc());
    store.update(&rotated).await.unwrap();
    assert_eq!(store.by_hash(&first_token.hash()).await.unwrap(), None);
    assert_eq!(store.by_hash(&new_token.hash()).await.unwrap(), Some(rotated.clone()));
    let (ghost, _) = record("acct_a", Environment::Live);
    assert!(matches!(store.update(&ghost).await, Err(StoreError::NotFound)));
}

#[tokio::test]
async fn embedded_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance(Arc::new(EmbeddedKeyStore::open(dir.path()).unwrap())).await;
}

#[tokio::test]
async fn embedded_store_survives_reopen_and_is_locked_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let (rec, token) = record("acct_a", Environment::Test);
    {
        let store = EmbeddedKeyStore::open(dir.path()).unwrap();
        store.insert(&rec).await.unwrap();
        assert!(matches!(EmbeddedKeyStore::open(dir.path()), Err(StoreError::Locked(_))));
    }
    let store = EmbeddedKeyStore::open(dir.path()).unwrap();
    assert_eq!(store.by_hash(&token.hash()).await.unwrap(), Some(rec));
    // Only the hash is on disk, never the secret.
    let bytes = std::fs::read(dir.path().join("keys.redb")).unwrap();
    assert!(!bytes.windows(token.expose().len()).any(|w| w == token.expose().as_bytes()));
}
