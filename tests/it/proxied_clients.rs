//! Issue 10 item 4, behind a trusted proxy: each forwarded client has its own
//! `max_connections_per_ip`, counted per WebSocket and per request in flight (a slow
//! request through the proxy holds a node connection as much as a socket does).

use std::time::Duration;

use tokio::{io::AsyncWriteExt, net::TcpStream};
use tokio_tungstenite::{
    client_async,
    tungstenite::{self, client::IntoClientRequest},
    MaybeTlsStream,
};

use crate::support::{
    raw_http::{connect_from, padded_object, post_head, read_response, trickle},
    TestServer, WsClient,
};

/// Polls `f` (every 20 ms, up to 5 s) until it returns true.
async fn eventually<F: std::future::Future<Output = bool>>(mut f: impl FnMut() -> F) -> bool {
    for _ in 0..250 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A WebSocket upgrade through the "proxy" 127.0.0.3 on behalf of `client`.
async fn ws_via_proxy(s: &TestServer, client: &str) -> Result<WsClient, u16> {
    let mut req = s.ws_url(&s.bootstrap).into_client_request().unwrap();
    req.headers_mut().insert("x-forwarded-for", client.parse().unwrap());
    let stream: TcpStream = connect_from("127.0.0.3", s.addr).await;
    match client_async(req, MaybeTlsStream::Plain(stream)).await {
        Ok((ws, _)) => Ok(WsClient { ws }),
        Err(tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("connect failed: {e}"),
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_cap_is_per_forwarded_client() {
    let s = TestServer::with(|c| {
        c.trusted_proxies = vec!["127.0.0.3/32".parse().unwrap()];
        c.max_connections_per_ip = 2;
        c.min_body_bytes_per_second = 0;
        c.body_read_timeout = Duration::from_secs(30);
    })
    .await;
    // Two streams for 198.51.100.7 through the proxy (the proxy itself is not capped).
    let a = ws_via_proxy(&s, "198.51.100.7").await.expect("first");
    let _b = ws_via_proxy(&s, "198.51.100.7").await.expect("second");
    assert_eq!(ws_via_proxy(&s, "198.51.100.7").await.err(), Some(429));
    let _c = ws_via_proxy(&s, "198.51.100.8").await.expect("another client behind the proxy");
    drop(a);
    assert!(
        eventually(|| async { ws_via_proxy(&s, "198.51.100.7").await.is_ok() }).await,
        "the closed stream's slot was never given back"
    );

    // In-flight requests count too: two slow POSTs for 198.51.100.9 hold its slots.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let (r, mut w) = connect_from("127.0.0.3", s.addr).await.into_split();
        let head =
            post_head("/v1/ws/tickets", &s.bootstrap, 20, &["X-Forwarded-For: 198.51.100.9"]);
        w.write_all(head.as_bytes()).await.unwrap();
        slow.push((r, trickle(w, padded_object(20), Duration::from_secs(2))));
    }
    let refused = eventually(|| async {
        let mut c = connect_from("127.0.0.3", s.addr).await;
        let req = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.9\r\n\r\n";
        c.write_all(req.as_bytes()).await.unwrap();
        read_response(&mut c, Duration::from_secs(5)).await.0 == 429
    })
    .await;
    assert!(refused, "a third request for the same client was not refused");
    let mut c = connect_from("127.0.0.3", s.addr).await;
    let req = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.10\r\n\r\n";
    c.write_all(req.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut c, Duration::from_secs(5)).await.0, 200);
    for (r, writer) in slow {
        writer.abort();
        drop(r);
    }
    s.shutdown().await;
}

#[tokio::test]
async fn forwarded_ipv6_clients_are_counted_per_64() {
    let s = TestServer::with(|c| {
        c.trusted_proxies = vec!["127.0.0.3/32".parse().unwrap()];
        c.max_connections_per_ip = 1;
    })
    .await;
    let _a = ws_via_proxy(&s, "2001:db8::1").await.expect("first of the /64");
    assert_eq!(ws_via_proxy(&s, "2001:db8::2").await.err(), Some(429), "same /64");
    let _b = ws_via_proxy(&s, "2001:db8:0:1::1").await.expect("another /64");
    s.shutdown().await;
}
