//! Command-line options shared by every scenario.

use std::net::{IpAddr, SocketAddr};

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "loadtest",
    about = "Load generator for miteos-stream (loopback only). Prints one JSON line, then a summary."
)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Subcommand, Debug)]
pub enum Scenario {
    /// Open N authenticated, subscribed sockets and hold them; report server RSS per socket.
    Idle(Idle),
    /// N subscribers on one topic and a publisher; report deliveries/s, loss and latency.
    Fanout(Fanout),
    /// N clients connect and authenticate at once; report handshakes/s and failures.
    Storm(Storm),
    /// Like fanout, but some clients stop reading: they must be cut off (4009) and the
    /// others must see the latency and loss of a plain fanout.
    Slow(Slow),
    /// Connect/authenticate/disconnect cycles; report server RSS after vs before (leaks).
    Churn(Churn),
    /// PATCH a key on one node; time until its last stream on another node lost the removed
    /// topic (--addr: the streams' node; --token: a key with teams.write and the read scopes).
    KeyUpdate(KeyUpdate),
    /// Resume storm (SPEC §7): N clients record their positions and disconnect, M events
    /// are published, then all N reconnect at once with `resume` while observers stay
    /// connected and a publisher keeps publishing live; report the time until every client
    /// got its missed events in order and is live, and the observers' latency meanwhile.
    Resume(Resume),
}

#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Public listener of the server.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// API key the clients use (needs `<channel>.read`; use a config without per-key caps,
    /// see loadtest/bench.toml).
    #[arg(long, env = "LOADTEST_TOKEN")]
    pub token: String,
    /// Server process id for RSS and CPU (default: the process listening on --addr).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Source addresses to spread client sockets over: 127.0.0.FIRST ..= 127.0.0.LAST.
    #[arg(long, default_value_t = 1)]
    pub src_first: u8,
    #[arg(long, default_value_t = 20)]
    pub src_last: u8,
    /// How many sockets connect concurrently while ramping up.
    #[arg(long, default_value_t = 500)]
    pub ramp_concurrency: usize,
    /// Seconds one client may take from connecting to `auth.success` before it counts as
    /// failed (so a server that stops answering cannot hang a run); at least 1.
    #[arg(long, default_value_t = 30)]
    pub handshake_timeout_secs: u64,
}

impl Target {
    /// How clients reach the server.
    pub fn dial(&self) -> crate::client::Dial {
        crate::client::Dial {
            addr: self.addr,
            token: self.token.as_str().into(),
            timeout: std::time::Duration::from_secs(self.handshake_timeout_secs.max(1)),
        }
    }

    /// The source address for client number `i`.
    pub fn source(&self, i: usize) -> IpAddr {
        let span = (self.src_last.max(self.src_first) - self.src_first) as usize + 1;
        IpAddr::from([127, 0, 0, self.src_first + (i % span) as u8])
    }
}

#[derive(Args, Debug, Clone)]
pub struct Publisher {
    /// Admin listener for `POST /internal/v1/publish` (used unless --redis-url is given).
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub admin: SocketAddr,
    /// Admin token (default: read from --data-dir/admin_token).
    #[arg(long, env = "LOADTEST_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// The server's data dir, to find the admin token.
    #[arg(long, default_value = "./data")]
    pub data_dir: std::path::PathBuf,
    /// Publish with Redis PUBLISH instead of the admin endpoint.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// With --redis-url: publish through the server's history function (`FCALL mt_publish`,
    /// docs/PRODUCERS.md), as producers do with history on, instead of a plain PUBLISH.
    #[arg(long, env = "LOADTEST_HISTORY")]
    pub history: bool,
    /// Account and environment of the key (the events' channel).
    #[arg(long, default_value = "acct_local")]
    pub account: String,
    #[arg(long, default_value = "test")]
    pub env: String,
    #[arg(long, default_value = "tasks")]
    pub channel: String,
}

#[derive(Args, Debug)]
pub struct Idle {
    #[command(flatten)]
    pub target: Target,
    /// Sockets to open.
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Seconds to hold them before measuring (lets the server settle).
    #[arg(long, default_value_t = 5)]
    pub hold_secs: u64,
}

#[derive(Args, Debug)]
pub struct Fanout {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub publisher: Publisher,
    /// Subscribers.
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Events to publish.
    #[arg(long, default_value_t = 200)]
    pub events: u64,
    /// Event size in bytes (the client frame, padded with a `pad` field).
    #[arg(long, default_value_t = 200)]
    pub size: usize,
    /// `step`: each event reaches every subscriber before the next is published.
    /// `burst`: publish as fast as the server absorbs, at most --window events ahead of the
    /// deliveries.
    #[arg(long, default_value = "burst")]
    pub mode: Mode,
    /// Burst mode: events in flight (published but not yet delivered to every subscriber).
    #[arg(long, default_value_t = 64)]
    pub window: u64,
    /// Events per second in burst mode (0 = as fast as the window allows).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Give up waiting for deliveries after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// Do not publish: wait for --events events published by another loadtest process
    /// (several nodes, one publisher). Prints `ramped` on stderr once subscribed.
    #[arg(long)]
    pub listen_only: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Step,
    Burst,
}

#[derive(Args, Debug)]
pub struct Storm {
    #[command(flatten)]
    pub target: Target,
    /// Clients that connect and authenticate at once.
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
}

#[derive(Args, Debug)]
pub struct Slow {
    #[command(flatten)]
    pub fanout: Fanout,
    /// Subscribers (out of --clients) that stop reading right after authenticating.
    #[arg(long, default_value_t = 10)]
    pub slow: usize,
    /// Receive buffer of the stalled clients in bytes (0 = the kernel's autotuning, which
    /// absorbs several MB before the server's queue fills).
    #[arg(long, default_value_t = 16384)]
    pub slow_rcvbuf: u32,
}

#[derive(Args, Debug)]
pub struct Churn {
    #[command(flatten)]
    pub target: Target,
    /// Connect/authenticate/disconnect cycles.
    #[arg(long, default_value_t = 100_000)]
    pub cycles: usize,
    /// Cycles in flight at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// RSS is sampled after this many cycles (the "before") and at the end.
    #[arg(long, default_value_t = 10_000)]
    pub warmup: usize,
}

#[derive(Args, Debug)]
pub struct KeyUpdate {
    #[command(flatten)]
    pub target: Target,
    /// Public listener of the node the PATCH goes to.
    #[arg(long)]
    pub patch_addr: SocketAddr,
    /// Streams of the updated key on the --addr node.
    #[arg(long, default_value_t = 100)]
    pub streams: usize,
    /// Updates to time (a new key each).
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
}

#[derive(Args, Debug)]
pub struct Resume {
    #[command(flatten)]
    pub target: Target,
    /// Publishes the missed and the live events; with history on (SPEC §7): the admin
    /// endpoint, or with --redis-url also --history (`FCALL mt_publish`).
    #[command(flatten)]
    pub publisher: Publisher,
    /// Clients that disconnect and reconnect with `resume`.
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Events published while they are gone (at most the server's `history_size`).
    #[arg(long, default_value_t = 100)]
    pub missed: u64,
    /// Clients that stay connected throughout and measure live latency.
    #[arg(long, default_value_t = 100)]
    pub observers: usize,
    /// Live events per second during the storm (at least 1).
    #[arg(long, default_value_t = 50)]
    pub rate: u64,
    /// Seconds the live events go on after every client is live (observer latency "after").
    #[arg(long, default_value_t = 2)]
    pub settle_secs: u64,
    /// Event size in bytes (the client frame, padded with a `pad` field).
    #[arg(long, default_value_t = 200)]
    pub size: usize,
    /// Give up on clients that are not live this many seconds after the reconnect began.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
}
