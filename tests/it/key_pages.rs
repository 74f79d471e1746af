//! `GET /v1/api-keys` pages (Stripe-style `limit` / `starting_after` / `has_more`) and the
//! per-account key quota (issue 10 item 10).

use miteos_stream::scope::{Environment, Scope};
use serde_json::{json, Value};

use crate::support::TestServer;

async fn page(s: &TestServer, query: &str) -> (u16, Value) {
    let r = s.http().await.get(&format!("/v1/api-keys{query}"), Some(&s.bootstrap)).await;
    (r.status, r.json())
}

#[tokio::test]
async fn keys_are_listed_in_pages_oldest_first() {
    let s = TestServer::start().await;
    let mut made = vec![];
    for _ in 0..24 {
        made.push(s.key("acct_local", Environment::Test, &[Scope::TasksRead]).await.1);
    }
    s.key("acct_other", Environment::Test, &[Scope::TasksRead]).await; // never listed here
    let (mut seen, mut after, mut pages) = (Vec::<String>::new(), String::new(), 0);
    loop {
        let q = if after.is_empty() {
            "?limit=10".to_owned()
        } else {
            format!("?limit=10&starting_after={after}")
        };
        let (status, body) = page(&s, &q).await;
        assert_eq!(status, 200, "{body}");
        let ids: Vec<String> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_str().unwrap().to_owned())
            .collect();
        pages += 1;
        seen.extend(ids.iter().cloned());
        if !body["has_more"].as_bool().unwrap() {
            break;
        }
        assert_eq!(ids.len(), 10);
        after = ids.last().unwrap().clone();
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 25, "the bootstrap key and the 24 made");
    assert_eq!(seen[1..], made[..], "oldest first, no key twice or missing");
    let (_, all) = page(&s, "").await;
    assert_eq!((all["data"].as_array().unwrap().len(), &all["has_more"]), (25, &json!(false)));

    for bad in ["?limit=0", "?limit=101", "?limit=x"] {
        let (status, e) = page(&s, bad).await;
        assert_eq!((status, e["error"]["param"].as_str()), (400, Some("limit")), "{bad}");
    }
    for bad in ["?starting_after=nope", "?starting_after=key_notinthislist00000000"] {
        let (status, e) = page(&s, bad).await;
        assert_eq!((status, e["error"]["param"].as_str()), (400, Some("starting_after")), "{bad}");
    }
    let (status, e) = page(&s, "?colour=blue").await;
    assert_eq!((status, e["error"]["param"].as_str()), (400, Some("colour")));
    s.shutdown().await;
}

#[tokio::test]
async fn an_account_cannot_create_more_keys_than_its_quota() {
    let s = TestServer::with(|c| c.max_keys_per_account = 3).await;
    let mut http = s.http().await;
    let create = r#"{"name":"k","scopes":["tasks.read"]}"#;
    let mut ids = vec![];
    for _ in 0..2 {
        let r = http.post_json("/v1/api-keys", Some(&s.bootstrap), create).await;
        assert_eq!(r.status, 201, "{}", r.body);
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    let r = http.post_json("/v1/api-keys", Some(&s.bootstrap), create).await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (400, Some("key_limit_reached")));
    let del = http.delete(&format!("/v1/api-keys/{}", ids[0]), Some(&s.bootstrap)).await;
    assert_eq!(del.status, 200);
    let r = http.post_json("/v1/api-keys", Some(&s.bootstrap), create).await;
    assert_eq!(r.status, 201, "a revoked key frees its place: {}", r.body);
    s.shutdown().await;
}
