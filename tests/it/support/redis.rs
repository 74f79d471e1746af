//! `RedisServer`: a private `redis-server` on a free port, started by the test itself, that
//! a test can SIGKILL and restart on the same port. Never the shared 6379.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use tempfile::TempDir;

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl RedisServer {
    pub async fn start() -> Self {
        for _ in 0..5 {
            let mut me = Self { child: None, port: free_port(), dir: tempfile::tempdir().unwrap() };
            if me.spawn().await {
                return me;
            }
        }
        panic!("could not start redis-server (is it installed?)");
    }

    /// Spawns redis-server on `self.port` and waits until it answers PING.
    async fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        // A starting process has no event to await: retry PING for up to 10 s.
        for _ in 0..200 {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false; // exited: port taken
            }
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                // Make sure it is *our* process answering, not another test's redis-server
                // that won a race for the same port.
                if let Ok(info) =
                    redis::cmd("INFO").arg("server").query_async::<String>(&mut c).await
                {
                    let pid = self.child.as_ref().map(|c| c.id()).unwrap_or_default();
                    return info.lines().any(|l| l.trim() == format!("process_id:{pid}"));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port (empty: pub/sub state and data are gone).
    pub async fn restart(&mut self) {
        self.kill();
        assert!(self.spawn().await, "redis-server did not restart on port {}", self.port);
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }

    /// `PUBLISH channel payload`, as a backend producer would.
    pub async fn publish(&self, channel: &str, payload: &str) -> i64 {
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async(&mut self.conn().await)
            .await
            .unwrap()
    }

    /// `PUBSUB CHANNELS pattern`, sorted.
    pub async fn channels(&self, pattern: &str) -> Vec<String> {
        let mut v: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg(pattern)
            .query_async(&mut self.conn().await)
            .await
            .unwrap();
        v.sort();
        v
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
