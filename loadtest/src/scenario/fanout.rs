//! `fanout` and `slow`: N subscribers on one topic and one publisher.
//!
//! Every event carries its sequence number and send time; each reader checks order, counts
//! deliveries and records latency. `step` publishes the next event only after every reader
//! got the previous one; `burst` keeps at most `window` events in flight. In `slow`, some
//! subscribers never read after authenticating: they must be cut off with 4009 while the
//! readers see no loss.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::anyhow;
use serde_json::json;
use tokio::sync::Notify;

use crate::{
    client::{close_code, connect_authed_with, field, Conn, OP_CLOSE, OP_PING, OP_TEXT},
    opts::{Fanout, Mode},
    proc_stat,
    publish::now_ns,
    report::{latency, Report},
};

/// Shared progress between readers and the publisher.
struct Progress {
    delivered: AtomicU64,
    /// The publisher wakes when `delivered` reaches this.
    target: AtomicU64,
    notify: Notify,
}

/// What one reader saw.
#[derive(Default)]
struct Seen {
    received: u64,
    out_of_order: u64,
    closed_with: Option<u16>,
    latencies_us: Vec<u32>,
}

async fn read(mut c: Conn, events: u64, progress: Arc<Progress>) -> Seen {
    let mut seen = Seen { latencies_us: Vec::with_capacity(events as usize), ..Seen::default() };
    let mut next = 0u64;
    while seen.received < events {
        let Ok((op, payload)) = c.next().await else { break };
        match op {
            OP_TEXT => {
                let (Some(seq), Some(t)) = (field(payload, b"\"seq\":"), field(payload, b"\"t\":"))
                else {
                    continue;
                };
                let lat = now_ns().saturating_sub(t) / 1000;
                seen.latencies_us.push(lat.min(u64::from(u32::MAX)) as u32);
                if seq != next {
                    seen.out_of_order += 1;
                }
                next = seq + 1;
                seen.received += 1;
                let d = progress.delivered.fetch_add(1, Ordering::AcqRel) + 1;
                if d >= progress.target.load(Ordering::Acquire) {
                    progress.notify.notify_one();
                }
            }
            OP_PING => {
                let p = payload.to_vec();
                let _ = c.pong(p).await;
            }
            OP_CLOSE => {
                seen.closed_with = Some(close_code(payload));
                break;
            }
            _ => {}
        }
    }
    seen
}

/// How a stalled client found its connection when it read again.
enum Stalled {
    /// It got the close frame with this code.
    Closed(u16),
    /// The server had dropped the connection: it resumed after `close_timeout`.
    Dropped,
    /// Still open after 30 s of reading: it was never cut off.
    Open,
}

/// After the run, a stalled client drains what it was sent until the close.
async fn drain_until_close(mut c: Conn) -> Stalled {
    let work = async {
        loop {
            match c.next().await {
                Ok((OP_CLOSE, payload)) => return Stalled::Closed(close_code(payload)),
                Ok(_) => {}
                Err(_) => return Stalled::Dropped,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), work).await.unwrap_or(Stalled::Open)
}

pub async fn run(o: Fanout, slow: usize, slow_rcvbuf: u32) -> anyhow::Result<Report> {
    if slow >= o.clients {
        return Err(anyhow!("--slow must be smaller than --clients"));
    }
    let pid = super::server_pid(&o.target)?;
    let mut publisher =
        if o.listen_only { None } else { Some(super::connect_publisher(&o.publisher).await?) };
    let mut stalled = Vec::with_capacity(slow);
    let dial = o.target.dial();
    for i in 0..slow {
        let rcvbuf = (slow_rcvbuf > 0).then_some(slow_rcvbuf);
        let c = connect_authed_with(&dial, o.target.source(i), rcvbuf)
            .await
            .map_err(|e| anyhow!("stalled client {i}: {e:?}"))?;
        stalled.push(c);
    }
    let (conns, ramp) = super::ramp(&o.target, o.clients - slow).await?;
    if o.listen_only {
        eprintln!("ramped");
    }
    let readers_n = conns.len() as u64;
    let progress = Arc::new(Progress {
        delivered: AtomicU64::new(0),
        target: AtomicU64::new(u64::MAX),
        notify: Notify::new(),
    });
    let readers: Vec<_> =
        conns.into_iter().map(|c| tokio::spawn(read(c, o.events, progress.clone()))).collect();

    // The client frame around `data` is ~170 bytes; pad the rest.
    let pad = "x".repeat(o.size.saturating_sub(200));
    let deadline = Instant::now() + Duration::from_secs(o.timeout_secs);
    let cpu_before = proc_stat::cpu_time(pid);
    let started = Instant::now();
    let interval = (o.rate > 0).then(|| Duration::from_secs_f64(1.0 / o.rate as f64));
    let mut timed_out = false;
    for seq in 0..o.events {
        let Some(publisher) = publisher.as_mut() else { break };
        let wait_for = match o.mode {
            Mode::Step => seq * readers_n,
            Mode::Burst => seq.saturating_sub(o.window) * readers_n,
        };
        if !wait_until(&progress, wait_for, deadline).await {
            timed_out = true;
            break;
        }
        // Bounded too: a server that stops answering ends the run as timed out.
        match tokio::time::timeout_at(deadline.into(), publisher.publish(seq, &pad)).await {
            Ok(published) => {
                published?;
            }
            Err(_) => {
                timed_out = true;
                break;
            }
        }
        if let Some(i) = interval {
            tokio::time::sleep_until((started + i * (seq as u32 + 1)).into()).await;
        }
    }
    let total = o.events * readers_n;
    timed_out |= !wait_until(&progress, total, deadline).await;
    let elapsed = started.elapsed();
    let cpu = match (cpu_before, proc_stat::cpu_time(pid)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    for r in &readers {
        if timed_out {
            r.abort();
        }
    }
    let mut latencies = Vec::new();
    let (mut received, mut disorder, mut closed) = (0u64, 0u64, 0u64);
    for r in readers {
        if let Ok(seen) = r.await {
            received += seen.received;
            disorder += seen.out_of_order;
            closed += u64::from(seen.closed_with.is_some());
            latencies.extend(seen.latencies_us);
        }
    }
    let (mut cut_4009, mut dropped, mut still_open) = (0u64, 0u64, 0u64);
    for c in stalled {
        match drain_until_close(c).await {
            Stalled::Closed(4009) => cut_4009 += 1,
            Stalled::Closed(_) | Stalled::Open => still_open += 1,
            Stalled::Dropped => dropped += 1,
        }
    }
    let server_slow_closes =
        super::server_metric(o.publisher.admin, "miteos_slow_consumer_closes_total ").await;
    let rate = received as f64 / elapsed.as_secs_f64();
    let cpu_per_million = cpu.map(|c| c.as_secs_f64() / (received as f64 / 1e6));
    let lat = latency(&latencies);
    let mut lines = vec![
        format!("{readers_n} readers ({slow} stalled) connected in {:.1} s; {} events of {} bytes, {:?} mode", ramp.as_secs_f64(), o.events, o.size, o.mode),
        format!("{received} of {total} deliveries in {:.2} s: {:.0} deliveries/s, loss {}, out of order {disorder}", elapsed.as_secs_f64(), rate, total - received.min(total)),
        format!("latency p50 {} µs, p90 {} µs, p99 {} µs, max {} µs", lat["p50_us"], lat["p90_us"], lat["p99_us"], lat["max_us"]),
    ];
    if let Some(c) = cpu_per_million {
        lines.push(format!("server CPU {c:.2} s per million deliveries"));
    }
    if slow > 0 {
        lines.push(format!(
            "{slow} stalled clients: {cut_4009} read a 4009 close, {dropped} found the connection dropped (resumed after close_timeout), {still_open} never cut off; server counted {} slow-consumer closes",
            server_slow_closes.map_or("?".into(), |v| v.to_string())
        ));
    }
    Ok(Report {
        scenario: if slow > 0 { "slow" } else { "fanout" },
        params: json!({"clients": o.clients, "slow": slow, "slow_rcvbuf": slow_rcvbuf, "events": o.events, "size": o.size, "mode": o.mode, "window": o.window, "rate": o.rate, "redis": o.publisher.redis_url.is_some(), "listen_only": o.listen_only}),
        results: json!({
            "deliveries": received,
            "expected": total,
            "loss": total - received.min(total),
            "out_of_order": disorder,
            "readers_closed": closed,
            "timed_out": timed_out,
            "elapsed_secs": elapsed.as_secs_f64(),
            "deliveries_per_sec": rate.round(),
            "latency": lat,
            "server_cpu_secs_per_million": cpu_per_million,
                        "stalled_closed_4009": cut_4009,
            "stalled_dropped": dropped,
            "stalled_never_cut": still_open,
            "server_slow_consumer_closes": server_slow_closes,
            "ramp_secs": ramp.as_secs_f64(),
        }),
        lines,
    })
}

/// Waits until `delivered >= n` (or the deadline passes; then returns false).
async fn wait_until(p: &Progress, n: u64, deadline: Instant) -> bool {
    p.target.store(n, Ordering::Release);
    loop {
        if p.delivered.load(Ordering::Acquire) >= n {
            return true;
        }
        let woke = tokio::time::timeout_at(deadline.into(), p.notify.notified()).await;
        if woke.is_err() {
            return p.delivered.load(Ordering::Acquire) >= n;
        }
    }
}
