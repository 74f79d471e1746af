//! The `Broker` conformance suite: one set of rules, run against the in-process broker and
//! the Redis broker (on a private redis-server), through the `Broker` and `Deliver` traits
//! only — no Hub, no sockets.

use std::{
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use bytes::Bytes;
use miteos_stream::{
    broker::{
        memory::MemoryBroker,
        redis::{RedisBroker, Settings},
        Broker, ChannelKey, ControlMessage, Deliver, Delivery, Event,
    },
    ids::{AccountId, KeyId},
    redis_link::RedisLink,
    scope::{Environment, Topic},
};

use crate::support::RedisServer;

/// A handler that records what the broker hands over (and keeps the events themselves).
#[derive(Default)]
pub struct Recorder {
    seen: Mutex<Vec<String>>,
    events: Mutex<Vec<(ChannelKey, Arc<Event>)>>,
    /// How long a confirmed control message's `Done` is held (work after the message).
    hold: Duration,
}

impl Deliver for Recorder {
    fn deliver(&self, d: Delivery) {
        let line = match d {
            Delivery::Event { channel, event } => {
                let line = format!("event {channel} {}", event.name);
                self.events.lock().unwrap().push((channel, event));
                line
            }
            Delivery::Malformed { channel, .. } => format!("malformed {channel}"),
            Delivery::Control(ControlMessage::Revoke { key_id }) => format!("revoke {key_id}"),
            Delivery::Control(other) => format!("control {other:?}"),
            Delivery::Confirm(msg, done) => {
                let hold = self.hold;
                tokio::spawn(async move {
                    tokio::time::sleep(hold).await;
                    drop(done);
                });
                format!("confirmed {msg:?}")
            }
            Delivery::Gap => "gap".into(),
            Delivery::Overflow => "overflow".into(),
            // The control link's state (reported at every connect), not a message.
            Delivery::ControlGap | Delivery::ControlLost => return,
        };
        self.seen.lock().unwrap().push(line);
    }
}

impl Recorder {
    pub fn lines(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// The events delivered for `channel`, in delivery order.
    pub fn events(&self, channel: &ChannelKey) -> Vec<Arc<Event>> {
        let all = self.events.lock().unwrap();
        all.iter().filter(|(c, _)| c == channel).map(|(_, e)| e.clone()).collect()
    }

    /// Waits (bounded) until `n` events of `channel` were delivered; returns them.
    pub async fn wait_events(&self, channel: &ChannelKey, n: usize) -> Vec<Arc<Event>> {
        for _ in 0..1000 {
            let got = self.events(channel);
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {n} events of {channel}; got {}", self.events(channel).len());
    }

    /// Waits (bounded) until `pred` holds for what was delivered.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
        for _ in 0..500 {
            let lines = self.lines();
            if pred(&lines) {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}; delivered: {:?}", self.lines());
    }
}

/// A Redis broker's settings as tests use them (`history_size` 0: history off).
pub fn settings(history_size: usize) -> Settings {
    Settings {
        max_event_bytes: 64 * 1024,
        max_queued_bytes: 1 << 20,
        history_size,
        history_ttl: Duration::from_secs(600),
        install_library: true,
    }
}

/// An in-process broker with these history settings, and its recorder.
pub fn memory_broker(size: usize, ttl: Duration) -> (Arc<MemoryBroker>, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let handler: Weak<dyn Deliver> = Arc::downgrade(&(rec.clone() as Arc<dyn Deliver>));
    (Arc::new(MemoryBroker::new(handler, 64 * 1024, size, ttl)), rec)
}

/// A Redis broker on `redis`, connected (ready), and its recorder.
pub async fn redis_broker(
    redis: &RedisServer,
    settings: Settings,
) -> (Arc<RedisBroker>, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let handler: Weak<dyn Deliver> = Arc::downgrade(&(rec.clone() as Arc<dyn Deliver>));
    let link = Arc::new(RedisLink::new(&redis.url()).expect("url"));
    let broker = Arc::new(RedisBroker::start(link, handler, settings));
    for _ in 0..500 {
        if broker.ready() {
            return (broker, rec);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the redis broker never became ready");
}

pub fn channel(account: &str, topic: Topic) -> ChannelKey {
    ChannelKey::new(Environment::Live, AccountId::parse(account).unwrap(), topic)
}

pub fn event(name: &str) -> Bytes {
    Bytes::from(format!("{{\"event\":\"{name}\",\"data\":{{}}}}"))
}

/// Every rule a `Broker` must keep. `remote` is true for a broker whose subscriptions decide
/// what reaches this node (Redis); the in-process broker delivers every publish.
async fn conformance(broker: Arc<dyn Broker>, rec: Arc<Recorder>, remote: bool) {
    broker.ping().await.expect("ping");
    assert!(broker.ready());
    let tasks = channel("acct_a", Topic::Tasks);
    broker.subscribe(&tasks).await.expect("subscribe");
    broker.subscribe(&tasks).await.expect("subscribe is idempotent");

    // Events of a subscribed channel arrive once each, in publish order.
    for i in 0..50 {
        broker.publish(&tasks, event(&format!("task.n{i}"))).await.expect("publish");
    }
    let lines = rec.wait_for("50 events", |l| l.len() >= 50).await;
    let want: Vec<String> =
        (0..50).map(|i| format!("event mt:live:acct_a:tasks task.n{i}")).collect();
    assert_eq!(lines, want);

    // A malformed producer message reaches the handler as Malformed, never as an event.
    let _ = broker.publish(&tasks, Bytes::from_static(b"{not json")).await;
    rec.wait_for("a malformed message", |l| l.iter().any(|x| x.starts_with("malformed"))).await;

    // A control message reaches this node's handler.
    let key_id = KeyId::generate();
    broker.publish_control(&ControlMessage::Revoke { key_id: key_id.clone() }).await.unwrap();
    let want = format!("revoke {key_id}");
    rec.wait_for("the revocation", |l| l.contains(&want)).await;

    if remote {
        // After unsubscribing, the channel's events no longer reach this node; a channel
        // never subscribed never did.
        broker.unsubscribe(&tasks).await.expect("unsubscribe");
        broker.unsubscribe(&tasks).await.expect("unsubscribe is idempotent");
        let before = rec.lines().len();
        broker.publish(&tasks, event("task.after")).await.expect("publish");
        broker.publish(&channel("acct_b", Topic::Agents), event("agent.x")).await.unwrap();
        // A marker on a subscribed channel: once it is in, the two above had their chance.
        let marker = channel("acct_c", Topic::Billing);
        broker.subscribe(&marker).await.unwrap();
        broker.publish(&marker, event("billing.marker")).await.unwrap();
        let lines = rec.wait_for("the marker", |l| l.iter().any(|x| x.contains("marker"))).await;
        assert_eq!(lines[before..], ["event mt:live:acct_c:billing billing.marker".to_owned()]);
    }
}

#[tokio::test]
async fn the_memory_broker_keeps_the_broker_rules() {
    for size in [1000, 0] {
        let (broker, rec) = memory_broker(size, Duration::from_secs(600));
        conformance(broker, rec, false).await;
    }
}

#[tokio::test]
async fn the_redis_broker_keeps_the_broker_rules() {
    // With history on (publishing through the function) and off (plain PUBLISH).
    for size in [1000, 0] {
        let redis = RedisServer::start().await;
        let (broker, rec) = redis_broker(&redis, settings(size)).await;
        conformance(broker, rec, true).await;
    }
}

/// The Hub builds its broker inside `Arc::new_cyclic`: the handler cannot be upgraded yet
/// when the supervisor tasks first run. They must connect anyway (they used to quit, leaving
/// a node that never became ready now and then under load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_broker_connects_even_if_its_handler_is_not_built_yet() {
    let redis = RedisServer::start().await;
    let link = Arc::new(RedisLink::new(&redis.url()).unwrap());
    let mut broker = None;
    let handler = Arc::new_cyclic(|me: &Weak<Recorder>| {
        let weak: Weak<dyn Deliver> = me.clone();
        let b = RedisBroker::start(link, weak, settings(1000));
        // Give the supervisors every chance to run before the handler exists.
        std::thread::sleep(Duration::from_millis(200));
        broker = Some(b);
        Recorder::default()
    });
    let broker = broker.expect("built");
    let mut ready = false;
    for _ in 0..1000 {
        if broker.ready() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ready, "the broker never connected");
    drop(handler);
}

/// A confirmed control message returns only once every node's handler let go of it: the
/// publisher's own, and another node's holding it 300 ms.
#[tokio::test]
async fn a_confirmed_control_message_waits_for_every_handler() {
    let held = Duration::from_millis(300);
    let msg = ControlMessage::Update { key_id: KeyId::generate() };
    let want = format!("confirmed {msg:?}");

    let rec = Arc::new(Recorder { hold: held, ..Recorder::default() });
    let handler: Weak<dyn Deliver> = Arc::downgrade(&(rec.clone() as Arc<dyn Deliver>));
    let memory = MemoryBroker::new(handler, 1024, 0, Duration::from_secs(60));
    let started = std::time::Instant::now();
    memory.publish_control_confirmed(&msg).await.unwrap();
    assert!(started.elapsed() >= held, "returned before the handler was done");
    assert_eq!(rec.lines(), std::slice::from_ref(&want));

    let redis = RedisServer::start().await;
    let node = |hold| {
        let rec = Arc::new(Recorder { hold, ..Recorder::default() });
        let handler: Weak<dyn Deliver> = Arc::downgrade(&(rec.clone() as Arc<dyn Deliver>));
        let link = Arc::new(RedisLink::new(&redis.url()).unwrap());
        (RedisBroker::start(link, handler, settings(0)), rec)
    };
    let ((a, on_a), (b, on_b)) = (node(Duration::ZERO), node(held));
    for _ in 0..500 {
        if a.ready() && b.ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(a.ready() && b.ready());
    let started = std::time::Instant::now();
    a.publish_control_confirmed(&msg).await.unwrap();
    let took = started.elapsed();
    assert_eq!(on_b.lines(), std::slice::from_ref(&want), "the other node handled it first");
    assert_eq!(on_a.lines(), [want], "applied on the publishing node once");
    assert!(took >= held, "returned {took:?} after publishing, before B's handler was done");
    assert!(took < miteos_stream::broker::redis::CONFIRM_WITHIN, "{took:?}: waited for nobody");
}
