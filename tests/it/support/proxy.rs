//! `TcpProxy`: a TCP forwarder on 127.0.0.1 in front of one node's redis-server, so a test can
//! give that node alone a broker outage. `cut` drops every connection and refuses new ones.
//! The `*_pubsub` modes touch only the connections that sent a SUBSCRIBE (the node's event
//! and control subscriptions), so its commands (key store, tickets) keep working:
//! `cut_pubsub` drops them, `freeze_pubsub` keeps them open but forwards nothing (a silent
//! failure: to Redis the node is still subscribed). `restore` forwards everything again.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Pass,
    Cut,
    CutPubSub,
    FreezePubSub,
}

pub struct TcpProxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Forwards 127.0.0.1:`port` (a free one) to 127.0.0.1:`upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mode, rx) = watch::channel(Mode::Pass);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *rx.borrow() == Mode::Cut {
                    continue; // refused
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let pubsub = Arc::new(AtomicBool::new(false));
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, rx.clone(), pubsub.clone(), true));
                tokio::spawn(pump(sr, cw, rx.clone(), pubsub, false));
            }
        });
        Self { port, mode, task }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    pub fn cut_pubsub(&self) {
        self.mode.send_replace(Mode::CutPubSub);
    }

    pub fn freeze_pubsub(&self) {
        self.mode.send_replace(Mode::FreezePubSub);
    }

    /// Forwards again (frozen connections resume; cut ones are gone for good).
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Pass);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.mode.send_replace(Mode::Cut);
        self.task.abort();
    }
}

/// Copies one direction until either side ends or the mode cuts this connection; holds
/// what it read while the mode freezes it. `from_client`: this direction carries commands,
/// and a SUBSCRIBE among them marks the connection as a subscription.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    pubsub: Arc<AtomicBool>,
    from_client: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut watch_cut = mode.clone();
    let cuts = |m: &Mode, pubsub: &AtomicBool| {
        *m == Mode::Cut || (*m == Mode::CutPubSub && pubsub.load(Ordering::SeqCst))
    };
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = watch_cut.wait_for(|m| cuts(m, &pubsub)) => return,
        };
        // The command itself (a RESP bulk string), not the word inside some payload such as
        // a FUNCTION LOAD source.
        const COMMAND: &[u8] = b"$9\r\nSUBSCRIBE\r\n";
        if from_client && buf[..n].windows(COMMAND.len()).any(|w| w.eq_ignore_ascii_case(COMMAND)) {
            pubsub.store(true, Ordering::SeqCst);
        }
        let frozen = |m: &Mode| *m == Mode::FreezePubSub && pubsub.load(Ordering::SeqCst);
        match mode.wait_for(|m| !frozen(m)).await.map(|m| *m) {
            Ok(m) if !cuts(&m, &pubsub) => {}
            _ => return,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
