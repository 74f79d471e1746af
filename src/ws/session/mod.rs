//! One WebSocket session after the upgrade: the auth handshake (4001/4002), registration and
//! auto-subscription, the client-message loop (subscribe, unsubscribe, ping), key updates
//! (the grant the Hub holds for it, applied when nudged), and teardown.
//!
//! Owns: the session's subscriptions and its exit code.  May use: state, hub, outbox,
//! protocol, keys (`Principal`), broker, budget, slots, ids, scope, token, metrics, refusals,
//! control (to re-read a key that changed while registering).
//! Never: write to the socket except through `Conn`.
//! Invariants: `auth.success` is queued before any event; every exit path closes with one
//! `CloseCode` (or the client left first); the Registration guard always deregisters.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::{tungstenite::Message, WebSocketStream};
use tracing::Instrument;

mod channels;
mod resume;

use super::conn::{Conn, Step};
use crate::{
    broker::ChannelKey,
    budget::{ConnPermit, Held},
    hub::{Grant, Hub, SessionEntry},
    ids::{AccountId, ConnId, KeyId},
    keys::Principal,
    metrics::{CloseLabel, Metrics},
    outbox::{Outbox, Push},
    protocol::{close::CloseCode, ClientMessage, ServerMessage},
    refusals::{self, Refused},
    scope::{Environment, ScopeSet, Topic, TopicSet},
    slots::{self, Slot},
    state::AppState,
    token::TokenHash,
};
use governor::DefaultDirectRateLimiter;
use tokio::sync::OwnedSemaphorePermit;

/// Removes the session from the Hub (and its channels) however the session ends.
struct Registration {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    conn: ConnId,
    /// The session's queue: its identity in the Hub's channel lists.
    outbox: Arc<Outbox>,
    /// The session's channels: its environment and account, and the topics joined.
    env: Environment,
    account: AccountId,
    topics: TopicSet,
}

impl Registration {
    fn key(&self, topic: Topic) -> ChannelKey {
        ChannelKey::new(self.env, self.account.clone(), topic)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.leave(self.topics.iter().map(|t| self.key(t)), &self.outbox);
        self.hub.deregister(self.conn);
        self.metrics.connections_open.dec();
    }
}

struct Session {
    state: Arc<AppState>,
    outbox: Arc<Outbox>,
    reg: Registration,
    readable: TopicSet,
    /// Client-message rate (4008); `None` = unlimited. Boxed, like every input only the
    /// authentication needs (`Opening`), to keep the long-lived task small.
    messages: Option<Box<DefaultDirectRateLimiter>>,
    /// This session's share of the key's and account's connection caps.
    _slot: Option<Slot>,
}

/// What the upgrade handed over: the credential the first message must repeat, and the
/// permits this socket holds (its TCP connection's, and an unauthenticated-socket one that
/// is given back once the auth message has been handled).
pub struct Admission {
    pub expected: TokenHash,
    pub connection: Option<ConnPermit>,
    pub unauthenticated: Unauthenticated,
    /// When the `/v1/ws` request arrived (for the handshake-time histogram), before its
    /// credential was checked.
    pub started: std::time::Instant,
    /// Where the credential was checked from (for a ticket: the address that minted it),
    /// checked again when the key's allowlist changes; `None`: never checked.
    pub client: Option<std::net::IpAddr>,
    /// The most the stream may read whatever its key gains (a ticket's scopes).
    pub limit: ScopeSet,
}

/// An unauthenticated socket's shares: of the node's budget, its key's and its account's.
pub type Unauthenticated = (OwnedSemaphorePermit, Held<KeyId>, Held<AccountId>);

/// What only the authentication phase needs; boxed, and dropped when that phase ends.
struct Opening {
    principal: Principal,
    expected: TokenHash,
    unauthenticated: Unauthenticated,
    started: std::time::Instant,
}

/// Runs a session on an upgraded socket. `admission.expected` is the hash of the credential
/// checked before the upgrade; the first message must carry the same one.
///
/// Setup happens here, synchronously; the returned future owns only the session, its socket
/// and its permits (no second copy of its inputs), and boxes the phases that are short-lived
/// (authentication, handling a client message, closing) so an idle connection's task stays
/// small: this future lives as long as the connection, tens of thousands of times over.
pub fn run<S>(
    ws: WebSocketStream<S>,
    principal: Principal,
    admission: Admission,
    state: Arc<AppState>,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cfg = &state.config;
    let conn_id = ConnId::generate();
    let outbox = Arc::new(Outbox::new(cfg.outbox_capacity));
    let readable = principal.scopes.intersect(admission.limit).read_topics();
    state.hub.register(
        conn_id,
        SessionEntry {
            key_id: principal.key_id.clone(),
            secret: principal.secret,
            outbox: outbox.clone(),
            client: admission.client,
            limit: admission.limit,
            grant: Grant { readable, expires_at: principal.expires_at },
        },
    );
    // The key may have changed after its record was read for this connection and before
    // the session was registered: read it again.
    if state.hub.updated_since(&principal.key_id, admission.started) {
        state.control.spawn_refresh(principal.key_id.clone(), crate::broker::Done::none());
    }
    state.metrics.connections_open.inc();
    state.metrics.connections_total.inc();
    let reg = Registration {
        hub: state.hub.clone(),
        metrics: state.metrics.clone(),
        conn: conn_id,
        outbox: outbox.clone(),
        env: principal.environment,
        account: principal.account.clone(),
        topics: TopicSet::default(),
    };
    // Shutdown may have started between the upgrade and the registration above.
    if state.shutdown.token.is_cancelled() {
        outbox.close(CloseCode::GoingAway);
    }
    let mut conn = Conn::new(
        ws,
        outbox.clone(),
        cfg.ping_interval,
        cfg.pong_timeout,
        state.metrics.delivery_seconds.clone(),
    );
    conn.set_expiry(principal.expires_at.map(deadline_of));
    let messages = state.limits.message_limiter().map(Box::new);
    let span = tracing::debug_span!("ws", conn = %conn_id, key_id = %principal.key_id);
    let mut session = Session { state, outbox, reg, readable, messages, _slot: None };
    let opening = Box::new(Opening {
        principal,
        expected: admission.expected,
        unauthenticated: admission.unauthenticated,
        started: admission.started,
    });
    let connection = admission.connection;
    async move {
        let exit = match Box::pin(session.open(&mut conn, opening)).await {
            Ok(()) => session.serve(&mut conn).await,
            Err(step) => *step,
        };
        Box::pin(session.end(conn, exit)).await;
        drop(connection);
    }
    .instrument(span)
}

/// A wall-clock expiry as a tokio deadline (now if already past).
fn deadline_of(at: time::OffsetDateTime) -> tokio::time::Instant {
    let left = at - time::OffsetDateTime::now_utc();
    let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + left
}

impl Session {
    /// Takes a connection slot, waits for the auth message and authenticates it; gives the
    /// unauthenticated-socket permit back once that is decided.
    /// (The error is boxed: the result is held while `serve` runs.)
    async fn open<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        opening: Box<Opening>,
    ) -> Result<(), Box<Step>> {
        let Opening { principal, expected, unauthenticated, started } = *opening;
        let close = |code| Box::new(Step::Close(code));
        self.take_slot(&principal).await.map_err(close)?;
        let first = conn.first_message(self.state.config.auth_timeout).await.map_err(|step| {
            if matches!(step, Step::Close(CloseCode::AuthTimeout)) {
                self.state.metrics.auth_failure("ws_auth_timeout");
                refusals::refused_key(Refused::Stream, "ws_auth_timeout", &principal.key_id);
            }
            Box::new(step)
        })?;
        let authed = self.authenticate(first, &principal, &expected).await;
        if let Ok(Some(g)) = authed {
            conn.set_expiry(g.expires_at.map(deadline_of));
        }
        drop(unauthenticated);
        if authed.is_ok() {
            self.state.metrics.handshake_seconds.observe(started.elapsed().as_secs_f64());
        }
        authed.map(|_| ()).map_err(close)
    }

    /// Closes with the session's exit code (or completes the client's close).
    async fn end<S: AsyncRead + AsyncWrite + Unpin>(&self, conn: Conn<S>, exit: Step) {
        match exit {
            Step::Close(code) => {
                self.state.metrics.closes.get_or_create(&CloseLabel { code: code.code() }).inc();
                tracing::debug!(code = code.code(), "closing");
                conn.close(code, self.state.config.close_timeout).await;
            }
            Step::Gone | Step::Message(_) | Step::Update => {
                conn.finish(Duration::from_secs(1)).await
            }
        }
    }

    /// Takes a connection slot for the key and account; a race past a cap is 4029.
    async fn take_slot(&mut self, principal: &Principal) -> Result<(), CloseCode> {
        let (key, account, conn) = (&principal.key_id, &principal.account, self.reg.conn);
        match slots::acquire(&self.state.slots, key, account, conn, self.state.caps()).await {
            Ok(Ok(slot)) => {
                self._slot = Some(slot);
                Ok(())
            }
            Ok(Err(_full)) => {
                self.state.metrics.rate_limited("connections_race");
                refusals::refused_key(Refused::Stream, "connections_race", key);
                Err(CloseCode::TooManyConnections)
            }
            Err(e) => {
                tracing::warn!(error = %e, "connection slots unavailable");
                Err(CloseCode::TryAgainLater)
            }
        }
    }

    /// Checks the first message, queues `auth.success`, then subscribes every readable topic
    /// (as of the key's latest record this node applied: returned, for the expiry).
    async fn authenticate(
        &mut self,
        first: Message,
        principal: &Principal,
        expected: &TokenHash,
    ) -> Result<Option<Grant>, CloseCode> {
        let Message::Text(text) = first else {
            return Err(self.auth_failed("ws_auth_invalid_message", principal));
        };
        let (credential, resume) = match ClientMessage::parse(&text) {
            Ok(ClientMessage::Auth { token: Some(t), ticket: None, resume }) => (t, resume),
            Ok(ClientMessage::Auth { token: None, ticket: Some(t), resume }) => (t, resume),
            _ => return Err(self.auth_failed("ws_auth_invalid_message", principal)),
        };
        if !TokenHash::of(&credential).ct_eq(expected) {
            return Err(self.auth_failed("ws_auth_mismatch", principal));
        }
        // The key may have changed while the client took its time to authenticate.
        let granted = self.regrant();
        if self.readable.is_empty() {
            return Err(CloseCode::KeyRevoked);
        }
        let topics = self.readable.to_vec();
        let (connection_id, key_id) = (self.reg.conn.to_string(), principal.key_id.to_string());
        let (environment, channels) = (principal.environment, topics.clone());
        let reply = move |positions| ServerMessage::AuthSuccess {
            message: "Authenticated successfully",
            connection_id,
            key_id,
            environment,
            channels,
            positions,
        };
        self.join_all(&topics, None, resume.as_ref(), reply)
            .await
            .map_err(|_| CloseCode::TryAgainLater)?;
        tracing::debug!("authenticated");
        Ok(granted)
    }

    fn auth_failed(&self, why: &'static str, principal: &Principal) -> CloseCode {
        self.state.metrics.auth_failure(why);
        refusals::refused_key(Refused::Stream, why, &principal.key_id);
        CloseCode::AuthFailed
    }

    /// The message loop after authentication; returns how the session ended.
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&mut self, conn: &mut Conn<S>) -> Step {
        loop {
            let step = conn.next_step().await;
            if matches!(step, Step::Message(_))
                && self.messages.as_ref().is_some_and(|m| m.check().is_err())
            {
                self.state.metrics.rate_limited("client_messages");
                return Step::Close(CloseCode::RateLimited);
            }
            match step {
                Step::Message(Message::Text(text)) => Box::pin(self.on_text(&text)).await,
                Step::Message(_) => self.send(ServerMessage::error(
                    "invalid_message",
                    "only JSON text messages are accepted",
                    None,
                )),
                Step::Update => match self.regrant() {
                    Some(g) if g.readable.is_empty() => return Step::Close(CloseCode::KeyRevoked),
                    Some(g) => conn.set_expiry(g.expires_at.map(deadline_of)),
                    None => {}
                },
                other => return other,
            }
        }
    }

    async fn on_text(&mut self, text: &str) {
        match ClientMessage::parse(text) {
            Ok(ClientMessage::Ping) => self.send(ServerMessage::Pong),
            Ok(ClientMessage::Subscribe { channels, events, resume }) => {
                self.subscribe(&channels, events.as_deref(), resume.as_ref()).await
            }
            Ok(ClientMessage::Unsubscribe { channels }) => self.unsubscribe(&channels),
            Ok(ClientMessage::Auth { .. }) => {
                self.send(ServerMessage::error("invalid_message", "already authenticated", None));
            }
            Err(why) => self.send(ServerMessage::error("invalid_message", why, None)),
        }
    }

    /// Queues a reply; a client too slow to take its own replies is a slow consumer.
    fn send(&self, msg: ServerMessage) {
        if self.outbox.push(msg.to_frame()) == Push::Full
            && self.outbox.close(CloseCode::SlowConsumer)
        {
            self.state.metrics.slow_consumer_closes.inc();
        }
    }
}
