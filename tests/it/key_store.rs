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

    // modify: a replaced secret stops resolving, a new one starts, fields persist.
    let new_token = Token::generate(Environment::Live);
    let new_hash = new_token.hash();
    let revoked_at = OffsetDateTime::now_utc();
    let rotated = store
        .modify(
            &first.id,
            Arc::new(move |r| {
                r.secrets = vec![Secret { hash: new_hash, retires_at: None }];
                r.revoked_at = Some(revoked_at);
                true
            }),
        )
        .await
        .unwrap();
    assert_eq!(store.by_hash(&first_token.hash()).await.unwrap(), None);
    assert_eq!(store.by_hash(&new_token.hash()).await.unwrap(), Some(rotated.clone()));
    // A change that declines to write leaves the record as it was.
    let same = store
        .modify(
            &first.id,
            Arc::new(|r| {
                r.name = "ignored".into();
                false
            }),
        )
        .await
        .unwrap();
    assert_eq!(store.get(&first.id).await.unwrap().unwrap().name, "k");
    assert_eq!(same.name, "ignored", "the caller sees its declined change, the store does not");
    let (ghost, _) = record("acct_a", Environment::Live);
    assert!(matches!(store.modify(&ghost.id, Arc::new(|_| true)).await, Err(StoreError::NotFound)));

    // Concurrent modifications never lose each other's writes.
    let (shared, _) = record("acct_c", Environment::Test);
    store.insert(&shared).await.unwrap();
    let writers = (0..16).map(|_| {
        let (store, id) = (store.clone(), shared.id.clone());
        tokio::spawn(async move {
            let hash = Token::generate(Environment::Test).hash();
            store
                .modify(
                    &id,
                    Arc::new(move |r| {
                        r.secrets.push(Secret { hash, retires_at: None });
                        true
                    }),
                )
                .await
                .map(|_| hash)
        })
    });
    let hashes: Vec<_> =
        futures::future::join_all(writers).await.into_iter().map(|r| r.unwrap().unwrap()).collect();
    let after = store.get(&shared.id).await.unwrap().unwrap();
    assert_eq!(after.secrets.len(), 17, "every concurrent write kept");
    for h in hashes {
        assert_eq!(store.by_hash(&h).await.unwrap().map(|r| r.id), Some(shared.id.clone()));
    }
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
