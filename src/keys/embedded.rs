//! The embedded key store: one redb file, `<data_dir>/keys.redb`.
//!
//! redb commits are atomic and durable (copy-on-write B-trees with a checksummed commit
//! slot), so a crash never leaves a half-written record. The file is locked by one process
//! at a time: the CLI gets a clear error while a server holds it.
//!
//! After an I/O error (a full disk) redb refuses every later operation ("previous I/O
//! error") until the database is closed and opened again; the store does that before its
//! next operation (opening recovers the last committed state), so writes work again once the
//! fault is gone.
//!
//! Owns: the file layout (`keys`: id → JSON record, `hashes`: sha256 → id, `accounts`:
//! `account\0id` → `` — the per-account index behind `list`).
//! May use: keys, ids, scope, token, redb, tokio's blocking
//! pool.  Never: store a full secret.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use parking_lot::Mutex;

use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};

use super::{Change, KeyRecord, KeyStore, StoreError};
use crate::{
    ids::{AccountId, KeyId},
    scope::Environment,
    token::TokenHash,
};

const KEYS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("keys");
const HASHES: TableDefinition<'_, &[u8], &str> = TableDefinition::new("hashes");
const ACCOUNTS: TableDefinition<'_, &str, ()> = TableDefinition::new("accounts");

/// The account index key of a record: `account\0id` (account ids contain no NUL).
fn account_entry(account: &str, id: &str) -> String {
    format!("{account}\0{id}")
}

/// Opens the database again (after an I/O error).
type Reopen = Arc<dyn Fn() -> Result<Database, StoreError> + Send + Sync>;

pub struct EmbeddedKeyStore {
    /// `None` between closing a failed database and opening it again.
    db: Arc<Mutex<Option<Arc<Database>>>>,
    /// Set by a failed operation: reopen the database before the next one.
    needs_repair: Arc<AtomicBool>,
    reopen: Reopen,
}

impl EmbeddedKeyStore {
    /// Opens (or creates) `<data_dir>/keys.redb`, creating `data_dir` if needed.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let path = data_dir.join("keys.redb");
        let reopen: Reopen = Arc::new(move || {
            Database::create(&path).map_err(|e| match e {
                DatabaseError::DatabaseAlreadyOpen => {
                    StoreError::Locked(path.display().to_string())
                }
                other => StoreError::Unavailable(format!("{}: {other}", path.display())),
            })
        });
        Self::from_database(reopen)
    }

    /// A store on any redb backend, made by `backend` (again after an I/O error); tests
    /// inject faults through one.
    pub fn with_backend<B: redb::StorageBackend>(
        backend: impl Fn() -> std::io::Result<B> + Send + Sync + 'static,
    ) -> Result<Self, StoreError> {
        let reopen: Reopen = Arc::new(move || {
            let b = backend().map_err(unavailable)?;
            Database::builder().create_with_backend(b).map_err(unavailable)
        });
        Self::from_database(reopen)
    }

    fn from_database(reopen: Reopen) -> Result<Self, StoreError> {
        let db = reopen()?;
        let store = Self {
            db: Arc::new(Mutex::new(Some(Arc::new(db)))),
            needs_repair: Arc::new(AtomicBool::new(false)),
            reopen,
        };
        // Create the tables up front so read transactions never meet a missing one, and
        // build the account index of a store written before it existed.
        store.write(|tx| {
            let keys = tx.open_table(KEYS).map_err(unavailable)?;
            tx.open_table(HASHES).map_err(unavailable)?;
            let mut accounts = tx.open_table(ACCOUNTS).map_err(unavailable)?;
            if accounts.is_empty().map_err(unavailable)? {
                for row in keys.iter().map_err(unavailable)? {
                    let (id, raw) = row.map_err(unavailable)?;
                    let rec = decode(raw.value())?;
                    let entry = account_entry(rec.account_id.as_str(), id.value());
                    accounts.insert(entry.as_str(), ()).map_err(unavailable)?;
                }
            }
            Ok(())
        })?;
        Ok(store)
    }

    /// The database, closed and opened again first if the last operation failed. (The file
    /// can only be reopened once no operation holds the old handle: with some in flight, a
    /// later call does it.)
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        let mut slot = self.db.lock();
        if self.needs_repair.load(Ordering::Acquire)
            && slot.as_ref().is_none_or(|db| Arc::strong_count(db) == 1)
        {
            drop(slot.take()); // closes the file
            match (self.reopen)() {
                Ok(db) => {
                    *slot = Some(Arc::new(db));
                    self.needs_repair.store(false, Ordering::Release);
                    tracing::info!("key store reopened after a failed operation");
                }
                Err(e) => tracing::warn!(error = %e, "key store reopen failed; will retry"),
            }
        }
        slot.clone().ok_or_else(|| StoreError::Unavailable("key store is reopening".into()))
    }

    /// Runs `f`; a failure marks the database for repair before the next operation.
    fn guarded<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let out = self.db().and_then(|db| f(&db));
        if matches!(out, Err(StoreError::Unavailable(_))) {
            self.needs_repair.store(true, Ordering::Release);
        }
        out
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.guarded(|db| {
            let tx = db.begin_write().map_err(unavailable)?;
            let out = f(&tx)?;
            tx.commit().map_err(unavailable)?;
            Ok(out)
        })
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.guarded(|db| f(&db.begin_read().map_err(unavailable)?))
    }

    fn read_record(tx: &redb::ReadTransaction, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let keys = tx.open_table(KEYS).map_err(unavailable)?;
        let Some(raw) = keys.get(id).map_err(unavailable)? else { return Ok(None) };
        decode(raw.value()).map(Some)
    }

    /// Runs blocking redb work on tokio's blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&EmbeddedKeyStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = Self {
            db: self.db.clone(),
            needs_repair: self.needs_repair.clone(),
            reopen: self.reopen.clone(),
        };
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }

    fn put(
        tx: &redb::WriteTransaction,
        rec: &KeyRecord,
        old: Option<&KeyRecord>,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_vec(rec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut keys = tx.open_table(KEYS).map_err(unavailable)?;
        let mut hashes = tx.open_table(HASHES).map_err(unavailable)?;
        for s in old.map(|o| o.secrets.as_slice()).unwrap_or_default() {
            if !rec.secrets.iter().any(|n| n.hash == s.hash) {
                hashes.remove(&s.hash.0[..]).map_err(unavailable)?;
            }
        }
        for s in &rec.secrets {
            hashes.insert(&s.hash.0[..], rec.id.as_str()).map_err(unavailable)?;
        }
        keys.insert(rec.id.as_str(), json.as_slice()).map_err(unavailable)?;
        let entry = account_entry(rec.account_id.as_str(), rec.id.as_str());
        tx.open_table(ACCOUNTS)
            .map_err(unavailable)?
            .insert(entry.as_str(), ())
            .map_err(unavailable)?;
        Ok(())
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn decode(raw: &[u8]) -> Result<KeyRecord, StoreError> {
    serde_json::from_slice(raw).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[async_trait::async_trait]
impl KeyStore for EmbeddedKeyStore {
    async fn insert(&self, rec: &KeyRecord) -> Result<(), StoreError> {
        let rec = rec.clone();
        self.blocking(move |s| s.write(|tx| Self::put(tx, &rec, None))).await
    }

    async fn insert_first(&self, rec: &KeyRecord) -> Result<bool, StoreError> {
        let rec = rec.clone();
        self.blocking(move |s| {
            s.write(|tx| {
                let empty =
                    tx.open_table(KEYS).map_err(unavailable)?.is_empty().map_err(unavailable)?;
                if empty {
                    Self::put(tx, &rec, None)?;
                }
                Ok(empty)
            })
        })
        .await
    }

    async fn by_hash(&self, hash: &TokenHash) -> Result<Option<KeyRecord>, StoreError> {
        let hash = *hash;
        self.blocking(move |s| {
            s.read(|tx| {
                let hashes = tx.open_table(HASHES).map_err(unavailable)?;
                let Some(id) = hashes.get(&hash.0[..]).map_err(unavailable)? else {
                    return Ok(None);
                };
                let id = id.value().to_owned();
                Self::read_record(tx, &id)
            })
        })
        .await
    }

    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let id = id.clone();
        self.blocking(move |s| s.read(|tx| Self::read_record(tx, id.as_str()))).await
    }

    async fn list(
        &self,
        account: &AccountId,
        env: Option<Environment>,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let account = account.clone();
        self.blocking(move |s| {
            s.read(|tx| {
                let index = tx.open_table(ACCOUNTS).map_err(unavailable)?;
                let (from, to) = (format!("{account}\0"), format!("{account}\u{1}"));
                let mut out = Vec::new();
                for row in index.range(from.as_str()..to.as_str()).map_err(unavailable)? {
                    let (entry, _) = row.map_err(unavailable)?;
                    let Some((_, id)) = entry.value().split_once('\0') else { continue };
                    let Some(rec) = Self::read_record(tx, id)? else { continue };
                    if env.is_none_or(|e| e == rec.environment) {
                        out.push(rec);
                    }
                }
                out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
                Ok(out)
            })
        })
        .await
    }

    async fn modify(&self, id: &KeyId, change: Change) -> Result<KeyRecord, StoreError> {
        let id = id.clone();
        // One write transaction: redb serialises writers, so the change sees the latest record.
        self.blocking(move |s| {
            s.write(|tx| {
                let old = {
                    let keys = tx.open_table(KEYS).map_err(unavailable)?;
                    let raw =
                        keys.get(id.as_str()).map_err(unavailable)?.ok_or(StoreError::NotFound)?;
                    decode(raw.value())?
                };
                let mut new = old.clone();
                if change(&mut new) {
                    Self::put(tx, &new, Some(&old))?;
                }
                Ok(new)
            })
        })
        .await
    }

    async fn touch(&self, id: &KeyId, at: time::OffsetDateTime) -> Result<(), StoreError> {
        let id = id.clone();
        self.blocking(move |s| {
            s.write(|tx| {
                let mut rec = {
                    let keys = tx.open_table(KEYS).map_err(unavailable)?;
                    let raw =
                        keys.get(id.as_str()).map_err(unavailable)?.ok_or(StoreError::NotFound)?;
                    decode(raw.value())?
                };
                if rec.last_used_at.is_some_and(|t| t >= at) {
                    return Ok(());
                }
                rec.last_used_at = Some(at);
                let json =
                    serde_json::to_vec(&rec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                tx.open_table(KEYS)
                    .map_err(unavailable)?
                    .insert(id.as_str(), json.as_slice())
                    .map_err(unavailable)?;
                Ok(())
            })
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.blocking(|s| s.read(|_| Ok(()))).await
    }
}
