//! `idle`: hold N authenticated, subscribed sockets; report server RSS per socket.

use std::time::Duration;

use serde_json::json;

use crate::{
    client::OP_PING,
    opts::Idle,
    proc_stat,
    report::{mib, Report},
};

pub async fn run(o: Idle) -> anyhow::Result<Report> {
    let pid = super::server_pid(&o.target)?;
    let rss_before = proc_stat::rss_bytes(pid).unwrap_or(0);
    let (conns, ramp) = super::ramp(&o.target, o.clients).await?;
    // Keep every socket read (and pings answered) while holding.
    let readers: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                while let Ok((op, payload)) = c.next().await {
                    if op == OP_PING {
                        let p = payload.to_vec();
                        if c.pong(p).await.is_err() {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(o.hold_secs)).await;
    let rss_after = proc_stat::rss_bytes(pid).unwrap_or(0);
    let per_socket = rss_after.saturating_sub(rss_before) as f64 / o.clients.max(1) as f64;
    for r in &readers {
        r.abort();
    }
    Ok(Report {
        scenario: "idle",
        params: json!({"clients": o.clients, "hold_secs": o.hold_secs}),
        results: json!({
            "server_pid": pid,
            "rss_before_bytes": rss_before,
            "rss_after_bytes": rss_after,
            "bytes_per_socket": per_socket.round(),
            "ramp_secs": ramp.as_secs_f64(),
            "connects_per_sec": (o.clients as f64 / ramp.as_secs_f64()).round(),
        }),
        lines: vec![
            format!(
                "{} sockets authenticated and subscribed in {:.2} s",
                o.clients,
                ramp.as_secs_f64()
            ),
            format!(
                "server RSS {:.1} MiB -> {:.1} MiB: {:.0} bytes per socket",
                mib(rss_before),
                mib(rss_after),
                per_socket
            ),
        ],
    })
}
