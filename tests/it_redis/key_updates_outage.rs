//! What a node that could not hear a key update does (issue 13 items 2 and 3 during a broker
//! outage: one node behind a proxy that can cut it off Redis), and the CLI's update reaching a
//! running node. One private redis-server each (a proxy in front of a cluster would have to
//! rewrite its slot map).

use std::time::{Duration, Instant};

use miteos_stream::{broker::redis::CONFIRM_WITHIN, scope::Scope::*};
use serde_json::json;

use crate::{
    key_updates::{key, patch_ok, publish},
    support::{http::HttpClient, proxy::TcpProxy, RedisServer, TestServer, WsClient},
};

/// Node A on a private Redis directly, node B through `proxy` (so B alone can lose Redis);
/// a key made on A with three read scopes, its stream `c` on B, and the key cached on B.
struct BehindProxy {
    _redis: RedisServer,
    proxy: TcpProxy,
    a: TestServer,
    b: TestServer,
    token: String,
    id: String,
    c: WsClient,
    on_b: HttpClient,
}

async fn behind_proxy() -> BehindProxy {
    let redis = RedisServer::start().await;
    let proxy = TcpProxy::start(redis.port).await;
    let a = TestServer::on_redis(&redis, |_| {}).await;
    let url = proxy.url();
    let b = TestServer::with(|c| c.redis_url = Some(url)).await;
    let (token, id) = key(&a, &[TasksRead, AgentsRead, TeamsRead]).await;
    let (c, _) = WsClient::authed(&b.ws_url(&token), &token).await;
    let mut on_b = b.http().await;
    assert_eq!(on_b.get("/v1/api-keys", Some(&token)).await.status, 200, "cached on B");
    BehindProxy { _redis: redis, proxy, a, b, token, id, c, on_b }
}

/// A PATCH while node B is cut off from Redis: B refuses the key meanwhile (it cannot be
/// sure of its cached copy and cannot read the store), and once it is back its stream
/// loses the removed topic before anything of that topic reaches it.
#[tokio::test]
async fn a_patch_during_the_other_nodes_broker_outage_is_applied_when_it_reconnects() {
    let BehindProxy { _redis, proxy, a, b, token, id, mut c, on_b: _ } = behind_proxy().await;

    proxy.cut();
    b.wait_ready(503).await;
    patch_ok(&a, &a.bootstrap, &id, json!({"scopes": ["tasks.read"]})).await;
    let r = b.http().await.get("/v1/api-keys", Some(&token)).await;
    assert_eq!(r.status, 503, "B must not answer from its cache: {}", r.body);

    proxy.restore();
    b.wait_ready(200).await;
    let m = c.recv().await;
    let lost =
        json!({"type": "unsubscribed", "channels": ["agents", "teams"], "reason": "scope_removed"});
    assert_eq!(m, lost);
    publish(&a, "agents", "agent.after").await;
    publish(&a, "tasks", "task.marker").await;
    assert_eq!(c.recv().await["event"], "task.marker");
    let r = b.http().await.get("/v1/api-keys", Some(&token)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let (_, ok) = WsClient::authed(&b.ws_url(&token), &token).await;
    assert_eq!(ok["channels"], json!(["tasks"]));
    a.shutdown().await;
    b.shutdown().await;
}

/// Only B's subscriptions fail, its commands work: while B cannot hear control messages it
/// does not trust its cache (it re-reads the key), and once they are back its stream loses
/// the removed topics.
#[tokio::test]
async fn while_the_other_node_cannot_hear_updates_it_reads_keys_from_the_store() {
    let BehindProxy { _redis, proxy, a, b, token, id, mut c, mut on_b } = behind_proxy().await;

    proxy.cut_pubsub();
    b.wait_ready(503).await;
    patch_ok(&a, &a.bootstrap, &id, json!({"scopes": ["tasks.read"]})).await;
    let r = on_b.get("/v1/api-keys", Some(&token)).await;
    assert_eq!(r.status, 403, "B answered from a copy older than the PATCH: {}", r.body);

    proxy.restore();
    b.wait_ready(200).await;
    let m = c.recv().await;
    assert_eq!(
        (m["channels"].clone(), m["reason"].clone()),
        (json!(["agents", "teams"]), json!("scope_removed"))
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// A silent failure: B's subscriptions stay open but nothing gets through, so Redis still
/// counts B as a receiver and B never confirms. The PATCH answers once B must have noticed
/// (its control health check failed): by then B no longer serves its cached copy.
#[tokio::test]
async fn a_patch_while_the_other_node_hears_nothing_answers_once_it_distrusts_its_cache() {
    let BehindProxy { _redis, proxy, a, b, token, id, mut c, mut on_b } = behind_proxy().await;

    proxy.freeze_pubsub();
    let started = Instant::now();
    patch_ok(&a, &a.bootstrap, &id, json!({"scopes": ["tasks.read"]})).await;
    let took = started.elapsed();
    assert!(took < CONFIRM_WITHIN + Duration::from_secs(1), "answered after {took:?}");
    let r = on_b.get("/v1/api-keys", Some(&token)).await;
    assert_eq!(r.status, 403, "B answered from a copy older than the PATCH: {}", r.body);

    proxy.restore();
    b.wait_ready(200).await;
    let m = c.recv().await;
    assert_eq!(
        (m["channels"].clone(), m["reason"].clone()),
        (json!(["agents", "teams"]), json!("scope_removed"))
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// `keys update` from the CLI in Redis mode reaches a running node's streams.
#[tokio::test]
async fn a_cli_update_reaches_a_running_nodes_streams() {
    use crate::support::bin::{run, Served};
    let redis = RedisServer::start().await;
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let mut served = Served::start(dir.path(), &[("MITEOS_REDIS_URL", url.as_str())]).await;
    let cli = tempfile::tempdir().unwrap();
    let create = [
        "--redis-url",
        &url,
        "keys",
        "create",
        "--account",
        "acct_cli",
        "--env",
        "live",
        "--name",
        "n",
        "--scopes",
        "tasks.read,agents.read",
    ];
    let (code, out, err) = run(cli.path(), &create).await;
    assert_eq!(code, 0, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (token, id) = (created["key"].as_str().unwrap(), created["id"].as_str().unwrap());
    served.wait_ready().await;
    let (mut c, _) =
        WsClient::authed(&format!("ws://{}/v1/ws?token={token}", served.addr), token).await;
    let update = ["--redis-url", &url, "keys", "update", id, "--scopes", "tasks.read"];
    let (code, out, err) = run(cli.path(), &update).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"scopes\":[\"tasks.read\"]"), "{out}");
    let m = c.recv().await;
    assert_eq!(
        (m["channels"].clone(), m["reason"].clone()),
        (json!(["agents"]), json!("scope_removed"))
    );
    served.signal_term();
    assert_eq!(served.wait().await, 0);
}
