//! SPEC §4.1: a production key is never accepted from a browser (a request with `Origin`);
//! test keys are, for development; tickets are how browsers connect.

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use miteos_stream::scope::{Environment, Scope};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Error as WsError};

use crate::support::{http::HttpResponse, TestServer};

const ORIGIN: &str = "https://dashboard.example.com";

async fn get(s: &TestServer, path: &str, bearer: &str, origin: Option<&str>) -> HttpResponse {
    let mut b = Request::get(path)
        .header("host", s.addr.to_string())
        .header("authorization", format!("Bearer {bearer}"));
    if let Some(o) = origin {
        b = b.header("origin", o);
    }
    s.http().await.send(b.body(Full::<Bytes>::default()).unwrap()).await
}

/// The status of a WebSocket upgrade with `?token=` and an optional Origin (101 = opened).
async fn upgrade(s: &TestServer, credential: &str, origin: Option<&str>) -> (u16, String) {
    let param = if credential.contains("_tk_") { "ticket" } else { "token" };
    let mut req =
        format!("ws://{}/v1/ws?{param}={credential}", s.addr).into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((_ws, resp)) => (resp.status().as_u16(), String::new()),
        Err(WsError::Http(resp)) => (
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

#[tokio::test]
async fn a_live_key_from_a_browser_is_refused_on_the_upgrade_and_every_v1_endpoint() {
    let s = TestServer::start().await;
    let scopes = [Scope::TasksRead, Scope::TeamsRead];
    let (live, _) = s.key("acct_b", Environment::Live, &scopes).await;
    let (test, _) = s.key("acct_b", Environment::Test, &scopes).await;

    let (status, body) = upgrade(&s, &live, Some(ORIGIN)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("\"live_key_in_browser\""), "{body}");
    let r = get(&s, "/v1/api-keys", &live, Some(ORIGIN)).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "live_key_in_browser");
    assert_eq!(r.json()["error"]["type"], "permission_error");
    let r = get(&s, "/v1/api-keys/key_whatever", &live, Some(ORIGIN)).await;
    assert_eq!(r.json()["error"]["code"], "live_key_in_browser");

    // Not a browser: the live key works. A test key works from a browser.
    assert_eq!(upgrade(&s, &live, None).await.0, 101);
    assert_eq!(get(&s, "/v1/api-keys", &live, None).await.status, 200);
    assert_eq!(upgrade(&s, &test, Some(ORIGIN)).await.0, 101);
    assert_eq!(get(&s, "/v1/api-keys", &test, Some(ORIGIN)).await.status, 200);

    // A ticket minted by the live key on the backend opens a stream from the browser.
    let r = s.http().await.post_json("/v1/ws/tickets", Some(&live), "").await;
    assert_eq!(r.status, 201, "{}", r.body);
    let ticket = r.json()["ticket"].as_str().unwrap().to_owned();
    assert_eq!(upgrade(&s, &ticket, Some(ORIGIN)).await.0, 101);
    assert_eq!(s.metric("miteos_requests_refused_total{reason=\"live_key_in_browser\"}"), 3.0);
    s.shutdown().await;
}

#[tokio::test]
async fn a_setting_allows_live_keys_in_browsers() {
    let s = TestServer::with(|c| c.allow_live_keys_in_browser = true).await;
    let (live, _) = s.key("acct_b", Environment::Live, &[Scope::TasksRead]).await;
    assert_eq!(upgrade(&s, &live, Some(ORIGIN)).await.0, 101);
    s.shutdown().await;
}
