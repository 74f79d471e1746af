//! The real binary: bootstrap, CLI key commands on the same data dir, restart, SIGTERM
//! with 1001 and exit 0, and no secret in the process's output.

use serde_json::{json, Value};

use crate::support::{
    bin::{run, Served},
    WsClient,
};

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits_0_without_leaking_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut served = Served::start(dir.path(), &[]).await;
    let token = served.bootstrap.clone().expect("bootstrap key printed on an empty store");
    assert!(token.starts_with("mt_test_sk_"));
    let url = format!("ws://{}/v1/ws?token={token}", served.addr);
    let (mut a, _) = WsClient::authed(&url, &token).await;
    let (mut b, _) = WsClient::authed(&url, &token).await;
    // A failed attempt with the token in the query too: still nothing logged.
    let _ = WsClient::try_connect(&format!("{url}x")).await;

    served.signal_term();
    assert_eq!(a.expect_close().await, 1001);
    assert_eq!(b.expect_close().await, 1001);
    assert_eq!(served.wait().await, 0);
    let output = served.output();
    assert_eq!(
        output.matches(&token).count(),
        1,
        "the token appears only in the bootstrap line:\n{output}"
    );
    assert!(output.contains(&format!("bootstrap key (shown once): {token}")));
}

#[tokio::test]
async fn keys_survive_a_restart_and_a_cli_revocation_sticks() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(
        dir.path(),
        &[
            "keys",
            "create",
            "--account",
            "acct_cli",
            "--env",
            "live",
            "--name",
            "dash",
            "--scopes",
            "tasks.read,agents.read",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let created: Value = serde_json::from_str(&out).expect("one JSON object");
    let token = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(token.starts_with("mt_live_sk_"));
    assert_eq!(created["scopes"], json!(["tasks.read", "agents.read"]));

    let (code, out, _) = run(dir.path(), &["keys", "list", "--account", "acct_cli"]).await;
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["data"][0]["id"], id.as_str());
    assert!(!out.contains(&token), "list never shows the secret");
    assert!(list["data"][0]["redacted"].as_str().unwrap().ends_with(&token[token.len() - 4..]));

    // The server starts on a non-empty store: no bootstrap key; the CLI key works.
    let mut served = Served::start(dir.path(), &[]).await;
    assert_eq!(served.bootstrap, None);
    let url = format!("ws://{}/v1/ws?token={token}", served.addr);
    let (mut c, ok) = WsClient::authed(&url, &token).await;
    assert_eq!(ok["channels"], json!(["agents", "tasks"]));
    // While the server holds the store, the CLI says so instead of corrupting it.
    let (code, _, err) = run(dir.path(), &["keys", "list", "--account", "acct_cli"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("in use"), "{err}");
    served.signal_term();
    assert_eq!(c.expect_close().await, 1001);
    assert_eq!(served.wait().await, 0);
    assert!(
        !served.output().contains(&token),
        "the CLI-created key never appears in server output"
    );

    let (code, out, _) = run(dir.path(), &["keys", "revoke", &id]).await;
    assert_eq!(code, 0);
    assert!(serde_json::from_str::<Value>(&out).unwrap()["revoked_at"].is_string());

    let mut served = Served::start(dir.path(), &[]).await;
    let url = format!("ws://{}/v1/ws?token={token}", served.addr);
    let refused = WsClient::try_connect(&url).await.err().expect("revoked key refused");
    assert_eq!(refused.status, 401);
    assert_eq!(refused.body["error"]["code"], "revoked_api_key");
    assert_eq!(served.terminate().await, 0);
}

#[tokio::test]
async fn cli_rejects_bad_input_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let base = ["keys", "create", "--account", "acct_x", "--env", "live", "--name", "n"];
    let (code, _, err) =
        run(dir.path(), &[&base[..], &["--scopes", "tasks.read,tasks.admin"]].concat()).await;
    assert_eq!(code, 2);
    assert!(err.contains("tasks.admin"), "{err}");
    let (code, _, err) =
        run(dir.path(), &[&base[..], &["--scopes", "tasks.read", "--ip", "10.0.0.0/33"]].concat())
            .await;
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = run(
        dir.path(),
        &[
            "keys",
            "create",
            "--account",
            "a:b",
            "--env",
            "live",
            "--name",
            "n",
            "--scopes",
            "tasks.read",
        ],
    )
    .await;
    assert_eq!(code, 2);
    let (code, _, err) = run(dir.path(), &["keys", "revoke", "key_doesnotexist"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("no key"), "{err}");
}

#[tokio::test]
async fn publish_command_reaches_a_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let mut served = Served::start(dir.path(), &[]).await;
    let token = served.bootstrap.clone().unwrap();
    let url = format!("ws://{}/v1/ws?token={token}", served.addr);
    let (mut c, _) = WsClient::authed(&url, &token).await;
    let admin = served.admin_addr.to_string();
    let (code, out, err) = run(
        dir.path(),
        &[
            "--admin-listen",
            &admin,
            "publish",
            "--account",
            "acct_local",
            "--env",
            "test",
            "--channel",
            "tasks",
            "--event",
            "task.completed",
            "--data",
            "{\"ok\":true}",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    // One JSON line with the event's position (SPEC §5).
    let answer: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert!(answer["id"].as_str().is_some_and(|id| id.starts_with("evt_")), "{out}");
    assert_eq!((answer["channel"].as_str(), answer["offset"].as_u64()), (Some("tasks"), Some(1)));
    assert!(answer["epoch"].as_str().is_some_and(|e| !e.is_empty()), "{out}");
    let e = c.recv().await;
    assert_eq!(
        (e["event"].as_str(), e["data"]["ok"].as_bool()),
        (Some("task.completed"), Some(true))
    );
    served.signal_term();
    assert_eq!(c.expect_close().await, 1001);
    assert_eq!(served.wait().await, 0);
}

#[tokio::test]
async fn invalid_config_is_one_line_naming_the_setting_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = crate::support::bin::command(dir.path())
        .arg("serve")
        .env("MITEOS_AUTH_TIMEOUT", "soon")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("auth_timeout"), "{err}");

    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "max_header_bytes = 10\n").unwrap();
    let out = crate::support::bin::command(dir.path())
        .arg("--config")
        .arg(&file)
        .arg("serve")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_header_bytes"));
}

#[tokio::test]
async fn no_secret_reaches_the_log_even_at_debug_level() {
    let dir = tempfile::tempdir().unwrap();
    let admin_token = "admin-secret-0123456789abcdef";
    let mut served = Served::start(
        dir.path(),
        &[
            ("RUST_LOG", "debug"),
            ("MITEOS_ADMIN_TOKEN", admin_token),
            ("MITEOS_AUTH_FAILURES_PER_MINUTE", "8"),
        ],
    )
    .await;
    let boot = served.bootstrap.clone().unwrap();
    let mut http = crate::support::http::HttpClient::connect(served.addr).await;
    let created = http
        .post_json(
            "/v1/api-keys",
            Some(&boot),
            &json!({"name": "n", "scopes": ["tasks.read", "teams.read"]}).to_string(),
        )
        .await
        .json();
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    let rotated = http
        .post_json(
            &format!("/v1/api-keys/{id}/rotate"),
            Some(&boot),
            "{\"grace_period_seconds\": 60}",
        )
        .await
        .json();
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    let ticket = http.post_json("/v1/ws/tickets", Some(&new_key), "").await.json()["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = |q: &str| format!("ws://{}/v1/ws?{q}", served.addr);
    let (mut a, _) = WsClient::authed(&url(&format!("token={key}")), &key).await;
    let mut b = WsClient::connect(&url(&format!("ticket={ticket}"))).await;
    b.send(json!({"type": "auth", "ticket": ticket})).await;
    assert_eq!(b.recv().await["type"], "auth.success");
    // Failures that carry secrets: reused ticket, wrong first message, bad admin token.
    let _ = WsClient::try_connect(&url(&format!("ticket={ticket}"))).await;
    let mut c = WsClient::connect(&url(&format!("token={new_key}"))).await;
    c.send(json!({"type": "auth", "token": key})).await;
    assert_eq!(c.expect_close().await, 4001);
    let mut admin = crate::support::http::HttpClient::connect(served.admin_addr).await;
    assert_eq!(
        admin.post_json("/internal/v1/publish", Some("wrong-admin-token-xyz"), "{}").await.status,
        401
    );
    let ok = admin
        .post_json("/internal/v1/publish", Some(admin_token), &json!({"account_id": "acct_local", "environment": "test", "channel": "tasks", "event": "e"}).to_string())
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(a.recv().await["event"], "e");
    // Brute force until locked out (429), with real-looking secrets in the query.
    let mut locked = false;
    let mut guesses = Vec::new();
    for _ in 0..20 {
        let guess = miteos_stream::token::Token::generate(miteos_stream::scope::Environment::Test);
        let r =
            WsClient::try_connect(&url(&format!("token={}", guess.expose()))).await.err().unwrap();
        locked |= r.status == 429;
        guesses.push(guess.expose().to_owned());
    }
    assert!(locked, "the brute force was rate limited");

    served.signal_term();
    assert_eq!(a.expect_close().await, 1001);
    assert_eq!(b.expect_close().await, 1001);
    assert_eq!(served.wait().await, 0);
    let output = served.output();
    assert!(output.contains("DEBUG"), "debug logging was on");
    for (what, secret) in [
        ("key", &key),
        ("rotated key", &new_key),
        ("ticket", &ticket),
        ("admin token", &admin_token.to_owned()),
    ] {
        assert!(!output.contains(secret.as_str()), "{what} leaked into the output");
    }
    assert_eq!(output.matches(&boot).count(), 1, "bootstrap key only in its own line");
    assert!(
        guesses.iter().all(|g| !output.contains(g.as_str())),
        "a guessed token leaked into the output"
    );
}

#[tokio::test]
async fn cli_rotate_prints_a_new_secret_for_the_same_id() {
    let dir = tempfile::tempdir().unwrap();
    let (_, out, _) = run(
        dir.path(),
        &[
            "keys",
            "create",
            "--account",
            "acct_r",
            "--env",
            "test",
            "--name",
            "n",
            "--scopes",
            "tasks.read",
            "--ip",
            "10.0.0.0/8",
            "--expires-at",
            "2099-01-01T00:00:00Z",
        ],
    )
    .await;
    let created: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["ip_allowlist"], json!(["10.0.0.0/8"]));
    assert_eq!(created["expires_at"], "2099-01-01T00:00:00Z");
    let id = created["id"].as_str().unwrap();
    let (code, out, err) = run(dir.path(), &["keys", "rotate", id, "--grace-period", "30"]).await;
    assert_eq!(code, 0, "{err}");
    let rotated: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rotated["id"], id);
    assert_ne!(rotated["key"], created["key"]);
    let (code, _, _) =
        run(dir.path(), &["keys", "rotate", id, "--grace-period", "999999999"]).await;
    assert_eq!(code, 2);
    let (code, _, err) = run(
        dir.path(),
        &[
            "keys",
            "create",
            "--account",
            "acct_r",
            "--env",
            "test",
            "--name",
            "n",
            "--scopes",
            "tasks.read",
            "--expires-at",
            "2001-01-01T00:00:00Z",
        ],
    )
    .await;
    assert_eq!(code, 2, "{err}");
}
