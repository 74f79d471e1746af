//! `resume`: a resume storm (SPEC §7, issue 12). N clients connect and record the
//! `positions` of their `auth.success`, then disconnect; M events are published while they
//! are gone; then all N reconnect at once with `resume`. Meanwhile K observers stay connected
//! and a publisher keeps publishing live events. Reports the time from the start of the
//! reconnect until every client got `recovered: true`, its missed events with consecutive
//! offsets and a live event; the clients that did not (must be 0); server CPU during the
//! storm; and the observers' live latency during and after it. Client logic:
//! scenario/resume_clients.rs.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context};
use serde_json::{json, Value};
use tokio::sync::{Barrier, Notify};

use super::resume_clients::{self as rc, End, Observed, Resumed, Shared};
use crate::{
    opts::Resume,
    proc_stat,
    publish::{now_ns, Publisher},
    report::{latency, Report},
};

/// Server counters read before and after the storm (admin `/metrics`): the name in the
/// report and the metric line.
const COUNTERS: [(&str, &str); 10] = [
    ("resumes_recovered_total", "miteos_resumes_recovered_total "),
    ("resumes_unrecovered_total", "miteos_resumes_unrecovered_total "),
    ("resumes_failed_total", "miteos_resumes_failed_total "),
    ("slow_consumer_closes_total", "miteos_slow_consumer_closes_total "),
    ("gaps_repaired_total", "miteos_gaps_repaired_total "),
    ("gaps_unrepaired_total", "miteos_gaps_unrepaired_total "),
    ("broker_head_reads_total", "miteos_broker_reads_total{op=\"head\"} "),
    ("broker_head_reads_shared_total", "miteos_broker_reads_shared_total{op=\"head\"} "),
    ("broker_history_reads_total", "miteos_broker_reads_total{op=\"history\"} "),
    ("broker_history_reads_shared_total", "miteos_broker_reads_shared_total{op=\"history\"} "),
];

async fn counters(admin: std::net::SocketAddr) -> Vec<Option<f64>> {
    let mut out = Vec::new();
    for (_, line) in COUNTERS {
        out.push(super::server_metric(admin, line).await);
    }
    out
}

/// Publishes live events `seq = first..` at `rate`/s until `stop`, then one last event whose
/// `seq` it announces in `shared.last_seq` first. Returns how many it published.
async fn publish_live(
    mut p: Publisher,
    first: u64,
    rate: u64,
    pad: String,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
) -> anyhow::Result<u64> {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let started = Instant::now();
    let mut seq = first;
    loop {
        let last = stop.load(Ordering::Acquire);
        if last {
            shared.last_seq.store(seq, Ordering::Release);
        }
        let sent = tokio::time::timeout_at(shared.read_deadline.into(), p.publish(seq, &pad));
        sent.await.map_err(|_| anyhow!("live publish timed out"))??;
        seq += 1;
        if last {
            return Ok(seq - first);
        }
        tokio::time::sleep_until((started + interval * (seq - first) as u32).into()).await;
    }
}

/// Polls the server's open-connection gauge until it is `n` (the resumers' closes done).
async fn wait_connections(admin: std::net::SocketAddr, n: usize) -> Option<f64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let open = super::server_metric(admin, "miteos_connections_open ").await;
        if open.is_none_or(|v| v <= n as f64) || Instant::now() > deadline {
            return open;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn run(mut o: Resume) -> anyhow::Result<Report> {
    if o.clients == 0 {
        return Err(anyhow!("--clients must be at least 1"));
    }
    // Missed events must have offsets: in Redis mode publish through the history function.
    o.publisher.history = true;
    let pid = super::server_pid(&o.target)?;
    let admin = o.publisher.admin;
    let mut publisher = super::connect_publisher(&o.publisher).await?;
    let topic: Arc<str> = o.publisher.channel.as_str().into();
    let pad = "x".repeat(o.size.saturating_sub(200));

    let (observers, _) = super::ramp_replies(&o.target, 0, o.observers).await?;
    let (clients, ramp) = super::ramp_replies(&o.target, o.observers, o.clients).await?;
    let mut had = Vec::with_capacity(clients.len());
    let mut conns = Vec::with_capacity(clients.len());
    for (i, (c, reply)) in clients.into_iter().enumerate() {
        let p = rc::positions(&reply).with_context(|| format!("client {i}"))?;
        if !p.contains_key(&*topic) {
            return Err(anyhow!("client {i}: no position for {topic} in auth.success"));
        }
        had.push(p);
        conns.push(c);
    }
    let disconnect = Instant::now();
    for c in conns {
        c.close().await;
    }
    let open_before = wait_connections(admin, o.observers).await;
    let disconnect = disconnect.elapsed();

    // The events the clients miss.
    let mut offsets = Vec::with_capacity(o.missed as usize);
    for seq in 0..o.missed {
        let off = publisher.publish(seq, &pad).await?;
        offsets.push(off.ok_or_else(|| anyhow!("published event has no offset: history off?"))?);
    }
    if offsets.windows(2).any(|w| w[1] != w[0] + 1) {
        return Err(anyhow!("missed events got offsets {offsets:?}, not consecutive"));
    }

    let shared = Arc::new(Shared {
        first_live_seq: o.missed,
        last_seq: AtomicU64::new(u64::MAX),
        settled: AtomicUsize::new(0),
        notify: Notify::new(),
        storm_end_ns: AtomicU64::new(u64::MAX),
        read_deadline: Instant::now() + Duration::from_secs(o.timeout_secs + o.settle_secs + 30),
    });
    let watchers: Vec<_> = observers
        .into_iter()
        .enumerate()
        .map(|(i, (c, reply))| {
            let from = rc::positions(&reply)
                .with_context(|| format!("observer {i}"))?
                .get(&*topic)
                .map(|p| p.offset)
                .ok_or_else(|| anyhow!("observer {i}: no position for {topic}"))?;
            Ok(tokio::spawn(rc::observe(c, from, shared.clone())))
        })
        .collect::<anyhow::Result<_>>()?;
    let start = Arc::new(Barrier::new(had.len() + 1));
    let dial = o.target.dial();
    let resumers: Vec<_> = had
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let src = o.target.source(o.observers + i);
            let args = (dial.clone(), src, p, topic.clone(), start.clone(), shared.clone());
            tokio::spawn(rc::resume(args.0, args.1, args.2, args.3, args.4, args.5))
        })
        .collect();

    let before = counters(admin).await;
    let cpu_before = proc_stat::cpu_time(pid);
    start.wait().await;
    let began = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let live =
        tokio::spawn(publish_live(publisher, o.missed, o.rate, pad, stop.clone(), shared.clone()));
    let deadline = began + Duration::from_secs(o.timeout_secs);
    let n = resumers.len();
    let mut storm_timed_out = false;
    while shared.settled.load(Ordering::Acquire) < n {
        let woke = tokio::time::timeout_at(deadline.into(), shared.notify.notified()).await;
        if woke.is_err() {
            storm_timed_out = shared.settled.load(Ordering::Acquire) < n;
            break;
        }
    }
    let storm = began.elapsed();
    let cpu = match (cpu_before, proc_stat::cpu_time(pid)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
        _ => None,
    };
    shared.storm_end_ns.store(now_ns(), Ordering::Release);
    // A measurement period (observer latency after the storm), not a synchronisation.
    tokio::time::sleep(Duration::from_secs(o.settle_secs)).await;
    stop.store(true, Ordering::Release);
    let live_events = match live.await? {
        Ok(n) => n,
        Err(e) => {
            resumers.iter().for_each(|r| r.abort());
            watchers.iter().for_each(|w| w.abort());
            return Err(e);
        }
    };
    let mut resumed = Vec::with_capacity(n);
    for r in resumers {
        resumed.push(r.await?);
    }
    let mut observed = Vec::with_capacity(watchers.len());
    for w in watchers {
        observed.push(w.await?);
    }
    let after = counters(admin).await;
    let server: serde_json::Map<String, Value> = COUNTERS
        .iter()
        .zip(before.iter().zip(&after))
        .map(|((name, _), (b, a))| {
            let d = a.zip(*b).map(|(a, b)| a - b);
            ((*name).to_owned(), json!(d))
        })
        .collect();
    let o = Outcome { o: &o, ramp, disconnect, open_before, offsets: &offsets, began, storm };
    Ok(o.report(&resumed, &observed, storm_timed_out, cpu, live_events, Value::Object(server)))
}

/// What `run` measured, for the report.
struct Outcome<'a> {
    o: &'a Resume,
    ramp: Duration,
    disconnect: Duration,
    open_before: Option<f64>,
    offsets: &'a [u64],
    began: Instant,
    storm: Duration,
}

impl Outcome<'_> {
    fn report(
        &self,
        resumed: &[Resumed],
        observed: &[Observed],
        storm_timed_out: bool,
        cpu: Option<f64>,
        live_events: u64,
        server: Value,
    ) -> Report {
        let o = self.o;
        let count = |f: &dyn Fn(&Resumed) -> bool| resumed.iter().filter(|r| f(r)).count();
        let authed = count(&|r| r.authed.is_some());
        let not_recovered = count(&|r| r.authed.is_some() && r.not_recovered);
        let with_holes = count(&|r| r.order.holes > 0);
        let with_dups = count(&|r| r.order.duplicates > 0);
        let with_gaps = count(&|r| r.order.gaps > 0);
        let short =
            count(&|r| !r.not_recovered && r.authed.is_some() && r.missed < r.expected_missed);
        let live = count(&|r| r.live.is_some());
        let ok = count(&|r| {
            r.live.is_some()
                && !r.not_recovered
                && r.order.holes + r.order.duplicates + r.order.gaps == 0
                && r.missed == r.expected_missed
                && r.missed >= o.missed
        });
        let (min_missed, max_missed) = resumed
            .iter()
            .filter(|r| r.authed.is_some() && !r.not_recovered)
            .fold((u64::MAX, 0), |(lo, hi), r| {
                (lo.min(r.expected_missed), hi.max(r.expected_missed))
            });
        let lat = |f: &dyn Fn(&Resumed) -> Option<u32>| -> Vec<u32> {
            resumed.iter().filter_map(f).collect()
        };
        let auth_lat = latency(&lat(&|r| rc::micros(r.began, r.authed)));
        let caught_lat = latency(&lat(&|r| rc::micros(r.began, r.caught_up)));
        let live_lat = latency(&lat(&|r| rc::micros(r.began, r.live)));
        // When they failed, and when the unrecovered got their answer (timeouts show here).
        let failed_lat = latency(&lat(&|r| rc::micros(r.began, r.failed)));
        let unrecovered_lat =
            latency(&lat(&|r| rc::micros(r.began, r.authed.filter(|_| r.not_recovered))));
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        let all = ok == resumed.len();
        let all_live =
            secs(rc::last_after(self.began, resumed.iter().map(|r| r.live)).filter(|_| all));
        let all_caught =
            secs(rc::last_after(self.began, resumed.iter().map(|r| r.caught_up)).filter(|_| all));
        let last_live = secs(rc::last_after(self.began, resumed.iter().map(|r| r.live)));
        let all_authed = secs(rc::last_after(self.began, resumed.iter().map(|r| r.authed)));
        let ends =
            |e: fn(&End) -> bool| resumed.iter().filter(|r| r.end.as_ref().is_some_and(e)).count();
        let closed_after = ends(|e| matches!(e, End::Closed(_) | End::Lost));
        let closed_after_codes = codes(resumed.iter().filter_map(|r| match r.end {
            Some(End::Closed(c)) => Some(c),
            _ => None,
        }));
        let timed_out = ends(|e| *e == End::TimedOut);
        let failed = json!({
            "refused": count(&|r| r.refused),
            "closed": count(&|r| r.closed.is_some()),
            "close_codes": codes(resumed.iter().filter_map(|r| r.closed)),
            "io": count(&|r| r.io),
            "bad_reply": count(&|r| r.bad_reply.is_some()),
        });
        let obs_sum = |f: fn(&Observed) -> u64| observed.iter().map(f).sum::<u64>();
        let storm_us: Vec<u32> = observed.iter().flat_map(|w| w.storm_us.iter().copied()).collect();
        let after_us: Vec<u32> = observed.iter().flat_map(|w| w.after_us.iter().copied()).collect();
        let (obs_storm, obs_after) = (latency(&storm_us), latency(&after_us));
        let obs_incomplete = observed.iter().filter(|w| w.end != Some(End::Done)).count();
        let mut lines = vec![
            format!("{} clients ramped in {:.1} s, disconnected in {:.1} s; {} events missed (offsets {}..={})", o.clients, self.ramp.as_secs_f64(), self.disconnect.as_secs_f64(), o.missed, self.offsets.first().unwrap_or(&0), self.offsets.last().unwrap_or(&0)),
            format!("reconnect: {authed} authenticated (last after {}), {ok} recovered everything in order and went live; all live after {} s", fmt(all_authed), fmt(all_live)),
            format!("not recovered {not_recovered}, with holes {with_holes}, with duplicates {with_dups}, with gaps {with_gaps}, missed events short {short}, timed out {timed_out}, failed {failed}"),
            format!("per client from reconnect: auth p50 {} µs p99 {} µs; caught up p50 {} µs p99 {} µs; live p99 {} µs", auth_lat["p50_us"], auth_lat["p99_us"], caught_lat["p50_us"], caught_lat["p99_us"], live_lat["p99_us"]),
            format!("{} observers: latency during the storm p50 {} µs p99 {} µs ({} samples), after p50 {} µs p99 {} µs; holes {}, duplicates {}", observed.len(), obs_storm["p50_us"], obs_storm["p99_us"], obs_storm["samples"], obs_after["p50_us"], obs_after["p99_us"], obs_sum(|w| w.order.holes), obs_sum(|w| w.order.duplicates)),
        ];
        let d = |k: &str| server[k].as_f64().map_or("-".into(), |v| v.to_string());
        lines.push(format!(
            "server: resumes recovered {}, unrecovered {}, failed {}; broker reads head {} (+{} shared), history {} (+{} shared)",
            d("resumes_recovered_total"), d("resumes_unrecovered_total"), d("resumes_failed_total"),
            d("broker_head_reads_total"), d("broker_head_reads_shared_total"),
            d("broker_history_reads_total"), d("broker_history_reads_shared_total"),
        ));
        if let Some(c) = cpu {
            lines.push(format!(
                "server CPU {c:.2} s during the {:.2} s storm",
                self.storm.as_secs_f64()
            ));
        }
        Report {
            scenario: "resume",
            params: json!({"clients": o.clients, "missed": o.missed, "observers": o.observers, "rate": o.rate, "settle_secs": o.settle_secs, "size": o.size, "redis": o.publisher.redis_url.is_some()}),
            results: json!({
                "authenticated": authed,
                "resumed_ok": ok,
                "live": live,
                "not_recovered": not_recovered,
                "clients_with_holes": with_holes,
                "clients_with_duplicates": with_dups,
                "clients_with_gaps": with_gaps,
                "clients_missing_missed": short,
                "holes": resumed.iter().map(|r| r.order.holes).sum::<u64>(),
                "duplicates": resumed.iter().map(|r| r.order.duplicates).sum::<u64>(),
                "failed": failed,
                "closed_after_auth": closed_after,
                "closed_after_auth_codes": closed_after_codes,
                "timed_out": timed_out,
                "storm_timed_out": storm_timed_out,
                "missed_per_client": {"min": min_missed.min(max_missed), "max": max_missed},
                "missed_offsets": [self.offsets.first(), self.offsets.last()],
                "all_authed_secs": all_authed,
                "all_caught_up_secs": all_caught,
                "all_live_secs": all_live,
                "last_live_secs": last_live,
                "storm_secs": self.storm.as_secs_f64(),
                "auth_latency": auth_lat,
                "caught_up_latency": caught_lat,
                "live_latency": live_lat,
                "failed_latency": failed_lat,
                "not_recovered_auth_latency": unrecovered_lat,
                "server_cpu_secs": cpu,
                "server": server,
                "server_connections_before": self.open_before,
                "observers": {
                    "count": observed.len(),
                    "events": obs_sum(|w| w.events),
                    "holes": obs_sum(|w| w.order.holes),
                    "duplicates": obs_sum(|w| w.order.duplicates),
                    "gaps": obs_sum(|w| w.order.gaps),
                    "incomplete": obs_incomplete,
                    "latency_storm": obs_storm,
                    "latency_after": obs_after,
                },
                "live_events": live_events,
                "ramp_secs": self.ramp.as_secs_f64(),
                "disconnect_secs": self.disconnect.as_secs_f64(),
            }),
            lines,
        }
    }
}

/// How often each close code occurs: `{"4009": 3, …}`.
fn codes(codes: impl Iterator<Item = u16>) -> Value {
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    for c in codes {
        *counts.entry(c.to_string()).or_default() += 1;
    }
    json!(counts)
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{s:.3}"))
}
