//! The `miteos` function library on its own (no node): whatever `mt_publish` accepts, every
//! node's decoder accepts too (else an offset would be taken by an event no client can
//! receive), checked on hand-picked cases and on thousands of random mutations; and its
//! date conversion against the `time` crate for any date.

use std::time::{Duration, Instant};

use miteos_stream::{
    broker::{
        codec,
        redis::{history_keys, library, LIBRARY},
        ChannelKey,
    },
    scope::Topic,
};
use rand::{Rng, SeedableRng};

use crate::support::RedisServer;

const MAX: usize = 64 * 1024;
/// What nodes accept over `max_event_bytes` for what the function adds (history::ADDED_BYTES).
const ADDED: usize = 256;

/// A Stream entry as XRANGE returns it: its ID and its fields.
type Entry = (String, Vec<(String, Vec<u8>)>);

async fn loaded() -> (RedisServer, redis::aio::MultiplexedConnection) {
    let redis = RedisServer::start().await;
    let mut conn = redis.conn().await;
    let src = library(1000, Duration::from_secs(600), MAX, false);
    let name: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(src)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(name, "miteos");
    (redis, conn)
}

/// Publishes `payload`; when the function accepts it, asserts the message it published
/// decodes on a node with the position it answered. Returns whether it was accepted.
async fn accepted(conn: &mut redis::aio::MultiplexedConnection, payload: &[u8]) -> bool {
    let ch = ChannelKey::parse("mt:live:acct_fx:tasks").unwrap();
    let keys = history_keys(&ch);
    let r: redis::RedisResult<(u64, String)> = redis::cmd("FCALL")
        .arg("mt_publish")
        .arg(2)
        .arg(&keys[..])
        .arg(payload)
        .query_async(conn)
        .await;
    let (offset, epoch) = match r {
        Ok(p) => p,
        Err(e) => {
            let code = e.code().unwrap_or_default().to_owned();
            assert!(code.starts_with("MT_"), "{payload:?}: not a refusal: {e}");
            return false;
        }
    };
    let last: Vec<Entry> = redis::cmd("XREVRANGE")
        .arg(&keys[0])
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await
        .unwrap();
    let msg = &last[0].1.iter().find(|(f, _)| f == "p").unwrap().1;
    match codec::decode(Topic::Tasks, msg, MAX + ADDED, Instant::now()) {
        Ok(e) => assert_eq!(
            (e.offset, e.epoch.as_deref()),
            (Some(offset), Some(epoch.as_str())),
            "{}",
            String::from_utf8_lossy(msg)
        ),
        Err(e) => panic!(
            "the function accepted {:?} but nodes drop what it published ({e}): {:?}",
            String::from_utf8_lossy(payload),
            String::from_utf8_lossy(msg)
        ),
    }
    true
}

#[tokio::test]
async fn the_function_accepts_only_what_nodes_decode() {
    let (_redis, mut conn) = loaded().await;
    let good: &[&[u8]] = &[
        br#"{"event":"a"}"#,
        br#"  {  "event" : "a.b" , "data" : { "x" : [ ] } }  "#,
        b"{\n\t\"event\":\"a\",\r\n\"data\":[1,-2.5e3,0,true,false,null]}",
        br#"{"event":"\u00e9\ud83d\ude00","data":"\"\\\/\b\f\n\r\t"}"#,
        "{\"event\":\"é✓😀\",\"data\":{\"k\":\"ü\"}}".as_bytes(),
        br#"{"data":{"event":1,"offset":2},"event":"nested fields are not top-level"}"#,
        br#"{"event":"x","id":"evt_1","created_at":"2020-01-01T00:00:00Z","extra":[{}]}"#,
        br#"{"event":"x","extra":1,"extra":2}"#,
        br#"{"event":"x","data":1e999}"#,
    ];
    for p in good {
        assert!(accepted(&mut conn, p).await, "refused {:?}", String::from_utf8_lossy(p));
    }
    let long = format!(r#"{{"event":"{}"}}"#, "e".repeat(257));
    let big = format!(r#"{{"event":"x","data":"{}"}}"#, "d".repeat(MAX));
    let bad: Vec<&[u8]> = vec![
        b"",
        b"[]",
        b"not json",
        br#"{"event":5}"#,
        br#"{"event":""}"#,
        long.as_bytes(),
        big.as_bytes(),
        br#"{"event":"x","id":7}"#,
        br#"{"event":"x","id":null}"#,
        br#"{"event":"x","offset":3}"#,
        br#"{"event":"x","epoch":"e"}"#,
        br#"{"event":"x","event":"y"}"#,
        br#"{"event":"x","ev\u0065nt":"y"}"#,
        br#"{"event":"x","data":1,"data":2}"#,
        b"{\"event\":\"x\",\"data\":\"tab\there\"}",
        b"{\"event\":\"x\",\"data\":\"\x01\"}",
        b"{\"event\":\"x\"}\x0b",
        br#"{"event":"x","data":1.}"#,
        br#"{"event":"x","data":1.e5}"#,
        br#"{"event":"x","data":NaN}"#,
        br#"{"event":"x","data":0x10}"#,
        br#"{"event":"x"} trailing"#,
        b"{\"event\":\"\xff\"}",
        b"{\"event\":\"x\",\"data\":\"\xed\xa0\x80\"}",
        b"{\"event\":\"x\",\"data\":\"\xc3\"}",
        br#"{"event":"\ud800"}"#,
    ];
    for p in bad {
        assert!(!accepted(&mut conn, p).await, "accepted {:?}", String::from_utf8_lossy(p));
    }
}

#[tokio::test]
async fn random_mutations_never_publish_what_nodes_drop() {
    let (_redis, mut conn) = loaded().await;
    let seeds: &[&[u8]] = &[
        br#"{"event":"task.done","id":"evt_1","data":{"n":[1,2.5,-3e2],"s":"a\"b\\c","t":true}}"#,
        "{ \"event\" : \"é✓\", \"data\" : { \"k\" : \"ü😀\", \"l\" : [ ] } }".as_bytes(),
        br#"{"event":"a","created_at":"2020-01-01T00:00:00Z","data":"\u00e9\ud83d\ude00"}"#,
    ];
    let alphabet: &[u8] =
        b"{}[]\",:.\\ /0123456789eE+-truefalsnu\t\n\r\x01\x0b\x7f\xc3\xa9\xff\xed\xa0\x80\xf0\x9f";
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let (mut taken, mut cases) = (0, 0);
    for i in 0..4000 {
        let mut p = seeds[i % seeds.len()].to_vec();
        for _ in 0..rng.random_range(1..=3) {
            let at = rng.random_range(0..p.len());
            let b = alphabet[rng.random_range(0..alphabet.len())];
            match rng.random_range(0..4) {
                0 => p[at] = b,
                1 => p.insert(at, b),
                2 if p.len() > 1 => {
                    p.remove(at);
                }
                _ => {
                    let end = (at + rng.random_range(1..8)).min(p.len());
                    let copy = p[at..end].to_vec();
                    p.splice(at..at, copy);
                }
            }
        }
        cases += 1;
        if accepted(&mut conn, &p).await {
            taken += 1;
        }
    }
    // Not a vacuous run: some mutations stay valid, most are refused.
    assert!(taken > 100 && taken < cases, "{taken} of {cases} accepted");
}

#[tokio::test]
async fn created_at_is_the_utc_calendar_date_for_any_time() {
    let redis = RedisServer::start().await;
    // The library's own rfc3339(), run through EVAL on many times at once.
    let body = LIBRARY.split_once('\n').unwrap().1;
    let helpers = &body[..body.find("redis.register_function(").unwrap()];
    let script = format!(
        "{helpers}\nlocal out = {{}}\nfor i = 1, #ARGV, 2 do\n  out[#out + 1] = \
         rfc3339(tonumber(ARGV[i]), tonumber(ARGV[i + 1]))\nend\nreturn out"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut times: Vec<(i64, u32)> = [
        0,
        68_169_599,    // 1972-02-28T23:59:59
        951_782_399,   // 2000-02-29T23:59:59
        951_868_800,   // 2000-03-02T00:00:00
        1_709_251_199, // 2024-02-29T23:59:59
        4_107_542_399, // 2100-02-28T23:59:59
        4_107_542_400, // 2100-03-01
        253_402_300_799,
    ]
    .into_iter()
    .map(|s| (s, 999_999))
    .collect();
    times.extend(
        (0..3000)
            .map(|_| (rng.random_range(0..253_402_300_800i64), rng.random_range(0..1_000_000u32))),
    );
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(&script).arg(0);
    for (s, us) in &times {
        cmd.arg(s).arg(us);
    }
    let got: Vec<String> = cmd.query_async(&mut redis.conn().await).await.unwrap();
    for ((s, us), got) in times.iter().zip(got) {
        let t = time::OffsetDateTime::from_unix_timestamp(*s).unwrap();
        let want = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            us / 1000
        );
        assert_eq!(got, want, "at {s}.{us:06}");
    }
}
