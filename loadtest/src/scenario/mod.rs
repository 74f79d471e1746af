//! Scenario dispatch and what the scenarios share: ramping sockets up, finding the server.

mod churn;
mod fanout;
mod idle;
mod key_update;
mod storm;

use std::{sync::Arc, time::Instant};

use anyhow::anyhow;
use tokio::sync::Semaphore;

use crate::{
    client::{self, AuthError, Conn},
    opts::{Cli, Scenario, Target},
    proc_stat,
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
pub async fn ramp(t: &Target, n: usize) -> anyhow::Result<(Vec<Conn>, std::time::Duration)> {
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(t.ramp_concurrency.max(1)));
    let mut tasks = Vec::with_capacity(n);
    let dial = t.dial();
    for i in 0..n {
        let permit = gate.clone().acquire_owned().await?;
        let (dial, src) = (dial.clone(), t.source(i));
        tasks.push(tokio::spawn(async move {
            let c = client::connect_authed(&dial, src).await;
            drop(permit);
            c
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for (i, task) in tasks.into_iter().enumerate() {
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
