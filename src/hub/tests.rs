//! Hub unit tests: channel join/leave/dissolve races, sweeping, filters, tombstones.

use super::*;
use crate::{
    broker::{codec, BrokerError, Delivery, Position},
    ids::AccountId,
    protocol::filter::EventFilter,
    scope::{Environment, Topic},
};
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashSet;

/// A broker that records its subscriptions and is slow to unsubscribe (widening races).
#[derive(Default)]
struct Recording {
    desired: Mutex<HashSet<ChannelKey>>,
    /// What `head` answers (history off when `None`).
    head: Mutex<Option<Position>>,
}

#[async_trait::async_trait]
impl Broker for Recording {
    async fn subscribe(&self, ch: &ChannelKey) -> Result<(), BrokerError> {
        tokio::time::sleep(Duration::from_millis(3)).await;
        self.desired.lock().insert(ch.clone());
        Ok(())
    }
    async fn unsubscribe(&self, ch: &ChannelKey) -> Result<(), BrokerError> {
        tokio::time::sleep(Duration::from_millis(7)).await;
        self.desired.lock().remove(ch);
        Ok(())
    }
    async fn publish(&self, _: &ChannelKey, _: Bytes) -> Result<Option<Position>, BrokerError> {
        Ok(None)
    }
    async fn head(&self, _: &ChannelKey) -> Result<Option<Position>, BrokerError> {
        Ok(self.head.lock().clone())
    }
    async fn history(
        &self,
        _: &ChannelKey,
        _: Option<u64>,
        _: usize,
    ) -> Result<Option<crate::broker::HistoryPage>, BrokerError> {
        Ok(None)
    }
    async fn publish_control(&self, _: &ControlMessage) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn publish_control_confirmed(&self, _: &ControlMessage) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn ping(&self) -> Result<(), BrokerError> {
        Ok(())
    }
}

fn hub() -> (Arc<Hub>, Arc<Recording>) {
    let rec = Arc::new(Recording::default());
    let r = rec.clone();
    (Hub::new(Arc::new(Metrics::new()), 1000, move |_| r), rec)
}

fn key() -> ChannelKey {
    ChannelKey::new(Environment::Live, AccountId::parse("a").unwrap(), Topic::Tasks)
}

fn event() -> Delivery {
    let event =
        codec::decode(Topic::Tasks, br#"{"event":"e"}"#, 1024, std::time::Instant::now()).unwrap();
    Delivery::Event { channel: key(), event }
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_arriving_during_a_dissolve_stays_subscribed_at_the_broker() {
    for offset_ms in 0..20u64 {
        let (hub, broker) = hub();
        let first = Arc::new(Outbox::new(8));
        hub.subscribe(&key(), &first, None, None).await.unwrap();
        hub.unsubscribe(&key(), &first); // dissolve fires in UNSUBSCRIBE_DELAY
        tokio::time::sleep(
            UNSUBSCRIBE_DELAY + Duration::from_millis(offset_ms) - Duration::from_millis(10),
        )
        .await;
        let second = Arc::new(Outbox::new(8));
        hub.subscribe(&key(), &second, None, None).await.unwrap();
        tokio::time::sleep(UNSUBSCRIBE_DELAY * 2).await; // let every timer run
        assert!(
            broker.desired.lock().contains(&key()),
            "offset {offset_ms} ms: broker unsubscribed a live channel"
        );
        hub.deliver(event());
        assert_eq!(second.len(), 1, "offset {offset_ms} ms: the event was not delivered");
    }
}

#[tokio::test(start_paused = true)]
async fn the_last_subscriber_leaving_unsubscribes_the_broker() {
    let (hub, broker) = hub();
    let o = Arc::new(Outbox::new(8));
    hub.subscribe(&key(), &o, None, None).await.unwrap();
    hub.unsubscribe(&key(), &o);
    tokio::time::sleep(UNSUBSCRIBE_DELAY * 2).await;
    assert!(broker.desired.lock().is_empty());
    assert_eq!(hub.channel_count(), 0);
}

/// Entries (live or retired, not yet swept) in `key`'s list.
fn entries(hub: &Hub, key: &ChannelKey) -> usize {
    hub.channels.get(key).map_or(0, |c| c.subs.lock().list.len())
}

#[tokio::test(start_paused = true)]
async fn ended_sessions_get_nothing_are_swept_and_the_last_one_dissolves_the_channel() {
    let (hub, broker) = hub();
    let outboxes: Vec<_> = (0..100).map(|_| Arc::new(Outbox::new(8))).collect();
    for o in &outboxes {
        hub.subscribe(&key(), o, None, None).await.unwrap();
    }
    hub.deliver(event());
    let (gone, live) = outboxes.split_at(60);
    for o in gone {
        hub.leave([key()], o);
        assert!(o.is_empty(), "a retired outbox keeps no frames");
    }
    // Swept once half the list was retired: far fewer than 100 entries remain.
    let left = entries(&hub, &key());
    assert!((40..=70).contains(&left), "{left} entries after 60 of 100 left");
    hub.deliver(event());
    assert!(live.iter().all(|o| o.len() == 2), "live sessions get every event");
    assert!(gone.iter().all(|o| o.is_empty()), "ended sessions get nothing");
    for o in live {
        hub.leave([key()], o);
    }
    assert_eq!(entries(&hub, &key()), 0, "the last leave sweeps everything");
    tokio::time::sleep(UNSUBSCRIBE_DELAY * 2).await;
    assert!(broker.desired.lock().is_empty());
    assert_eq!(hub.channel_count(), 0);
}

#[tokio::test]
async fn set_filter_replaces_only_that_sessions_filter() {
    let (hub, _) = hub();
    let (a, b) = (Arc::new(Outbox::new(8)), Arc::new(Outbox::new(8)));
    hub.subscribe(&key(), &a, None, None).await.unwrap();
    hub.subscribe(&key(), &b, None, None).await.unwrap();
    let only_x = Arc::new(EventFilter::parse(&["x".to_owned()]).unwrap());
    assert!(hub.set_filter(&key(), &a, Some(only_x)).is_some());
    hub.deliver(event()); // event "e"
    assert_eq!((a.len(), b.len()), (0, 1));
    assert!(hub.set_filter(&key(), &Arc::new(Outbox::new(8)), None).is_none(), "not a member");
    assert_eq!(entries(&hub, &key()), 2);
}

#[tokio::test]
async fn a_session_registering_after_its_keys_revocation_is_closed() {
    let (hub, _) = hub();
    let key_id = KeyId::generate();
    hub.close_revoked_key(&key_id);
    let outbox = Arc::new(Outbox::new(8));
    hub.register(ConnId::generate(), entry(key_id, TokenHash::of("s"), &outbox));
    assert_eq!(outbox.close_requested(), Some(CloseCode::KeyRevoked));
    let other = Arc::new(Outbox::new(8));
    hub.register(ConnId::generate(), entry(KeyId::generate(), TokenHash::of("t"), &other));
    assert_eq!(other.close_requested(), None);
    let retired = TokenHash::of("old");
    hub.close_retired_secret(&KeyId::generate(), &retired);
    let late = Arc::new(Outbox::new(8));
    hub.register(ConnId::generate(), entry(KeyId::generate(), retired, &late));
    assert_eq!(late.close_requested(), Some(CloseCode::KeyRevoked));
}

fn entry(key_id: KeyId, secret: TokenHash, outbox: &Arc<Outbox>) -> SessionEntry {
    SessionEntry {
        key_id,
        secret,
        outbox: outbox.clone(),
        client: None,
        limit: crate::scope::ScopeSet::ALL,
        grant: Grant { readable: TopicSet::default().with(Topic::Tasks), expires_at: None },
    }
}

#[tokio::test]
async fn regrant_nudges_only_changed_sessions_of_the_key_and_marks_it_updated() {
    let (hub, _) = hub();
    let (key, other_key) = (KeyId::generate(), KeyId::generate());
    let (a, b, other) =
        (Arc::new(Outbox::new(8)), Arc::new(Outbox::new(8)), Arc::new(Outbox::new(8)));
    let (ca, cb) = (ConnId::generate(), ConnId::generate());
    let before = std::time::Instant::now();
    hub.register(ca, entry(key.clone(), TokenHash::of("a"), &a));
    hub.register(cb, entry(key.clone(), TokenHash::of("b"), &b));
    hub.register(ConnId::generate(), entry(other_key.clone(), TokenHash::of("o"), &other));
    assert!(!hub.updated_since(&key, before));
    let narrower = Grant { readable: TopicSet::default().with(Topic::Agents), expires_at: None };
    let (closed, changed) = hub.regrant(Some(&key), |s| {
        if s.secret == TokenHash::of("a") {
            Verdict::Grant(narrower)
        } else {
            Verdict::Close
        }
    });
    assert_eq!((closed, changed), (1, 1));
    assert!(a.take_nudge() && !other.take_nudge());
    assert_eq!(hub.grant(ca), Some(narrower));
    assert_eq!(b.close_requested(), Some(CloseCode::KeyRevoked));
    assert!(hub.updated_since(&key, before) && !hub.updated_since(&other_key, before));
    // The same grant again changes nothing and wakes nobody.
    assert_eq!(hub.regrant(Some(&key), |_| Verdict::Grant(narrower)), (0, 0));
    assert!(!a.take_nudge());
}

fn event_at(offset: u64) -> Delivery {
    let event = codec::decode_at(
        Topic::Tasks,
        br#"{"event":"e"}"#,
        1024,
        std::time::Instant::now(),
        Some((offset, Arc::from("ep"))),
    )
    .unwrap();
    Delivery::Event { channel: key(), event }
}

#[tokio::test]
async fn a_session_resuming_from_ahead_of_this_node_gets_no_event_twice() {
    let (hub, broker) = hub();
    *broker.head.lock() = Some(Position::new(5, "ep"));
    let (behind, ahead) = (Arc::new(Outbox::new(16)), Arc::new(Outbox::new(16)));
    let p = hub.subscribe(&key(), &behind, None, None).await.unwrap();
    assert_eq!(p, Some(Position::new(5, "ep")));
    // It saw up to 8 on a node that was ahead; this node has delivered 5 so far.
    let p = hub.subscribe(&key(), &ahead, None, Some(Position::new(8, "ep"))).await.unwrap();
    assert_eq!(p, Some(Position::new(8, "ep")));
    for o in 6..=9 {
        hub.deliver(event_at(o));
    }
    assert_eq!((behind.len(), ahead.len()), (4, 1));
    // A position from another epoch is not "seen": everything is delivered.
    let other = Arc::new(Outbox::new(16));
    let p = hub.subscribe(&key(), &other, None, Some(Position::new(50, "old"))).await.unwrap();
    assert_eq!(p, Some(Position::new(9, "ep")));
    hub.deliver(event_at(10));
    assert_eq!(other.len(), 1);
}
