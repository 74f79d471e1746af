//! `ShardLink`: one sharded pub/sub connection (RESP3) to one master of a Redis Cluster.
//! It SSUBSCRIBEs and SUNSUBSCRIBEs one channel per command, each confirmed before the call
//! returns, so channels of two slots never share a command (a CROSSSLOT error: the redis
//! crate's own cluster pub/sub resubscribes a node's channels in one command, DECISIONS.md).
//! Its `smessage`s go to the broker's bounded ingress queue, in order. A `sunsubscribe` the
//! node did not ask for (the channel's slot moved) and the loss of the connection are
//! reported to the shard manager (`sharded`), which places those channels again.
//!
//! May use: the parent module (its `Inner`, `Queued`), redis, combine, tokio.
//! Never: decide where a channel lives (that is `sharded`).

use std::{
    collections::VecDeque,
    sync::{Arc, Weak},
};

use combine::{parser::combinator::AnySendSyncPartialState, stream::PointerOffset};
use parking_lot::Mutex;
use redis::{PushKind, Value};
use tokio::{
    io::AsyncWriteExt,
    net::{tcp::OwnedReadHalf, TcpStream},
    sync::{mpsc, oneshot},
};

use super::{Inner, Queued, COMMAND_TIMEOUT, HEALTH_EVERY};

/// What a link tells the shard manager.
#[derive(Debug)]
pub(super) enum LinkEvent {
    /// The connection to this master (and link id) is gone: its channels must be placed again.
    Lost(String, u64),
    /// The server dropped this channel: its slot moved to another master.
    Moved(String),
}

enum Op {
    Subscribe,
    Unsubscribe,
    Ping,
}

/// A command waiting for its answer, in the order sent.
struct Pending {
    op: Op,
    channel: String,
    done: oneshot::Sender<Result<(), String>>,
}

type Request = (Op, String, oneshot::Sender<Result<(), String>>);

pub(super) struct ShardLink {
    pub addr: String,
    pub id: u64,
    requests: mpsc::UnboundedSender<Request>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ShardLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ShardLink {
    /// Connects (in the background) to the master at `addr` with `client`'s credentials.
    pub fn spawn(
        addr: String,
        id: u64,
        client: redis::Client,
        inner: Weak<Inner>,
        events: mpsc::UnboundedSender<LinkEvent>,
    ) -> Self {
        let (requests, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(addr.clone(), id, client, inner, rx, events));
        Self { addr, id, requests, task }
    }

    pub async fn subscribe(&self, channel: &str) -> Result<(), String> {
        self.call(Op::Subscribe, channel).await
    }

    pub async fn unsubscribe(&self, channel: &str) -> Result<(), String> {
        self.call(Op::Unsubscribe, channel).await
    }

    async fn call(&self, op: Op, channel: &str) -> Result<(), String> {
        let (done, answer) = oneshot::channel();
        self.requests.send((op, channel.to_owned(), done)).map_err(|_| lost())?;
        match tokio::time::timeout(COMMAND_TIMEOUT * 2, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(lost()),
            Err(_) => Err(format!("no answer from {} in time", self.addr)),
        }
    }
}

fn lost() -> String {
    "the shard connection was lost".to_owned()
}

/// Connects, then writes commands and pings until the connection fails; then fails what
/// waits and reports the loss.
async fn run(
    addr: String,
    id: u64,
    client: redis::Client,
    inner: Weak<Inner>,
    mut requests: mpsc::UnboundedReceiver<Request>,
    events: mpsc::UnboundedSender<LinkEvent>,
) {
    let pending = Arc::new(Mutex::new(VecDeque::<Pending>::new()));
    if let Err(e) = serve(&addr, &client, &inner, &mut requests, &pending, &events).await {
        tracing::warn!(shard = %addr, error = %e, "lost a shard's pub/sub connection");
    }
    for p in pending.lock().drain(..) {
        let _ = p.done.send(Err(lost()));
    }
    requests.close();
    while let Ok((_, _, done)) = requests.try_recv() {
        let _ = done.send(Err(lost()));
    }
    let _ = events.send(LinkEvent::Lost(addr, id));
}

async fn serve(
    addr: &str,
    client: &redis::Client,
    inner: &Weak<Inner>,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    pending: &Arc<Mutex<VecDeque<Pending>>>,
    events: &mpsc::UnboundedSender<LinkEvent>,
) -> Result<(), String> {
    let stream = tokio::time::timeout(COMMAND_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("timed out connecting to {addr}"))?
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (read, mut write) = stream.into_split();
    let mut reader = Reader { read, decoder: combine::stream::Decoder::new() };
    let info = client.get_connection_info().redis_settings();
    let mut hello = redis::cmd("HELLO");
    hello.arg(3);
    if let Some(password) = info.password() {
        hello.arg("AUTH").arg(info.username().unwrap_or("default")).arg(password);
    }
    write.write_all(&hello.get_packed_command()).await.map_err(|e| e.to_string())?;
    match tokio::time::timeout(COMMAND_TIMEOUT, reader.next()).await {
        Ok(Ok(Value::ServerError(e))) => return Err(e.to_string()),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(format!("no HELLO answer from {addr}")),
    }
    let mut reading =
        tokio::spawn(read_loop(reader, inner.clone(), pending.clone(), events.clone()));
    let mut health = tokio::time::interval(HEALTH_EVERY);
    health.tick().await;
    let mut last_ping: Option<oneshot::Receiver<Result<(), String>>> = None;
    let result = loop {
        let (op, channel, done) = tokio::select! {
            r = requests.recv() => match r {
                Some(r) => r,
                None => break Ok(()),
            },
            _ = health.tick() => {
                // The previous ping must have been answered by now.
                if last_ping.take().is_some_and(|mut p| p.try_recv().is_err()) {
                    break Err(format!("{addr} stopped answering pings"));
                }
                let (done, answer) = oneshot::channel();
                last_ping = Some(answer);
                (Op::Ping, String::new(), done)
            }
            _ = &mut reading => break Err(format!("{addr} closed the connection")),
        };
        let command = match op {
            Op::Subscribe => redis::cmd("SSUBSCRIBE").arg(&channel).get_packed_command(),
            Op::Unsubscribe => redis::cmd("SUNSUBSCRIBE").arg(&channel).get_packed_command(),
            Op::Ping => redis::cmd("PING").get_packed_command(),
        };
        pending.lock().push_back(Pending { op, channel, done });
        if let Err(e) = write.write_all(&command).await {
            break Err(e.to_string());
        }
    };
    reading.abort();
    result
}

struct Reader {
    read: OwnedReadHalf,
    decoder: combine::stream::Decoder<AnySendSyncPartialState, PointerOffset<[u8]>>,
}

impl Reader {
    async fn next(&mut self) -> Result<Value, String> {
        redis::parse_redis_value_async(&mut self.decoder, &mut self.read)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Reads pushes and replies until the connection fails or the ingress queue overflows.
async fn read_loop(
    mut reader: Reader,
    inner: Weak<Inner>,
    pending: Arc<Mutex<VecDeque<Pending>>>,
    events: mpsc::UnboundedSender<LinkEvent>,
) {
    while let Ok(value) = reader.next().await {
        match value {
            Value::Push { kind: PushKind::SMessage, data } => {
                let Some(inner) = inner.upgrade() else { return };
                let Some(msg) =
                    redis::Msg::from_push_info(redis::PushInfo { kind: PushKind::SMessage, data })
                else {
                    continue;
                };
                if !inner.enqueue(msg) {
                    tracing::warn!(
                        "this node delivers slower than events arrive: dropping a shard's \
                         subscription (events published until it is back are repaired or lost)"
                    );
                    let _ = inner.queue.send(Queued::Overflow);
                    return;
                }
            }
            Value::Push { kind, data } => {
                let channel = match data.first() {
                    Some(Value::BulkString(c)) => String::from_utf8_lossy(c).into_owned(),
                    _ => continue,
                };
                let mut waiting = pending.lock();
                let expected = match (&kind, waiting.front()) {
                    (PushKind::SSubscribe, Some(p)) => {
                        matches!(p.op, Op::Subscribe) && p.channel == channel
                    }
                    (PushKind::SUnsubscribe, Some(p)) => {
                        matches!(p.op, Op::Unsubscribe) && p.channel == channel
                    }
                    _ => false,
                };
                if expected {
                    if let Some(p) = waiting.pop_front() {
                        let _ = p.done.send(Ok(()));
                    }
                } else if kind == PushKind::SUnsubscribe {
                    let _ = events.send(LinkEvent::Moved(channel));
                }
            }
            // A reply (PONG, or an error such as MOVED for a subscribe).
            reply => {
                if let Some(p) = pending.lock().pop_front() {
                    let _ = p.done.send(match reply {
                        Value::ServerError(e) => Err(e.to_string()),
                        _ => Ok(()),
                    });
                }
            }
        }
    }
}
