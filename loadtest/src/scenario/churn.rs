//! `churn`: connect, authenticate, disconnect, many times; does the server's memory return?

use std::{sync::Arc, time::Duration};

use serde_json::json;
use tokio::sync::Semaphore;

use crate::{
    client,
    opts::Churn,
    proc_stat,
    report::{mib, Report},
};

pub async fn run(o: Churn) -> anyhow::Result<Report> {
    let pid = super::server_pid(&o.target)?;
    let rss_start = proc_stat::rss_bytes(pid).unwrap_or(0);
    let gate = Arc::new(Semaphore::new(o.concurrency.max(1)));
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let dial = o.target.dial();
    let started = std::time::Instant::now();
    let mut rss_warm = 0;
    for i in 0..o.cycles {
        if i == o.warmup {
            // Let in-flight cycles finish, then sample the "before".
            let _all = gate.acquire_many(o.concurrency as u32).await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            rss_warm = proc_stat::rss_bytes(pid).unwrap_or(0);
        }
        let permit = gate.clone().acquire_owned().await?;
        let (dial, src, failures) = (dial.clone(), o.target.source(i), failures.clone());
        tokio::spawn(async move {
            match client::connect_authed(&dial, src).await {
                Ok(c) => c.close().await,
                Err(_) => {
                    failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            drop(permit);
        });
    }
    let _all = gate.acquire_many(o.concurrency as u32).await?;
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_end = proc_stat::rss_bytes(pid).unwrap_or(0);
    let growth = if rss_warm > 0 {
        (rss_end as f64 - rss_warm as f64) / rss_warm as f64 * 100.0
    } else {
        0.0
    };
    let failed = failures.load(std::sync::atomic::Ordering::Relaxed);
    Ok(Report {
        scenario: "churn",
        params: json!({"cycles": o.cycles, "concurrency": o.concurrency, "warmup": o.warmup}),
        results: json!({
            "rss_start_bytes": rss_start,
            "rss_after_warmup_bytes": rss_warm,
            "rss_end_bytes": rss_end,
            "growth_percent": (growth * 10.0).round() / 10.0,
            "failed_cycles": failed,
            "cycles_per_sec": (o.cycles as f64 / elapsed.as_secs_f64()).round(),
        }),
        lines: vec![
            format!("{} cycles in {:.1} s ({} failed)", o.cycles, elapsed.as_secs_f64(), failed),
            format!(
                "server RSS {:.1} MiB at start, {:.1} MiB after {} cycles, {:.1} MiB at the end ({:+.1} %)",
                mib(rss_start), mib(rss_warm), o.warmup, mib(rss_end), growth
            ),
        ],
    })
}
