//! RFC 6455 §7.4 after authentication: a client that breaks the protocol gets a close frame
//! with the reason (1002 protocol error, 1007 invalid UTF-8), not a dropped connection.

use serde_json::json;

use crate::support::{raw::RawWs, TestServer};

/// A masked frame: first byte (FIN/RSV/opcode) as given, payload < 126 bytes.
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [9u8, 8, 7, 6];
    let mut f = vec![first, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[tokio::test]
async fn protocol_violations_after_auth_are_closed_with_their_code() {
    let s = TestServer::start().await;
    let cases: [(&str, Vec<u8>, u16); 5] = [
        ("unmasked frame", vec![0x81, 0x02, b'h', b'i'], 1002),
        ("reserved opcode 3", masked(0x83, b""), 1002),
        ("RSV1 without an extension", masked(0xC1, b"hi"), 1002),
        ("fragmented ping", masked(0x09, b""), 1002),
        ("text that is not UTF-8", masked(0x81, &[0xff, 0xfe, 0x41]), 1007),
    ];
    for (what, frame, code) in cases {
        let mut raw = RawWs::connect(s.addr, &format!("/v1/ws?token={}", s.bootstrap)).await;
        raw.send_text(&json!({"type": "auth", "token": s.bootstrap}).to_string()).await;
        let (op, payload) = raw.read_frame().await;
        assert_eq!(op, crate::support::raw::OP_TEXT);
        assert!(String::from_utf8_lossy(&payload).contains("auth.success"));
        raw.send_raw(&frame).await;
        let (got, _) = raw.read_until_close().await;
        assert_eq!(got, code, "{what}");
    }
    s.shutdown().await;
}
