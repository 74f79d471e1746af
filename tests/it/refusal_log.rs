//! Every refused connection or request is logged once at `info` with its reason and the
//! redacted key (never the token), and the refusal log is rate-limited (issue 11 item 4).
//! The real binary, with JSON logs so each line can be read back as an object.

use std::time::{Duration, Instant};

use miteos_stream::{refusals, token};
use serde_json::{json, Value};

use crate::support::{bin::Served, http::HttpClient, WsClient};

/// The `fields` of every `refused` line the server wrote.
fn refusal_lines(output: &str) -> Vec<Value> {
    output
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "refused")
        .map(|v| v["fields"].clone())
        .collect()
}

#[tokio::test]
async fn refusals_are_logged_once_each_with_reason_and_redacted_key_and_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let mut served = Served::start(dir.path(), &[("MITEOS_LOG_FORMAT", "json")]).await;
    let boot = served.bootstrap.clone().unwrap();
    let mut http = HttpClient::connect(served.addr).await;
    let mut create = async |scopes: Value| {
        let r = http
            .post_json(
                "/v1/api-keys",
                Some(&boot),
                &json!({"name": "n", "scopes": scopes}).to_string(),
            )
            .await;
        assert_eq!(r.status, 201);
        let v = r.json();
        (v["key"].as_str().unwrap().to_owned(), v["id"].as_str().unwrap().to_owned())
    };
    let (no_read, _) = create(json!(["tasks.write"])).await;
    let (reader, reader_id) = create(json!(["tasks.read"])).await;
    let url = |t: &str| format!("ws://{}/v1/ws?token={t}", served.addr);

    // A key without a read scope: refused before the upgrade.
    let refused = WsClient::try_connect(&url(&no_read)).await.err().expect("refused");
    assert_eq!(refused.status, 403);
    // An auth message with another key than the query's: 4001 after the upgrade.
    let mut ws = WsClient::connect(&url(&reader)).await;
    ws.send(json!({"type": "auth", "token": boot})).await;
    assert_eq!(ws.expect_close().await, 4001);

    // A flood of refused requests for 1.5 s (a well-formed but unknown key).
    let unknown = token::Token::generate(miteos_stream::scope::Environment::Test);
    let mut flood = HttpClient::connect(served.addr).await;
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_millis(1500) {
        // 401, then 429 once the address is locked out for its failed authentications.
        let status = flood.get("/v1/api-keys", Some(unknown.expose())).await.status;
        assert!(status == 401 || status == 429, "{status}");
        sent += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(served.terminate().await, 0);

    // The log: everything but the bootstrap line on stdout, which shows its key by design.
    let out: String = served
        .output()
        .lines()
        .filter(|l| !l.starts_with("bootstrap key (shown once): "))
        .flat_map(|l| [l, "\n"])
        .collect();
    for secret in [&no_read, &reader, &boot, &unknown.expose().to_owned()] {
        assert!(!out.contains(secret.as_str()), "a token was logged:\n{out}");
    }
    let lines = refusal_lines(&out);
    let scope = lines
        .iter()
        .find(|l| l["reason"] == "insufficient_scope")
        .unwrap_or_else(|| panic!("no insufficient_scope line:\n{out}"));
    assert_eq!(scope["refused"], "request");
    assert_eq!(scope["key"], token::redact(&no_read));
    assert_eq!(scope["client"], "127.0.0.1");
    let mismatch = lines
        .iter()
        .find(|l| l["reason"] == "ws_auth_mismatch")
        .unwrap_or_else(|| panic!("no ws_auth_mismatch line:\n{out}"));
    assert_eq!((&mismatch["refused"], &mismatch["key_id"]), (&json!("stream"), &json!(reader_id)));

    let flood_lines: Vec<&Value> =
        lines.iter().filter(|l| l["key"] == token::redact(unknown.expose())).collect();
    assert!(
        flood_lines
            .iter()
            .all(|l| l["reason"] == "invalid_api_key" || l["reason"] == "rate_limited"),
        "{flood_lines:?}"
    );
    let allowed =
        f64::from(refusals::BURST) + f64::from(refusals::LINES_PER_SECOND) * elapsed + 1.0;
    assert!(
        (flood_lines.len() as f64) <= allowed && (flood_lines.len() as u64) < sent,
        "{} refusal lines for {sent} refusals in {elapsed:.2} s (at most {allowed:.0})",
        flood_lines.len()
    );
    let suppressed: u64 = flood_lines.iter().filter_map(|l| l["suppressed"].as_u64()).sum();
    assert!(suppressed > 0, "no line reported the suppressed ones: {flood_lines:?}");
    assert!(suppressed + flood_lines.len() as u64 <= sent);
}
