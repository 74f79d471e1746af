//! `key-update`: how fast a key update reaches the streams on another node (issue 13). Each
//! run creates a key with `tasks.read`+`agents.read` through node A, opens N streams of it on
//! node B, PATCHes away `agents.read` through A, and takes the time from A's answer to the
//! moment the last stream on B received its `unsubscribed` (negative: before the answer —
//! the PATCH answers once every node applied it). Reports median and max over the runs.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

use crate::{
    client::{self, OP_CLOSE, OP_PING, OP_TEXT},
    opts::KeyUpdate,
    report::Report,
};

/// One HTTP/1.1 request on a fresh connection; returns the status and the JSON body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> anyhow::Result<(u16, Value)> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let mut conn = BufReader::new(stream);
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.get_mut().write_all(req.as_bytes()).await?;
    let mut line = String::new();
    conn.read_line(&mut line).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad response"))?;
    let mut length = 0usize;
    loop {
        line.clear();
        conn.read_line(&mut line).await?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse()?;
        }
    }
    let mut bytes = vec![0; length];
    conn.read_exact(&mut bytes).await?;
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

/// Reads a stream until its `unsubscribed`; returns when it arrived.
async fn until_unsubscribed(mut c: client::Conn) -> anyhow::Result<Instant> {
    loop {
        let (op, payload) = c.next().await?;
        match op {
            OP_TEXT if memchr::memmem::find(payload, b"\"unsubscribed\"").is_some() => {
                return Ok(Instant::now())
            }
            OP_PING => {
                let p = payload.to_vec();
                c.pong(p).await?;
            }
            OP_CLOSE => return Err(anyhow!("closed with {}", client::close_code(payload))),
            _ => {}
        }
    }
}

/// Signed milliseconds from `from` to `to`.
fn ms(from: Instant, to: Instant) -> f64 {
    if to >= from {
        (to - from).as_secs_f64() * 1e3
    } else {
        -((from - to).as_secs_f64() * 1e3)
    }
}

pub async fn run(o: KeyUpdate) -> anyhow::Result<Report> {
    let mut after_answer = Vec::with_capacity(o.runs);
    let mut after_send = Vec::with_capacity(o.runs);
    for run in 0..o.runs {
        let body = json!({"name": format!("bench-{run}"), "scopes": ["tasks.read", "agents.read"]});
        let (status, created) =
            request(o.patch_addr, "POST", "/v1/api-keys", &o.target.token, &body.to_string())
                .await?;
        if status != 201 {
            return Err(anyhow!("creating the key failed ({status}): {created}"));
        }
        let key = created["key"].as_str().ok_or_else(|| anyhow!("no key"))?.to_owned();
        let id = created["id"].as_str().ok_or_else(|| anyhow!("no id"))?.to_owned();
        let dial = client::Dial { token: Arc::from(key.as_str()), ..o.target.dial() };
        let mut readers = Vec::with_capacity(o.streams);
        for i in 0..o.streams {
            let c = client::connect_authed(&dial, o.target.source(i))
                .await
                .map_err(|e| anyhow!("stream {i}: {e:?}"))?;
            readers.push(tokio::spawn(until_unsubscribed(c)));
        }
        // Let the streams' subscriptions settle before timing the update.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let sent = Instant::now();
        let path = format!("/v1/api-keys/{id}");
        let (status, rec) =
            request(o.patch_addr, "PATCH", &path, &o.target.token, r#"{"scopes":["tasks.read"]}"#)
                .await?;
        let answered = Instant::now();
        if status != 200 {
            return Err(anyhow!("PATCH failed ({status}): {rec}"));
        }
        let mut last = sent;
        for r in readers {
            let at = tokio::time::timeout(Duration::from_secs(10), r)
                .await
                .map_err(|_| anyhow!("a stream never saw its unsubscribed"))???;
            last = last.max(at);
        }
        after_answer.push(ms(answered, last));
        after_send.push(ms(sent, last));
        let _ = request(o.patch_addr, "DELETE", &path, &o.target.token, "").await;
    }
    let stats = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        let median = if s.is_empty() {
            0.0
        } else if s.len() % 2 == 1 {
            s[s.len() / 2]
        } else {
            (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
        };
        (median, s.last().copied().unwrap_or(0.0))
    };
    let (med, max) = stats(&after_answer);
    let (med_sent, max_sent) = stats(&after_send);
    Ok(Report {
        scenario: "key-update",
        params: json!({"runs": o.runs, "streams": o.streams, "patch_addr": o.patch_addr.to_string(), "addr": o.target.addr.to_string()}),
        results: json!({
            "answer_to_last_change_ms": {"median": med, "max": max, "all": after_answer},
            "send_to_last_change_ms": {"median": med_sent, "max": max_sent},
        }),
        lines: vec![
            format!(
                "{} runs, {} streams on the other node: PATCH answer -> last stream's change median {med:.2} ms, max {max:.2} ms (negative: before the answer)",
                o.runs, o.streams
            ),
            format!("PATCH sent -> last stream's change median {med_sent:.2} ms, max {max_sent:.2} ms"),
        ],
    })
}
