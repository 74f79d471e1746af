//! Redis outages (issue 10 item 5): with Redis down, requests fail fast with 503 instead of
//! queueing behind each other; once it answers they succeed and the first node still shows
//! its bootstrap key; after a Redis that restarted empty, the caps hold again.

use std::time::{Duration, Instant};

use miteos_stream::{
    scope::{Environment, Scope},
    Config, Node,
};

use crate::support::{http::HttpClient, RedisServer, TestServer, WsClient};

#[tokio::test]
async fn with_redis_down_requests_fail_fast_and_succeed_once_it_is_back() {
    let mut redis = RedisServer::start().await;
    redis.kill();
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::build(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        admin_token: Some(crate::support::server::ADMIN_TOKEN.into()),
        redis_url: Some(redis.url()),
        ..Config::default()
    })
    .await
    .expect("a node starts with Redis down");
    assert!(node.bootstrap.is_none(), "no store to check yet");
    let late = node.late_bootstrap.take().expect("the bootstrap check waits for Redis");
    let addr = node.public_addr;
    tokio::spawn(node.run(std::future::pending()));

    let key = miteos_stream::token::Token::generate(Environment::Test);
    let started = Instant::now();
    let answers = futures::future::join_all((0..50).map(|_| async {
        let mut http = HttpClient::connect(addr).await;
        http.get("/v1/api-keys", Some(key.expose())).await
    }))
    .await;
    let took = started.elapsed();
    for r in &answers {
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.json()["error"]["code"], "broker_unavailable");
    }
    assert!(took < Duration::from_secs(5), "50 requests took {took:?}");

    redis.restart().await;
    let boot = tokio::time::timeout(Duration::from_secs(15), late)
        .await
        .expect("the bootstrap key comes once Redis answers")
        .expect("created");
    let boot = boot.token.expose().to_owned();
    let mut http = HttpClient::connect(addr).await;
    let mut ok = false;
    for _ in 0..100 {
        if http.get("/v1/api-keys", Some(&boot)).await.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "requests never succeeded after Redis came back");
}

#[tokio::test]
async fn after_redis_restarts_empty_the_open_streams_count_against_the_caps_again() {
    let mut redis = RedisServer::start().await;
    let s = TestServer::on_redis(&redis, |c| c.max_connections_per_account = 3).await;
    let (token, _) = s.key("acct_cap", Environment::Live, &[Scope::TasksRead]).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(WsClient::authed(&s.ws_url(&token), &token).await.0);
    }
    assert_eq!(
        WsClient::try_connect(&s.ws_url(&token)).await.err().expect("at the cap").status,
        429
    );
    // Redis restarts empty: every slot (and the key itself) is gone from it.
    redis.kill();
    redis.restart().await;
    s.wait_ready(200).await;
    // The key must exist again for a new connection to be checked against the cap at all.
    let (token2, _) = s.key("acct_cap", Environment::Live, &[Scope::TasksRead]).await;
    // Within a slot refresh (10 s) the node has re-registered its three streams.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match WsClient::try_connect(&s.ws_url(&token2)).await {
            Err(r) if r.status == 429 => break,
            Ok(c) => drop(c),
            Err(r) => panic!("unexpected refusal {r:?}"),
        }
        assert!(Instant::now() < deadline, "the open streams were never counted again");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    s.shutdown().await;
}
