//! `LoneFrame`: a reply (not an event) that is the only frame waiting, written straight to
//! the socket — its header and the shared payload in one vectored write — instead of being
//! copied into tungstenite's write buffer. That buffer's capacity never shrinks, so a single 700 B
//! `auth.success` (nine topics with their positions) would otherwise cost every idle socket a
//! 768 B allocation for as long as it lives (BENCHMARKS.md, idle memory). Events and
//! batches still go through tungstenite, one write for many frames.
//!
//! May use: tungstenite (the frame header format only), tokio io.
//! Never: touch the codec's state. The pump starts one only after a completed flush, when
//! tungstenite holds nothing that could interleave with it.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{ready, Context, Poll},
};

use tokio::io::AsyncWrite;
use tokio_tungstenite::tungstenite::{
    protocol::frame::{
        coding::{Data, OpCode},
        FrameHeader,
    },
    Utf8Bytes,
};

/// The longest header of an unmasked frame (a server's): 2 bytes and a 64-bit length.
const MAX_HEADER: usize = 10;

pub struct LoneFrame {
    header: [u8; MAX_HEADER],
    header_len: usize,
    payload: Utf8Bytes,
    /// Bytes of header and payload already written.
    written: usize,
}

impl LoneFrame {
    /// A final, unmasked text frame carrying `payload`.
    pub fn text(payload: Utf8Bytes) -> Self {
        let mut header = [0u8; MAX_HEADER];
        let mut out = &mut header[..];
        let head = FrameHeader { opcode: OpCode::Data(Data::Text), ..FrameHeader::default() };
        // Cannot fail: an unmasked header fits in MAX_HEADER bytes.
        let _ = head.format(payload.len() as u64, &mut out);
        let header_len = MAX_HEADER - out.len();
        Self { header, header_len, payload, written: 0 }
    }

    /// Writes what is left; `Ready(Ok)` once the whole frame is in the socket.
    pub fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let body = self.payload.as_bytes();
        while self.written < self.header_len + body.len() {
            let (head, rest) = match self.written.checked_sub(self.header_len) {
                None => (&self.header[self.written..self.header_len], body),
                Some(done) => (&[][..], &body[done..]),
            };
            let bufs = [IoSlice::new(head), IoSlice::new(rest)];
            let n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &bufs))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Pin::new(io).poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use tokio::io::AsyncReadExt;
    use tokio_tungstenite::{
        tungstenite::{protocol::Role, Message},
        WebSocketStream,
    };

    use super::*;

    /// Writes `frames` through a pipe of `pipe` bytes (many partial writes when small).
    async fn through_pipe(frames: Vec<String>, pipe: usize) -> Vec<String> {
        let (mut server, client) = tokio::io::duplex(pipe);
        let n = frames.len();
        let writer = tokio::spawn(async move {
            for f in frames {
                let mut lone = LoneFrame::text(f.into());
                std::future::poll_fn(|cx| lone.poll_write(&mut server, cx)).await.unwrap();
            }
            server
        });
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let mut got = Vec::new();
        while got.len() < n {
            match client.next().await {
                Some(Ok(Message::Text(t))) => got.push(t.to_string()),
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
        drop(writer.await.unwrap());
        got
    }

    #[tokio::test]
    async fn frames_of_every_length_format_arrive_whole_and_in_order_through_partial_writes() {
        // 7-bit, 16-bit and 64-bit lengths, and the boundaries between them.
        let sizes = [0usize, 1, 125, 126, 127, 700, 65_535, 65_536, 200_000];
        let frames: Vec<String> = sizes.iter().map(|&n| "x".repeat(n)).collect();
        for pipe in [7, 64, 1 << 20] {
            assert_eq!(through_pipe(frames.clone(), pipe).await, frames, "pipe of {pipe} bytes");
        }
    }

    #[tokio::test]
    async fn the_header_is_what_tungstenite_writes() {
        let (mut server, mut client) = tokio::io::duplex(1 << 16);
        let mut lone = LoneFrame::text("héllo".into());
        std::future::poll_fn(|cx| lone.poll_write(&mut server, cx)).await.unwrap();
        drop(server);
        let mut wire = Vec::new();
        client.read_to_end(&mut wire).await.unwrap();
        let mut expected = Vec::new();
        tokio_tungstenite::tungstenite::protocol::frame::Frame::message(
            "héllo",
            OpCode::Data(Data::Text),
            true,
        )
        .format(&mut expected)
        .unwrap();
        assert_eq!(wire, expected);
    }
}
