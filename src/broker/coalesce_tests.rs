//! `Coalesce` against a fake broker that counts its reads and answers them only when the
//! test opens its gate.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::{sync::Semaphore, task::JoinHandle};

use super::*;
use crate::{
    broker::{codec::Event, HistoryPage},
    ids::AccountId,
    scope::{Environment, Topic},
};

/// A read the fake received: `("head"|"history", channel's topic, after, limit)`.
type Seen = (&'static str, Topic, Option<u64>, usize);

/// History of offsets 1..=`head` in epoch "e"; each read waits for a permit of `gate`.
struct Fake {
    reads: parking_lot::Mutex<Vec<Seen>>,
    started: AtomicUsize,
    gate: Semaphore,
    head: AtomicUsize,
    fail: AtomicBool,
    panic: AtomicBool,
}

impl Fake {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            reads: Default::default(),
            started: AtomicUsize::new(0),
            gate: Semaphore::new(0),
            head: AtomicUsize::new(10),
            fail: AtomicBool::new(false),
            panic: AtomicBool::new(false),
        })
    }

    async fn enter(&self, seen: Seen) -> Result<u64, BrokerError> {
        self.reads.lock().push(seen);
        self.started.fetch_add(1, Ordering::SeqCst);
        self.gate.acquire().await.expect("gate open").forget();
        assert!(!self.panic.load(Ordering::SeqCst), "fake: panics");
        if self.fail.load(Ordering::SeqCst) {
            return Err(BrokerError::Unavailable("fake: down".into()));
        }
        Ok(self.head.load(Ordering::SeqCst) as u64)
    }

    fn reads(&self) -> Vec<Seen> {
        self.reads.lock().clone()
    }
}

fn event(offset: u64) -> Arc<Event> {
    Arc::new(Event {
        name: "e".into(),
        frame: "{}".into(),
        offset: Some(offset),
        epoch: Some("e".into()),
        received: std::time::Instant::now(),
    })
}

#[async_trait::async_trait]
impl Broker for Fake {
    async fn subscribe(&self, _: &ChannelKey) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn unsubscribe(&self, _: &ChannelKey) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn publish(&self, _: &ChannelKey, _: Bytes) -> Result<Option<Position>, BrokerError> {
        Ok(None)
    }
    async fn head(&self, ch: &ChannelKey) -> Result<Option<Position>, BrokerError> {
        let head = self.enter(("head", ch.topic, None, 0)).await?;
        Ok(Some(Position::new(head, "e")))
    }
    async fn history(
        &self,
        ch: &ChannelKey,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Option<HistoryPage>, BrokerError> {
        let head = self.enter(("history", ch.topic, after, limit)).await?;
        let from = after.map_or(head.saturating_sub(limit as u64) + 1, |a| a + 1);
        let events = (from..=head).take(limit).map(event).collect();
        Ok(Some(HistoryPage { events, head: Position::new(head, "e"), first: 1 }))
    }
    async fn publish_control(&self, _: &ControlMessage) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn publish_control_confirmed(&self, _: &ControlMessage) -> Result<(), BrokerError> {
        Ok(())
    }
    fn confirm_within(&self) -> std::time::Duration {
        std::time::Duration::from_millis(1234)
    }
    async fn ping(&self) -> Result<(), BrokerError> {
        Ok(())
    }
    fn ready(&self) -> bool {
        false
    }
}

fn key(topic: Topic) -> ChannelKey {
    ChannelKey::new(Environment::Live, AccountId::parse("a").unwrap(), topic)
}

fn setup() -> (Arc<Coalesce>, Arc<Fake>, ReadCounters, ReadCounters) {
    let fake = Fake::new();
    let (head, history) = (ReadCounters::default(), ReadCounters::default());
    let c = Coalesce::new(fake.clone(), head.clone(), history.clone());
    (Arc::new(c), fake, head, history)
}

fn heads(c: &Arc<Coalesce>, n: usize, topic: Topic) -> Vec<JoinHandle<Read<Option<Position>>>> {
    (0..n)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.head(&key(topic)).await })
        })
        .collect()
}

fn page(
    c: &Arc<Coalesce>,
    topic: Topic,
    after: Option<u64>,
    limit: usize,
) -> JoinHandle<Read<Option<HistoryPage>>> {
    let c = c.clone();
    tokio::spawn(async move { c.history(&key(topic), after, limit).await })
}

/// Lets the spawned callers and reads run until `n` reads reached the fake.
async fn until_started(fake: &Fake, n: usize) {
    while fake.started.load(Ordering::SeqCst) < n {
        tokio::task::yield_now().await;
    }
    for _ in 0..10 {
        tokio::task::yield_now().await; // and let every other caller queue up
    }
}

fn offsets(p: &HistoryPage) -> Vec<u64> {
    p.events.iter().filter_map(|e| e.offset).collect()
}

#[tokio::test]
async fn concurrent_identical_reads_send_one_and_share_its_answer() {
    let (c, fake, head, history) = setup();
    let waiting = heads(&c, 50, Topic::Tasks);
    let pages: Vec<_> = (0..50).map(|_| page(&c, Topic::Tasks, Some(4), 3)).collect();
    until_started(&fake, 2).await;
    fake.gate.add_permits(2);
    for w in waiting {
        assert_eq!(w.await.unwrap().unwrap(), Some(Position::new(10, "e")));
    }
    for p in pages {
        assert_eq!(offsets(&p.await.unwrap().unwrap().unwrap()), [5, 6, 7]);
    }
    assert_eq!(
        fake.reads(),
        [("head", Topic::Tasks, None, 0), ("history", Topic::Tasks, Some(4), 3)]
    );
    assert_eq!((head.sent.get(), head.shared.get()), (1, 49));
    assert_eq!((history.sent.get(), history.shared.get()), (1, 49));
    assert_eq!((c.heads.keys(), c.pages.keys()), (0, 0), "finished reads leave no entry");
}

#[tokio::test]
async fn a_caller_never_gets_a_read_sent_before_its_call_began() {
    let (c, fake, head, _) = setup();
    let first = heads(&c, 1, Topic::Tasks);
    until_started(&fake, 1).await;
    // Published meanwhile: callers from now on must see it.
    fake.head.store(11, Ordering::SeqCst);
    let later = heads(&c, 20, Topic::Tasks);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(fake.reads().len(), 1, "the next read waits for the one in flight");
    fake.gate.add_permits(2);
    for w in first {
        assert!(w.await.unwrap().unwrap().is_some());
    }
    for w in later {
        assert_eq!(w.await.unwrap().unwrap(), Some(Position::new(11, "e")));
    }
    assert_eq!((head.sent.get(), head.shared.get()), (2, 19));
}

#[tokio::test]
async fn different_arguments_are_separate_reads() {
    let (c, fake, head, history) = setup();
    let mut waiting = heads(&c, 3, Topic::Tasks);
    waiting.extend(heads(&c, 3, Topic::Agents));
    let pages = [
        page(&c, Topic::Tasks, Some(4), 3),
        page(&c, Topic::Tasks, Some(5), 3),
        page(&c, Topic::Agents, Some(4), 3),
        page(&c, Topic::Tasks, None, 2),
        page(&c, Topic::Tasks, None, 3),
    ];
    until_started(&fake, 7).await;
    fake.gate.add_permits(7);
    for w in waiting {
        w.await.unwrap().unwrap();
    }
    let got: Vec<Vec<u64>> = futures::future::join_all(pages)
        .await
        .into_iter()
        .map(|p| offsets(&p.unwrap().unwrap().unwrap()))
        .collect();
    assert_eq!(got, [vec![5, 6, 7], vec![6, 7, 8], vec![5, 6, 7], vec![9, 10], vec![8, 9, 10]]);
    assert_eq!((head.sent.get(), head.shared.get()), (2, 4));
    assert_eq!((history.sent.get(), history.shared.get()), (5, 0));
}

#[tokio::test]
async fn reads_after_the_same_offset_share_the_largest_limit_each_cut_to_its_own() {
    let (c, fake, _, history) = setup();
    let pages = [page(&c, Topic::Tasks, Some(2), 2), page(&c, Topic::Tasks, Some(2), 5)];
    until_started(&fake, 1).await;
    fake.gate.add_permits(1);
    let [a, b] = pages;
    assert_eq!(offsets(&a.await.unwrap().unwrap().unwrap()), [3, 4]);
    let b = b.await.unwrap().unwrap().unwrap();
    assert_eq!(offsets(&b), [3, 4, 5, 6, 7]);
    assert_eq!((b.head.offset, b.first), (10, 1));
    assert_eq!(fake.reads(), [("history", Topic::Tasks, Some(2), 5)]);
    assert_eq!(history.sent.get(), 1);
}

#[tokio::test]
async fn an_error_answers_every_caller_of_that_read_and_the_next_call_reads_again() {
    let (c, fake, head, _) = setup();
    fake.fail.store(true, Ordering::SeqCst);
    let waiting = heads(&c, 10, Topic::Tasks);
    until_started(&fake, 1).await;
    fake.gate.add_permits(1);
    for w in waiting {
        assert!(matches!(w.await.unwrap(), Err(BrokerError::Unavailable(_))));
    }
    fake.fail.store(false, Ordering::SeqCst);
    fake.gate.add_permits(1);
    assert_eq!(c.head(&key(Topic::Tasks)).await.unwrap(), Some(Position::new(10, "e")));
    assert_eq!((head.sent.get(), head.shared.get()), (2, 9));
}

#[tokio::test]
async fn a_caller_that_goes_away_does_not_cancel_the_read_of_the_others() {
    let (c, fake, head, _) = setup();
    let mut waiting = heads(&c, 3, Topic::Tasks);
    until_started(&fake, 1).await;
    waiting.remove(0).abort();
    fake.gate.add_permits(1);
    for w in waiting {
        assert_eq!(w.await.unwrap().unwrap(), Some(Position::new(10, "e")));
    }
    assert_eq!(head.sent.get(), 1);
}

#[tokio::test]
async fn everything_else_passes_through() {
    let (c, fake, _, _) = setup();
    assert!(!c.ready());
    assert_eq!(c.confirm_within(), std::time::Duration::from_millis(1234));
    c.subscribe(&key(Topic::Tasks)).await.unwrap();
    assert!(fake.reads().is_empty());
}

#[tokio::test]
async fn a_read_that_panics_answers_its_callers_and_the_pending_ones_with_an_error() {
    let (c, fake, _, _) = setup();
    fake.panic.store(true, Ordering::SeqCst);
    let first = heads(&c, 2, Topic::Tasks);
    until_started(&fake, 1).await;
    let pending = heads(&c, 2, Topic::Tasks);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    fake.gate.add_permits(1);
    for w in first.into_iter().chain(pending) {
        assert!(matches!(w.await.unwrap(), Err(BrokerError::Unavailable(_))));
    }
    assert_eq!(c.heads.keys(), 0, "no entry is left behind");
    fake.panic.store(false, Ordering::SeqCst);
    fake.gate.add_permits(1);
    assert_eq!(c.head(&key(Topic::Tasks)).await.unwrap(), Some(Position::new(10, "e")));
}
