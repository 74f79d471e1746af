//! The accept loop: one task per TCP connection on the node's tracker, served by hyper's
//! HTTP/1 with upgrades and a header-read timeout, over a `ConnIo` (JSON bodies for hyper's
//! own parse-error answers, lingering close); stops accepting on shutdown and lets
//! in-flight requests finish (`graceful_shutdown`). Upgraded sockets are not hyper's any
//! more: sessions are closed through the Hub. A client's share of `max_connections_per_ip`
//! (IPv6: per /64) is taken per connection, or, on a trusted proxy's connections, per
//! request for the client it forwards (an upgrade keeps that share for the WebSocket).
//!
//! Owns: sockets until they are upgraded.  May use: state, http (router, client_ip), conn_io,
//! budget, rate_limit (client blocks), auth (`canonical`), error, shutdown, config, refusals.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpSocket},
};

use crate::{
    budget::{ConnPermit, RequestClient},
    conn_io::ConnIo,
    error::ApiError,
    http::{client_ip::client_ip, route, Listener},
    rate_limit::client_block,
    refusals::{self, Refused},
    state::AppState,
};

/// Binds a listener with an explicit backlog (tokio's `bind` uses 128, too small for a storm).
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Accepts connections until shutdown, serving each on the node's task tracker.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, which: Listener) {
    let token = state.shutdown.token.clone();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = token.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(permit) = admit(&state, which, peer.ip()) else {
            state.shutdown.tracker.spawn(refuse(stream));
            continue;
        };
        let st = state.clone();
        state.shutdown.tracker.spawn(serve_connection(stream, peer, st, which, permit));
    }
}

/// Takes the listener's and the peer's share for a new connection, or counts why not.
fn admit(state: &AppState, which: Listener, peer: IpAddr) -> Option<ConnPermit> {
    let (permits, limit) = match which {
        Listener::Public => (&state.connections, "max_connections"),
        Listener::Admin => (&state.admin_connections, "admin_connections"),
    };
    let Ok(connection) = permits.clone().try_acquire_owned() else {
        state.metrics.rate_limited(limit);
        refusals::refused(Refused::Connection, limit, peer, None);
        return None;
    };
    let peer = crate::auth::canonical(peer);
    let trusted = state.config.trusted_proxies.iter().any(|net| net.contains(&peer));
    let peer_share = match which {
        Listener::Public if !trusted => match state.per_ip.try_take(client_block(peer)) {
            Some(h) => Some(h),
            None => {
                state.metrics.rate_limited("connections_per_ip");
                refusals::refused(Refused::Connection, "connections_per_ip", peer, None);
                return None;
            }
        },
        _ => None,
    };
    Some(ConnPermit::new(connection, peer_share))
}

/// Answers a connection over `max_connections` with a 503 and closes it (within a second).
async fn refuse(mut stream: tokio::net::TcpStream) {
    let body = ApiError::overloaded().body();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// On a trusted proxy's connection, the share of the client it forwards (none when it
/// forwards no other address); 429 when that client is at `max_connections_per_ip`.
fn forwarded_client(
    state: &AppState,
    proxy: IpAddr,
    req: &hyper::Request<hyper::body::Incoming>,
) -> Result<Option<RequestClient>, ApiError> {
    let client = client_ip(proxy, req.headers(), &state.config.trusted_proxies);
    if client == proxy {
        return Ok(None);
    }
    match state.per_ip.try_take(client_block(client)) {
        Some(held) => Ok(Some(RequestClient::new(held))),
        None => {
            state.metrics.rate_limited("connections_per_ip");
            Err(ApiError::rate_limited(1)
                .with_message("Too many open connections from this address."))
        }
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    state: Arc<AppState>,
    which: Listener,
    permit: ConnPermit,
) {
    let token = state.shutdown.token.clone();
    let cfg = state.config.clone();
    let request_timeout = cfg.request_timeout;
    let peer_ip = crate::auth::canonical(peer.ip());
    let behind_proxy =
        which == Listener::Public && cfg.trusted_proxies.iter().any(|net| net.contains(&peer_ip));
    let svc = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(permit.clone());
        let st = state.clone();
        async move {
            // Held (by this future) until the response is ready.
            let _client = match behind_proxy {
                false => None,
                true => match forwarded_client(&st, peer_ip, &req) {
                    Ok(held) => held.inspect(|h| {
                        req.extensions_mut().insert(h.clone());
                    }),
                    Err(e) => return Ok(e.into_response()),
                },
            };
            let resp =
                match tokio::time::timeout(request_timeout, route(req, peer, st.clone(), which))
                    .await
                {
                    Ok(resp) => resp,
                    Err(_) => {
                        st.metrics.rate_limited("request_timeout");
                        ApiError::request_timeout().into_response()
                    }
                };
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(cfg.max_header_bytes)
        .serve_connection(TokioIo::new(ConnIo::new(stream, cfg.max_header_bytes)), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "http connection ended with an error");
    }
}
