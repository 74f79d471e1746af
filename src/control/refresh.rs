//! Applying a key's stored record to its open streams on this node (SPEC §8): after an
//! `Update` message, for a session that registered just after one, in the periodic
//! revalidation and after gaps. Each stream's new grant comes from the same check a new
//! connection gets (`auth::principal_for`: revoked, expired, secret retired, allowlist
//! against the address it connected from), narrowed to what the stream may ever read.
//!
//! Reads of one key never overlap: a read asked for while one is in flight runs once more
//! after it, so a slow read can never apply an older record over a newer one.
//!
//! May use: the parent module, hub (regrant), auth (principal_for), keys, broker (Done), ids,
//! token; outbox and scope in its tests.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use futures::StreamExt;
use time::OffsetDateTime;

use super::Control;
use crate::{
    auth::principal_for,
    broker::Done,
    hub::{Grant, SessionEntry, Verdict},
    ids::KeyId,
    keys::KeyRecord,
    token::TokenHash,
};

/// Store reads in flight at once during a revalidation.
const REVALIDATE_CONCURRENCY: usize = 16;
/// Pauses before retrying the read of an updated key (the next revalidation retries later).
const READ_RETRIES: [u64; 3] = [100, 300, 1000];

/// What a stream opened as `entry` may do under `rec` at `now`; `None`: it must close (4003).
pub fn grant_for(rec: &KeyRecord, entry: &SessionEntry, now: OffsetDateTime) -> Option<Grant> {
    let p = principal_for(rec, entry.secret, entry.client, now).ok()?;
    let readable = p.scopes.intersect(entry.limit).read_topics();
    (!readable.is_empty()).then_some(Grant { readable, expires_at: p.expires_at })
}

/// A read asked for while one was in flight: it runs once more, then drops these (the
/// confirmations of the updates that asked).
#[derive(Default)]
pub(super) struct Again {
    wanted: bool,
    waiting: Vec<Done>,
}

/// What one scan found to do once the Hub's session map is no longer held.
#[derive(Default)]
struct After {
    revoked: HashSet<KeyId>,
    /// Secrets gone from their record or past their grace: closed, and tombstoned.
    retired: HashSet<(KeyId, TokenHash)>,
    /// Secrets in a rotation's grace: their timers.
    grace: HashSet<(KeyId, TokenHash, OffsetDateTime)>,
    /// Keys whose streams' grants changed (a missed update: the cached copy goes too).
    changed: HashSet<KeyId>,
}

impl Control {
    /// Reads `key_id` again and applies it to its streams, in the background; drops `done`
    /// once a read that started after this call was applied.
    pub fn spawn_refresh(self: &Arc<Self>, key_id: KeyId, done: Done) {
        let me = self.clone();
        tokio::spawn(async move { me.refresh(key_id, done).await });
    }

    /// Reads `key_id` again and applies it; if a read of it is in flight, that one reads
    /// once more when it ends instead (and drops `done` after that).
    pub async fn refresh(&self, key_id: KeyId, done: Done) {
        if self.claim(&key_id, done) {
            self.refresh_claimed(key_id).await;
        }
    }

    async fn refresh_claimed(&self, key_id: KeyId) {
        loop {
            // Whoever asked before this read starts is answered by it.
            let waiting = self.take_waiting(&key_id);
            if let Some(rec) = self.read(&key_id).await {
                let (closed, changed) =
                    self.apply_records(Some(&key_id), &HashMap::from([(key_id.clone(), rec)]));
                tracing::info!(key_id = %key_id, closed, changed, "key record applied to its streams");
            }
            drop(waiting);
            if !self.release(&key_id) {
                return;
            }
        }
    }

    /// Takes the key's read slot; `false` if a read is in flight (it is told to read again,
    /// and to drop `done` after that).
    fn claim(&self, key_id: &KeyId, done: Done) -> bool {
        let mut inflight = self.inflight.lock();
        match inflight.get_mut(key_id) {
            Some(again) => {
                again.wanted = true;
                again.waiting.push(done);
                false
            }
            None => {
                inflight.insert(key_id.clone(), Again { wanted: false, waiting: vec![done] });
                true
            }
        }
    }

    fn take_waiting(&self, key_id: &KeyId) -> Vec<Done> {
        self.inflight
            .lock()
            .get_mut(key_id)
            .map(|a| std::mem::take(&mut a.waiting))
            .unwrap_or_default()
    }

    /// Gives the slot back, unless another read was asked for meanwhile (`true`: the caller
    /// keeps the slot and reads again).
    fn release(&self, key_id: &KeyId) -> bool {
        let mut inflight = self.inflight.lock();
        match inflight.get_mut(key_id) {
            Some(again) if again.wanted => {
                again.wanted = false;
                true
            }
            _ => {
                // Nobody asked since the read started (asking sets `wanted`).
                inflight.remove(key_id);
                false
            }
        }
    }

    /// The record, retrying a failing store a few times. `None` when it is missing (data
    /// loss is not revocation) or the store keeps failing.
    async fn read(&self, key_id: &KeyId) -> Option<KeyRecord> {
        for pause in std::iter::once(0).chain(READ_RETRIES) {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            match self.store.get(key_id).await {
                Ok(rec) => return rec,
                Err(e) => {
                    tracing::warn!(key_id = %key_id, error = %e, "cannot read an updated key now")
                }
            }
        }
        None
    }

    /// Reads the record of every open stream's key again (one read per distinct key,
    /// `REVALIDATE_CONCURRENCY` at a time) and applies them: streams of revoked or expired
    /// keys or of retired secrets close (4003), secrets in grace get their timers, and every
    /// other stream gets the record's scopes, allowlist and expiry.
    pub async fn revalidate(self: &Arc<Self>) {
        let keys: HashSet<KeyId> = self.hub.session_keys().into_iter().map(|(k, _)| k).collect();
        let claimed: Vec<KeyId> =
            keys.into_iter().filter(|k| self.claim(k, Done::none())).collect();
        let store = &self.store;
        let records: HashMap<KeyId, KeyRecord> = futures::stream::iter(claimed.iter().cloned())
            .map(|key_id| async move {
                match store.get(&key_id).await {
                    Ok(rec) => rec.map(|r| (key_id, r)),
                    Err(e) => {
                        tracing::warn!(key_id = %key_id, error = %e, "cannot revalidate sessions now");
                        None
                    }
                }
            })
            .buffer_unordered(REVALIDATE_CONCURRENCY)
            .filter_map(|r| async move { r })
            .collect()
            .await;
        self.apply_records(None, &records);
        for key_id in claimed {
            if self.release(&key_id) {
                let me = self.clone();
                tokio::spawn(async move { me.refresh_claimed(key_id).await });
            }
        }
    }

    /// Applies `records` to the streams of their keys (of `only` when given, which also marks
    /// it updated for sessions still registering). Returns (closed, changed) streams.
    fn apply_records(
        &self,
        only: Option<&KeyId>,
        records: &HashMap<KeyId, KeyRecord>,
    ) -> (usize, usize) {
        let now = OffsetDateTime::now_utc();
        let mut after = After::default();
        let counts = self.hub.regrant(only, |s| {
            let Some(rec) = records.get(&s.key_id) else { return Verdict::Keep };
            if rec.revoked_at.is_some() {
                after.revoked.insert(s.key_id.clone());
                return Verdict::Close;
            }
            match rec.secrets.iter().find(|x| x.hash == s.secret).map(|x| x.retires_at) {
                None => {
                    after.retired.insert((s.key_id.clone(), s.secret));
                }
                Some(Some(at)) if at <= now => {
                    after.retired.insert((s.key_id.clone(), s.secret));
                }
                Some(Some(at)) => {
                    after.grace.insert((s.key_id.clone(), s.secret, at));
                }
                Some(None) => {}
            }
            match grant_for(rec, s, now) {
                None => Verdict::Close,
                Some(g) => {
                    if g != s.grant {
                        after.changed.insert(s.key_id.clone());
                    }
                    Verdict::Grant(g)
                }
            }
        });
        for key_id in after.revoked {
            self.apply_revoke(&key_id);
        }
        for (key_id, secret) in after.retired {
            self.retire_now(&key_id, &secret);
        }
        for (key_id, secret, at) in after.grace {
            // Idempotent: the same deadline arms nothing new.
            self.arm(key_id, secret, at);
        }
        for key_id in after.changed {
            self.cache.invalidate(&key_id);
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ids::AccountId,
        keys::Secret,
        outbox::Outbox,
        scope::{Environment, Scope, ScopeSet, Topic, TopicSet},
    };

    fn record(scopes: &[Scope]) -> KeyRecord {
        KeyRecord {
            id: KeyId::generate(),
            name: "k".into(),
            account_id: AccountId::parse("acct_a").unwrap(),
            environment: Environment::Live,
            scopes: scopes.to_vec(),
            ip_allowlist: vec![],
            created_at: OffsetDateTime::now_utc(),
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
            redacted: String::new(),
            secrets: vec![Secret { hash: TokenHash::of("s"), retires_at: None }],
        }
    }

    fn entry(rec: &KeyRecord, client: Option<&str>, limit: ScopeSet) -> SessionEntry {
        SessionEntry {
            key_id: rec.id.clone(),
            secret: TokenHash::of("s"),
            outbox: Arc::new(Outbox::new(4)),
            client: client.map(|c| c.parse().unwrap()),
            limit,
            grant: Grant { readable: TopicSet::default(), expires_at: None },
        }
    }

    #[test]
    fn a_grant_is_what_a_new_connection_would_get_within_the_streams_limit() {
        let now = OffsetDateTime::now_utc();
        let mut rec = record(&[Scope::TasksRead, Scope::AgentsRead, Scope::TeamsWrite]);
        let key_stream = entry(&rec, Some("10.0.0.1"), ScopeSet::ALL);
        let ticket_stream = entry(&rec, None, ScopeSet::of(&[Scope::AgentsRead]));
        let g = grant_for(&rec, &key_stream, now).unwrap();
        assert_eq!(g.readable.to_vec(), vec![Topic::Agents, Topic::Tasks]);
        assert_eq!(
            grant_for(&rec, &ticket_stream, now).unwrap().readable.to_vec(),
            [Topic::Agents]
        );

        rec.scopes = vec![Scope::TasksRead, Scope::TeamsWrite];
        assert_eq!(grant_for(&rec, &key_stream, now).unwrap().readable.to_vec(), [Topic::Tasks]);
        assert!(grant_for(&rec, &ticket_stream, now).is_none(), "nothing left to read: close");

        rec.ip_allowlist = vec!["192.168.0.0/16".parse().unwrap()];
        assert!(grant_for(&rec, &key_stream, now).is_none(), "outside the new allowlist");
        rec.ip_allowlist = vec!["10.0.0.0/8".parse().unwrap()];
        let later = now + time::Duration::hours(1);
        rec.expires_at = Some(later);
        assert_eq!(grant_for(&rec, &key_stream, now).unwrap().expires_at, Some(later));
        rec.expires_at = Some(now - time::Duration::seconds(1));
        assert!(grant_for(&rec, &key_stream, now).is_none(), "a past expiry closes at once");
    }
}
