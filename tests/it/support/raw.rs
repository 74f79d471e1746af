//! `RawWs`: a hand-framed WebSocket client that never answers pings on its own, for
//! heartbeat tests (tungstenite always replies to pings while reading).

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

pub const OP_TEXT: u8 = 1;
pub const OP_CLOSE: u8 = 8;
pub const OP_PING: u8 = 9;

impl RawWs {
    pub async fn connect(addr: std::net::SocketAddr, path_and_query: &str) -> Self {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut me = Self { stream, buf: Vec::new() };
        let end = loop {
            if let Some(i) = me.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            me.fill().await;
        };
        let head = String::from_utf8_lossy(&me.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        me.buf.drain(..end);
        me
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
            .await
            .expect("timed out reading")
            .unwrap();
        assert!(n > 0, "connection closed before a full frame");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Sends one masked text frame (payload < 126 bytes).
    pub async fn send_text(&mut self, text: &str) {
        let payload = text.as_bytes();
        assert!(payload.len() < 126);
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x80 | OP_TEXT, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.unwrap();
    }

    /// Sends bytes as they are (hand-made frames, including broken ones).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads one server frame: (opcode, payload).
    pub async fn read_frame(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.buf.len() >= 2 {
                let op = self.buf[0] & 0x0f;
                let len7 = (self.buf[1] & 0x7f) as usize;
                let (len, hdr) = match len7 {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n, 2),
                };
                if len != usize::MAX && self.buf.len() >= hdr + len {
                    let payload = self.buf[hdr..hdr + len].to_vec();
                    self.buf.drain(..hdr + len);
                    return (op, payload);
                }
            }
            self.fill().await;
        }
    }

    /// Reads frames until a close frame; returns its code and the opcodes seen before it.
    pub async fn read_until_close(&mut self) -> (u16, Vec<u8>) {
        let mut seen = Vec::new();
        loop {
            let (op, payload) = self.read_frame().await;
            if op == OP_CLOSE {
                return (u16::from_be_bytes([payload[0], payload[1]]), seen);
            }
            seen.push(op);
        }
    }
}
