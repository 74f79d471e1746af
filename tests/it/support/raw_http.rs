//! Raw HTTP/1.1 over a TCP socket bound to a chosen loopback source (127.0.0.x are all
//! loopback on Linux): for clients that hold connections idle, trickle bodies, or read a
//! refusal the server writes before closing.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

/// A TCP connection to `addr` from `src` (e.g. "127.0.0.2").
pub async fn connect_from(src: &str, addr: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(src.parse().unwrap(), 0)).unwrap();
    let stream = sock.connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// The head of a POST of `content_length` JSON bytes, with `extra` header lines.
pub fn post_head(path: &str, bearer: &str, content_length: usize, extra: &[&str]) -> String {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bearer}\r\n\
         Content-Type: application/json\r\nContent-Length: {content_length}\r\n"
    );
    for h in extra {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

/// A valid JSON object of exactly `len` bytes (`{`, spaces, `}`).
pub fn padded_object(len: usize) -> Vec<u8> {
    assert!(len >= 2);
    let mut v = vec![b' '; len];
    v[0] = b'{';
    v[len - 1] = b'}';
    v
}

/// Writes one byte of `body` every `every`, ignoring write errors (the server may cut the
/// connection), in a task of its own that keeps the write half open until it is aborted.
pub fn trickle(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    body: Vec<u8>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for b in body {
            tokio::time::sleep(every).await;
            if w.write_all(&[b]).await.is_err() {
                return;
            }
        }
        // Keep the write side open: hyper drops a connection whose client half-closes.
        std::future::pending::<()>().await;
        drop(w);
    })
}

/// Reads one response (head and a `Content-Length` body, or to EOF without one) within
/// `within`; returns (status, head, body). Status 0: the connection closed with no response.
pub async fn read_response(
    r: &mut (impl AsyncReadExt + Unpin),
    within: Duration,
) -> (u16, String, String) {
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if len.is_some_and(|n| buf.len() >= end + n) {
                    let body = String::from_utf8_lossy(&buf[end..end + len.unwrap()]).into_owned();
                    return (head, body);
                }
            }
            match r.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
                    return (head.to_ascii_lowercase(), body.to_owned());
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let (head, body) = tokio::time::timeout(within, read).await.expect("a response in time");
    let status = head
        .strip_prefix("http/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, body)
}
