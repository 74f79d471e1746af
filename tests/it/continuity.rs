//! SPEC §7 on a real server: offsets per channel, positions in `auth.success` and
//! `subscribed`, resume (exactly the missed events, in order, before live ones; or
//! `recovered: false` and nothing), and `GET /v1/events`. Run in both modes (tests/it_redis).

use serde_json::{json, Value};

use miteos_stream::scope::{Environment, Scope};

use crate::support::{TestServer, WsClient};

const ACCT: &str = "acct_c";

async fn publish_n(s: &TestServer, topic: &str, from: u64, to: u64) -> Vec<Value> {
    let mut admin = s.admin().await;
    let mut answers = Vec::new();
    for i in from..=to {
        answers.push(
            s.publish(&mut admin, ACCT, "test", topic, &format!("task.n{i}"), json!({"i": i}))
                .await,
        );
    }
    answers
}

/// Events of `topic` until one with `offset == last` (other messages are returned too).
async fn recv_until(c: &mut WsClient, last: u64) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let m = c.recv().await;
        let done = m["type"] == "event" && m["offset"] == last;
        got.push(m);
        if done {
            return got;
        }
    }
}

fn offsets(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().filter(|m| m["type"] == "event").filter_map(|m| m["offset"].as_u64()).collect()
}

async fn reader(s: &TestServer) -> String {
    s.key(ACCT, Environment::Test, &[Scope::TasksRead]).await.0
}

fn resume_auth(token: &str, resume: Value) -> Value {
    json!({"type": "auth", "token": token, "resume": resume})
}

#[tokio::test]
async fn offsets_are_consecutive_under_concurrent_producers_and_delivered_in_order() {
    let s = TestServer::start().await;
    let token = reader(&s).await;
    let (mut c, ok) = WsClient::authed(&s.ws_url(&token), &token).await;
    let start = ok["positions"]["tasks"].clone();
    assert_eq!(start["offset"], 0, "{ok}");
    let producers = (0..4).map(|p| {
        let s = &s;
        async move { publish_n(s, "tasks", p * 100, p * 100 + 49).await }
    });
    let answers: Vec<Value> = futures::future::join_all(producers).await.concat();
    let mut published: Vec<u64> = answers.iter().map(|a| a["offset"].as_u64().unwrap()).collect();
    published.sort_unstable();
    assert_eq!(published, (1..=200).collect::<Vec<_>>());
    assert!(answers.iter().all(|a| a["epoch"] == start["epoch"] && a["channel"] == "tasks"));
    let got = recv_until(&mut c, 200).await;
    assert_eq!(offsets(&got), (1..=200).collect::<Vec<_>>());
    s.shutdown().await;
}

#[tokio::test]
async fn a_resume_gets_exactly_the_missed_events_then_live_ones() {
    let s = TestServer::start().await;
    let token = reader(&s).await;
    let (mut c, ok) = WsClient::authed(&s.ws_url(&token), &token).await;
    let epoch = ok["positions"]["tasks"]["epoch"].clone();
    publish_n(&s, "tasks", 1, 3).await;
    assert_eq!(offsets(&recv_until(&mut c, 3).await), [1, 2, 3]);
    drop(c);
    publish_n(&s, "tasks", 4, 8).await;

    let mut c = WsClient::connect(&s.ws_url(&token)).await;
    c.send(resume_auth(&token, json!({"tasks": {"offset": 3, "epoch": epoch}}))).await;
    let ok = c.recv().await;
    assert_eq!(ok["type"], "auth.success", "{ok}");
    assert_eq!(ok["positions"]["tasks"], json!({"offset": 8, "epoch": epoch, "recovered": true}));
    publish_n(&s, "tasks", 9, 9).await;
    let got = recv_until(&mut c, 9).await;
    assert_eq!(offsets(&got), [4, 5, 6, 7, 8, 9], "{got:?}");
    assert_eq!(got[0]["event"], "task.n4");
    assert_eq!(s.metric("miteos_resumes_recovered_total"), 1.0);
    s.shutdown().await;
}

#[tokio::test]
async fn a_resume_while_events_keep_arriving_has_no_hole_and_no_duplicate() {
    let s = TestServer::start().await;
    let token = reader(&s).await;
    let (c, ok) = WsClient::authed(&s.ws_url(&token), &token).await;
    let epoch = ok["positions"]["tasks"]["epoch"].clone();
    drop(c);
    publish_n(&s, "tasks", 1, 50).await;
    // A producer keeps publishing while the client resumes from 20.
    let producer = {
        let s = &s;
        async move { publish_n(s, "tasks", 51, 250).await }
    };
    let client = async {
        let mut c = WsClient::connect(&s.ws_url(&token)).await;
        c.send(resume_auth(&token, json!({"tasks": {"offset": 20, "epoch": epoch}}))).await;
        let ok = c.recv().await;
        assert_eq!(ok["positions"]["tasks"]["recovered"], true, "{ok}");
        recv_until(&mut c, 250).await
    };
    let (_, got) = tokio::join!(producer, client);
    assert_eq!(offsets(&got), (21..=250).collect::<Vec<_>>());
    s.shutdown().await;
}

#[tokio::test]
async fn resumes_that_history_cannot_serve_are_not_recovered_and_send_nothing_missed() {
    let s = TestServer::with(|c| c.history_size = 5).await;
    let token = reader(&s).await;
    let (c, ok) = WsClient::authed(&s.ws_url(&token), &token).await;
    let epoch = ok["positions"]["tasks"]["epoch"].as_str().unwrap().to_owned();
    drop(c);
    publish_n(&s, "tasks", 1, 10).await; // history keeps 6..=10
    let mut head = 10;
    for (why, from) in [
        ("another epoch", json!({"offset": 8, "epoch": "not-this-one"})),
        ("older than the window", json!({"offset": 2, "epoch": epoch})),
        ("ahead of the channel", json!({"offset": 99, "epoch": epoch})),
    ] {
        let mut c = WsClient::connect(&s.ws_url(&token)).await;
        c.send(resume_auth(&token, json!({"tasks": from}))).await;
        let ok = c.recv().await;
        assert_eq!(
            ok["positions"]["tasks"],
            json!({"offset": head, "epoch": epoch, "recovered": false}),
            "{why}: {ok}"
        );
        head += 1;
        publish_n(&s, "tasks", head, head).await;
        let next = c.recv().await;
        assert_eq!((&next["type"], &next["offset"]), (&json!("event"), &json!(head)), "{why}");
    }
    assert_eq!(s.metric("miteos_resumes_unrecovered_total"), 3.0);
    // The window's edge: 5 events kept (9..=13); from 8 every missed one is there.
    let mut c = WsClient::connect(&s.ws_url(&token)).await;
    c.send(resume_auth(&token, json!({"tasks": {"offset": 8, "epoch": epoch}}))).await;
    let ok = c.recv().await;
    assert_eq!(ok["positions"]["tasks"]["recovered"], true, "{ok}");
    assert_eq!(offsets(&recv_until(&mut c, 13).await), [9, 10, 11, 12, 13]);
    // From 7, event 8 is gone: not recovered.
    let mut c = WsClient::connect(&s.ws_url(&token)).await;
    c.send(resume_auth(&token, json!({"tasks": {"offset": 7, "epoch": epoch}}))).await;
    assert_eq!(c.recv().await["positions"]["tasks"]["recovered"], false);
    s.shutdown().await;
}

#[tokio::test]
async fn an_offset_older_than_the_ttl_is_not_recovered() {
    let s = TestServer::with(|c| c.history_ttl = std::time::Duration::from_millis(300)).await;
    let token = reader(&s).await;
    let (c, ok) = WsClient::authed(&s.ws_url(&token), &token).await;
    let epoch = ok["positions"]["tasks"]["epoch"].clone();
    drop(c);
    publish_n(&s, "tasks", 1, 3).await;
    // Wait until history has let the events go (the page is read, not slept on).
    let mut http = s.http().await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let page = http.get("/v1/events?channel=tasks&after=0", Some(&token)).await.json();
        if page["data"].as_array().is_some_and(|d| d.is_empty()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "history kept events past its TTL");
        tokio::task::yield_now().await;
    }
    let mut c = WsClient::connect(&s.ws_url(&token)).await;
    c.send(resume_auth(&token, json!({"tasks": {"offset": 1, "epoch": epoch}}))).await;
    let ok = c.recv().await;
    assert_eq!(ok["positions"]["tasks"]["recovered"], false, "{ok}");
    s.shutdown().await;
}

#[tokio::test]
async fn subscribe_with_resume_recovers_a_channel_mid_session() {
    let s = TestServer::start().await;
    let (token, _) = s.key(ACCT, Environment::Test, &[Scope::TasksRead, Scope::AgentsRead]).await;
    let (mut c, ok) = WsClient::authed(&s.ws_url(&token), &token).await;
    let epoch = ok["positions"]["agents"]["epoch"].clone();
    c.send(json!({"type": "unsubscribe", "channels": ["agents"]})).await;
    assert_eq!(c.recv().await["type"], "unsubscribed");
    publish_n(&s, "agents", 1, 4).await;
    c.send(json!({"type": "subscribe", "channels": ["agents"], "resume": {"agents": {"offset": 2, "epoch": epoch}}})).await;
    let sub = c.recv().await;
    assert_eq!(sub["type"], "subscribed", "{sub}");
    assert_eq!(sub["positions"]["agents"], json!({"offset": 4, "epoch": epoch, "recovered": true}));
    assert_eq!(offsets(&recv_until(&mut c, 4).await), [3, 4]);
    s.shutdown().await;
}

#[tokio::test]
async fn events_pages_history_per_account_environment_and_scope() {
    let s = TestServer::start().await;
    let token = reader(&s).await;
    publish_n(&s, "tasks", 1, 7).await;
    let mut http = s.http().await;
    let page = http.get("/v1/events?channel=tasks&after=2&limit=3", Some(&token)).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let page = page.json();
    assert_eq!(offsets(page["data"].as_array().unwrap()), [3, 4, 5]);
    assert_eq!(page["data"][0]["event"], "task.n3");
    assert_eq!((&page["position"]["offset"], &page["has_more"]), (&json!(7), &json!(true)));
    let newest = http.get("/v1/events?channel=tasks&limit=2", Some(&token)).await.json();
    assert_eq!(offsets(newest["data"].as_array().unwrap()), [6, 7]);
    assert_eq!(newest["has_more"], false);

    // Another account and another environment see their own (empty) channels.
    let (other_acct, _) = s.key("acct_other", Environment::Test, &[Scope::TasksRead]).await;
    let (other_env, _) = s.key(ACCT, Environment::Live, &[Scope::TasksRead]).await;
    for t in [&other_acct, &other_env] {
        let p = http.get("/v1/events?channel=tasks&after=0", Some(t)).await.json();
        assert_eq!(p["data"], json!([]), "{p}");
        assert_eq!(p["position"]["offset"], 0);
    }
    let no_scope = http.get("/v1/events?channel=agents", Some(&token)).await;
    assert_eq!(no_scope.status, 403);
    assert_eq!(no_scope.json()["error"]["param"], "agents.read");
    for (query, param) in [
        ("", "channel"),
        ("channel=nope", "channel"),
        ("channel=tasks&after=-1", "after"),
        ("channel=tasks&limit=0", "limit"),
        ("channel=tasks&limit=1001", "limit"),
        ("channel=tasks&fromm=1", "fromm"),
    ] {
        let r = http.get(&format!("/v1/events?{query}"), Some(&token)).await;
        assert_eq!(r.status, 400, "{query}");
        assert_eq!(r.json()["error"]["param"], param, "{query}");
    }
    assert_eq!(http.get("/v1/events?channel=tasks", None).await.status, 401);
    s.shutdown().await;
}
