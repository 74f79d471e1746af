//! What a newcomer or operator sees first: the binary's version, and the deploy files.

use crate::support::bin;

#[tokio::test]
async fn version_prints_the_package_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, out, _) = bin::run(dir.path(), &["--version"]).await;
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("miteos-stream {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn the_license_file_matches_cargo_tomls_license() {
    let root = env!("CARGO_MANIFEST_DIR");
    let manifest = std::fs::read_to_string(format!("{root}/Cargo.toml")).expect("Cargo.toml");
    assert!(manifest.contains("license = \"Apache-2.0\""), "Cargo.toml names another license");
    let license = std::fs::read_to_string(format!("{root}/LICENSE")).expect("LICENSE exists");
    assert!(license.contains("Apache License") && license.contains("Version 2.0, January 2004"));
}

#[test]
fn the_container_image_runs_serve_as_a_non_root_user() {
    let root = env!("CARGO_MANIFEST_DIR");
    let file = std::fs::read_to_string(format!("{root}/deploy/Dockerfile")).expect("Dockerfile");
    let stages = file.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "multi-stage: build, then a runtime image");
    let user = file.lines().rfind(|l| l.starts_with("USER ")).expect("a USER line");
    assert_ne!(user.trim(), "USER root");
    let cmd = file.lines().rfind(|l| l.starts_with("CMD ")).expect("a CMD line");
    assert!(cmd.contains("\"serve\""), "{cmd}");
}

/// `serve 2>&1 | tee log`, then Ctrl-C ends `tee` first: the server's stdout and stderr are
/// closed pipes from then on. It must keep serving, log nothing fatal, and still drain with
/// 1001 and exit 0 on SIGTERM.
#[tokio::test]
async fn closed_stdout_and_stderr_never_crash_the_server() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = bin::command(dir.path())
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "serve"])
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (mut boot, mut addr) = (None, None);
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(k) = line.strip_prefix("bootstrap key (shown once): ") {
            boot = Some(k.to_owned());
        }
        if let Some(a) = line.strip_prefix("listening on http://") {
            addr = Some(a.parse::<std::net::SocketAddr>().expect("addr"));
            break;
        }
    }
    let (boot, addr) = (boot.expect("bootstrap"), addr.expect("listening"));
    drop(lines); // the reader of stdout is gone
    drop(child.stderr.take()); // and the reader of stderr
    let url = format!("ws://{addr}/v1/ws?token={boot}");
    let (mut ws, _) = crate::support::WsClient::authed(&url, &boot).await;
    // Every request logs at debug: each of these writes to the closed stderr.
    for _ in 0..20 {
        let r = crate::support::http::HttpClient::connect(addr).await.get("/healthz", None).await;
        assert_eq!(r.status, 200);
    }
    let pid = child.id().expect("running").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert_eq!(ws.expect_close().await, 1001);
    let status = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait())
        .await
        .expect("exits in time")
        .expect("status");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn a_port_in_use_is_one_line_exit_2_and_creates_no_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").to_string();
    let out = bin::command(dir.path())
        .args(["--listen", &port, "--admin-listen", "127.0.0.1:0", "serve"])
        .output()
        .await
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains(&port), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("bootstrap key"));
    // The next start that can bind still shows the bootstrap key (none was made before).
    let mut served = bin::Served::start(dir.path(), &[]).await;
    assert!(served.bootstrap.is_some(), "the newcomer is not locked out");
    assert_eq!(served.terminate().await, 0);
}

#[tokio::test]
async fn sigterm_right_after_the_listening_lines_drains_and_exits_0() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut served = bin::Served::start(dir.path(), &[]).await;
        assert_eq!(served.terminate().await, 0, "killed by the default SIGTERM action?");
    }
}
