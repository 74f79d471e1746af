//! `miteos-stream keys update` (issue 13 item 1) on the embedded store: each flag changes
//! its field, `--no-expiry` clears the expiry, bad or conflicting flags are usage errors
//! (exit 2), an unknown or revoked key is a runtime failure (exit 1).

use serde_json::{json, Value};

use crate::support::bin::run;

#[tokio::test]
async fn keys_update_changes_each_field_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let create = [
        "keys",
        "create",
        "--account",
        "acct_c",
        "--env",
        "live",
        "--name",
        "n",
        "--scopes",
        "tasks.read",
        "--expires-at",
        "2099-01-01T00:00:00Z",
    ];
    let (code, out, err) = run(d, &create).await;
    assert_eq!(code, 0, "{err}");
    let id = serde_json::from_str::<Value>(&out).unwrap()["id"].as_str().unwrap().to_owned();

    let (code, out, err) = run(
        d,
        &[
            "keys",
            "update",
            &id,
            "--name",
            "renamed",
            "--scopes",
            "tasks.read,agents.read",
            "--ip",
            "10.1.2.3/8",
            "--ip",
            "::1",
            "--no-expiry",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let rec: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rec["name"], "renamed");
    assert_eq!(rec["scopes"], json!(["tasks.read", "agents.read"]));
    assert_eq!(rec["ip_allowlist"], json!(["10.0.0.0/8", "::1/128"]));
    assert_eq!(rec["expires_at"], Value::Null);
    assert!(!out.contains("key\":\"mt_"), "no secret in the output");

    let (code, out, err) = run(d, &["keys", "update", &id, "--any-ip"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["ip_allowlist"], json!([]));

    for bad in [
        &["keys", "update", &id][..],
        &["keys", "update", &id, "--scopes", "tasks.admin"],
        &["keys", "update", &id, "--ip", "10.0.0.0/33"],
        &["keys", "update", &id, "--expires-at", "soon"],
        &["keys", "update", &id, "--expires-at", "2099-01-01T00:00:00Z", "--no-expiry"],
        &["keys", "update", &id, "--ip", "10.0.0.0/8", "--any-ip"],
    ] {
        let (code, _, err) = run(d, bad).await;
        assert_eq!(code, 2, "{bad:?}: {err}");
    }
    let (code, _, err) = run(d, &["keys", "update", "key_nope", "--name", "x"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("no key with id key_nope"), "{err}");
    let (code, _, _) = run(d, &["keys", "revoke", &id]).await;
    assert_eq!(code, 0);
    let (code, _, err) = run(d, &["keys", "update", &id, "--name", "x"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("revoked"), "{err}");
}
