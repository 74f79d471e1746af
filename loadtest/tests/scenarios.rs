//! Every loadtest scenario, run small against a real node (built through the library on
//! 127.0.0.1:0 with `loadtest/bench.toml`), checking the counts in its JSON line: what was
//! delivered, lost, cut off or refused. Nothing here is timed; speed lives in BENCHMARKS.md.

use std::{process::Stdio, time::Duration};

use miteos_stream::{Config, Node};
use serde_json::Value;
use tempfile::TempDir;

const ADMIN_TOKEN: &str = "loadtest-admin-token-0123456789";

struct Server {
    addr: String,
    admin: String,
    token: String,
    _dir: TempDir,
}

async fn server(tune: impl FnOnce(&mut Config)) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = Config::from_toml_str(include_str!("../bench.toml")).expect("bench.toml parses");
    cfg.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.admin_listen = "127.0.0.1:0".parse().expect("addr");
    cfg.data_dir = dir.path().to_path_buf();
    cfg.admin_token = Some(ADMIN_TOKEN.into());
    tune(&mut cfg);
    let node = Node::build(cfg).await.expect("node builds");
    let token = node.bootstrap.as_ref().expect("bootstrap key").token.expose().to_owned();
    let (addr, admin) = (node.public_addr.to_string(), node.admin_addr.to_string());
    tokio::spawn(node.run(std::future::pending()));
    Server { addr, admin, token, _dir: dir }
}

/// Runs `loadtest <args>` against `s` and returns its JSON line (panics on a failed run).
async fn loadtest(s: &Server, args: &[&str]) -> Value {
    let out = run(s, &s.token, args).await;
    assert!(
        out.status.success(),
        "loadtest {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_line(&out)
}

/// The JSON line of a loadtest run.
fn json_line(out: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| {
        panic!("no JSON line; stderr: {}", String::from_utf8_lossy(&out.stderr))
    });
    serde_json::from_str(line).expect("valid JSON")
}

/// Waits for a loadtest process, at most 120 s.
async fn finish(cmd: &mut tokio::process::Command) -> std::process::Output {
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("loadtest finished within 120 s")
        .expect("loadtest output")
}

async fn run(s: &Server, token: &str, args: &[&str]) -> std::process::Output {
    let pid = std::process::id().to_string();
    let (scenario, rest) = args.split_first().expect("a scenario");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"));
    cmd.arg(scenario).args(["--addr", &s.addr, "--pid", &pid]).args(rest);
    if matches!(*scenario, "fanout" | "slow" | "resume") {
        cmd.args(["--admin", &s.admin]);
    }
    cmd.env("LOADTEST_TOKEN", token)
        .env("LOADTEST_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    finish(&mut cmd).await
}

fn u(v: &Value, path: &str) -> u64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = &cur[k];
    }
    cur.as_u64()
        .or_else(|| cur.as_f64().map(|f| f as u64))
        .unwrap_or_else(|| panic!("{path} in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_every_socket_and_reports_memory() {
    let s = server(|_| {}).await;
    let r = loadtest(&s, &["idle", "--clients", "300", "--hold-secs", "0"]).await;
    assert_eq!(r["scenario"], "idle");
    assert_eq!(u(&r, "params.clients"), 300);
    assert!(u(&r, "results.rss_after_bytes") > 0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_step_and_burst_deliver_everything_in_order() {
    let s = server(|_| {}).await;
    for mode in ["step", "burst"] {
        let r = loadtest(
            &s,
            &["fanout", "--clients", "200", "--events", "50", "--size", "300", "--mode", mode],
        )
        .await;
        assert_eq!(u(&r, "results.expected"), 200 * 50, "{r}");
        assert_eq!(u(&r, "results.deliveries"), 200 * 50, "{mode}: {r}");
        assert_eq!(u(&r, "results.loss"), 0, "{mode}: {r}");
        assert_eq!(u(&r, "results.out_of_order"), 0, "{mode}: {r}");
        assert_eq!(u(&r, "results.latency.samples"), 200 * 50, "{mode}: {r}");
        assert_eq!(r["results"]["timed_out"], false, "{mode}: {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_with_4009_and_readers_lose_nothing() {
    let s = server(|c| {
        // Long enough that the stalled clients, reading again, find the close frame.
        c.close_timeout = Duration::from_secs(60);
    })
    .await;
    let r = loadtest(
        &s,
        &[
            "slow",
            "--clients",
            "20",
            "--slow",
            "3",
            "--events",
            "8000",
            "--size",
            "1024",
            "--timeout-secs",
            "60",
        ],
    )
    .await;
    assert_eq!(r["scenario"], "slow");
    assert_eq!(u(&r, "results.stalled_closed_4009"), 3, "{r}");
    assert_eq!(u(&r, "results.stalled_never_cut"), 0, "{r}");
    assert_eq!(u(&r, "results.server_slow_consumer_closes"), 3, "{r}");
    assert_eq!(u(&r, "results.deliveries"), 17 * 8000, "{r}");
    assert_eq!(u(&r, "results.loss"), 0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_counts_handshakes_and_refusals() {
    let s = server(|_| {}).await;
    let r = loadtest(&s, &["storm", "--clients", "500"]).await;
    assert_eq!(u(&r, "results.authenticated"), 500, "{r}");
    assert_eq!(u(&r, "results.failed.refused") + u(&r, "results.failed.io"), 0, "{r}");

    // An unknown key (last character changed): every handshake is refused, and the report
    // says so.
    let last = if s.token.ends_with('x') { 'y' } else { 'x' };
    let bad = format!("{}{last}", &s.token[..s.token.len() - 1]);
    let r = json_line(&run(&s, &bad, &["storm", "--clients", "50"]).await);
    assert_eq!(u(&r, "results.authenticated"), 0, "{r}");
    assert_eq!(u(&r, "results.failed.refused"), 50, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_recovers_every_missed_event_in_order_then_goes_live() {
    let s = server(|_| {}).await;
    let r = loadtest(
        &s,
        &["resume", "--clients", "50", "--missed", "20", "--observers", "5", "--settle-secs", "1"],
    )
    .await;
    assert_eq!(r["scenario"], "resume");
    let res = &r["results"];
    for count in [
        "not_recovered",
        "clients_with_holes",
        "clients_with_duplicates",
        "clients_with_gaps",
        "clients_missing_missed",
        "timed_out",
        "closed_after_auth",
        "failed.refused",
        "failed.closed",
        "failed.io",
        "failed.bad_reply",
        "observers.holes",
        "observers.duplicates",
        "observers.incomplete",
    ] {
        assert_eq!(u(&r, &format!("results.{count}")), 0, "{count}: {r}");
    }
    assert_eq!(u(&r, "results.resumed_ok"), 50, "{r}");
    assert_eq!(u(&r, "results.live"), 50, "{r}");
    assert!(u(&r, "results.missed_per_client.min") >= 20, "{r}");
    assert_eq!(res["missed_offsets"], serde_json::json!([1, 20]), "{r}");
    assert!(res["all_live_secs"].as_f64().is_some(), "{r}");
    // Every resumer's channels were recovered (the bootstrap key reads every topic).
    assert!(u(&r, "results.server.resumes_recovered_total") >= 50, "{r}");
    assert_eq!(u(&r, "results.server.resumes_unrecovered_total"), 0, "{r}");
    assert_eq!(u(&r, "results.server.resumes_failed_total"), 0, "{r}");
    assert_eq!(u(&r, "results.server.broker_head_reads_total"), 0, "observers hold every channel");
    assert!(u(&r, "results.observers.latency_storm.samples") > 0, "{r}");
    assert!(u(&r, "results.observers.latency_after.samples") > 0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_completes_every_cycle() {
    let s = server(|_| {}).await;
    let r = loadtest(&s, &["churn", "--cycles", "2000", "--warmup", "500", "--concurrency", "50"])
        .await;
    assert_eq!(u(&r, "results.failed_cycles"), 0, "{r}");
    assert!(u(&r, "results.rss_end_bytes") > 0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_cannot_hang_a_run() {
    // Accepts connections and holds them without a byte of reply.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let pid = std::process::id().to_string();
    let loadtest = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"));
        cmd.args(args)
            .args(["--addr", &addr, "--pid", &pid, "--handshake-timeout-secs", "1"])
            .env("LOADTEST_TOKEN", "mt_test_sk_silent")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let r = json_line(&finish(&mut loadtest(&["storm", "--clients", "20"])).await);
    assert_eq!(u(&r, "results.authenticated"), 0, "{r}");
    assert_eq!(u(&r, "results.failed.io"), 20, "{r}");

    let out = finish(&mut loadtest(&["idle", "--clients", "5"])).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no auth.success within"), "{err}");
}

#[tokio::test]
async fn help_explains_every_scenario() {
    for scenario in ["idle", "fanout", "storm", "slow", "churn", "resume"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args([scenario, "--help"])
            .output()
            .expect("run --help");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{scenario} --help");
        assert!(text.contains("--addr") && text.contains("--token"), "{scenario}: {text}");
    }
}
