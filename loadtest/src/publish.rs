//! Publishing benchmark events: through the admin endpoint (keep-alive HTTP/1.1) or Redis.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

use crate::opts;

pub enum Publisher {
    Admin {
        conn: BufReader<TcpStream>,
        token: String,
        host: String,
        account: String,
        env: String,
        channel: String,
    },
    Redis {
        conn: redis::aio::MultiplexedConnection,
        name: String,
        /// Through `FCALL mt_publish` on these keys (history on), else PUBLISH.
        history: Option<[String; 2]>,
    },
}

/// Nanoseconds since the Unix epoch (the clock both sides of loopback share).
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl Publisher {
    pub async fn connect(o: &opts::Publisher) -> anyhow::Result<Self> {
        if let Some(url) = &o.redis_url {
            let conn =
                redis::Client::open(url.as_str())?.get_multiplexed_async_connection().await?;
            let name = format!("mt:{}:{}:{}", o.env, o.account, o.channel);
            let history = o.history.then(|| [format!("{{{name}}}:h"), format!("{{{name}}}:m")]);
            return Ok(Publisher::Redis { conn, name, history });
        }
        let token = match &o.admin_token {
            Some(t) => t.clone(),
            None => std::fs::read_to_string(o.data_dir.join("admin_token"))
                .with_context(|| {
                    format!("no --admin-token and no {}/admin_token", o.data_dir.display())
                })?
                .trim()
                .to_owned(),
        };
        let stream = TcpStream::connect(o.admin)
            .await
            .with_context(|| format!("admin listener {}", o.admin))?;
        stream.set_nodelay(true)?;
        Ok(Publisher::Admin {
            conn: BufReader::new(stream),
            token,
            host: o.admin.to_string(),
            account: o.account.clone(),
            env: o.env.clone(),
            channel: o.channel.clone(),
        })
    }

    /// Publishes event `seq`, stamped with the send time, padded with `pad`. Returns the
    /// event's offset when the path answers with one (history on, SPEC §7).
    pub async fn publish(&mut self, seq: u64, pad: &str) -> anyhow::Result<Option<u64>> {
        let data = format!("{{\"t\":{},\"seq\":{seq},\"pad\":\"{pad}\"}}", now_ns());
        match self {
            Publisher::Redis { conn, name, history } => {
                let msg = format!("{{\"event\":\"bench.tick\",\"data\":{data}}}");
                match history {
                    Some(keys) => {
                        // `[offset, epoch]` (docs/PRODUCERS.md).
                        let (offset, _epoch): (u64, String) = redis::cmd("FCALL")
                            .arg("mt_publish")
                            .arg(2)
                            .arg(&keys[..])
                            .arg(msg)
                            .query_async(conn)
                            .await?;
                        Ok(Some(offset))
                    }
                    None => {
                        let _: i64 =
                            redis::cmd("PUBLISH").arg(&*name).arg(msg).query_async(conn).await?;
                        Ok(None)
                    }
                }
            }
            Publisher::Admin { conn, token, host, account, env, channel } => {
                let body = format!(
                    "{{\"account_id\":\"{account}\",\"environment\":\"{env}\",\"channel\":\"{channel}\",\"event\":\"bench.tick\",\"data\":{data}}}"
                );
                let req = format!(
                    "POST /internal/v1/publish HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                conn.get_mut().write_all(req.as_bytes()).await?;
                let body = read_response(conn).await?;
                Ok(crate::client::field(&body, b"\"offset\":"))
            }
        }
    }
}

/// Reads one HTTP response (status line, headers, Content-Length body); errors unless 2xx.
async fn read_response(conn: &mut BufReader<TcpStream>) -> anyhow::Result<Vec<u8>> {
    let mut line = String::new();
    conn.read_line(&mut line).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad response"))?;
    let mut length = 0usize;
    loop {
        line.clear();
        conn.read_line(&mut line).await?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse()?;
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).await?;
    if !(200..300).contains(&status) {
        return Err(anyhow!("publish failed ({status}): {}", String::from_utf8_lossy(&body)));
    }
    Ok(body)
}
