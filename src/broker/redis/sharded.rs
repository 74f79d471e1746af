//! The Redis Cluster side of the broker: sharded pub/sub. Each desired channel is
//! SSUBSCRIBEd on the master that owns its slot, over one `ShardLink` per master the node
//! needs (none to a master without local subscribers: a link with no channel left is
//! closed). When a link is lost (a master died, a failover) or the server drops a channel
//! (its slot migrated), the manager reads the slot map again, places those channels on their
//! new owners, and reports a `Gap` so the Hub repairs what was missed from history (SPEC §7,
//! §9). The node is not ready while channels wait to be placed (`readiness` says for which
//! slots).
//!
//! May use: the parent module (its `Inner`, `Queued`), topology, shard, redis_link.
//! Never: SUBSCRIBE (plain pub/sub is broadcast to every shard of a cluster).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Weak,
    },
};

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{
    shard::{LinkEvent, ShardLink},
    topology::{slot_of, SlotMap},
    unavailable, BrokerError, Inner, Queued,
};

/// How often a subscribe retries after a MOVED or a lost link before it fails.
const ATTEMPTS: usize = 3;
/// How long the manager waits between attempts to place channels again.
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

pub(super) struct Shards {
    map: Mutex<SlotMap>,
    /// The live link to each master the node uses, by `host:port`.
    links: Mutex<HashMap<String, Arc<ShardLink>>>,
    /// Where each subscribed channel is subscribed (`host:port`).
    placed: Mutex<HashMap<String, String>>,
    events: mpsc::UnboundedSender<LinkEvent>,
    next_id: AtomicU64,
}

impl Shards {
    /// The manager and the receiver of its links' events (for `supervise`).
    pub fn new() -> (Self, mpsc::UnboundedReceiver<LinkEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        let me = Self {
            map: Mutex::new(SlotMap::default()),
            links: Mutex::new(HashMap::new()),
            placed: Mutex::new(HashMap::new()),
            events,
            next_id: AtomicU64::new(1),
        };
        (me, rx)
    }

    /// Subscribes `channel` on the master owning its slot, following one MOVED or a lost
    /// link by reading the slot map again.
    pub async fn subscribe(&self, inner: &Arc<Inner>, channel: &str) -> Result<(), BrokerError> {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 || !self.map.lock().is_complete() {
                self.refresh(inner).await?;
            }
            let link = self.link_for(inner, channel)?;
            match link.subscribe(channel).await {
                Ok(()) => {
                    self.placed.lock().insert(channel.to_owned(), link.addr.clone());
                    return Ok(());
                }
                Err(e) => last = e,
            }
        }
        Err(BrokerError::Unavailable(last))
    }

    pub async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let Some(addr) = self.placed.lock().remove(channel) else { return Ok(()) };
        let link = self.links.lock().get(&addr).cloned();
        let Some(link) = link else { return Ok(()) };
        let result = link.unsubscribe(channel).await.map_err(BrokerError::Unavailable);
        // A master with no local subscriber left needs no connection. (Never both locks at
        // once: `orphans` takes them in the other order.)
        let unused = !self.placed.lock().values().any(|a| *a == addr);
        if unused {
            let mut links = self.links.lock();
            if links.get(&addr).is_some_and(|l| l.id == link.id) {
                links.remove(&addr);
            }
        }
        result
    }

    /// Reads the slot map (through the cluster command connection).
    async fn refresh(&self, inner: &Inner) -> Result<(), BrokerError> {
        *self.map.lock() = SlotMap::fetch(&inner.link).await?;
        Ok(())
    }

    /// The link to the master owning `channel`'s slot (connecting one if needed).
    fn link_for(&self, inner: &Arc<Inner>, channel: &str) -> Result<Arc<ShardLink>, BrokerError> {
        let addr = self.map.lock().owner(slot_of(channel)).map(str::to_owned);
        let addr = addr.ok_or_else(|| {
            BrokerError::Unavailable(format!("no master serves the slot of {channel}"))
        })?;
        let mut links = self.links.lock();
        if let Some(l) = links.get(&addr) {
            return Ok(l.clone());
        }
        let client = inner.link.client_for(Some(&addr)).map_err(unavailable)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let link = Arc::new(ShardLink::spawn(
            addr.clone(),
            id,
            client,
            Arc::downgrade(inner),
            self.events.clone(),
        ));
        links.insert(addr, link.clone());
        Ok(link)
    }

    /// Why `event` makes the node unready, for `/readyz`: the slots, never the address.
    fn why(&self, event: &LinkEvent) -> String {
        match event {
            LinkEvent::Lost(addr, _) => match self.map.lock().slots_of(addr) {
                slots if slots.is_empty() => "re-placing channels of a lost shard".to_owned(),
                slots => format!("cannot reach the shard serving slots {slots}"),
            },
            LinkEvent::Moved(channel) => {
                format!("slot {} moved; subscribing it on its new master", slot_of(channel))
            }
        }
    }

    /// Channels that lost their subscription: on a lost link, those placed on it.
    fn orphans(&self, event: &LinkEvent) -> Vec<String> {
        match event {
            LinkEvent::Lost(addr, id) => {
                {
                    let mut links = self.links.lock();
                    if links.get(addr).is_some_and(|l| l.id == *id) {
                        links.remove(addr);
                    }
                }
                let mut placed = self.placed.lock();
                let lost: Vec<String> =
                    placed.iter().filter(|(_, a)| *a == addr).map(|(c, _)| c.clone()).collect();
                for c in &lost {
                    placed.remove(c);
                }
                lost
            }
            LinkEvent::Moved(channel) => {
                self.placed.lock().remove(channel);
                vec![channel.clone()]
            }
        }
    }
}

/// Reads the slot map until it answers (the node is ready then), then places again every
/// channel whose link was lost or whose slot moved, until the broker is dropped.
pub(super) async fn supervise(weak: Weak<Inner>, mut events: mpsc::UnboundedReceiver<LinkEvent>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let Some(shards) = inner.shards.as_ref() else { return };
        let why = match shards.refresh(&inner).await {
            Err(_) => "cannot read the redis cluster's slot map",
            Ok(()) if !shards.map.lock().is_complete() => "the redis cluster has unserved slots",
            Ok(()) => match super::load_library(&inner).await {
                Ok(()) => {
                    inner.readiness.events_up();
                    tracing::info!("connected to the redis cluster");
                    break;
                }
                Err(_) => "cannot load the function library on the redis cluster",
            },
        };
        inner.readiness.events_down(why.to_owned());
        drop(inner);
        tokio::time::sleep(RETRY_EVERY).await;
    }
    while let Some(event) = events.recv().await {
        let Some(inner) = weak.upgrade() else { return };
        let Some(shards) = inner.shards.as_ref() else { return };
        let mut why = vec![shards.why(&event)];
        let mut waiting = shards.orphans(&event);
        // More losses at once (a master died with many channels): take them all now.
        while let Ok(more) = events.try_recv() {
            why.push(shards.why(&more));
            waiting.extend(shards.orphans(&more));
        }
        waiting.retain(|c| inner.desired.lock().contains(c));
        if waiting.is_empty() {
            continue;
        }
        tracing::warn!(channels = waiting.len(), ?event, "re-placing shard subscriptions");
        why.sort();
        why.dedup();
        inner.readiness.events_down(why.join("; "));
        while !waiting.is_empty() {
            let mut failed = Vec::new();
            for channel in waiting {
                if !inner.desired.lock().contains(&channel) {
                    continue;
                }
                if shards.subscribe(&inner, &channel).await.is_err() {
                    failed.push(channel);
                } else if !inner.desired.lock().contains(&channel) {
                    // Its last subscriber left meanwhile: leave nothing behind on the shard.
                    let _ = shards.unsubscribe(&channel).await;
                }
            }
            waiting = failed;
            if !waiting.is_empty() {
                tokio::time::sleep(RETRY_EVERY).await;
            }
        }
        // A promoted replica or a restarted master may lack the function library.
        while super::load_library(&inner).await.is_err() {
            tokio::time::sleep(RETRY_EVERY).await;
        }
        inner.readiness.events_up();
        tracing::info!("shard subscriptions placed again; repairing the gap from history");
        let _ = inner.queue.send(Queued::Gap);
    }
}
