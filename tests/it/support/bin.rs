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
