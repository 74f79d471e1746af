//! The history rules of SPEC §7 that every `Broker` keeps, run against the in-process broker
//! and the Redis broker (on a private redis-server) through the `Broker` trait only:
//! consecutive offsets under concurrent publishers, pages equal to the live frames, exact
//! trimming to `history_size`, expiry after `history_ttl`, and history off.

use std::{sync::Arc, time::Duration};

use miteos_stream::{
    broker::{Broker, BrokerError, Position},
    scope::Topic,
};

use crate::{
    broker_conformance::{channel, event, memory_broker, redis_broker, settings, Recorder},
    support::RedisServer,
};

/// Numbering and pages, with `history_size` 5.
async fn numbering_and_pages(broker: Arc<dyn Broker>, rec: Arc<Recorder>) {
    let tasks = channel("acct_h", Topic::Tasks);
    broker.subscribe(&tasks).await.expect("subscribe");
    let start = broker.head(&tasks).await.unwrap().expect("history is on");
    assert_eq!(start.offset, 0);
    assert_eq!(broker.head(&tasks).await.unwrap().as_ref(), Some(&start), "one epoch");

    // Four publishers at once: offsets 1..=40, each once, in the channel's one epoch.
    let workers = (0..4).map(|w| {
        let (broker, tasks) = (broker.clone(), tasks.clone());
        tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..10 {
                let name = format!("task.w{w}n{i}");
                let p = broker.publish(&tasks, event(&name)).await.expect("publish");
                got.push((p.expect("a position"), name));
            }
            got
        })
    });
    let mut published = Vec::new();
    for w in workers {
        published.extend(w.await.unwrap());
    }
    published.sort_by_key(|(p, _)| p.offset);
    let offsets: Vec<u64> = published.iter().map(|(p, _)| p.offset).collect();
    assert_eq!(offsets, (1..=40).collect::<Vec<_>>());
    assert!(published.iter().all(|(p, _)| p.epoch == start.epoch));

    // Delivered in offset order, each event carrying the offset its publisher was given.
    let live = rec.wait_events(&tasks, 40).await;
    let seen: Vec<(Option<u64>, &str)> = live.iter().map(|e| (e.offset, &*e.name)).collect();
    let want: Vec<(Option<u64>, &str)> =
        published.iter().map(|(p, n)| (Some(p.offset), n.as_str())).collect();
    assert_eq!(seen, want);
    assert!(live.iter().all(|e| e.epoch.as_deref() == Some(&*start.epoch)));

    // The newest page is the last `history_size` events, frame for frame as delivered live.
    let page = broker.history(&tasks, None, 100).await.unwrap().expect("history is on");
    assert_eq!(page.head, Position::new(40, start.epoch.clone()));
    assert_eq!(page.first, 36, "exactly history_size events are kept");
    let frames: Vec<&str> = page.events.iter().map(|e| e.frame.as_str()).collect();
    let live_frames: Vec<&str> = live[35..].iter().map(|e| e.frame.as_str()).collect();
    assert_eq!(frames, live_frames);
    assert!(page.covers(35) && !page.covers(34) && !page.has_more());

    let offsets = |page: &miteos_stream::broker::HistoryPage| -> Vec<u64> {
        page.events.iter().map(|e| e.offset.expect("offset")).collect()
    };
    let page = broker.history(&tasks, Some(37), 2).await.unwrap().unwrap();
    assert_eq!((offsets(&page), page.has_more()), (vec![38, 39], true));
    let page = broker.history(&tasks, Some(10), 100).await.unwrap().unwrap();
    assert_eq!(offsets(&page), vec![36, 37, 38, 39, 40], "from the oldest kept");
    assert!(!page.covers(10));
    assert_eq!(offsets(&broker.history(&tasks, None, 2).await.unwrap().unwrap()), vec![39, 40]);
    assert!(broker.history(&tasks, Some(40), 10).await.unwrap().unwrap().events.is_empty());
    assert!(broker.history(&tasks, None, 0).await.unwrap().unwrap().events.is_empty());

    // A refused message takes no offset; another channel counts on its own.
    let refused = broker.publish(&tasks, bytes::Bytes::from_static(b"{\"event\":7}")).await;
    assert!(matches!(refused, Err(BrokerError::InvalidEvent(_))), "{refused:?}");
    let next = broker.publish(&tasks, event("task.next")).await.unwrap().unwrap();
    assert_eq!(next, Position::new(41, start.epoch.clone()));
    let other = channel("acct_h", Topic::Agents);
    let first = broker.publish(&other, event("agent.one")).await.unwrap().unwrap();
    assert_eq!(first.offset, 1);
}

/// Polls `f` every 20 ms for up to 10 s until it returns `Some`.
async fn until<T, F: std::future::Future<Output = Option<T>>>(what: &str, f: impl Fn() -> F) -> T {
    for _ in 0..500 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Expiry, with `history_ttl` 2 s: an event older than the TTL leaves history; a channel
/// idle past it starts a new epoch at offset 1.
async fn expiry(broker: Arc<dyn Broker>) {
    let tasks = channel("acct_t", Topic::Tasks);
    let one = broker.publish(&tasks, event("task.one")).await.unwrap().unwrap();
    assert_eq!(one.offset, 1);
    // Time passing is what is under test: the second event is 1 s younger than the first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let two = broker.publish(&tasks, event("task.two")).await.unwrap().unwrap();
    assert_eq!(two, Position::new(2, one.epoch.clone()));
    let page = until("the first event to expire", || async {
        let page = broker.history(&tasks, None, 10).await.unwrap().unwrap();
        (page.first == 2).then_some(page)
    })
    .await;
    assert_eq!(page.head, two, "the channel and its epoch are still there");
    assert_eq!(page.events.iter().map(|e| e.offset).collect::<Vec<_>>(), [Some(2)]);
    assert!(!page.covers(0) && page.covers(1));

    let fresh = until("the idle channel to expire", || async {
        let head = broker.head(&tasks).await.unwrap().unwrap();
        (head.epoch != one.epoch).then_some(head)
    })
    .await;
    assert_eq!(fresh.offset, 0);
    let again = broker.publish(&tasks, event("task.again")).await.unwrap().unwrap();
    assert_eq!(again, Position::new(1, fresh.epoch));
}

/// History off: no positions, no pages, events without offsets.
async fn off(broker: Arc<dyn Broker>, rec: Arc<Recorder>) {
    let tasks = channel("acct_o", Topic::Tasks);
    broker.subscribe(&tasks).await.unwrap();
    assert_eq!(broker.publish(&tasks, event("task.x")).await.unwrap(), None);
    assert_eq!(broker.head(&tasks).await.unwrap(), None);
    assert!(broker.history(&tasks, None, 10).await.unwrap().is_none());
    let live = rec.wait_events(&tasks, 1).await;
    assert_eq!((live[0].offset, live[0].epoch.as_deref()), (None, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_broker_keeps_the_history_rules() {
    let (broker, rec) = memory_broker(5, Duration::from_secs(600));
    numbering_and_pages(broker, rec).await;
    expiry(memory_broker(5, Duration::from_secs(2)).0).await;
    let (broker, rec) = memory_broker(0, Duration::from_secs(600));
    off(broker, rec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_broker_keeps_the_history_rules() {
    // One Redis each: the function library carries one set of settings per Redis.
    let redis = RedisServer::start().await;
    let (broker, rec) = redis_broker(&redis, settings(5)).await;
    numbering_and_pages(broker, rec).await;
    let redis = RedisServer::start().await;
    let ttl = miteos_stream::broker::redis::Settings {
        history_ttl: Duration::from_secs(2),
        ..settings(5)
    };
    expiry(redis_broker(&redis, ttl).await.0).await;
    let redis = RedisServer::start().await;
    let (broker, rec) = redis_broker(&redis, settings(0)).await;
    off(broker, rec).await;
}
