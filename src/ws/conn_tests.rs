//! The socket pump under tokio's paused clock: every timer of `Conn` (auth timeout 4002,
//! heartbeat 4004, the close-frame delivery window) and the 1009 limit, against a real
//! tungstenite client over an in-memory duplex pipe. Time is virtual, so the bounds are exact.

use std::{sync::Arc, time::Duration};

use futures::{SinkExt, StreamExt};
use tokio::{
    io::DuplexStream,
    time::{timeout, Instant},
};
use tokio_tungstenite::{
    tungstenite::{protocol::Role, protocol::WebSocketConfig, Message},
    WebSocketStream,
};

use super::{Conn, Step};
use crate::{metrics::LatencyHistogram, outbox::Outbox, protocol::close::CloseCode};

const PING: Duration = Duration::from_secs(25);
const PONG: Duration = Duration::from_secs(10);
const MAX_MESSAGE: usize = 4096;

/// A server `Conn` and a client socket joined by a pipe of `pipe_bytes` each way.
async fn pair(
    pipe_bytes: usize,
) -> (Conn<DuplexStream>, Arc<Outbox>, WebSocketStream<DuplexStream>) {
    pair_observed(pipe_bytes, LatencyHistogram::default()).await
}

/// `pair`, with the delivery-latency histogram the `Conn` observes into.
async fn pair_observed(
    pipe_bytes: usize,
    latency: LatencyHistogram,
) -> (Conn<DuplexStream>, Arc<Outbox>, WebSocketStream<DuplexStream>) {
    let (server_io, client_io) = tokio::io::duplex(pipe_bytes);
    let cfg = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(16 * 1024)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let server = WebSocketStream::from_raw_socket(server_io, Role::Server, Some(cfg)).await;
    let client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
    let outbox = Arc::new(Outbox::new(100_000));
    (Conn::new(server, outbox.clone(), PING, PONG, latency), outbox, client)
}

fn close_code(msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> u16 {
    match msg {
        Some(Ok(Message::Close(Some(frame)))) => frame.code.into(),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn no_auth_message_within_the_limit_is_4002_at_exactly_the_limit() {
    let (mut conn, _outbox, _client) = pair(64 * 1024).await;
    let start = Instant::now();
    let limit = Duration::from_secs(10);
    match conn.first_message(limit).await {
        Err(Step::Close(CloseCode::AuthTimeout)) => {}
        other => panic!("expected 4002, got {other:?}"),
    }
    assert_eq!(start.elapsed(), limit);
}

#[tokio::test(start_paused = true)]
async fn the_first_message_arrives_before_the_limit() {
    let (mut conn, _outbox, mut client) = pair(64 * 1024).await;
    client.send(Message::text("{\"type\":\"auth\"}")).await.unwrap();
    match conn.first_message(Duration::from_secs(10)).await {
        Ok(Message::Text(t)) => assert_eq!(t.as_str(), "{\"type\":\"auth\"}"),
        other => panic!("expected the message, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_answers_pings_is_4004_after_interval_plus_timeout() {
    let (mut conn, _outbox, mut client) = pair(64 * 1024).await;
    let start = Instant::now();
    // The client never reads, so it never answers the server's ping.
    assert!(matches!(conn.next_step().await, Step::Close(CloseCode::HeartbeatTimeout)));
    assert_eq!(start.elapsed(), PING + PONG);
    // What the client finds once it reads: the ping the server sent at PING.
    assert!(matches!(client.next().await, Some(Ok(Message::Ping(_)))));
}

#[tokio::test(start_paused = true)]
async fn a_client_that_answers_pings_is_never_timed_out() {
    let (mut conn, _outbox, mut client) = pair(64 * 1024).await;
    // Reading makes tungstenite answer each ping with a pong.
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = client.next().await {} });
    let quiet = timeout(PING * 10, conn.next_step()).await;
    assert!(quiet.is_err(), "the pump returned {quiet:?} for a healthy client");
    reader.abort();
}

#[tokio::test(start_paused = true)]
async fn a_message_over_the_limit_is_1009() {
    let (mut conn, _outbox, mut client) = pair(64 * 1024).await;
    client.send(Message::text("x".repeat(MAX_MESSAGE + 1))).await.unwrap();
    assert!(matches!(conn.next_step().await, Step::Close(CloseCode::MessageTooBig)));
}

/// Fills the pipe towards a client that does not read: queues frames and drives the pump
/// until the socket stops taking them.
async fn fill(conn: &mut Conn<DuplexStream>, outbox: &Outbox) {
    for i in 0..2_000 {
        outbox.push(format!("{{\"n\":{i},\"pad\":\"{}\"}}", "p".repeat(200)).into());
    }
    // The pump never returns here (no message, no timer due within a second).
    assert!(timeout(Duration::from_secs(1), conn.next_step()).await.is_err());
    assert!(!conn.pending.is_empty(), "the pipe and the write buffer took all 2,000 frames");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_client_that_resumes_within_close_timeout_still_reads_the_close() {
    let (mut conn, outbox, mut client) = pair(4 * 1024).await;
    fill(&mut conn, &outbox).await;
    let close_timeout = Duration::from_secs(5);
    let closing = tokio::spawn(conn.close(CloseCode::SlowConsumer, close_timeout));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!closing.is_finished(), "the server gave up before close_timeout");
    // The client resumes: it drains what was in flight, then finds the close frame.
    let code = loop {
        match client.next().await {
            Some(Ok(Message::Text(_))) => continue,
            other => break close_code(other),
        }
    };
    assert_eq!(code, 4009);
    closing.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_reads_is_dropped_at_close_timeout() {
    let (mut conn, outbox, mut client) = pair(4 * 1024).await;
    fill(&mut conn, &outbox).await;
    let start = Instant::now();
    let close_timeout = Duration::from_secs(5);
    conn.close(CloseCode::SlowConsumer, close_timeout).await;
    assert_eq!(start.elapsed(), close_timeout, "the close waits exactly close_timeout");
    // The server's side is gone: after what was in flight the client sees the end (no close
    // frame made it into the full pipe).
    let end = loop {
        match client.next().await {
            Some(Ok(Message::Text(_))) => continue,
            other => break other,
        }
    };
    assert!(!matches!(end, Some(Ok(Message::Close(_)))), "a close frame fit after all: {end:?}");
}

#[tokio::test(start_paused = true)]
async fn each_flushed_write_with_events_is_observed_once_and_replies_are_not() {
    let latency = LatencyHistogram::default();
    let (mut conn, outbox, mut client) = pair_observed(64 * 1024, latency.clone()).await;
    outbox.push("reply".into());
    let pump = tokio::spawn(async move { conn.next_step().await });
    assert!(matches!(client.next().await, Some(Ok(Message::Text(_)))));
    assert_eq!(latency.count(), 0, "a reply is not an event");
    outbox.push_event("e1".into(), std::time::Instant::now());
    outbox.push_event("e2".into(), std::time::Instant::now());
    for _ in 0..2 {
        assert!(matches!(client.next().await, Some(Ok(Message::Text(_)))));
    }
    // The pump flushed and observed in the poll that wrote the frames (one task at a time).
    assert!((1..=2).contains(&latency.count()), "observed {}", latency.count());
    pump.abort();
}

/// A socket that takes at most 16 bytes per write and answers every third write with
/// "not now" (waking at once), as a TCP socket does when its buffer drains in between.
struct Trickle {
    io: DuplexStream,
    writes: u32,
}

impl tokio::io::AsyncRead for Trickle {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Trickle {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.writes += 1;
        if self.writes % 3 == 0 {
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        let n = buf.len().min(16);
        std::pin::Pin::new(&mut self.io).poll_write(cx, &buf[..n])
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[tokio::test(start_paused = true)]
async fn a_lone_frame_half_written_is_never_cut_by_the_pong_of_a_ping_read_meanwhile() {
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let server_io = Trickle { io: server_io, writes: 0 };
    let cfg = WebSocketConfig::default().write_buffer_size(0);
    let server = WebSocketStream::from_raw_socket(server_io, Role::Server, Some(cfg)).await;
    let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
    let outbox = Arc::new(Outbox::new(1000));
    let mut conn = Conn::new(server, outbox.clone(), PING, PONG, LatencyHistogram::default());
    // The pings are waiting before the frame starts: the pump reads them while the frame
    // goes out 16 bytes at a time.
    for _ in 0..3 {
        client.send(Message::Ping("p".into())).await.unwrap();
    }
    let big = "b".repeat(3_000);
    outbox.push(big.clone().into());
    let pump = tokio::spawn(async move {
        loop {
            if let Step::Gone = conn.next_step().await {
                return;
            }
        }
    });
    let mut texts = Vec::new();
    let mut pongs = 0;
    while texts.len() < 2 || pongs < 3 {
        match client.next().await {
            Some(Ok(Message::Text(t))) => {
                texts.push(t.to_string());
                outbox.push("after".into());
            }
            Some(Ok(Message::Pong(_))) => pongs += 1,
            other => panic!("the stream broke: {other:?}"),
        }
    }
    assert_eq!(texts[..2], [big, "after".to_owned()]);
    pump.abort();
}

#[tokio::test(start_paused = true)]
async fn a_close_waits_for_a_half_written_lone_frame() {
    let (mut conn, outbox, mut client) = pair(64).await;
    let big = "c".repeat(2_000);
    outbox.push(big.clone().into());
    // Drive the pump until the frame is half out (the pipe holds 64 bytes).
    assert!(timeout(Duration::from_secs(1), conn.next_step()).await.is_err());
    let closing = tokio::spawn(conn.close(CloseCode::SlowConsumer, Duration::from_secs(5)));
    match client.next().await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), big),
        other => panic!("expected the whole frame first, got {other:?}"),
    }
    assert_eq!(close_code(client.next().await), 4009);
    closing.await.unwrap();
}
