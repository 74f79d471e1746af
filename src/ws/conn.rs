//! `Conn`: one socket's pump. A single poll drives both directions: it moves queued frames
//! from the Outbox into the socket (many frames, one write, one flush), reads the next client
//! frame, and watches the heartbeat timer, so the socket is always being read and one task
//! serves one connection.
//!
//! Owns: the `WebSocketStream`, the local write queue, heartbeat and expiry deadlines, and
//! the close handshake.  May use: outbox, metrics (the delivery-latency histogram),
//! protocol::close, tungstenite.
//! Never: interpret client messages (that is `session`).

use std::{
    collections::VecDeque,
    future::{poll_fn, Future},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::{sleep_until, Instant, Sleep},
};
use tokio_tungstenite::{
    tungstenite::{
        error::CapacityError,
        protocol::{frame::coding::CloseCode as WireCode, CloseFrame},
        Error as WsError, Message, Utf8Bytes,
    },
    WebSocketStream,
};

use super::lone_frame::LoneFrame;
use crate::{
    metrics::LatencyHistogram,
    outbox::{self, Outbox},
    protocol::close::CloseCode,
};

/// Frames written per poll before yielding to other tasks.
const WRITE_BUDGET: usize = 1024;

/// The largest frame written past tungstenite when alone (`lone_frame`): one that nearly
/// always fits the socket's send buffer at once. Larger ones go through tungstenite.
const LONE_MAX: usize = 16 * 1024;

/// What woke the pump up, for the session to act on.
#[derive(Debug)]
pub enum Step {
    /// A text or binary message from the client.
    Message(Message),
    /// The server must close with this code.
    Close(CloseCode),
    /// The session was nudged: its key changed (see `Outbox::nudge`).
    Update,
    /// The client closed or the socket failed; nothing more can be sent.
    Gone,
}

pub struct Conn<S> {
    ws: WebSocketStream<S>,
    outbox: Arc<Outbox>,
    /// Frames taken from the Outbox that the socket has not accepted yet.
    pending: VecDeque<Utf8Bytes>,
    /// A reply that was alone in the queue, being written past tungstenite (`lone_frame`).
    lone: Option<LoneFrame>,
    unflushed: bool,
    /// A frame was read since the last flush: tungstenite may hold a reply to it (a pong).
    read_since_flush: bool,
    /// When the oldest event not yet flushed was received from the broker.
    unflushed_since: Option<std::time::Instant>,
    delivery_latency: LatencyHistogram,
    ping_due: bool,
    timer: Pin<Box<Sleep>>,
    ping_interval: Duration,
    pong_timeout: Duration,
    /// When the client was last heard from.
    last_seen: Instant,
    /// When the unanswered server ping went out, if one is outstanding.
    ping_sent: Option<Instant>,
    /// When the credential stops working (4003).
    expires: Option<Instant>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(
        ws: WebSocketStream<S>,
        outbox: Arc<Outbox>,
        ping_interval: Duration,
        pong_timeout: Duration,
        delivery_latency: LatencyHistogram,
    ) -> Self {
        let now = Instant::now();
        Self {
            ws,
            outbox,
            pending: VecDeque::new(),
            lone: None,
            unflushed: false,
            read_since_flush: false,
            unflushed_since: None,
            delivery_latency,
            ping_due: false,
            timer: Box::pin(sleep_until(now + ping_interval)),
            ping_interval,
            pong_timeout,
            last_seen: now,
            ping_sent: None,
            expires: None,
        }
    }

    /// Closes the connection with 4003 at `at`.
    pub fn set_expiry(&mut self, at: Option<Instant>) {
        self.expires = at;
        self.rearm();
    }

    /// Waits for the first client message (auth phase): nothing is written but control
    /// replies, and a requested close or `limit` ends the wait.
    pub async fn first_message(&mut self, limit: Duration) -> Result<Message, Step> {
        let deadline = Instant::now() + limit;
        let expired = sleep_until(deadline);
        tokio::pin!(expired);
        poll_fn(|cx| {
            self.outbox.register(cx.waker());
            if let Some(code) = self.outbox.close_requested() {
                return Poll::Ready(Err(Step::Close(code)));
            }
            match self.poll_read(cx) {
                Poll::Ready(Step::Message(m)) => return Poll::Ready(Ok(m)),
                Poll::Ready(other) => return Poll::Ready(Err(other)),
                Poll::Pending => {}
            }
            match expired.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(Step::Close(CloseCode::AuthTimeout))),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Drives writes, reads and timers until something needs the session's attention.
    pub async fn next_step(&mut self) -> Step {
        poll_fn(|cx| self.poll_step(cx)).await
    }

    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        loop {
            self.outbox.register(cx.waker());
            if let Some(code) = self.outbox.close_requested() {
                return Poll::Ready(Step::Close(code));
            }
            if self.outbox.take_nudge() {
                return Poll::Ready(Step::Update);
            }
            if self.poll_write(cx).is_err() {
                return Poll::Ready(Step::Gone);
            }
            // Not while a lone frame is half written: tungstenite's read may write an
            // automatic pong, which would cut into it. The socket is full then (the client
            // is not reading); the heartbeat and the close path still run.
            if self.lone.is_none() {
                if let Poll::Ready(step) = self.poll_read(cx) {
                    return Poll::Ready(step);
                }
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if let Some(code) = self.on_timer() {
                return Poll::Ready(Step::Close(code));
            }
            // The timer was re-armed (or a ping is due): go round once more.
        }
    }

    /// Reads one frame; pings/pongs only refresh the heartbeat.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        loop {
            let item = match Pin::new(&mut self.ws).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(item) => item,
            };
            self.last_seen = Instant::now();
            self.ping_sent = None;
            self.read_since_flush = true;
            return Poll::Ready(match item {
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(_))) | None => Step::Gone,
                Some(Ok(m)) => Step::Message(m),
                Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                    Step::Close(CloseCode::MessageTooBig)
                }
                // RFC 6455 §7.4: fail the connection with a reason while the socket can
                // still take a close frame (`close` gives up after close_timeout).
                Some(Err(WsError::Utf8(_))) => Step::Close(CloseCode::InvalidPayload),
                Some(Err(WsError::Protocol(e))) => {
                    tracing::debug!(error = %e, "websocket protocol violation");
                    Step::Close(CloseCode::ProtocolError)
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "websocket read failed");
                    Step::Gone
                }
            });
        }
    }

    /// Moves queued frames into the socket and flushes once they are all in.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<(), WsError> {
        let mut budget = WRITE_BUDGET;
        loop {
            if let Some(lone) = self.lone.as_mut() {
                match lone.poll_write(self.ws.get_mut(), cx) {
                    Poll::Ready(Ok(())) => self.lone = None,
                    Poll::Ready(Err(e)) => return Err(WsError::Io(e)),
                    Poll::Pending => return Ok(()),
                }
            }
            if self.pending.is_empty() && !self.ping_due {
                let (taken, oldest) = self.outbox.take_into(&mut self.pending);
                if taken == 0 {
                    break;
                }
                self.unflushed_since = self.unflushed_since.or(oldest);
                // A lone reply (no event: events keep tungstenite's path, measured the
                // cheaper one in step fanout) bypasses the codec's buffer.
                if taken == 1
                    && oldest.is_none()
                    && self.pending[0].len() <= LONE_MAX
                    && self.codec_is_empty(cx)?
                {
                    self.lone = self.pending.pop_front().map(LoneFrame::text);
                    continue;
                }
            }
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(()),
            }
            let msg = if self.ping_due {
                self.ping_due = false;
                Message::Ping(Default::default())
            } else {
                match self.pending.pop_front() {
                    Some(frame) => Message::Text(frame),
                    None => continue,
                }
            };
            Pin::new(&mut self.ws).start_send(msg)?;
            self.unflushed = true;
            budget -= 1;
            if budget == 0 {
                // Let other connections run; come back for the rest.
                cx.waker().wake_by_ref();
                break;
            }
        }
        if self.unflushed {
            if let Poll::Ready(r) = Pin::new(&mut self.ws).poll_flush(cx) {
                r?;
                self.unflushed = false;
                self.read_since_flush = false;
                if let Some(since) = self.unflushed_since.take() {
                    self.delivery_latency.observe(since.elapsed());
                }
            }
        }
        Ok(())
    }

    /// Whether tungstenite has nothing buffered, so a frame may bypass it: the last flush
    /// completed, and nothing was read since — or flushing again (an automatic pong, perhaps
    /// half written) completes at once.
    fn codec_is_empty(&mut self, cx: &mut Context<'_>) -> Result<bool, WsError> {
        if self.unflushed {
            return Ok(false);
        }
        if !self.read_since_flush {
            return Ok(true);
        }
        match Pin::new(&mut self.ws).poll_flush(cx) {
            Poll::Ready(r) => r.map(|()| {
                self.read_since_flush = false;
                true
            }),
            Poll::Pending => Ok(false),
        }
    }

    /// The timer fired: send a ping, or time out the heartbeat or the credential.
    fn on_timer(&mut self) -> Option<CloseCode> {
        let now = Instant::now();
        // Quiet enough for a heartbeat: give back queue memory a burst left behind.
        outbox::trim(&mut self.pending);
        self.outbox.trim();
        if self.expires.is_some_and(|t| t <= now) {
            return Some(CloseCode::KeyRevoked);
        }
        match self.ping_sent {
            Some(sent) if now >= sent + self.pong_timeout => {
                return Some(CloseCode::HeartbeatTimeout)
            }
            None if now >= self.last_seen + self.ping_interval => {
                self.ping_due = true;
                self.ping_sent = Some(now);
            }
            _ => {}
        }
        self.rearm();
        None
    }

    fn rearm(&mut self) {
        let beat = match self.ping_sent {
            Some(sent) => sent + self.pong_timeout,
            None => self.last_seen + self.ping_interval,
        };
        let at = self.expires.map_or(beat, |e| e.min(beat));
        self.timer.as_mut().reset(at);
    }

    /// Sends the close frame (keeping trying up to `limit`), then waits for the client's
    /// close reply or EOF within the same limit. Queued frames are dropped.
    pub async fn close(mut self, code: CloseCode, limit: Duration) {
        let frame = CloseFrame { code: WireCode::from(code.code()), reason: code.reason().into() };
        let handshake = async {
            self.finish_lone().await?;
            self.ws.send(Message::Close(Some(frame))).await?;
            while let Some(Ok(_)) = self.ws.next().await {}
            Ok::<(), WsError>(())
        };
        if let Ok(Err(e)) = tokio::time::timeout(limit, handshake).await {
            tracing::debug!(error = %e, "close handshake failed");
        }
    }

    /// Completes a half-written lone frame: nothing else may go out before it does.
    async fn finish_lone(&mut self) -> Result<(), WsError> {
        if let Some(mut lone) = self.lone.take() {
            let ws = &mut self.ws;
            poll_fn(|cx| lone.poll_write(ws.get_mut(), cx)).await.map_err(WsError::Io)?;
        }
        Ok(())
    }

    /// Writes one message now, after whatever is queued (the conformance echo's binary
    /// replies; sessions only ever send text through the Outbox).
    #[cfg(feature = "conformance")]
    pub async fn send_now(&mut self, msg: Message) -> Result<(), WsError> {
        while !self.pending.is_empty() || self.unflushed || self.lone.is_some() {
            let mut failed = None;
            poll_fn(|cx| match self.poll_write(cx) {
                Ok(()) if self.pending.is_empty() && !self.unflushed && self.lone.is_none() => {
                    Poll::Ready(())
                }
                Ok(()) => Poll::Pending,
                Err(e) => {
                    failed = Some(e);
                    Poll::Ready(())
                }
            })
            .await;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        self.ws.send(msg).await
    }

    /// After the client's close: flush the automatic close reply, briefly.
    pub async fn finish(mut self, limit: Duration) {
        let reply = async {
            self.finish_lone().await?;
            self.ws.flush().await
        };
        let _ = tokio::time::timeout(limit, reply).await;
    }
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
