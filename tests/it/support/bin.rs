//! Running the real `miteos-stream` binary: capture all output, wait for the listening lines.

use std::{
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
    sync::watch,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_miteos-stream");

/// A running `serve` process with everything it printed so far.
pub struct Served {
    pub child: Child,
    pub addr: std::net::SocketAddr,
    pub admin_addr: std::net::SocketAddr,
    pub bootstrap: Option<String>,
    output: Arc<Mutex<String>>,
    lines: watch::Receiver<usize>,
}

/// A command for the binary with `--data-dir` and no inherited MITEOS_* settings.
pub fn command(data_dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--data-dir").arg(data_dir).env_remove("RUST_LOG").kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("MITEOS_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Runs a one-shot command; returns (exit code, stdout, stderr).
pub async fn run(data_dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = command(data_dir).args(args).output().await.expect("run binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn collect(
    stream: impl AsyncRead + Unpin + Send + 'static,
    output: Arc<Mutex<String>>,
    tx: watch::Sender<usize>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut out = output.lock().unwrap();
            out.push_str(&line);
            out.push('\n');
            drop(out);
            tx.send_modify(|n| *n += 1);
        }
    });
}

impl Served {
    /// Starts `serve` on port 0 and waits for both listening lines.
    pub async fn start(data_dir: &std::path::Path, extra_env: &[(&str, &str)]) -> Self {
        let mut cmd = command(data_dir);
        cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "serve"]);
        cmd.envs(extra_env.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn serve");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, mut rx) = watch::channel(0usize);
        collect(child.stdout.take().unwrap(), output.clone(), tx.clone());
        collect(child.stderr.take().unwrap(), output.clone(), tx);
        let find = |out: &str, prefix: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .map(|a| a.trim().parse::<std::net::SocketAddr>().unwrap())
        };
        let (addr, admin_addr) = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                {
                    let out = output.lock().unwrap();
                    if let (Some(a), Some(b)) = (
                        find(&out, "listening on http://"),
                        find(&out, "admin listening on http://"),
                    ) {
                        return (a, b);
                    }
                }
                rx.changed().await.expect("server exited before listening");
            }
        })
        .await
        .expect("server did not print its listening lines");
        let bootstrap = output
            .lock()
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("bootstrap key (shown once): ").map(str::to_owned));
        Self { child, addr, admin_addr, bootstrap, output, lines: rx }
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Polls `/readyz` until 200 (the node has connected to Redis), for up to 10 s.
    pub async fn wait_ready(&self) {
        let mut http = crate::support::http::HttpClient::connect(self.addr).await;
        for _ in 0..500 {
            if http.get("/readyz", None).await.status == 200 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("the node never became ready:\n{}", self.output());
    }

    /// Sends SIGTERM and waits for the exit code.
    pub async fn terminate(&mut self) -> i32 {
        self.signal_term();
        self.wait().await
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) {
        let pid = self.child.id().expect("running");
        let status =
            std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the exit code and for the last output lines.
    pub async fn wait(&mut self) -> i32 {
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("exit in time")
            .unwrap();
        // Let the collectors read the last lines: wait until both pipes reached EOF.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while self.lines.changed().await.is_ok() {}
        })
        .await;
        status.code().unwrap_or(-1)
    }
}

/// The binary on Redis (`flag` `--redis-url` or `--redis-cluster`, `env` its variable): the
/// CLI creates a key, a running node serves it, the CLI publishes (the subscriber gets the
/// offset it answered) and revokes (the node closes the stream 4003); no secret in its output.
pub async fn cli_keys_publish_revoke(flag: &str, env: &str, url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut served = Served::start(dir.path(), &[(env, url)]).await;
    let other_dir = tempfile::tempdir().unwrap(); // the CLI needs no data dir of the server's
    let (code, out, err) = run(
        other_dir.path(),
        &[
            flag,
            url,
            "keys",
            "create",
            "--account",
            "acct_b",
            "--env",
            "live",
            "--name",
            "n",
            "--scopes",
            "tasks.read",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (token, id) =
        (created["key"].as_str().unwrap().to_owned(), created["id"].as_str().unwrap().to_owned());
    served.wait_ready().await;
    let (mut c, _) = crate::support::WsClient::authed(
        &format!("ws://{}/v1/ws?token={token}", served.addr),
        &token,
    )
    .await;
    let (code, out, err) = run(
        other_dir.path(),
        &[
            flag,
            url,
            "publish",
            "--account",
            "acct_b",
            "--env",
            "live",
            "--channel",
            "tasks",
            "--event",
            "task.cli",
            "--data",
            "{}",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    // One JSON line with the event's position (SPEC §5), the offset the subscriber sees.
    let answer: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!((answer["channel"].as_str(), answer["offset"].as_u64()), (Some("tasks"), Some(1)));
    assert!(answer["epoch"].as_str().is_some_and(|e| !e.is_empty()), "{out}");
    let e = c.recv().await;
    assert_eq!((e["event"].as_str(), e["offset"].as_u64()), (Some("task.cli"), Some(1)));
    assert_eq!(e["id"], answer["id"]);
    let (code, _, err) = run(other_dir.path(), &[flag, url, "keys", "revoke", &id]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(c.expect_close().await, 4003, "a CLI revocation reaches the running node");
    served.signal_term();
    assert_eq!(served.wait().await, 0);
    assert!(!served.output().contains(&token));
}
