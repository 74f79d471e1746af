//! No secret in any log line at any level or filter (issue 10 item 7): the real binary at
//! `trace`, with every crate's trace turned on explicitly (tungstenite's protocol module
//! included), driven through the endpoints and failure paths that carry secrets.

use serde_json::json;

use crate::support::{bin, bin::Served, http::HttpClient, WsClient};

const EVERYTHING: &str = "trace,tungstenite=trace,tungstenite::protocol=trace,\
    tokio_tungstenite=trace,hyper=trace,hyper_util=trace,redb=trace,miteos_stream=trace";

#[tokio::test]
async fn nothing_secret_is_logged_even_with_every_trace_on() {
    let dir = tempfile::tempdir().unwrap();
    let admin_token = "admin-secret-0123456789abcdef";
    let mut served =
        Served::start(dir.path(), &[("RUST_LOG", EVERYTHING), ("MITEOS_ADMIN_TOKEN", admin_token)])
            .await;
    let boot = served.bootstrap.clone().unwrap();
    let mut http = HttpClient::connect(served.addr).await;
    let created = http
        .post_json(
            "/v1/api-keys",
            Some(&boot),
            &json!({"name": "n", "scopes": ["tasks.read", "teams.read"]}).to_string(),
        )
        .await
        .json();
    let key = created["key"].as_str().unwrap().to_owned();
    // A key pasted into the path by mistake, and into a query under an odd name.
    assert_eq!(http.get(&format!("/v1/api-keys/{key}"), Some(&boot)).await.status, 404);
    let _ = http.get(&format!("/v1/api-keys?k={key}"), Some(&boot)).await;
    let ticket = http.post_json("/v1/ws/tickets", Some(&key), "").await.json()["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = |q: &str| format!("ws://{}/v1/ws?{q}", served.addr);
    // Auth frames (the payload carries the secret) for a key and a ticket, and a mismatch.
    let (mut a, _) = WsClient::authed(&url(&format!("token={key}")), &key).await;
    let mut b = WsClient::connect(&url(&format!("ticket={ticket}"))).await;
    b.send(json!({"type": "auth", "ticket": ticket})).await;
    assert_eq!(b.recv().await["type"], "auth.success");
    let mut c = WsClient::connect(&url(&format!("token={key}"))).await;
    c.send(json!({"type": "auth", "token": boot})).await;
    assert_eq!(c.expect_close().await, 4001);
    let mut admin = HttpClient::connect(served.admin_addr).await;
    assert_eq!(admin.post_json("/internal/v1/publish", Some(admin_token), "{}").await.status, 400);
    assert_eq!(
        admin.post_json("/internal/v1/publish", Some("wrong-admin-9876"), "{}").await.status,
        401
    );

    served.signal_term();
    assert_eq!(a.expect_close().await, 1001);
    assert_eq!(served.wait().await, 0);
    let output = served.output();
    assert!(output.contains("DEBUG"), "verbose logging was on:\n{output}");
    for (what, secret) in [("key", key.as_str()), ("ticket", &ticket), ("admin token", admin_token)]
    {
        let leaked: Vec<&str> = output.lines().filter(|l| l.contains(secret)).collect();
        assert!(leaked.is_empty(), "the {what} leaked:\n{}", leaked.join("\n"));
    }
    assert_eq!(output.matches(&boot).count(), 1, "the bootstrap key only in its own line");
}

#[tokio::test]
async fn a_bad_secret_setting_is_named_but_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin::command(dir.path())
        .env("MITEOS_ADMIN_TOKEN", "1234567890123456")
        .env("RUST_LOG", EVERYTHING)
        .arg("serve")
        .output()
        .await
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("admin_token"), "{text}");
    assert!(!text.contains("1234567890123456"), "{text}");
}
