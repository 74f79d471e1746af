//! The conformance echo endpoint (`GET /conformance/echo`), compiled only with the
//! `conformance` cargo feature and never in the default build: it echoes every message
//! through the same WebSocket config and socket pump (`Conn`) as `/v1/ws`, so an outside
//! suite (Autobahn's cases, run by `kosoku`) checks the framing, UTF-8, fragmentation,
//! control-frame and close handling that real sessions use. No auth, no Hub.
//!
//! May use: state (ws config), conn, outbox, error.  Never: exist in a default build.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::{
    tungstenite::{handshake::derive_accept_key, protocol::Role, Message},
    WebSocketStream,
};

use super::conn::{Conn, Step};
use crate::{error::ApiError, outbox::Outbox, state::AppState};

/// Autobahn's largest messages (cases 9.*) are 16 MiB.
const ECHO_MAX_MESSAGE: usize = 16 * 1024 * 1024;

pub async fn handle(mut req: Request<Incoming>, state: &Arc<AppState>) -> Response<Full<Bytes>> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return ApiError::upgrade_required().into_response();
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let st = state.clone();
    state.shutdown.tracker.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let cfg = st
            .ws_config()
            .max_message_size(Some(ECHO_MAX_MESSAGE))
            .max_frame_size(Some(ECHO_MAX_MESSAGE))
            .max_write_buffer_size(ECHO_MAX_MESSAGE * 2);
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(cfg)).await;
        let outbox = Arc::new(Outbox::new(st.config.outbox_capacity));
        let c = &st.config;
        let mut conn =
            Conn::new(ws, outbox.clone(), c.ping_interval, c.pong_timeout, Default::default());
        loop {
            match conn.next_step().await {
                Step::Message(Message::Text(text)) => {
                    outbox.push(text);
                }
                Step::Message(Message::Binary(data)) => {
                    if conn.send_now(Message::Binary(data)).await.is_err() {
                        return;
                    }
                }
                Step::Message(_) | Step::Update => {}
                Step::Close(code) => return conn.close(code, c.close_timeout).await,
                Step::Gone => return conn.finish(c.close_timeout).await,
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, derive_accept_key(key.as_bytes()))
        .body(Full::default())
        .unwrap_or_else(|_| ApiError::internal().into_response())
}
