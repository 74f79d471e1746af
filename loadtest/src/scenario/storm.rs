//! `storm`: N clients connect and authenticate at the same moment.

use std::time::Instant;

use serde_json::json;

use crate::{
    client::{self, AuthError},
    opts::Storm,
    report::{latency, Report},
};

pub async fn run(o: Storm) -> anyhow::Result<Report> {
    let start = tokio::sync::Barrier::new(o.clients + 1);
    let start = std::sync::Arc::new(start);
    let mut tasks = Vec::with_capacity(o.clients);
    let dial = o.target.dial();
    for i in 0..o.clients {
        let (dial, src, start) = (dial.clone(), o.target.source(i), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let t0 = Instant::now();
            let r = client::connect_authed(&dial, src).await;
            (r, t0.elapsed())
        }));
    }
    start.wait().await;
    let began = Instant::now();
    let (mut ok, mut refused, mut closed, mut io) = (0u64, 0u64, 0u64, 0u64);
    let mut times = Vec::with_capacity(o.clients);
    let mut conns = Vec::with_capacity(o.clients);
    for t in tasks {
        let (r, took) = t.await?;
        match r {
            Ok(c) => {
                ok += 1;
                times.push(took.as_micros().min(u32::MAX as u128) as u32);
                conns.push(c);
            }
            Err(AuthError::Refused(_)) => refused += 1,
            Err(AuthError::Closed(_)) => closed += 1,
            Err(AuthError::Io(_)) => io += 1,
        }
    }
    let elapsed = began.elapsed();
    let rate = ok as f64 / elapsed.as_secs_f64();
    for c in conns {
        c.close().await;
    }
    Ok(Report {
        scenario: "storm",
        params: json!({"clients": o.clients}),
        results: json!({
            "authenticated": ok,
            "failed": {"refused": refused, "closed": closed, "io": io},
            "elapsed_secs": elapsed.as_secs_f64(),
            "handshakes_per_sec": rate.round(),
            "handshake_latency": latency(&times),
        }),
        lines: vec![
            format!(
                "{ok} of {} authenticated in {:.2} s: {:.0} handshakes/s",
                o.clients,
                elapsed.as_secs_f64(),
                rate
            ),
            format!("failures: {refused} refused, {closed} closed, {io} I/O"),
        ],
    })
}
