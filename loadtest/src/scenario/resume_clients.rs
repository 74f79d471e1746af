//! The two kinds of client of `resume` (scenario/resume.rs): a *resumer* reconnects with
//! the positions it had and checks that the missed events arrive exactly once, in order,
//! before the live ones; an *observer* stays connected throughout, checks the same order
//! and measures live delivery latency. Both read until the publisher's last event.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::anyhow;
use serde_json::Value;
use tokio::sync::{Barrier, Notify};

use crate::{
    client::{close_code, connect_authed_reply, field, AuthError, Conn, Dial, OP_CLOSE, OP_PING},
    publish::now_ns,
};

/// What the scenario's tasks share.
pub struct Shared {
    /// Events with a lower `seq` are the missed ones; from here on they are live.
    pub first_live_seq: u64,
    /// `seq` of the publisher's last event: readers stop once they saw it (MAX until then).
    pub last_seq: AtomicU64,
    /// Resumers that are done with the storm: live, or failed.
    pub settled: AtomicUsize,
    pub notify: Notify,
    /// Send times (ns) from here on count as "after the storm" for observer latency.
    pub storm_end_ns: AtomicU64,
    /// Readers give up at this time.
    pub read_deadline: Instant,
}

impl Shared {
    fn settle(&self) {
        self.settled.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_one();
    }
}

/// A channel's entry in `positions`.
#[derive(Debug, Clone)]
pub struct Pos {
    pub offset: u64,
    pub epoch: String,
    pub recovered: Option<bool>,
}

/// `positions` of an `auth.success` payload.
pub fn positions(reply: &[u8]) -> anyhow::Result<BTreeMap<String, Pos>> {
    let v: Value = serde_json::from_slice(reply)?;
    let Some(map) = v["positions"].as_object() else {
        return Err(anyhow!("auth.success without positions (history off?)"));
    };
    map.iter()
        .map(|(ch, p)| {
            let offset = p["offset"].as_u64().ok_or_else(|| anyhow!("{ch}: no offset"))?;
            let epoch = p["epoch"].as_str().ok_or_else(|| anyhow!("{ch}: no epoch"))?;
            let pos = Pos { offset, epoch: epoch.to_owned(), recovered: p["recovered"].as_bool() };
            Ok((ch.clone(), pos))
        })
        .collect()
}

/// The `"resume":{…}` field of an auth message, from the positions a client had.
pub fn resume_field(had: &BTreeMap<String, Pos>) -> String {
    let map: serde_json::Map<String, Value> = had
        .iter()
        .map(|(ch, p)| (ch.clone(), serde_json::json!({"offset": p.offset, "epoch": p.epoch})))
        .collect();
    format!("\"resume\":{}", Value::Object(map))
}

/// Offsets as they arrive: the next one expected, and what broke the sequence.
#[derive(Default, Debug, Clone, Copy)]
pub struct Order {
    pub next: u64,
    /// Offsets skipped over.
    pub holes: u64,
    /// Events at or below an offset already seen.
    pub duplicates: u64,
    /// `gap` messages.
    pub gaps: u64,
}

impl Order {
    /// Records `offset`; true when it was the next one.
    fn see(&mut self, offset: u64) -> bool {
        if offset == self.next {
            self.next += 1;
            return true;
        }
        if offset < self.next {
            self.duplicates += 1;
        } else {
            self.holes += offset - self.next;
            self.next = offset + 1;
        }
        false
    }
}

/// How a reader's loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// It saw the publisher's last event.
    Done,
    Closed(u16),
    /// The connection failed or dropped.
    Lost,
    TimedOut,
}

/// One event frame's fields.
struct Ev {
    offset: Option<u64>,
    seq: Option<u64>,
    t: Option<u64>,
}

/// Reads frames until the publisher's last event (or a close, an error, the deadline),
/// answering pings and handing each event to `on`. Returns how it ended and how many `gap`
/// messages came.
async fn read_events(c: &mut Conn, shared: &Shared, mut on: impl FnMut(Ev)) -> (End, u64) {
    let mut gaps = 0;
    loop {
        let next = tokio::time::timeout_at(shared.read_deadline.into(), c.next()).await;
        let (op, payload) = match next {
            Err(_) => return (End::TimedOut, gaps),
            Ok(Err(_)) => return (End::Lost, gaps),
            Ok(Ok(frame)) => frame,
        };
        let is = |what: &[u8]| memchr::memmem::find(payload, what).is_some();
        match op {
            OP_PING => {
                let p = payload.to_vec();
                if c.pong(p).await.is_err() {
                    return (End::Lost, gaps);
                }
            }
            OP_CLOSE => return (End::Closed(close_code(payload)), gaps),
            _ if is(b"\"type\":\"gap\"") => gaps += 1,
            _ if is(b"\"type\":\"event\"") => {
                let seq = field(payload, b"\"seq\":");
                let offset = field(payload, b"\"offset\":");
                on(Ev { offset, seq, t: field(payload, b"\"t\":") });
                if seq.is_some_and(|s| s >= shared.last_seq.load(Ordering::Acquire)) {
                    return (End::Done, gaps);
                }
            }
            _ => {}
        }
    }
}

/// What an observer saw.
#[derive(Default)]
pub struct Observed {
    pub order: Order,
    pub events: u64,
    pub end: Option<End>,
    /// Live delivery latency (µs) of events sent before / after every resumer was live.
    pub storm_us: Vec<u32>,
    pub after_us: Vec<u32>,
}

/// Follows the channel from offset `from` (its position in `auth.success`).
pub async fn observe(mut c: Conn, from: u64, shared: Arc<Shared>) -> Observed {
    let mut order = Order { next: from + 1, ..Order::default() };
    let (mut storm, mut after, mut events) = (Vec::new(), Vec::new(), 0u64);
    let (end, gaps) = read_events(&mut c, &shared, |ev| {
        events += 1;
        if let Some(o) = ev.offset {
            order.see(o);
        }
        let (Some(seq), Some(t)) = (ev.seq, ev.t) else { return };
        if seq < shared.first_live_seq {
            return;
        }
        let us = (now_ns().saturating_sub(t) / 1000).min(u64::from(u32::MAX)) as u32;
        if t < shared.storm_end_ns.load(Ordering::Acquire) {
            storm.push(us);
        } else {
            after.push(us);
        }
    })
    .await;
    c.close().await;
    order.gaps = gaps;
    Observed { order, events, end: Some(end), storm_us: storm, after_us: after }
}

/// How a resumer's reconnect went.
#[derive(Debug, Default)]
pub struct Resumed {
    /// The handshake failed: refused, closed before `auth.success`, or I/O (timeouts too).
    pub refused: bool,
    /// The close code, when the server closed the socket before `auth.success`.
    pub closed: Option<u16>,
    pub io: bool,
    /// `auth.success` is not what a resume answers (no positions): the reason.
    pub bad_reply: Option<String>,
    /// Some resumed channel answered `recovered: false` (or nothing).
    pub not_recovered: bool,
    pub order: Order,
    /// Missed events received, and how many the reply's position implied.
    pub missed: u64,
    pub expected_missed: u64,
    /// When the reconnect began (after the barrier), `auth.success` came, the last missed
    /// event came, and the first live event came.
    pub began: Option<Instant>,
    pub authed: Option<Instant>,
    pub caught_up: Option<Instant>,
    pub live: Option<Instant>,
    /// When the handshake failed.
    pub failed: Option<Instant>,
    pub end: Option<End>,
}

/// Reconnects (once `start` opens) with `resume` from `had`, then follows `topic`.
pub async fn resume(
    dial: Dial,
    src: IpAddr,
    had: BTreeMap<String, Pos>,
    topic: Arc<str>,
    start: Arc<Barrier>,
    shared: Arc<Shared>,
) -> Resumed {
    let extra = resume_field(&had);
    start.wait().await;
    let mut r = Resumed { began: Some(Instant::now()), ..Resumed::default() };
    let (mut c, reply) = match connect_authed_reply(&dial, src, Some(&extra)).await {
        Ok(ok) => ok,
        Err(e) => {
            r.failed = Some(Instant::now());
            match e {
                AuthError::Refused(_) => r.refused = true,
                AuthError::Closed(code) => r.closed = Some(code),
                AuthError::Io(_) => r.io = true,
            }
            shared.settle();
            return r;
        }
    };
    r.authed = Some(Instant::now());
    let got = match positions(&reply) {
        Ok(p) => p,
        Err(e) => {
            r.bad_reply = Some(e.to_string());
            shared.settle();
            c.close().await;
            return r;
        }
    };
    r.not_recovered = had.keys().any(|ch| got.get(ch).and_then(|p| p.recovered) != Some(true));
    let (Some(from), Some(head)) = (had.get(&*topic), got.get(&*topic)) else {
        r.bad_reply = Some(format!("no position for {topic}"));
        shared.settle();
        c.close().await;
        return r;
    };
    let (from, head) = (from.offset, head.offset);
    let mut settled = false;
    if r.not_recovered {
        // Nothing missed follows: the stream goes on after the reply's position.
        r.order.next = head + 1;
        settled = true;
        shared.settle();
    } else {
        r.order.next = from + 1;
        r.expected_missed = head.saturating_sub(from);
        if head <= from {
            r.caught_up = r.authed;
        }
    }
    let mut order = r.order;
    let (mut missed, mut caught_up, mut live) = (0u64, r.caught_up, None);
    let (end, gaps) = read_events(&mut c, &shared, |ev| {
        let Some(o) = ev.offset else { return };
        if order.see(o) && o <= head {
            missed += 1;
        }
        if o == head && caught_up.is_none() {
            caught_up = Some(Instant::now());
        }
        if o > head && live.is_none() {
            live = Some(Instant::now());
            if !settled {
                settled = true;
                shared.settle();
            }
        }
    })
    .await;
    if !settled {
        shared.settle();
    }
    c.close().await;
    order.gaps = gaps;
    r.order = order;
    (r.missed, r.caught_up, r.live, r.end) = (missed, caught_up, live, Some(end));
    r
}

/// Microseconds from `from` to `to`, for the latency histograms.
pub fn micros(from: Option<Instant>, to: Option<Instant>) -> Option<u32> {
    let d = to?.saturating_duration_since(from?);
    Some(d.as_micros().min(u128::from(u32::MAX)) as u32)
}

/// The latest of `times`, as a duration after `began`.
pub fn last_after(
    began: Instant,
    times: impl Iterator<Item = Option<Instant>>,
) -> Option<Duration> {
    times.flatten().max().map(|t| t.saturating_duration_since(began))
}
