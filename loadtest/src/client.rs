//! A minimal WebSocket client for load: hand-written framing over a `TcpStream` bound to a
//! chosen 127.0.0.x source, so one process can hold tens of thousands of sockets and read
//! a million frames a second without a full JSON parse per frame.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

pub const OP_TEXT: u8 = 1;
pub const OP_CLOSE: u8 = 8;
pub const OP_PING: u8 = 9;

pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// How an authentication attempt ended.
#[derive(Debug)]
pub enum AuthError {
    Io(io::Error),
    /// The upgrade was refused with this HTTP status.
    Refused(u16),
    /// The server closed the socket with this code.
    Closed(u16),
}

impl From<io::Error> for AuthError {
    fn from(e: io::Error) -> Self {
        AuthError::Io(e)
    }
}

/// Where and how clients connect: the server, the key, and how long a handshake may take.
#[derive(Clone, Debug)]
pub struct Dial {
    pub addr: SocketAddr,
    pub token: Arc<str>,
    pub timeout: Duration,
}

/// Connects from `src`, upgrades `/v1/ws?token=…`, sends the auth message and waits for
/// `auth.success`, all within `dial.timeout` (else an `Io` error of kind `TimedOut`).
pub async fn connect_authed(dial: &Dial, src: IpAddr) -> Result<Conn, AuthError> {
    connect_authed_with(dial, src, None).await
}

/// Like `connect_authed`, with a fixed receive buffer (a stalled client then backs up the
/// server after that many bytes instead of the kernel's autotuned megabytes).
pub async fn connect_authed_with(
    dial: &Dial,
    src: IpAddr,
    rcvbuf: Option<u32>,
) -> Result<Conn, AuthError> {
    let handshake = handshake(dial.addr, src, &dial.token, rcvbuf, None);
    bounded(dial, handshake).await.map(|(conn, _)| conn)
}

/// Like `connect_authed`, with `extra` (e.g. `"resume":{…}`) added to the auth message's
/// fields; also returns the payload of `auth.success` (its `positions`, SPEC §7).
pub async fn connect_authed_reply(
    dial: &Dial,
    src: IpAddr,
    extra: Option<&str>,
) -> Result<(Conn, Vec<u8>), AuthError> {
    bounded(dial, handshake(dial.addr, src, &dial.token, None, extra)).await
}

async fn bounded<T>(
    dial: &Dial,
    handshake: impl std::future::Future<Output = Result<T, AuthError>>,
) -> Result<T, AuthError> {
    tokio::time::timeout(dial.timeout, handshake).await.unwrap_or_else(|_| {
        Err(AuthError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no auth.success within {:?}", dial.timeout),
        )))
    })
}

async fn handshake(
    addr: SocketAddr,
    src: IpAddr,
    token: &str,
    rcvbuf: Option<u32>,
    extra: Option<&str>,
) -> Result<(Conn, Vec<u8>), AuthError> {
    let sock = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    sock.set_reuseaddr(true)?;
    if let Some(size) = rcvbuf {
        sock.set_recv_buffer_size(size)?;
    }
    sock.bind(SocketAddr::new(src, 0))?;
    let mut stream = sock.connect(addr).await?;
    stream.set_nodelay(true)?;
    let req = format!(
        "GET /v1/ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    let mut conn = Conn { stream, buf: vec![0; 16 * 1024], start: 0, end: 0 };
    let head_end = loop {
        if let Some(i) = memchr::memmem::find(&conn.buf[..conn.end], b"\r\n\r\n") {
            break i + 4;
        }
        conn.fill().await?;
    };
    let status = std::str::from_utf8(&conn.buf[9..12.min(head_end)])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status != 101 {
        return Err(AuthError::Refused(status));
    }
    conn.start = head_end;
    let extra = extra.map_or(String::new(), |e| format!(",{e}"));
    conn.send_text(&format!("{{\"type\":\"auth\",\"token\":\"{token}\"{extra}}}")).await?;
    loop {
        let (op, payload) = conn.next().await?;
        match op {
            OP_TEXT if memchr::memmem::find(payload, b"auth.success").is_some() => {
                let reply = payload.to_vec();
                return Ok((conn, reply));
            }
            OP_CLOSE => return Err(AuthError::Closed(close_code(payload))),
            _ => {}
        }
    }
}

pub fn close_code(payload: &[u8]) -> u16 {
    if payload.len() >= 2 {
        u16::from_be_bytes([payload[0], payload[1]])
    } else {
        1005
    }
}

impl Conn {
    async fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 && self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.end += n;
        Ok(())
    }

    /// The next frame from the server (unmasked): its opcode and payload.
    pub async fn next(&mut self) -> io::Result<(u8, &[u8])> {
        loop {
            if let Some((op, hdr, len)) = parse_header(&self.buf[self.start..self.end]) {
                if self.end - self.start >= hdr + len {
                    let at = self.start + hdr;
                    self.start = at + len;
                    return Ok((op, &self.buf[at..at + len]));
                }
                let need = hdr + len;
                if need > self.buf.len() {
                    self.buf.resize(need.next_power_of_two(), 0);
                }
            }
            self.fill().await?;
        }
    }

    async fn send_frame(&mut self, op: u8, payload: &[u8]) -> io::Result<()> {
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | op);
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await
    }

    pub async fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.send_frame(OP_TEXT, text.as_bytes()).await
    }

    pub async fn pong(&mut self, payload: Vec<u8>) -> io::Result<()> {
        self.send_frame(0xA, &payload).await
    }

    /// Sends a close frame (1000) and drops the socket (at once if the send buffer is full).
    pub async fn close(mut self) {
        let code = 1000u16.to_be_bytes();
        let _ =
            tokio::time::timeout(Duration::from_secs(1), self.send_frame(OP_CLOSE, &code)).await;
    }
}

/// (opcode, header length, payload length) when the buffer holds a full header.
fn parse_header(b: &[u8]) -> Option<(u8, usize, usize)> {
    if b.len() < 2 {
        return None;
    }
    let op = b[0] & 0x0f;
    match b[1] & 0x7f {
        126 if b.len() >= 4 => Some((op, 4, u16::from_be_bytes([b[2], b[3]]) as usize)),
        127 if b.len() >= 10 => {
            Some((op, 10, u64::from_be_bytes(b[2..10].try_into().ok()?) as usize))
        }
        126 | 127 => None,
        n => Some((op, 2, n as usize)),
    }
}

/// The integer after `"name":` in an event frame (no full JSON parse on the hot path).
pub fn field(payload: &[u8], name: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(payload, name)? + name.len();
    let digits = payload[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&payload[at..at + digits]).ok()?.parse().ok()
}
