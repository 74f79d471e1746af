//! Scenario dispatch and what the scenarios share: ramping sockets up, finding the server,
//! connecting a publisher, reading its admin metrics.

mod churn;
mod fanout;
mod idle;
mod key_update;
mod resume;
mod resume_clients;
mod storm;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::anyhow;
use tokio::sync::Semaphore;

use crate::{
    client::{self, AuthError, Conn},
    opts::{self, Cli, Scenario, Target},
    proc_stat,
    publish::Publisher,
    report::Report,
};

pub async fn run(cli: Cli) -> anyhow::Result<Report> {
    match cli.scenario {
        Scenario::Idle(o) => idle::run(o).await,
        Scenario::Fanout(o) => fanout::run(o, 0, 0).await,
        Scenario::Slow(o) => fanout::run(o.fanout, o.slow, o.slow_rcvbuf).await,
        Scenario::Storm(o) => storm::run(o).await,
        Scenario::Churn(o) => churn::run(o).await,
        Scenario::KeyUpdate(o) => key_update::run(o).await,
        Scenario::Resume(o) => resume::run(o).await,
    }
}

/// The server's pid: given, or the process listening on the target port.
pub fn server_pid(t: &Target) -> anyhow::Result<u32> {
    t.pid
        .or_else(|| proc_stat::pid_listening_on(t.addr.port()))
        .ok_or_else(|| anyhow!("cannot find the server process; pass --pid"))
}

/// Opens `n` authenticated sockets, at most `ramp_concurrency` connecting at once.
/// Returns them in order, and how long the ramp took.
pub async fn ramp(t: &Target, n: usize) -> anyhow::Result<(Vec<Conn>, Duration)> {
    let (conns, took) = ramp_replies(t, 0, n).await?;
    Ok((conns.into_iter().map(|(c, _)| c).collect(), took))
}

/// Like `ramp`, for clients `first..first + n` (their source addresses), each with the
/// payload of its `auth.success`.
pub async fn ramp_replies(
    t: &Target,
    first: usize,
    n: usize,
) -> anyhow::Result<(Vec<(Conn, Vec<u8>)>, Duration)> {
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(t.ramp_concurrency.max(1)));
    let mut tasks = Vec::with_capacity(n);
    let dial = t.dial();
    for i in first..first + n {
        let permit = gate.clone().acquire_owned().await?;
        let (dial, src) = (dial.clone(), t.source(i));
        tasks.push(tokio::spawn(async move {
            let c = client::connect_authed_reply(&dial, src, None).await;
            drop(permit);
            c
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for (i, task) in (first..).zip(tasks) {
        match task.await? {
            Ok(c) => conns.push(c),
            Err(AuthError::Io(e)) => return Err(anyhow!("client {i}: {e}")),
            Err(AuthError::Refused(s)) => {
                return Err(anyhow!("client {i}: upgrade refused with HTTP {s}"))
            }
            Err(AuthError::Closed(c)) => return Err(anyhow!("client {i}: closed with {c}")),
        }
    }
    Ok((conns, started.elapsed()))
}

/// Connects `o`'s publisher, within 10 s.
pub async fn connect_publisher(o: &opts::Publisher) -> anyhow::Result<Publisher> {
    tokio::time::timeout(Duration::from_secs(10), Publisher::connect(o))
        .await
        .map_err(|_| anyhow!("publisher: no connection within 10 s"))?
}

/// A value from the server's admin `/metrics`: the line starting with `name` (include the
/// trailing space to match one series exactly). None when unreachable or absent.
pub async fn server_metric(admin: std::net::SocketAddr, name: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok())
}
