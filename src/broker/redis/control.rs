//! The Redis broker's control connection: `mt:control` only, on a pub/sub connection of its
//! own with its own reader, so a flood on the event connection never delays a revocation.
//!
//! Confirmed publishes (key updates, SPEC §8): the publisher tags the message with an id and
//! waits until its own handler is done and as many acknowledgements came back as `PUBLISH`
//! counted receivers; each node acknowledges when its handler drops the message's `Done`
//! (after evicting the key from its cache and applying the re-read record to its streams). A receiver whose
//! subscription died silently never acknowledges, so the wait is bounded by `CONFIRM_WITHIN`:
//! by then that node has failed a health ping, reported `ControlLost`, and stopped trusting
//! its cache. Either way, when a confirmed publish returns, no node authenticates with what
//! it cached before the change.
//!
//! In a Redis Cluster it is plain pub/sub on the master that owns the slot of `mt:control`
//! (rare messages, so no hot spot; a cluster forwards them to every shard anyway), and
//! PUBLISH is routed to that master, so its receiver count still counts every node.
//!
//! May use: the parent module (its `Inner`, topology), broker (ControlMessage, Done), ids,
//! redis_link.
//! Never: carry events.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Weak,
    },
    time::Duration,
};

use futures::StreamExt;
use parking_lot::Mutex;
use redis::aio::PubSubSink;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{
    backoff, open,
    topology::{slot_of, SlotMap},
    unavailable, BrokerError, Delivery, Inner, COMMAND_TIMEOUT, CONTROL_CHANNEL,
};
use crate::{
    broker::{ControlMessage, Done},
    ids::random_base62,
};

/// How often the control connection is pinged: a silent failure is noticed within this
/// plus `COMMAND_TIMEOUT`.
const CONTROL_HEALTH_EVERY: Duration = Duration::from_secs(1);
/// The longest a confirmed publish waits for acknowledgements (see the module doc).
pub const CONFIRM_WITHIN: Duration =
    CONTROL_HEALTH_EVERY.saturating_add(COMMAND_TIMEOUT).saturating_add(Duration::from_millis(500));

/// A control message on the wire, tagged with its sender so a node skips its own; or an
/// acknowledgement of a confirmed one.
#[derive(Serialize, Deserialize)]
struct Envelope {
    node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    msg: Option<ControlMessage>,
    /// The publisher waits for every receiver to acknowledge this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    confirm: Option<String>,
    /// This envelope acknowledges the message with this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ack: Option<String>,
}

/// Confirmed publishes in flight on this node: id → acknowledgements seen.
#[derive(Default)]
pub(super) struct Acks {
    waiting: Mutex<HashMap<String, Arc<Waiter>>>,
}

#[derive(Default)]
struct Waiter {
    seen: AtomicUsize,
    notify: Notify,
}

/// The control connection: `mt:control` only, read and applied inline, reconnecting with
/// the same backoff. Every (re)connect is reported as `ControlGap` (messages may have been
/// missed before it), every loss as `ControlLost`.
pub(super) async fn supervise(weak: Weak<Inner>) {
    let mut failures = 0u32;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        match connect_control(&inner).await {
            Ok((mut sink, mut stream)) => {
                failures = 0;
                inner.readiness.set_control(true);
                inner.control_up.notify_waiters();
                inner.deliver(Delivery::ControlGap);
                let mut health = tokio::time::interval(CONTROL_HEALTH_EVERY);
                health.tick().await;
                loop {
                    tokio::select! {
                        msg = stream.next() => match msg {
                            Some(msg) => on_control(&inner, msg.get_payload_bytes()),
                            None => break,
                        },
                        _ = health.tick() => {
                            let pong = tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>()).await;
                            if !matches!(pong, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                inner.readiness.set_control(false);
                inner.deliver(Delivery::ControlLost);
                tracing::warn!("lost the redis control connection; reconnecting");
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(error = %e, "cannot reach redis for control messages; retrying");
                }
                failures = failures.saturating_add(1);
            }
        }
        drop(inner);
        tokio::time::sleep(backoff(failures)).await;
    }
}

async fn connect_control(
    inner: &Inner,
) -> Result<(PubSubSink, redis::aio::PubSubStream), BrokerError> {
    // In a cluster, on the master owning the control channel's slot: the one its PUBLISHes
    // are routed to, so their receiver count is every node (acknowledgements, above).
    let owner = if inner.link.is_cluster() {
        let map = SlotMap::fetch(&inner.link).await?;
        let owner = map.owner(slot_of(CONTROL_CHANNEL)).map(str::to_owned);
        Some(owner.ok_or_else(|| unavailable("no master serves the control channel"))?)
    } else {
        None
    };
    let (mut sink, stream) = open(inner, owner.as_deref()).await?;
    tokio::time::timeout(COMMAND_TIMEOUT, sink.subscribe(CONTROL_CHANNEL))
        .await
        .map_err(unavailable)?
        .map_err(unavailable)?;
    Ok((sink, stream))
}

/// A message of the control connection: applied (unless this node sent it: it applied it
/// when publishing), then acknowledged if its publisher waits; or an acknowledgement.
fn on_control(inner: &Inner, payload: &[u8]) {
    let env = match serde_json::from_slice::<Envelope>(payload) {
        Ok(env) => env,
        Err(e) => return tracing::warn!(error = %e, "ignoring a malformed control message"),
    };
    if let Some(id) = env.ack {
        if let Some(w) = inner.acks.waiting.lock().get(&id) {
            w.seen.fetch_add(1, Ordering::AcqRel);
            w.notify.notify_one();
        }
        return;
    }
    // Acknowledged when the handler is done with it (it may keep `Done` through a re-read).
    let done = match env.confirm {
        Some(id) => acknowledge(inner, id),
        None => Done::none(),
    };
    match env.msg {
        Some(msg) if env.node != inner.node => inner.deliver(Delivery::Confirm(msg, done)),
        // This node's own message was applied when it was published.
        _ => drop(done),
    }
}

/// A `Done` that publishes the acknowledgement of `id` when dropped.
fn acknowledge(inner: &Inner, id: String) -> Done {
    let ack = Envelope { node: inner.node.clone(), msg: None, confirm: None, ack: Some(id) };
    let link = inner.link.clone();
    Done::new(move || {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        rt.spawn(async move {
            let sent = tokio::time::timeout(COMMAND_TIMEOUT, async {
                let mut conn = link.conn().await.map_err(unavailable)?;
                send(&mut conn, &ack).await.map(|_| ())
            })
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                tracing::warn!("could not acknowledge a control message");
            }
        });
    })
}

/// PUBLISHes an envelope on `mt:control`; returns how many subscribers received it.
async fn send(conn: &mut crate::redis_link::Conn, env: &Envelope) -> Result<usize, BrokerError> {
    let payload = serde_json::to_vec(env).map_err(unavailable)?;
    let n: i64 = redis::cmd("PUBLISH")
        .arg(CONTROL_CHANNEL)
        .arg(payload)
        .query_async(conn)
        .await
        .map_err(unavailable)?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Applies `msg` on this node, then publishes it to the others; with `confirm`, waits for
/// their acknowledgements (bounded by `CONFIRM_WITHIN`).
pub(super) async fn publish(
    inner: &Inner,
    msg: &ControlMessage,
    confirm: bool,
) -> Result<(), BrokerError> {
    let mut env =
        Envelope { node: inner.node.clone(), msg: Some(msg.clone()), confirm: None, ack: None };
    if !confirm {
        // Apply here first, so this node acts even if Redis is down.
        inner.deliver(Delivery::Control(msg.clone()));
        let mut conn = inner.link.conn().await.map_err(unavailable)?;
        return send(&mut conn, &env).await.map(|_| ());
    }
    let (local_tx, local) = tokio::sync::oneshot::channel();
    inner.deliver(Delivery::Confirm(
        msg.clone(),
        Done::new(move || {
            let _ = local_tx.send(());
        }),
    ));
    // Acknowledgements come in on the control connection: give a starting one its chance.
    wait_control_up(inner).await;
    let id = random_base62(16);
    let waiter = Arc::new(Waiter::default());
    inner.acks.waiting.lock().insert(id.clone(), waiter.clone());
    env.confirm = Some(id.clone());
    let sent = async {
        let mut conn = inner.link.conn().await.map_err(unavailable)?;
        send(&mut conn, &env).await
    }
    .await;
    let receivers = match sent {
        Ok(n) => n,
        Err(e) => {
            inner.acks.waiting.lock().remove(&id);
            return Err(e);
        }
    };
    let all = async {
        let _ = local.await; // this node's handler, and every receiver's
        while waiter.seen.load(Ordering::Acquire) < receivers {
            waiter.notify.notified().await;
        }
    };
    let confirmed = tokio::time::timeout(CONFIRM_WITHIN, all).await.is_ok();
    inner.acks.waiting.lock().remove(&id);
    if !confirmed {
        let seen = waiter.seen.load(Ordering::Acquire);
        tracing::warn!(
            receivers,
            acknowledged = seen,
            "not every node acknowledged a key change in time; a silent one has stopped trusting its cache by now"
        );
    }
    Ok(())
}

/// Waits (at most `COMMAND_TIMEOUT`) until the control subscription is up.
async fn wait_control_up(inner: &Inner) {
    let _ = tokio::time::timeout(COMMAND_TIMEOUT, async {
        loop {
            let up = inner.control_up.notified();
            tokio::pin!(up);
            up.as_mut().enable();
            if inner.readiness.control() {
                return;
            }
            up.await;
        }
    })
    .await;
}
