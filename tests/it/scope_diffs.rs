//! The property of issue 13's scope diffs, on a real server: for any scopes a key has and
//! any it is PATCHed to, a stream subscribed to every topic it could read loses exactly the
//! topics old read scopes − new read scopes (in one `scope_removed` message, sorted), closes
//! with 4003 when no read scope is left, and hears nothing when nothing was removed.

use std::collections::BTreeSet;

use miteos_stream::scope::{Environment, Scope};
use proptest::prelude::*;
use serde_json::json;

use crate::{
    key_updates::{patch_ok, still_open},
    support::{TestServer, WsClient},
};

/// The topics a set of scopes may read, by name (the model: `<topic>.read` strings).
fn reads(scopes: &[Scope]) -> BTreeSet<String> {
    scopes.iter().filter_map(|s| s.as_str().strip_suffix(".read")).map(str::to_owned).collect()
}

fn subset(mask: u32) -> Vec<Scope> {
    Scope::ALL.iter().enumerate().filter(|(i, _)| mask & 1 << i != 0).map(|(_, s)| *s).collect()
}

async fn one_case(s: &TestServer, old: Vec<Scope>, new: Vec<Scope>) -> Result<(), TestCaseError> {
    let (token, id) = s.key("acct_local", Environment::Test, &old).await;
    let (mut c, ok) = WsClient::authed(&s.ws_url(&token), &token).await;
    let joined: BTreeSet<String> =
        ok["channels"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    prop_assert_eq!(&joined, &reads(&old));
    let names: Vec<&str> = new.iter().map(|s| s.as_str()).collect();
    patch_ok(s, &s.bootstrap, &id, json!({"scopes": names})).await;
    let removed: Vec<String> = reads(&old).difference(&reads(&new)).cloned().collect();
    if reads(&new).is_empty() {
        prop_assert_eq!(c.expect_close().await, 4003);
    } else if removed.is_empty() {
        still_open(&mut c).await; // the pong comes first: no message about scopes
    } else {
        let m = c.recv().await;
        prop_assert_eq!(
            m,
            json!({"type": "unsubscribed", "channels": removed, "reason": "scope_removed"})
        );
    }
    Ok(())
}

#[test]
fn a_stream_loses_exactly_the_removed_read_topics() {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let server = rt.block_on(TestServer::start());
    let read_mask: u32 = Scope::ALL
        .iter()
        .enumerate()
        .filter(|(_, s)| s.read_topic().is_some())
        .fold(0, |m, (i, _)| m | 1 << i);
    let config = ProptestConfig { cases: 48, ..ProptestConfig::default() };
    proptest!(config, |(a in 1u32..1 << 17, b in 1u32..1 << 17)| {
        // The stream needs a read scope to open at all.
        prop_assume!(a & read_mask != 0);
        rt.block_on(one_case(&server, subset(a), subset(b)))?;
    });
    rt.block_on(server.shutdown());
}
