//! `PATCH /v1/api-keys/{id}` as an API (issue 13 item 1): the privilege rule matrix, the
//! 4xx of revoked and expired keys, parameter errors, and a PATCH racing a rotation and a
//! revocation (no lost update: the result is one of the serial orders).

use miteos_stream::{
    ids::AccountId,
    keys::service::NewKey,
    scope::{Environment, Scope},
};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::{
    key_updates::rfc3339,
    support::{http::HttpResponse, TestServer},
};
use Scope::*;

async fn patch(s: &TestServer, bearer: &str, id: &str, body: Value) -> HttpResponse {
    s.http().await.patch_json(&format!("/v1/api-keys/{id}"), Some(bearer), &body.to_string()).await
}

/// (status, code, param) of a response.
fn outcome(r: &HttpResponse) -> (u16, Value, Value) {
    let v = r.json();
    (r.status, v["error"]["code"].clone(), v["error"]["param"].clone())
}

fn new_key(scopes: &[Scope]) -> NewKey {
    NewKey {
        name: "k".into(),
        account: AccountId::parse("acct_p").unwrap(),
        environment: Environment::Live,
        scopes: scopes.to_vec(),
        ip_allowlist: vec![],
        expires_at: None,
    }
}

#[tokio::test]
async fn the_privilege_rule_holds_for_the_updated_key() {
    let s = TestServer::start().await;
    let k = |scopes: &[Scope]| s.key_with(new_key(scopes));
    let (caller, _) = k(&[TeamsWrite, TasksRead, AgentsRead]).await;
    let (reader, _) = k(&[TeamsRead, TasksRead]).await;
    let (_, target) = k(&[TasksRead]).await;
    let (_, stronger) = k(&[TasksRead, BillingRead]).await;
    let (_, other_account) = s.key("acct_q", Environment::Live, &[TasksRead]).await;
    let (_, other_env) = s.key("acct_p", Environment::Test, &[TasksRead]).await;
    let scopes = |v: &[&str]| json!({"scopes": v});

    // teams.write is required.
    let r = patch(&s, &reader, &target, json!({"name": "x"})).await;
    assert_eq!(outcome(&r), (403, json!("insufficient_scope"), json!("teams.write")));
    // Scopes within the caller's: 200; beyond them: 403 naming the scope.
    let r = patch(&s, &caller, &target, scopes(&["tasks.read", "agents.read"])).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["scopes"], json!(["tasks.read", "agents.read"]));
    let r = patch(&s, &caller, &target, scopes(&["tasks.read", "billing.read"])).await;
    assert_eq!(outcome(&r), (403, json!("scope_escalation"), json!("billing.read")));
    // A key holding more than the caller: only narrowed into the caller's scopes.
    let r = patch(&s, &caller, &stronger, json!({"name": "renamed"})).await;
    assert_eq!(outcome(&r), (403, json!("scope_escalation"), json!("billing.read")));
    assert_eq!(patch(&s, &caller, &stronger, scopes(&["tasks.read"])).await.status, 200);
    // Another account's, another environment's, an unknown or malformed id: 404 alike.
    for id in [other_account.as_str(), &other_env, "key_doesnotexist", "nope"] {
        let r = patch(&s, &caller, id, json!({"name": "x"})).await;
        assert_eq!(outcome(&r), (404, json!("resource_missing"), Value::Null), "{id}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn an_expiring_or_restricted_caller_cannot_lift_its_limits_through_an_update() {
    let s = TestServer::start().await;
    let limit = OffsetDateTime::now_utc() + time::Duration::hours(1);
    let (caller, _) = s
        .key_with(NewKey {
            expires_at: Some(limit),
            ip_allowlist: vec!["127.0.0.0/8".parse().unwrap()],
            ..new_key(&[TeamsWrite, TasksRead])
        })
        .await;
    let (_, target) = s
        .key_with(NewKey {
            expires_at: Some(limit),
            ip_allowlist: vec!["127.0.0.1/32".parse().unwrap()],
            ..new_key(&[TasksRead])
        })
        .await;
    let later = rfc3339(limit + time::Duration::minutes(1));
    let sooner = rfc3339(limit - time::Duration::minutes(1));
    for (body, param) in [
        (json!({"expires_at": null}), "expires_at"),
        (json!({"expires_at": later}), "expires_at"),
        (json!({"ip_allowlist": []}), "ip_allowlist"),
        (json!({"ip_allowlist": null}), "ip_allowlist"),
        (json!({"ip_allowlist": ["10.0.0.0/8"]}), "ip_allowlist"),
    ] {
        let r = patch(&s, &caller, &target, body.clone()).await;
        assert_eq!(outcome(&r), (403, json!("scope_escalation"), json!(param)), "{body}");
    }
    let r =
        patch(&s, &caller, &target, json!({"expires_at": sooner, "ip_allowlist": ["127.0.0.2"]}))
            .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["ip_allowlist"], json!(["127.0.0.2/32"]));
    s.shutdown().await;
}

#[tokio::test]
async fn revoked_and_expired_keys_cannot_be_updated() {
    let s = TestServer::start().await;
    let boot = s.bootstrap.clone();
    let (_, revoked) = s.key("acct_local", Environment::Test, &[TasksRead]).await;
    let del = s.revoke(&revoked, &boot).await;
    assert_eq!(del.status, 200);
    let r = patch(&s, &boot, &revoked, json!({"name": "back"})).await;
    assert_eq!(outcome(&r), (400, json!("key_revoked"), json!("id")));

    let (_, expired) = s.key("acct_local", Environment::Test, &[TasksRead]).await;
    let r = patch(&s, &boot, &expired, json!({"expires_at": "2020-01-01T00:00:00Z"})).await;
    assert_eq!(r.status, 200, "a past expiry expires the key now: {}", r.body);
    let r = patch(&s, &boot, &expired, json!({"expires_at": null})).await;
    assert_eq!(outcome(&r), (400, json!("key_expired"), json!("id")), "no resurrection");
    let got = s.http().await.get(&format!("/v1/api-keys/{expired}"), Some(&boot)).await.json();
    assert_eq!(got["expires_at"], json!("2020-01-01T00:00:00Z"));
    s.shutdown().await;
}

#[tokio::test]
async fn bad_bodies_are_400_naming_the_param_and_change_nothing() {
    let s = TestServer::start().await;
    let boot = s.bootstrap.clone();
    let (_, id) = s.key("acct_local", Environment::Test, &[TasksRead]).await;
    for (body, code, param) in [
        (json!({"nmae": "typo"}), "unknown_param", json!("nmae")),
        (json!({"name": "ok", "environment": "live"}), "unknown_param", json!("environment")),
        (json!({"name": ""}), "invalid_param", json!("name")),
        (json!({"scopes": []}), "invalid_param", json!("scopes")),
        (json!({"scopes": "tasks.read"}), "invalid_param", json!("scopes")),
        (json!({"scopes": ["tasks.admin"]}), "unknown_scope", json!("tasks.admin")),
        (json!({"ip_allowlist": ["300.0.0.1"]}), "invalid_cidr", json!("ip_allowlist")),
        (json!({"expires_at": "soon"}), "invalid_param", json!("expires_at")),
    ] {
        let r = patch(&s, &boot, &id, body.clone()).await;
        assert_eq!(outcome(&r), (400, json!(code), param), "{body}");
    }
    let mut http = s.http().await;
    let r = http.patch_json(&format!("/v1/api-keys/{id}"), Some(&boot), "{not json").await;
    assert_eq!(outcome(&r).0, 400);
    let r =
        http.with_body(hyper::Method::PUT, &format!("/v1/api-keys/{id}"), Some(&boot), "{}").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow").as_deref(), Some("GET, PATCH, DELETE"));
    let rec = http.get(&format!("/v1/api-keys/{id}"), Some(&boot)).await.json();
    assert_eq!(
        (rec["name"].clone(), rec["scopes"].clone()),
        (json!("test"), json!(["tasks.read"]))
    );
    // An empty object changes nothing and answers the record.
    let r = patch(&s, &boot, &id, json!({})).await;
    assert_eq!((r.status, r.json()["name"].clone()), (200, json!("test")));
    s.shutdown().await;
}

/// One round: a PATCH, a rotation and a revocation of one key at once, each on its own
/// connection (and, in Redis mode, `b` may be another node); the revocation starts `round`
/// mod 4 ms later, to vary which wins. The stored record must be one that some serial
/// order of the successful requests produces.
pub async fn one_race(a: &TestServer, b: &TestServer, caller: &str, round: u64) {
    let (old, id) = a.key("acct_local", Environment::Test, &[TasksRead, AgentsRead]).await;
    let path = format!("/v1/api-keys/{id}");
    let patched = json!({"name": "patched", "scopes": ["tasks.read"]}).to_string();
    let (mut h1, mut h2, mut h3) = (a.http().await, b.http().await, a.http().await);
    let rotate = format!("{path}/rotate");
    let (p, r, d) = tokio::join!(
        h1.patch_json(&path, Some(caller), &patched),
        h2.post_json(&rotate, Some(caller), "{}"),
        async {
            // Not a synchronisation: spreads the rounds over the possible orders.
            tokio::time::sleep(std::time::Duration::from_millis(round % 4)).await;
            let req = hyper::Request::delete(path.as_str())
                .header("host", "x")
                .header("authorization", format!("Bearer {caller}"))
                .body(Default::default())
                .unwrap();
            h3.send(req).await
        },
    );
    assert_eq!(d.status, 200, "the revocation always succeeds: {}", d.body);
    // A request after the revocation is refused as revoked; before it, it succeeded.
    assert!(
        p.status == 200 || outcome(&p) == (400, json!("key_revoked"), json!("id")),
        "{}",
        p.body
    );
    assert!(
        r.status == 201 || outcome(&r) == (400, json!("key_revoked"), json!("id")),
        "{}",
        r.body
    );
    let rec = a.http().await.get(&path, Some(caller)).await.json();
    assert!(rec["revoked_at"].is_string());
    let patch_applied = rec["name"] == "patched" && rec["scopes"] == json!(["tasks.read"]);
    assert_eq!(patch_applied, p.status == 200, "PATCH {} but the record is {rec}", p.status);
    if p.status != 200 {
        assert_eq!(
            (rec["name"].clone(), rec["scopes"].clone()),
            (json!("test"), json!(["tasks.read", "agents.read"]))
        );
    }
    // The rotation's secret is in the record exactly when it answered 201 (a lost secret
    // would be `invalid_api_key`; a revoked key's secret answers `revoked_api_key`).
    let rotated = (r.status == 201).then(|| r.json()["key"].as_str().unwrap().to_owned());
    let live = rotated.clone().unwrap_or(old);
    let r = a.http().await.get("/v1/api-keys", Some(&live)).await;
    assert_eq!(r.json()["error"]["code"], "revoked_api_key", "{}", r.body);
    if let Some(new) = rotated {
        assert!(rec["redacted"].as_str().unwrap().ends_with(&new[new.len() - 4..]), "{rec}");
    }
}

#[tokio::test]
async fn a_patch_racing_a_rotation_and_a_revocation_loses_no_update() {
    let s = TestServer::start().await;
    let caller = s.bootstrap.clone();
    for round in 0..16 {
        one_race(&s, &s, &caller, round).await;
    }
    s.shutdown().await;
}
