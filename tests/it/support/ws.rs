//! `WsClient`: tokio-tungstenite with awaited expectations (every wait has a timeout).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::{
    client_async,
    tungstenite::{self, Message},
    MaybeTlsStream, WebSocketStream,
};

pub const WAIT: Duration = Duration::from_secs(10);

pub struct WsClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// The outcome of a refused upgrade: status and JSON body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub www_authenticate: Option<String>,
    pub body: Value,
}

impl WsClient {
    /// Connects; panics unless the server answered 101.
    pub async fn connect(url: &str) -> Self {
        match Self::try_connect(url).await {
            Ok(c) => c,
            Err(r) => panic!("upgrade refused: {r:?}"),
        }
    }

    /// Connects, returning the refusal (status, header, JSON body) when there is no upgrade.
    pub async fn try_connect(url: &str) -> Result<Self, Refused> {
        match tokio_tungstenite::connect_async(url).await {
            Ok((ws, resp)) => {
                assert_eq!(resp.status(), 101);
                Ok(Self { ws })
            }
            Err(tungstenite::Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_deref()
                    .map(|b| serde_json::from_slice(b).expect("JSON error body"))
                    .unwrap_or(Value::Null);
                Err(Refused {
                    status: resp.status().as_u16(),
                    www_authenticate: resp
                        .headers()
                        .get("www-authenticate")
                        .map(|v| v.to_str().unwrap().to_owned()),
                    body,
                })
            }
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    /// Connects with a small receive buffer (so a client that stops reading backs up fast).
    pub async fn connect_small_rcvbuf(addr: std::net::SocketAddr, url: &str) -> Self {
        let sock = TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let stream = sock.connect(addr).await.unwrap();
        let (ws, _) = client_async(url, MaybeTlsStream::Plain(stream)).await.expect("upgrade");
        Self { ws }
    }

    /// Connects from a chosen local address (e.g. 127.0.0.2: another client IP on loopback).
    pub async fn try_connect_from(
        src: std::net::IpAddr,
        addr: std::net::SocketAddr,
        url: &str,
    ) -> Result<Self, Refused> {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(std::net::SocketAddr::new(src, 0)).unwrap();
        let stream = sock.connect(addr).await.unwrap();
        match client_async(url, MaybeTlsStream::Plain(stream)).await {
            Ok((ws, _)) => Ok(Self { ws }),
            Err(tungstenite::Error::Http(resp)) => Err(Refused {
                status: resp.status().as_u16(),
                www_authenticate: None,
                body: resp
                    .body()
                    .as_deref()
                    .map(|b| serde_json::from_slice(b).unwrap())
                    .unwrap_or(Value::Null),
            }),
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    /// Connects, authenticates with the same token and returns the `auth.success` message.
    pub async fn authed(url: &str, token: &str) -> (Self, Value) {
        let mut c = Self::connect(url).await;
        c.send(json!({"type": "auth", "token": token})).await;
        let ok = c.recv().await;
        assert_eq!(ok["type"], "auth.success", "{ok}");
        (c, ok)
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.expect("send");
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws.send(Message::text(s.to_owned())).await.expect("send");
    }

    /// The next JSON text message (pings are answered by tungstenite and skipped).
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a message");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(&t).expect("JSON message")
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    /// Reads until the server's close frame and returns its code (data frames are skipped).
    pub async fn expect_close(&mut self) -> u16 {
        self.close_after(|_| {}).await
    }

    /// Like `expect_close`, handing every text message seen first to `on_text`.
    pub async fn close_after(&mut self, mut on_text: impl FnMut(Value)) -> u16 {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for close");
            let code = match msg {
                Some(Ok(Message::Close(Some(f)))) => u16::from(f.code),
                Some(Ok(Message::Close(None))) => 1005,
                Some(Ok(Message::Text(t))) => {
                    on_text(serde_json::from_str(&t).expect("JSON"));
                    continue;
                }
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            };
            // Complete the closing handshake: send tungstenite's queued close reply.
            let _ = tokio::time::timeout(WAIT, self.ws.flush()).await;
            return code;
        }
    }
}

/// The offsets of the events among `msgs`, in order.
pub fn event_offsets(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().filter(|m| m["type"] == "event").filter_map(|m| m["offset"].as_u64()).collect()
}

impl WsClient {
    /// Every message until the event with offset `last` (included).
    pub async fn recv_until_offset(&mut self, last: u64) -> Vec<Value> {
        let mut got = Vec::new();
        loop {
            let m = self.recv().await;
            let done = m["type"] == "event" && m["offset"] == last;
            got.push(m);
            if done {
                return got;
            }
        }
    }
}
