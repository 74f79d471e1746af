//! Issue 10 item 6: the embedded store works again after a write error (a full disk), with
//! no key lost or half-written. The fault is injected under redb by a storage backend that
//! fails every write while "full".

use std::{
    io,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use miteos_stream::{
    ids::{AccountId, KeyId},
    keys::{embedded::EmbeddedKeyStore, KeyRecord, KeyStore, Secret, StoreError},
    scope::{Environment, Scope},
    token::Token,
};
use redb::{backends::FileBackend, StorageBackend};

#[derive(Debug)]
struct FullDisk {
    inner: FileBackend,
    full: Arc<AtomicBool>,
}

impl FullDisk {
    fn check(&self) -> io::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "No space left on device"));
        }
        Ok(())
    }
}

impl StorageBackend for FullDisk {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check()?;
        self.inner.write(offset, data)
    }
}

fn record(name: &str) -> KeyRecord {
    let token = Token::generate(Environment::Test);
    KeyRecord {
        id: KeyId::generate(),
        name: name.into(),
        account_id: AccountId::parse("acct_disk").unwrap(),
        environment: Environment::Test,
        scopes: vec![Scope::TasksRead],
        ip_allowlist: vec![],
        created_at: time::OffsetDateTime::now_utc(),
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
        redacted: token.redacted(),
        secrets: vec![Secret { hash: token.hash(), retires_at: None }],
    }
}

#[tokio::test]
async fn writes_work_again_once_the_disk_has_space_and_nothing_is_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.redb");
    let full = Arc::new(AtomicBool::new(false));
    let full_in = full.clone();
    let store = EmbeddedKeyStore::with_backend(move || {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let inner = FileBackend::new(file).map_err(io::Error::other)?;
        Ok(FullDisk { inner, full: full_in.clone() })
    })
    .unwrap();
    let before = record("before");
    store.insert(&before).await.unwrap();

    full.store(true, Ordering::SeqCst);
    let during = record("during");
    for _ in 0..3 {
        let e = store.insert(&during).await.expect_err("the disk is full");
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
        let api: miteos_stream::error::ApiError = e.into();
        assert_eq!(api.status.as_u16(), 503);
    }

    full.store(false, Ordering::SeqCst);
    let after = record("after");
    store.insert(&after).await.expect("writes work again once there is space");
    store
        .modify(
            &before.id,
            Arc::new(|r| {
                r.name = "renamed".into();
                true
            }),
        )
        .await
        .unwrap();
    drop(store);

    // Reopened from the file: every committed key is there, the failed one is not.
    let store = EmbeddedKeyStore::open(dir.path()).unwrap();
    assert_eq!(store.get(&before.id).await.unwrap().unwrap().name, "renamed");
    assert_eq!(store.get(&after.id).await.unwrap().unwrap(), after);
    assert_eq!(store.get(&during.id).await.unwrap(), None);
    let listed = store.list(&before.account_id, None).await.unwrap();
    assert_eq!(listed.len(), 2);
}
