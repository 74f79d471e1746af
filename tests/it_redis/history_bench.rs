//! Figures for BENCHMARKS.md, not a pass/fail test (ignored by default): Redis CPU per
//! published event with the history function against a plain PUBLISH, and the memory of a
//! channel's history. Run with
//! `cargo test --test it_redis -- --ignored --nocapture redis_cost_of_history`.

use std::time::Duration;

use futures::StreamExt;
use miteos_stream::broker::{
    redis::{history_keys, library},
    ChannelKey,
};

use crate::support::RedisServer;

const N: usize = 20_000;

/// A 200-byte producer message (`full`: with `id` and `created_at`, as the admin endpoint
/// and the CLI send it; else the function fills them).
fn event(seq: usize, full: bool) -> String {
    let head = if full {
        format!(r#""id":"evt_{seq:024}","created_at":"2026-12-02T18:00:00.000Z","#)
    } else {
        String::new()
    };
    let bare = format!(r#"{{"event":"bench.tick",{head}"data":{{"seq":{seq},"pad":""}}}}"#);
    let pad = "x".repeat(200usize.saturating_sub(bare.len()));
    format!(r#"{{"event":"bench.tick",{head}"data":{{"seq":{seq},"pad":"{pad}"}}}}"#)
}

fn stat(info: &str, prefix: &str, field: &str) -> f64 {
    info.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|rest| {
            rest.split([',', ':']).find_map(|kv| kv.strip_prefix(&format!("{field}=")))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn cpu(info: &str) -> f64 {
    ["used_cpu_sys:", "used_cpu_user:"]
        .iter()
        .filter_map(|k| info.lines().find_map(|l| l.strip_prefix(k)))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

/// Runs `N` commands built by `cmd`, `batch` at a time (1: one after another, as a producer
/// awaiting each answer does; more: pipelined), returning (commandstats usec per call of
/// `stat_name`, Redis CPU µs per command from INFO cpu).
async fn measure(
    conn: &mut redis::aio::MultiplexedConnection,
    stat_name: &str,
    batch: usize,
    cmd: impl Fn(usize) -> redis::Cmd,
) -> (f64, f64) {
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(conn).await.unwrap();
    let before: String = redis::cmd("INFO").arg("cpu").query_async(conn).await.unwrap();
    for start in (0..N).step_by(batch) {
        let mut pipe = redis::pipe();
        for i in start..(start + batch).min(N) {
            pipe.add_command(cmd(i));
        }
        let _: redis::Value = pipe.query_async(conn).await.unwrap();
    }
    let after: String = redis::cmd("INFO").arg("cpu").query_async(conn).await.unwrap();
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await.unwrap();
    let per_call = stat(&stats, &format!("cmdstat_{stat_name}:"), "usec_per_call");
    (per_call, (cpu(&after) - cpu(&before)) * 1e6 / N as f64)
}

fn fcall_on(keys: &[String; 2], payload: String) -> redis::Cmd {
    let mut c = redis::cmd("FCALL");
    c.arg("mt_publish").arg(2).arg(&keys[..]).arg(payload);
    c
}

#[tokio::test]
#[ignore = "a benchmark: run by hand for BENCHMARKS.md"]
async fn redis_cost_of_history() {
    let redis = RedisServer::start().await;
    let mut conn = redis.conn().await;
    let src = library(1000, Duration::from_secs(600), 64 * 1024, false);
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(src)
        .query_async(&mut conn)
        .await
        .unwrap();
    let ch = ChannelKey::parse("mt:live:acct_bench:tasks").unwrap();
    let keys = history_keys(&ch);
    // One subscribed node, reading everything (as in production).
    let mut sub = redis::Client::open(redis.url()).unwrap().get_async_pubsub().await.unwrap();
    sub.subscribe(ch.name()).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut n = 0usize;
        let mut s = sub.on_message();
        while s.next().await.is_some() {
            n += 1;
        }
        n
    });

    println!("{N} events of {} B, one subscriber:", event(0, true).len());
    for batch in [1, 100] {
        let publish = measure(&mut conn, "publish", batch, |i| {
            let mut c = redis::cmd("PUBLISH");
            c.arg(ch.name()).arg(event(i, true));
            c
        })
        .await;
        let full = measure(&mut conn, "fcall", batch, |i| fcall_on(&keys, event(i, true))).await;
        let bare = measure(&mut conn, "fcall", batch, |i| fcall_on(&keys, event(i, false))).await;
        let how = if batch == 1 { "one at a time" } else { "pipelined by 100" };
        for (what, (per_call, cpu)) in [
            ("PUBLISH", publish),
            ("FCALL mt_publish (with id, created_at)", full),
            ("FCALL mt_publish (bare: filled in)", bare),
        ] {
            println!(
                "  {how:17} {what:40} {per_call:6.2} µs/call (commandstats) {cpu:6.2} µs CPU/event (INFO cpu)"
            );
        }
    }

    // The history of one channel: 1000 events of 200 B (as sent by the producer).
    let ch = ChannelKey::parse("mt:live:acct_mem:tasks").unwrap();
    let keys = history_keys(&ch);
    for i in 0..1000 {
        let _: redis::Value = fcall_on(&keys, event(i, true)).query_async(&mut conn).await.unwrap();
    }
    let len: u64 = redis::cmd("XLEN").arg(&keys[0]).query_async(&mut conn).await.unwrap();
    let usage = |k: &str| {
        let mut c = redis::cmd("MEMORY");
        c.arg("USAGE").arg(k).arg("SAMPLES").arg(0);
        c
    };
    let stream: u64 = usage(&keys[0]).query_async(&mut conn).await.unwrap();
    let meta: u64 = usage(&keys[1]).query_async(&mut conn).await.unwrap();
    let stored: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
        .arg(&keys[0])
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    println!(
        "history of one channel: {len} events ({} B stored each), MEMORY USAGE {} SAMPLES 0 = \
         {stream} B ({:.0} B/event), meta hash {meta} B",
        stored[0].1[0].1.len(),
        keys[0],
        stream as f64 / len as f64
    );
    drop(redis);
    let _ = reader.await;
}
