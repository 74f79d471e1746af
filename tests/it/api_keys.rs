//! SPEC §2–§3: `/v1/api-keys` over real HTTP — one test per error row and per privilege rule.

use miteos_stream::scope::{Environment, Scope};
use serde_json::{json, Value};

use crate::support::{http::HttpResponse, TestServer};

const KEYS: &str = "/v1/api-keys";

fn code(r: &HttpResponse) -> (u16, String) {
    (r.status, r.json()["error"]["code"].as_str().unwrap_or_default().to_owned())
}

async fn create(s: &TestServer, bearer: &str, body: Value) -> HttpResponse {
    s.http().await.post_json(KEYS, Some(bearer), &body.to_string()).await
}

#[tokio::test]
async fn create_returns_the_secret_once_and_get_never_does() {
    let s = TestServer::start().await;
    let r = create(&s, &s.bootstrap, json!({"name": "dash", "scopes": ["tasks.read", "agents.read"], "ip_allowlist": ["10.0.0.0/8"]})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let k = r.json();
    for field in ["id", "name", "key", "scopes", "ip_allowlist", "created_at", "expires_at"] {
        assert!(k.get(field).is_some(), "missing {field}: {k}");
    }
    let secret = k["key"].as_str().unwrap();
    assert!(secret.starts_with("mt_test_sk_"), "bootstrap is a test key, so is its child");
    assert_eq!(k["scopes"], json!(["tasks.read", "agents.read"]));
    assert_eq!(k["ip_allowlist"], json!(["10.0.0.0/8"]));
    assert_eq!(k["environment"], "test");
    assert_eq!(k["account_id"], "acct_local");

    let mut http = s.http().await;
    let got = http.get(&format!("{KEYS}/{}", k["id"].as_str().unwrap()), Some(&s.bootstrap)).await;
    assert_eq!(got.status, 200);
    assert!(got.json().get("key").is_none());
    assert!(!got.body.contains(secret));
    assert!(got.json()["redacted"].as_str().unwrap().ends_with(&secret[secret.len() - 4..]));
    let list = http.get(KEYS, Some(&s.bootstrap)).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json()["data"].as_array().unwrap().len(), 2);
    assert!(!list.body.contains(secret));
    assert!(!list.body.contains(&s.bootstrap));
    s.shutdown().await;
}

#[tokio::test]
async fn error_table_400_rows() {
    let s = TestServer::start().await;
    let b = &s.bootstrap;
    let mut http = s.http().await;
    let r = http.post_json(KEYS, Some(b), "{\"name\": ").await;
    assert_eq!(code(&r), (400, "invalid_json".into()));
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let r = create(&s, b, json!({"name": "n", "scopes": ["tasks.read", "tasks.admin"]})).await;
    assert_eq!(code(&r), (400, "unknown_scope".into()));
    assert_eq!(r.json()["error"]["param"], "tasks.admin");
    let r = create(&s, b, json!({"scopes": ["tasks.read"]})).await;
    assert_eq!(
        (code(&r), r.json()["error"]["param"].as_str()),
        ((400, "missing_param".into()), Some("name"))
    );
    let r = create(&s, b, json!({"name": "n", "scopes": []})).await;
    assert_eq!(
        (code(&r), r.json()["error"]["param"].as_str()),
        ((400, "missing_param".into()), Some("scopes"))
    );
    let r = create(&s, b, json!({"name": "x".repeat(201), "scopes": ["tasks.read"]})).await;
    assert_eq!(code(&r).0, 400);
    let r = create(
        &s,
        b,
        json!({"name": "n", "scopes": ["tasks.read"], "ip_allowlist": ["300.1.1.1/8"]}),
    )
    .await;
    assert_eq!(code(&r), (400, "invalid_cidr".into()));
    let r = create(
        &s,
        b,
        json!({"name": "n", "scopes": ["tasks.read"], "expires_at": "2020-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!((code(&r).0, r.json()["error"]["param"].as_str()), (400, Some("expires_at")));
    let r = create(&s, b, json!({"name": "n", "scopes": ["tasks.read"], "role": "admin"})).await;
    assert_eq!((code(&r).0, r.json()["error"]["param"].as_str()), (400, Some("role")));
    // Nothing was created by any of them.
    let list = http.get(KEYS, Some(b)).await.json();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    s.shutdown().await;
}

#[tokio::test]
async fn error_table_401_rows() {
    let s = TestServer::start().await;
    let (revoked, revoked_id) = s.key("acct_local", Environment::Test, &[Scope::TeamsRead]).await;
    let mut http = s.http().await;
    let r = http
        .send(
            hyper::Request::delete(format!("{KEYS}/{revoked_id}"))
                .header("host", "x")
                .header("authorization", format!("Bearer {}", s.bootstrap))
                .body(Default::default())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    let past = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let (expired, _) = s
        .key_with(miteos_stream::keys::service::NewKey {
            name: "e".into(),
            account: miteos_stream::ids::AccountId::parse("acct_local").unwrap(),
            environment: Environment::Test,
            scopes: vec![Scope::TeamsRead],
            ip_allowlist: vec![],
            expires_at: Some(past),
        })
        .await;
    let unknown = miteos_stream::token::Token::generate(Environment::Test);
    let cases: [(Option<&str>, &str); 5] = [
        (None, "missing_api_key"),
        (Some("mt_test_sk_short"), "invalid_api_key"),
        (Some(unknown.expose()), "invalid_api_key"),
        (Some(&expired), "expired_api_key"),
        (Some(&revoked), "revoked_api_key"),
    ];
    for (bearer, want) in cases {
        let r = http.get(KEYS, bearer).await;
        assert_eq!(code(&r), (401, want.into()), "{bearer:?}");
        assert_eq!(r.json()["error"]["type"], "authentication_error");
        assert_eq!(
            r.header("www-authenticate").as_deref(),
            Some("Bearer realm=\"miteos\", error=\"invalid_token\"")
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn error_table_403_insufficient_scope_and_escalation() {
    let s = TestServer::start().await;
    let (reader, _) =
        s.key("acct_e", Environment::Live, &[Scope::TeamsRead, Scope::TasksRead]).await;
    let (writer, _) =
        s.key("acct_e", Environment::Live, &[Scope::TeamsWrite, Scope::TasksRead]).await;
    let mut http = s.http().await;

    // A key without teams.write cannot mint anything, teams.write included.
    let r = create(&s, &reader, json!({"name": "n", "scopes": ["teams.write"]})).await;
    assert_eq!(code(&r), (403, "insufficient_scope".into()));
    assert_eq!(r.json()["error"]["param"], "teams.write");
    assert!(r.header("www-authenticate").unwrap().contains("scope=\"teams.write\""));
    // teams.write without teams.read cannot list.
    let r = http.get(KEYS, Some(&writer)).await;
    assert_eq!(
        (code(&r), r.json()["error"]["param"].as_str()),
        ((403, "insufficient_scope".into()), Some("teams.read"))
    );

    // The escalation matrix: only scopes the caller holds.
    for (wanted, ok) in [
        (json!(["tasks.read"]), None),
        (json!(["teams.write"]), None),
        (json!(["tasks.read", "teams.write"]), None),
        (json!(["tasks.read", "agents.read"]), Some("agents.read")),
        (json!(["billing.read"]), Some("billing.read")),
        (json!(["teams.read"]), Some("teams.read")),
        (json!(["tasks.write"]), Some("tasks.write")),
    ] {
        let r = create(&s, &writer, json!({"name": "n", "scopes": wanted})).await;
        match ok {
            None => assert_eq!(r.status, 201, "{wanted}: {}", r.body),
            Some(param) => {
                assert_eq!(code(&r), (403, "scope_escalation".into()), "{wanted}");
                assert_eq!(r.json()["error"]["type"], "permission_error");
                assert_eq!(r.json()["error"]["param"], param);
            }
        }
    }
    // Rotation is minting too: the writer cannot rotate a key that holds more than it does.
    let (_, strong_id) = s.key("acct_e", Environment::Live, &[Scope::BillingRead]).await;
    let r = http.post_json(&format!("{KEYS}/{strong_id}/rotate"), Some(&writer), "{}").await;
    assert_eq!(code(&r), (403, "scope_escalation".into()));
    s.shutdown().await;
}

#[tokio::test]
async fn another_accounts_key_is_404_exactly_like_a_missing_one() {
    let s = TestServer::start().await;
    let all = [Scope::TeamsRead, Scope::TeamsWrite, Scope::TasksRead];
    let (a, _) = s.key("acct_a", Environment::Live, &all).await;
    let (_b, b_id) = s.key("acct_b", Environment::Live, &all).await;
    let mut http = s.http().await;
    let theirs = http.get(&format!("{KEYS}/{b_id}"), Some(&a)).await;
    let missing = http.get(&format!("{KEYS}/key_doesnotexist"), Some(&a)).await;
    assert_eq!(code(&theirs), (404, "resource_missing".into()));
    assert_eq!(theirs.body, missing.body, "no difference to tell existence by");
    let del = http
        .send(
            hyper::Request::delete(format!("{KEYS}/{b_id}"))
                .header("host", "x")
                .header("authorization", format!("Bearer {a}"))
                .body(Default::default())
                .unwrap(),
        )
        .await;
    assert_eq!(code(&del), (404, "resource_missing".into()));
    let rot = http.post_json(&format!("{KEYS}/{b_id}/rotate"), Some(&a), "{}").await;
    assert_eq!(code(&rot), (404, "resource_missing".into()));
    // b's key is untouched and not in a's list.
    assert!(s
        .state
        .keys
        .get(&miteos_stream::ids::KeyId::from_string(b_id.clone()))
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_none());
    assert!(!http.get(KEYS, Some(&a)).await.body.contains(&b_id));
    s.shutdown().await;
}

#[tokio::test]
async fn test_and_live_keys_never_touch_each_other() {
    let s = TestServer::start().await;
    let all = [Scope::TeamsRead, Scope::TeamsWrite, Scope::TasksRead];
    let (live, live_id) = s.key("acct_m", Environment::Live, &all).await;
    let (test, test_id) = s.key("acct_m", Environment::Test, &all).await;
    let mut http = s.http().await;
    let r = http.get(&format!("{KEYS}/{live_id}"), Some(&test)).await;
    assert_eq!(code(&r), (404, "resource_missing".into()));
    let r = http.get(&format!("{KEYS}/{test_id}"), Some(&live)).await;
    assert_eq!(code(&r), (404, "resource_missing".into()));
    let list = http.get(KEYS, Some(&test)).await.json();
    assert!(list["data"].as_array().unwrap().iter().all(|k| k["environment"] == "test"));
    let r =
        create(&s, &test, json!({"name": "n", "scopes": ["tasks.read"], "environment": "live"}))
            .await;
    assert_eq!(code(&r), (403, "environment_mismatch".into()));
    let r = create(&s, &live, json!({"name": "n", "scopes": ["tasks.read"]})).await;
    assert!(r.json()["key"].as_str().unwrap().starts_with("mt_live_sk_"));
    s.shutdown().await;
}

#[tokio::test]
async fn error_table_413_and_415() {
    let s = TestServer::with(|c| c.max_body_bytes = 1024).await;
    let mut http = s.http().await;
    let big = json!({"name": "x".repeat(2000), "scopes": ["tasks.read"]}).to_string();
    assert_eq!(
        code(&http.post_json(KEYS, Some(&s.bootstrap), &big).await),
        (413, "body_too_large".into())
    );
    let req = hyper::Request::post(KEYS)
        .header("host", "x")
        .header("authorization", format!("Bearer {}", s.bootstrap))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"name=n&scopes=tasks.read")))
        .unwrap();
    assert_eq!(code(&http.send(req).await), (415, "unsupported_media_type".into()));
    s.shutdown().await;
}

#[tokio::test]
async fn last_used_at_is_written_at_most_once_a_minute() {
    let s = TestServer::start().await;
    let (token, id) = s.key("acct_u", Environment::Live, &[Scope::TeamsRead]).await;
    let mut http = s.http().await;
    let path = format!("{KEYS}/{id}");
    let first = http.get(&path, Some(&token)).await.json();
    let used = first["last_used_at"].as_str().expect("set by the first use").to_owned();
    let again = http.get(&path, Some(&token)).await.json();
    assert_eq!(again["last_used_at"], used.as_str(), "a second use within a minute writes nothing");
    s.shutdown().await;
}

#[tokio::test]
async fn a_minted_key_cannot_outlive_or_outreach_its_parent() {
    let s = TestServer::start().await;
    let in_a_day = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    let (parent, _) = s
        .key_with(miteos_stream::keys::service::NewKey {
            name: "parent".into(),
            account: miteos_stream::ids::AccountId::parse("acct_lim").unwrap(),
            environment: Environment::Live,
            scopes: vec![Scope::TeamsWrite, Scope::TasksRead],
            ip_allowlist: vec!["127.0.0.0/8".parse().unwrap()],
            expires_at: Some(in_a_day),
        })
        .await;
    let fmt =
        |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap();
    let soon = fmt(in_a_day - time::Duration::hours(1));
    let later = fmt(in_a_day + time::Duration::hours(1));
    for (body, param) in [
        (
            json!({"name": "c", "scopes": ["tasks.read"], "ip_allowlist": ["127.0.0.1/32"]}),
            "expires_at",
        ),
        (
            json!({"name": "c", "scopes": ["tasks.read"], "ip_allowlist": ["127.0.0.1/32"], "expires_at": later}),
            "expires_at",
        ),
        (json!({"name": "c", "scopes": ["tasks.read"], "expires_at": soon}), "ip_allowlist"),
        (
            json!({"name": "c", "scopes": ["tasks.read"], "expires_at": soon, "ip_allowlist": ["10.0.0.0/8"]}),
            "ip_allowlist",
        ),
        (
            json!({"name": "c", "scopes": ["tasks.read"], "expires_at": soon, "ip_allowlist": ["127.0.0.0/7"]}),
            "ip_allowlist",
        ),
    ] {
        let r = create(&s, &parent, body.clone()).await;
        assert_eq!(code(&r), (403, "scope_escalation".into()), "{body}");
        assert_eq!(r.json()["error"]["param"], param, "{body}");
    }
    let ok = create(&s, &parent, json!({"name": "c", "scopes": ["tasks.read"], "expires_at": soon, "ip_allowlist": ["127.0.0.1/32"]})).await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    // Nor can it rotate (and so read the secret of) a key that is less restricted than itself.
    let (_, free_id) = s.key("acct_lim", Environment::Live, &[Scope::TasksRead]).await;
    let r =
        s.http().await.post_json(&format!("{KEYS}/{free_id}/rotate"), Some(&parent), "{}").await;
    assert_eq!(code(&r), (403, "scope_escalation".into()));
    s.shutdown().await;
}

#[tokio::test]
async fn malformed_key_ids_are_404_like_missing_ones() {
    let s = TestServer::start().await;
    let mut http = s.http().await;
    let missing =
        http.get(&format!("{KEYS}/key_AAAAAAAAAAAAAAAAAAAAAAAA"), Some(&s.bootstrap)).await;
    for odd in ["key_x%3Aused", "key_AAAAAAAAAAAAAAAAAAAAAAAA%3Aused", "nope", "key_"] {
        let r = http.get(&format!("{KEYS}/{odd}"), Some(&s.bootstrap)).await;
        assert_eq!(r.status, 404, "{odd}");
        assert_eq!(r.body, missing.body, "{odd}");
    }
    s.shutdown().await;
}
