//! `ConnIo`: the TCP socket under hyper's HTTP/1 connection, doing two things hyper does not.
//! It replaces hyper's bodiless answers to requests it cannot parse (400 for malformed
//! framing or headers, 414, 431) with the SPEC §3 JSON error; and it closes lingeringly:
//! FIN first, then it reads and discards what the client still sends, for a bounded time and
//! amount, so that a client still sending a body we refused reads our answer, not a reset.
//!
//! Owns: the socket until hyper hands it to an upgrade.  May use: error (the JSON bodies),
//! tokio.  Never: parse requests (hyper does).
//! Invariants: once a `101` has gone out, reads and writes go straight to the socket (one
//! branch per write) and shutdown does not linger; a normal response costs one prefix
//! comparison per write and no allocation.

use std::{
    future::Future,
    io::{self, IoSlice},
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::{Instant, Sleep},
};

use crate::error::ApiError;

/// The longest a closing connection reads on (nginx: `lingering_time` 30 s).
const LINGER_TIME: Duration = Duration::from_secs(5);
/// A closing connection stops reading after this long without a byte (nginx:
/// `lingering_timeout` 5 s; a client that reads our answer closes within a round trip).
const LINGER_IDLE: Duration = Duration::from_secs(1);
/// At most this much is read and discarded from a closing connection.
const LINGER_BYTES: usize = 16 << 20;

/// The socket hyper serves a connection on (see the module doc).
pub struct ConnIo {
    tcp: TcpStream,
    /// False once a `101 Switching Protocols` has been written: the socket is a WebSocket's.
    http: bool,
    /// `max_header_bytes`, named in the 431's message.
    max_header_bytes: usize,
    /// A substituted error response, and how much of it is written (boxed, like `linger`:
    /// rare, and every idle socket carries the field).
    pending: Option<Box<(Vec<u8>, usize)>>,
    /// Set when shutdown starts.
    linger: Option<Box<Linger>>,
}

/// A lingering close in progress.
struct Linger {
    /// The write side is shut (FIN sent).
    shut: bool,
    until: Instant,
    timer: Pin<Box<Sleep>>,
    discarded: usize,
}

impl ConnIo {
    pub fn new(tcp: TcpStream, max_header_bytes: usize) -> Self {
        Self { tcp, http: true, max_header_bytes, pending: None, linger: None }
    }

    /// Looks at the start of a write: a `101` ends HTTP; hyper's bodiless parse-error
    /// answer (`alone` in the write) is replaced. Returns the length consumed if replaced.
    fn inspect(&mut self, head: &[u8], alone: bool) -> Option<usize> {
        let status = head.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
        if status == b"101" {
            self.http = false;
            return None;
        }
        if !alone || !matches!(status, b"400" | b"414" | b"431") {
            return None;
        }
        self.pending = Some(Box::new((json_answer(head, self.max_header_bytes)?, 0)));
        Some(head.len())
    }

    /// Writes out a substituted response, if one is pending.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(pending) = &mut self.pending {
            let (bytes, done) = &mut **pending;
            if *done == bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Shuts the write side, then discards input until EOF, an error, `LINGER_IDLE` without
    /// a byte, `LINGER_TIME` or `LINGER_BYTES`; the socket is closed when hyper drops it.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let linger = self.linger.get_or_insert_with(|| {
            let until = Instant::now() + LINGER_TIME;
            let timer = Box::pin(tokio::time::sleep_until(until));
            Box::new(Linger { shut: false, until, timer, discarded: 0 })
        });
        if !linger.shut {
            ready!(Pin::new(&mut self.tcp).poll_shutdown(cx))?;
            linger.shut = true;
            linger.timer.as_mut().reset((Instant::now() + LINGER_IDLE).min(linger.until));
        }
        let mut scratch = [0u8; 8192];
        let mut got_bytes = false;
        while linger.discarded < LINGER_BYTES {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.tcp).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    linger.discarded += buf.filled().len();
                    got_bytes = true;
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    if got_bytes {
                        let idle = (Instant::now() + LINGER_IDLE).min(linger.until);
                        linger.timer.as_mut().reset(idle);
                    }
                    return linger.timer.as_mut().poll(cx).map(Ok);
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The JSON response for hyper's automatic answer `head` (a status line and headers with
/// `content-length: 0`, nothing after): the same status line and other headers (`date`),
/// then content type, `connection: close`, the length and the SPEC §3 body.
fn json_answer(head: &[u8], max_header_bytes: usize) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?.strip_suffix("\r\n\r\n")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let error = match status_line.get(9..12)? {
        "400" => ApiError::malformed_request(),
        "414" => ApiError::uri_too_long(),
        "431" => ApiError::headers_too_large(max_header_bytes),
        _ => return None,
    };
    let mut out = format!("{status_line}\r\n");
    let mut bodiless = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("content-length") {
            bodiless = value.trim() == "0";
        } else if !name.eq_ignore_ascii_case("connection") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    if !bodiless {
        return None;
    }
    let body = error.body();
    out.push_str("content-type: application/json\r\ncache-control: no-store\r\n");
    out.push_str(&format!("connection: close\r\ncontent-length: {}\r\n\r\n{body}", body.len()));
    Some(out.into_bytes())
}

// === impl ConnIo ===

impl AsyncRead for ConnIo {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if me.http {
            ready!(me.poll_pending(cx))?;
            if let Some(n) = me.inspect(buf, true) {
                return replaced(me.poll_pending(cx), n);
            }
        }
        Pin::new(&mut me.tcp).poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if me.http {
            ready!(me.poll_pending(cx))?;
            let mut written = bufs.iter().filter(|b| !b.is_empty());
            if let Some(first) = written.next() {
                let alone = written.next().is_none();
                if let Some(n) = me.inspect(first, alone) {
                    return replaced(me.poll_pending(cx), n);
                }
            }
        }
        Pin::new(&mut me.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.http {
            ready!(me.poll_pending(cx))?;
        }
        Pin::new(&mut me.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !me.http {
            return Pin::new(&mut me.tcp).poll_shutdown(cx);
        }
        ready!(me.poll_pending(cx))?;
        me.poll_linger(cx)
    }
}

/// A replaced write counts as written even while the replacement is still going out
/// (`poll_flush` finishes it); only an error is reported at once.
fn replaced(writing: Poll<io::Result<()>>, consumed: usize) -> Poll<io::Result<usize>> {
    match writing {
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        _ => Poll::Ready(Ok(consumed)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYPER_431: &[u8] =
        b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n\
                               content-length: 0\r\ndate: Wed, 02 Dec 2026 17:25:16 GMT\r\n\r\n";

    #[test]
    fn hypers_bodiless_answer_becomes_the_json_error() {
        let out = String::from_utf8(json_answer(HYPER_431, 16384).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{head}");
        assert!(head.contains("\r\ndate: Wed, 02 Dec 2026 17:25:16 GMT\r\n"), "{head}");
        assert_eq!(head.matches("connection: close").count(), 1, "{head}");
        assert!(head.ends_with(&format!("content-length: {}", body.len())), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "headers_too_large");
        assert!(v["error"]["message"].as_str().unwrap().contains("16384"));
    }

    #[test]
    fn only_bodiless_parse_error_answers_are_replaced() {
        // Our own 400s carry a body; other statuses and trailing bytes are left alone.
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n";
        assert!(json_answer(ours, 1).is_none());
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert!(json_answer(ok, 1).is_none());
        let mut with_body = HYPER_431.to_vec();
        with_body.extend_from_slice(b"x");
        assert!(json_answer(&with_body, 1).is_none());
        let bad = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let out = String::from_utf8(json_answer(bad, 1).unwrap()).unwrap();
        assert!(out.contains("\"malformed_request\""), "{out}");
    }
}
