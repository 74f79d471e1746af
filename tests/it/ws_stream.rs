//! SPEC §4.3–4.5: scoped auto-subscription, isolation, subscribe/unsubscribe/filters and
//! their errors, app-level ping, 1009, and per-topic ordering.

use miteos_stream::scope::{Environment, Scope};
use serde_json::json;

use crate::support::{TestServer, WsClient};

#[tokio::test]
async fn a_key_only_receives_its_own_account_and_environment() {
    let s = TestServer::start().await;
    let (token, _) = s.key("acct_a", Environment::Live, &[Scope::TasksRead]).await;
    let (mut c, _) = WsClient::authed(&s.ws_url(&token), &token).await;
    let mut admin = s.admin().await;
    s.publish(&mut admin, "acct_b", "live", "tasks", "task.other_account", json!({})).await;
    s.publish(&mut admin, "acct_a", "test", "tasks", "task.other_env", json!({})).await;
    s.publish(&mut admin, "acct_a", "live", "agents", "agent.unscoped_topic", json!({})).await;
    s.publish(&mut admin, "acct_a", "live", "tasks", "task.mine", json!({"n": 1})).await;
    let e = c.recv().await;
    assert_eq!(e["type"], "event");
    assert_eq!(e["channel"], "tasks");
    assert_eq!(e["event"], "task.mine", "received a foreign event first: {e}");
    assert_eq!(e["data"], json!({"n": 1}));
    assert!(e["id"].as_str().unwrap().starts_with("evt_"));
    assert!(e["created_at"].is_string());
    s.shutdown().await;
}

#[tokio::test]
async fn subscribe_errors_change_nothing() {
    let s = TestServer::start().await;
    let (token, _) =
        s.key("acct_a", Environment::Test, &[Scope::TasksRead, Scope::AgentsWrite]).await;
    let (mut c, _) = WsClient::authed(&s.ws_url(&token), &token).await;

    c.send(json!({"type": "subscribe", "channels": ["tasks", "agents"]})).await;
    let e = c.recv().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("insufficient_scope"))
    );
    assert_eq!(e["param"], "agents.read");

    c.send(json!({"type": "subscribe", "channels": ["nope"]})).await;
    let e = c.recv().await;
    assert_eq!((e["code"].as_str(), e["param"].as_str()), (Some("unknown_channel"), Some("nope")));

    c.send(json!({"type": "subscribe", "channels": ["tasks"], "events": ["task.*.x"]})).await;
    assert_eq!(c.recv().await["code"], "invalid_message");
    c.send(json!({"type": "subscribe", "channels": []})).await;
    assert_eq!(c.recv().await["code"], "invalid_message");
    let many: Vec<String> = (0..33).map(|i| format!("task.e{i}")).collect();
    c.send(json!({"type": "subscribe", "channels": ["tasks"], "events": many})).await;
    let e = c.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["param"].as_str()),
        (Some("invalid_message"), Some("events"))
    );
    let enough: Vec<String> = (0..32).map(|i| format!("task.e{i}")).collect();
    c.send(json!({"type": "subscribe", "channels": ["agents"], "events": enough})).await;
    assert_eq!(c.recv().await["code"], "insufficient_scope", "32 patterns are accepted");
    c.send(json!({"type": "dance"})).await;
    assert_eq!(c.recv().await["code"], "invalid_message");
    c.send_text("not json").await;
    assert_eq!(c.recv().await["code"], "invalid_message");
    c.send(json!({"type": "auth", "token": token})).await;
    assert_eq!(c.recv().await["code"], "invalid_message");

    // The failed requests changed nothing: tasks still arrive, agents do not.
    let mut admin = s.admin().await;
    s.publish(&mut admin, "acct_a", "test", "agents", "agent.x", json!({})).await;
    s.publish(&mut admin, "acct_a", "test", "tasks", "task.x", json!({})).await;
    assert_eq!(c.recv().await["event"], "task.x");
    s.shutdown().await;
}

#[tokio::test]
async fn unsubscribe_and_resubscribe_with_an_event_filter() {
    let s = TestServer::start().await;
    let (token, _) =
        s.key("acct_a", Environment::Live, &[Scope::TasksRead, Scope::AgentsRead]).await;
    let (mut c, _) = WsClient::authed(&s.ws_url(&token), &token).await;
    let mut admin = s.admin().await;

    c.send(json!({"type": "unsubscribe", "channels": ["tasks"]})).await;
    assert_eq!(c.recv().await, json!({"type": "unsubscribed", "channels": ["tasks"]}));
    s.publish(&mut admin, "acct_a", "live", "tasks", "task.completed", json!({})).await;
    s.publish(&mut admin, "acct_a", "live", "agents", "agent.marker", json!({})).await;
    assert_eq!(c.recv().await["event"], "agent.marker");

    c.send(json!({"type": "subscribe", "channels": ["tasks"], "events": ["task.*"]})).await;
    let subscribed = c.recv().await;
    assert_eq!(
        (&subscribed["type"], &subscribed["channels"]),
        (&json!("subscribed"), &json!(["tasks"]))
    );
    // One event was published to tasks while unsubscribed: the position says so.
    assert_eq!(subscribed["positions"]["tasks"]["offset"], 1);
    for name in ["job.started", "task", "task.completed", "tasks.x", "task.step.done"] {
        s.publish(&mut admin, "acct_a", "live", "tasks", name, json!({})).await;
    }
    assert_eq!(c.recv().await["event"], "task.completed");
    assert_eq!(c.recv().await["event"], "task.step.done");

    // Subscribing again without `events` removes the filter.
    c.send(json!({"type": "subscribe", "channels": ["tasks"]})).await;
    assert_eq!(c.recv().await["type"], "subscribed");
    s.publish(&mut admin, "acct_a", "live", "tasks", "job.started", json!({})).await;
    assert_eq!(c.recv().await["event"], "job.started");
    s.shutdown().await;
}

#[tokio::test]
async fn app_level_ping_gets_pong() {
    let s = TestServer::start().await;
    let (mut c, _) = WsClient::authed(&s.ws_url(&s.bootstrap), &s.bootstrap).await;
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.recv().await, json!({"type": "pong"}));
    s.shutdown().await;
}

#[tokio::test]
async fn a_message_over_max_message_bytes_closes_1009() {
    let s = TestServer::with(|c| c.max_message_bytes = 1024).await;
    let (mut c, _) = WsClient::authed(&s.ws_url(&s.bootstrap), &s.bootstrap).await;
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.recv().await["type"], "pong");
    c.send_text(&format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(2000))).await;
    assert_eq!(c.expect_close().await, 1009);
    s.shutdown().await;
}

#[tokio::test]
async fn a_thousand_events_arrive_in_publish_order() {
    let s = TestServer::start().await;
    let (mut c, _) = WsClient::authed(&s.ws_url(&s.bootstrap), &s.bootstrap).await;
    let mut admin = s.admin().await;
    for i in 0..1000 {
        s.publish(&mut admin, "acct_local", "test", "tasks", "task.seq", json!({"seq": i})).await;
    }
    for i in 0..1000 {
        let e = c.recv().await;
        assert_eq!(e["data"]["seq"], i, "out of order: {e}");
    }
    assert_eq!(s.metric("miteos_deliveries_total"), 1000.0);
    s.shutdown().await;
}
