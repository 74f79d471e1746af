//! Issue 11 item 2: requests hyper refuses before our router sees them (malformed framing,
//! a head over `max_header_bytes`) get the SPEC §3 JSON error body, never an empty one; and
//! a body over `max_body_bytes` that the client keeps sending gets a 413 the client can read
//! (the server shuts its write side and drains for a while instead of resetting), after
//! which the server closes within a bounded time.

use std::time::{Duration, Instant};

use miteos_stream::scope::{Environment, Scope};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{
    raw_http::{connect_from, read_response},
    TestServer,
};

/// Sends `request` on a new connection, then reads one response and the end of the stream,
/// as a simple client does (all of the request first). Returns (status, head, body) and
/// asserts that the whole request could be written although the server answered early, and
/// that the connection ended with a FIN, not a reset.
async fn exchange(s: &TestServer, request: &[u8]) -> (u16, String, String) {
    let mut c = connect_from("127.0.0.1", s.addr).await;
    let written = c.write_all(request).await;
    assert!(written.is_ok(), "the server reset the connection while the request was sent");
    let (status, head, body) = read_response(&mut c, Duration::from_secs(5)).await;
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest)).await;
    let end = end.expect("the server closes the connection after the error");
    assert!(end.is_ok(), "the connection was reset instead of closed: {end:?} ({status} {body})");
    assert!(rest.is_empty(), "nothing after the error response: {:?}", rest);
    (status, head, body)
}

/// Asserts hyper's answer to a request it could not parse: the JSON error with `code`, and
/// `connection: close` (hyper reads nothing more on that connection).
fn assert_parse_error(head: &str, body: &str, code: &str) {
    assert!(head.contains("connection: close"), "{head}");
    assert_json_error(head, body, code);
}

/// Asserts a SPEC §3 `invalid_request_error` JSON response with `code` and its length right
/// (read by `Content-Length`).
fn assert_json_error(head: &str, body: &str, code: &str) {
    assert!(head.contains("content-type: application/json"), "{head}");
    let len = head.lines().find_map(|l| l.strip_prefix("content-length:")).map(str::trim);
    assert_eq!(len, Some(body.len().to_string().as_str()), "{head}");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(v["error"]["type"], "invalid_request_error", "{body}");
    assert_eq!(v["error"]["code"], code, "{body}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

#[tokio::test]
async fn a_100_kib_header_gets_431_with_a_json_body() {
    let s = TestServer::start().await;
    let req =
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(100 << 10));
    let (status, head, body) = exchange(&s, req.as_bytes()).await;
    assert_eq!(status, 431, "{head}{body}");
    assert_parse_error(&head, &body, "headers_too_large");
    assert_eq!(s.http().await.get("/healthz", None).await.status, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn duplicate_content_lengths_that_differ_get_400_json() {
    let s = TestServer::start().await;
    let req = "POST /v1/ws/tickets HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\
               Content-Length: 3\r\n\r\n{}";
    let (status, head, body) = exchange(&s, req.as_bytes()).await;
    assert_eq!(status, 400, "{head}{body}");
    assert_parse_error(&head, &body, "malformed_request");
    s.shutdown().await;
}

#[tokio::test]
async fn chunked_not_last_in_transfer_encoding_gets_400_json() {
    let s = TestServer::start().await;
    let req = "POST /v1/ws/tickets HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n\
               2\r\n{}\r\n0\r\n\r\n";
    let (status, head, body) = exchange(&s, req.as_bytes()).await;
    assert_eq!(status, 400, "{head}{body}");
    assert_parse_error(&head, &body, "malformed_request");
    s.shutdown().await;
}

#[tokio::test]
async fn an_obsolete_line_folding_gets_400_json() {
    let s = TestServer::start().await;
    let req = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n  b\r\n\r\n";
    let (status, head, body) = exchange(&s, req.as_bytes()).await;
    assert_eq!(status, 400, "{head}{body}");
    assert_parse_error(&head, &body, "malformed_request");
    s.shutdown().await;
}

#[tokio::test]
async fn other_framing_errors_get_400_json_too() {
    let s = TestServer::start().await;
    let cases: [&[u8]; 5] = [
        b"POST /v1/ws/tickets HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n",
        b"POST /v1/ws/tickets HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 3\r\n\r\n{}",
        b"POST /v1/ws/tickets HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
    ];
    for req in cases {
        let (status, head, body) = exchange(&s, req).await;
        assert_eq!(status, 400, "{:?}: {head}{body}", String::from_utf8_lossy(req));
        assert_parse_error(&head, &body, "malformed_request");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn a_good_request_then_a_malformed_one_pipelined_get_their_own_answers() {
    let s = TestServer::start().await;
    let req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\
                X-Folded: a\r\n b\r\n\r\n";
    let mut c = connect_from("127.0.0.1", s.addr).await;
    c.write_all(req).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut all))
        .await
        .expect("closed")
        .expect("not reset");
    let text = String::from_utf8_lossy(&all);
    let second = text.find("HTTP/1.1 400").unwrap_or_else(|| panic!("{text}"));
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text[second..].contains("\"malformed_request\""), "{text}");
    s.shutdown().await;
}

/// Writes `head`, then `first` bytes of body (in 16 KiB chunks when `chunked`) and reports
/// on `sent` whether all of them could be written; then keeps writing until a write fails,
/// and returns when it failed.
fn huge_then_endless_body(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    head: String,
    chunked: bool,
    first: usize,
    sent: tokio::sync::oneshot::Sender<bool>,
) -> tokio::task::JoinHandle<Instant> {
    tokio::spawn(async move {
        let piece = vec![b' '; 16 << 10];
        let framed = if chunked {
            let mut v = format!("{:x}\r\n", piece.len()).into_bytes();
            v.extend_from_slice(&piece);
            v.extend_from_slice(b"\r\n");
            v
        } else {
            piece.clone()
        };
        let mut ok = w.write_all(head.as_bytes()).await.is_ok();
        for _ in 0..first / piece.len() {
            ok = ok && w.write_all(&framed).await.is_ok();
        }
        let _ = sent.send(ok);
        while w.write_all(&framed).await.is_ok() {}
        Instant::now()
    })
}

/// A client that sends a body far over the limit before it looks for an answer (4 MiB
/// against 1 KiB) can send all of it and then read the 413 and an orderly end of stream;
/// if it keeps sending, the server stops reading (its close fails the client's writes)
/// within a bounded time.
async fn oversized_body_is_answered_readably(framing: &str, chunked: bool) {
    let s = TestServer::with(|c| c.max_body_bytes = 1024).await;
    let (key, _) = s.key("acct_big", Environment::Live, &[Scope::TasksRead]).await;
    let (mut r, w) = connect_from("127.0.0.1", s.addr).await.into_split();
    let head = format!(
        "POST /v1/ws/tickets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\n{framing}\r\n\r\n"
    );
    let (sent_tx, sent) = tokio::sync::oneshot::channel();
    let writer = huge_then_endless_body(w, head, chunked, 4 << 20, sent_tx);
    let sent = tokio::time::timeout(Duration::from_secs(10), sent).await.expect("4 MiB sent");
    assert!(sent.unwrap(), "the server reset the connection while the body was sent");
    let (status, head, body) = read_response(&mut r, Duration::from_secs(5)).await;
    let answered = Instant::now();
    assert_eq!(status, 413, "{head}{body}");
    assert_json_error(&head, &body, "body_too_large");
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut rest))
        .await
        .expect("an end of stream after the 413");
    assert!(end.is_ok(), "reset instead of an orderly close: {end:?}");
    let failed = tokio::time::timeout(Duration::from_secs(15), writer)
        .await
        .expect("the server stops reading the body within a bounded time")
        .unwrap();
    let lingered = failed.saturating_duration_since(answered);
    assert!(lingered < Duration::from_secs(8), "the server read on for {lingered:?}");
    assert_eq!(s.http().await.get("/healthz", None).await.status, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn a_huge_chunked_body_over_the_limit_gets_a_readable_413() {
    oversized_body_is_answered_readably("Transfer-Encoding: chunked", true).await;
}

#[tokio::test]
async fn a_huge_content_length_body_over_the_limit_gets_a_readable_413() {
    oversized_body_is_answered_readably("Content-Length: 1073741824", false).await;
}
