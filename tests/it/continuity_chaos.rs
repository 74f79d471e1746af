//! The chaos test of SPEC §7: clients that drop and reconnect at random, each time with
//! `resume`, to either of two nodes on one Redis while a producer publishes continuously;
//! midway one node (a real process) is SIGKILLed and restarted, and its clients come back on
//! a node that is up. Every client must end with every event after its first position
//! exactly once and in order, and every resume must be recovered.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{SinkExt, StreamExt};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use miteos_stream::scope::{Environment, Scope};

use crate::support::{bin::Served, RedisServer, TestServer};

const EVENTS: u64 = 400;
const CLIENTS: u64 = 8;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON text frame, or `None` when the connection ended or went quiet for 5 s.
async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.ok()?? {
            Ok(Message::Text(t)) => return serde_json::from_str(&t).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// One client's life: reconnect until it has seen the last event. Returns (first position,
/// every offset received in order, resumes made).
async fn client(
    seed: u64,
    token: String,
    nodes: Arc<Mutex<Vec<SocketAddr>>>,
    ready: tokio::sync::mpsc::Sender<()>,
) -> (u64, Vec<u64>, u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut start, mut epoch): (Option<u64>, Option<Value>) = (None, None);
    let (mut got, mut resumes) = (Vec::new(), 0u64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while got.last() != Some(&EVENTS) {
        assert!(tokio::time::Instant::now() < deadline, "client {seed} stuck at {:?}", got.last());
        let addr = {
            let n = nodes.lock().unwrap();
            n[rng.random_range(0..n.len())]
        };
        let url = format!("ws://{addr}/v1/ws?token={token}");
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await else {
            // That node is down: a real client backs off a little and tries another.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let last = got.last().copied().or(start);
        let auth = match (&epoch, last) {
            (Some(e), Some(o)) => {
                json!({"type": "auth", "token": token, "resume": {"tasks": {"offset": o, "epoch": e}}})
            }
            _ => json!({"type": "auth", "token": token}),
        };
        if ws.send(Message::text(auth.to_string())).await.is_err() {
            continue;
        }
        let Some(ok) = next_json(&mut ws).await else { continue };
        assert_eq!(ok["type"], "auth.success", "{ok}");
        let pos = &ok["positions"]["tasks"];
        if epoch.is_some() {
            resumes += 1;
            assert_eq!(pos["recovered"], true, "client {seed}: resume not recovered: {ok}");
        } else {
            start = pos["offset"].as_u64();
            epoch = Some(pos["epoch"].clone());
            let _ = ready.send(()).await;
        }
        let stay = rng.random_range(1..40);
        for _ in 0..stay {
            let Some(m) = next_json(&mut ws).await else { break };
            assert_eq!(m["type"], "event", "client {seed}: {m}");
            got.push(m["offset"].as_u64().expect("offset"));
            if got.last() == Some(&EVENTS) {
                break;
            }
        }
        drop(ws);
    }
    (start.unwrap_or(0), got, resumes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_reconnects_across_two_nodes_and_a_crash_lose_nothing_and_repeat_nothing() {
    let redis = RedisServer::start().await;
    let a = TestServer::on_redis(&redis, |_| {}).await;
    let (token, _) = a.key("acct_chaos", Environment::Test, &[Scope::TasksRead]).await;
    let url = redis.url();
    let env = [("MITEOS_REDIS_URL", url.as_str())];
    let dir = tempfile::tempdir().unwrap();
    let mut b = Served::start(dir.path(), &env).await;
    let nodes = Arc::new(Mutex::new(vec![a.addr, b.addr]));

    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(CLIENTS as usize);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(client(i, token.clone(), nodes.clone(), ready_tx.clone())))
        .collect();
    for _ in 0..CLIENTS {
        ready_rx.recv().await.expect("every client authenticated once");
    }

    let mut admin = a.admin().await;
    for i in 1..=EVENTS {
        a.publish(
            &mut admin,
            "acct_chaos",
            "test",
            "tasks",
            &format!("task.n{i}"),
            json!({"i": i}),
        )
        .await;
        if i == EVENTS / 2 {
            // Crash node B; its clients reconnect elsewhere; B comes back on a new port.
            let gone = b.addr;
            b.child.start_kill().expect("SIGKILL");
            let _ = b.child.wait().await;
            nodes.lock().unwrap().retain(|n| *n != gone);
            b = Served::start(dir.path(), &env).await;
            nodes.lock().unwrap().push(b.addr);
        }
    }
    let mut total_resumes = 0;
    for (i, c) in clients.into_iter().enumerate() {
        let (start, got, resumes) = c.await.expect("client task");
        assert_eq!(got, (start + 1..=EVENTS).collect::<Vec<_>>(), "client {i}");
        total_resumes += resumes;
    }
    assert!(total_resumes >= CLIENTS, "the clients reconnected only {total_resumes} times");
    a.shutdown().await;
}
