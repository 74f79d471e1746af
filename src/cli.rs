//! The command line: `serve`, `keys create|list|revoke|rotate|update`, `publish`. Key commands act on the
//! store the config selects and print JSON on stdout; errors go to stderr.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 invalid config or usage.
//! Owns: flags and output formats.  May use: node, config, keys, keys::service,
//! broker, broker::codec (publish), ids, scope, shutdown, telemetry.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::{anyhow, Context};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use ipnet::IpNet;
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

mod update;

use crate::{
    config::{Config, Flags},
    ids::{AccountId, KeyId},
    keys::service::{KeyService, NewKey},
    keys::StoreError,
    node::{read_admin_token, Backends, Node, NodeError},
    scope::{parse_scopes, Environment, Scope},
    shutdown, telemetry,
};

#[derive(Parser, Debug)]
#[command(
    name = "miteos-stream",
    version,
    about = "Real-time event gateway: scoped API keys and WebSocket event streams"
)]
pub struct Cli {
    /// TOML config file layered over the defaults (see config/default.toml).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Public listen address (overrides config and MITEOS_LISTEN).
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Admin listen address (overrides config and MITEOS_ADMIN_LISTEN).
    #[arg(long, global = true, value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    /// Redis URL: run in Redis mode (overrides config and MITEOS_REDIS_URL).
    #[arg(long, global = true, value_name = "URL")]
    redis_url: Option<String>,
    /// Redis Cluster seed nodes, comma-separated: run in Redis mode on the cluster (overrides
    /// config and MITEOS_REDIS_CLUSTER; exclusive with --redis-url).
    #[arg(long, global = true, value_name = "URL[,URL…]")]
    redis_cluster: Option<String>,
    /// Directory of the embedded key store (overrides config and MITEOS_DATA_DIR).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server until SIGTERM/SIGINT.
    Serve,
    /// Manage API keys directly in the store (embedded mode: while the server is stopped).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Publish one event (through the admin listener in embedded mode).
    Publish(PublishArgs),
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Create a key; prints the record with its secret `key` (shown once).
    Create(CreateArgs),
    /// List an account's keys (never their secrets).
    List {
        #[arg(long, value_name = "ID")]
        account: String,
        /// Only keys of this environment.
        #[arg(long, value_name = "live|test")]
        env: Option<Environment>,
    },
    /// Revoke a key; its streams are closed with 4003.
    Revoke {
        #[arg(value_name = "KEY_ID")]
        key_id: String,
    },
    /// Issue a new secret for a key (same id); prints the record with the new `key`.
    Rotate {
        #[arg(value_name = "KEY_ID")]
        key_id: String,
        /// Seconds the old secret keeps working (0 to 604800).
        #[arg(long = "grace-period", value_name = "SECONDS", default_value_t = 0,
              value_parser = clap::value_parser!(u64).range(0..=crate::keys::service::MAX_GRACE_SECONDS))]
        grace_period: u64,
    },
    /// Change a key's name, scopes, IP allowlist or expiry in place; prints the record.
    /// Running nodes apply it to the key's open streams (in Redis mode).
    Update(update::UpdateArgs),
}

#[derive(Args, Debug)]
struct CreateArgs {
    #[arg(long, value_name = "ID")]
    account: String,
    #[arg(long, value_name = "live|test")]
    env: Environment,
    #[arg(long)]
    name: String,
    /// Comma-separated scopes, e.g. tasks.read,agents.read.
    #[arg(long, value_delimiter = ',', required = true)]
    scopes: Vec<String>,
    /// Allowed client network (CIDR, IPv4 or IPv6); repeatable. Default: any address.
    #[arg(long = "ip", value_name = "CIDR")]
    ip: Vec<String>,
    /// Expiry as RFC 3339, e.g. 2027-01-01T00:00:00Z.
    #[arg(long, value_name = "RFC3339")]
    expires_at: Option<String>,
}

#[derive(Args, Debug)]
struct PublishArgs {
    #[arg(long, value_name = "ID")]
    account: String,
    #[arg(long, value_name = "live|test")]
    env: Environment,
    /// Topic, e.g. tasks.
    #[arg(long)]
    channel: String,
    /// Event name, e.g. task.completed.
    #[arg(long)]
    event: String,
    /// Event payload as a JSON value.
    #[arg(long, default_value = "{}")]
    data: String,
}

/// A failure with its exit code.
struct Failure(u8, anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(1, e.into())
    }
}

fn usage(e: impl Into<anyhow::Error>) -> Failure {
    Failure(2, e.into())
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let flags = Flags {
        listen: cli.listen,
        admin_listen: cli.admin_listen,
        redis_url: cli.redis_url.clone(),
        redis_cluster: cli.redis_cluster.clone(),
        data_dir: cli.data_dir.clone(),
    };
    let config = match Config::load(cli.config.as_deref(), &flags) {
        Ok(c) => c,
        Err(e) => {
            telemetry::eprint_line(&format!("error: {e}"));
            return ExitCode::from(2);
        }
    };
    telemetry::init(&config.log, config.log_format == crate::config::LogFormat::Json);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            telemetry::eprint_line(&format!("error: cannot start the runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, e)) => {
            telemetry::eprint_line(&format!("error: {e:#}"));
            ExitCode::from(code)
        }
    }
}

async fn run(command: Command, config: Config) -> Result<(), Failure> {
    match command {
        Command::Serve => serve(config).await,
        Command::Keys { command } => keys(command, &config).await,
        Command::Publish(args) => publish(args, &config).await,
    }
}

async fn serve(config: Config) -> Result<(), Failure> {
    // A start that cannot bind its ports or open its data dir is a setup error: exit 2.
    let mut node = Node::build(config).await.map_err(|e| {
        let code = match &e {
            NodeError::Bind { .. } | NodeError::AdminToken { .. } => 2,
            NodeError::Store(StoreError::Unavailable(_) | StoreError::Locked(_)) => 2,
            _ => 1,
        };
        Failure(code, e.into())
    })?;
    // Handlers first: from the moment the listening lines are out, SIGTERM drains.
    let signals = shutdown::Signals::install();
    if let Some(b) = &node.bootstrap {
        show_bootstrap(b);
    }
    if let Some(late) = node.late_bootstrap.take() {
        tokio::spawn(async move {
            if let Ok(b) = late.await {
                show_bootstrap(&b);
            }
        });
    }
    telemetry::print_line(&format!("listening on http://{}", node.public_addr));
    telemetry::print_line(&format!("admin listening on http://{}", node.admin_addr));
    node.run(signals.recv()).await;
    Ok(())
}

fn show_bootstrap(b: &crate::keys::service::Created) {
    telemetry::print_line(&format!("bootstrap key (shown once): {}", b.token.expose()));
    tracing::info!(key_id = %b.record.id, account = %b.record.account_id, "created the bootstrap key");
}

async fn keys(command: KeysCommand, config: &Config) -> Result<(), Failure> {
    // In Redis mode revocations and rotations also reach running nodes (control channel).
    let backends = Backends::build_for_command(config)?;
    let service = KeyService::new(backends.store, backends.hub.broker().clone())
        .with_max_previous_secrets(config.rotation_max_previous_secrets);
    match command {
        KeysCommand::Create(args) => {
            let new = new_key(args).map_err(usage)?;
            let created = service.create(new).await?;
            print_json(&created.to_json())
        }
        KeysCommand::List { account, env } => {
            let account = AccountId::parse(&account).map_err(usage)?;
            let list = service.list(&account, env).await?;
            let views: Vec<_> = list.iter().map(|r| r.view()).collect();
            print_json(&serde_json::json!({ "data": views }))
        }
        KeysCommand::Revoke { key_id } => {
            let id = KeyId::parse(&key_id)
                .ok_or_else(|| Failure(1, anyhow!("no key with id {key_id}")))?;
            let rec = service.revoke(&id).await.map_err(|e| not_found(e, &key_id))?;
            print_json(&rec.view())
        }
        KeysCommand::Rotate { key_id, grace_period } => {
            let id = KeyId::parse(&key_id)
                .ok_or_else(|| Failure(1, anyhow!("no key with id {key_id}")))?;
            let current = service
                .get(&id)
                .await?
                .ok_or_else(|| Failure(1, anyhow!("no key with id {key_id}")))?;
            if current.revoked_at.is_some() {
                return Err(Failure(1, anyhow!("key {key_id} is revoked and cannot be rotated")));
            }
            let created =
                service.rotate(&id, grace_period).await.map_err(|e| not_found(e, &key_id))?;
            print_json(&created.to_json())
        }
        KeysCommand::Update(args) => update::run(args, &service).await,
    }
}

fn not_found(e: crate::keys::StoreError, key_id: &str) -> Failure {
    match e {
        crate::keys::StoreError::NotFound => Failure(1, anyhow!("no key with id {key_id}")),
        other => other.into(),
    }
}

fn new_key(args: CreateArgs) -> anyhow::Result<NewKey> {
    let account = AccountId::parse(&args.account)?;
    let scopes: Vec<Scope> =
        parse_scopes(&args.scopes).map_err(|e| anyhow!("unknown scope `{}`", e.0))?;
    if scopes.is_empty() {
        return Err(anyhow!("--scopes must name at least one scope"));
    }
    let name = args.name.trim().to_owned();
    if name.is_empty() || name.len() > 200 {
        return Err(anyhow!("--name must be 1 to 200 characters"));
    }
    let ip_allowlist = args
        .ip
        .iter()
        .map(|s| s.parse::<IpNet>().or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| anyhow!("--ip must be a CIDR such as 10.0.0.0/8 or 2001:db8::/32"))?;
    let expires_at = args
        .expires_at
        .map(|s| {
            OffsetDateTime::parse(&s, &Rfc3339)
                .with_context(|| format!("--expires-at `{s}` is not RFC 3339"))
        })
        .transpose()?;
    if expires_at.is_some_and(|t| t <= OffsetDateTime::now_utc()) {
        return Err(anyhow!("--expires-at is in the past"));
    }
    Ok(NewKey { name, account, environment: args.env, scopes, ip_allowlist, expires_at })
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
    telemetry::print_line(&serde_json::to_string(value)?);
    Ok(())
}

async fn publish(args: PublishArgs, config: &Config) -> Result<(), Failure> {
    let data: serde_json::Value =
        serde_json::from_str(&args.data).map_err(|e| usage(anyhow!("--data is not JSON: {e}")))?;
    if config.redis_mode() {
        return publish_to_redis(&args, &data, config).await;
    }
    let token = match &config.admin_token {
        Some(t) => t.clone(),
        None => read_admin_token(&config.data_dir)?.ok_or_else(|| {
            anyhow!("no admin token: set admin_token or start the server once with this --data-dir")
        })?,
    };
    let body = serde_json::json!({
        "account_id": args.account, "environment": args.env, "channel": args.channel,
        "event": args.event, "data": data,
    });
    let mut addr = config.admin_listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let (status, text) = post_json(addr, "/internal/v1/publish", &token, body.to_string())
        .await
        .with_context(|| format!("cannot reach the admin listener at {addr}"))?;
    if !status.is_success() {
        return Err(Failure(1, anyhow!("publish failed ({status}): {text}")));
    }
    telemetry::print_line(&text);
    Ok(())
}

/// Redis mode: publish the event as a backend producer would (through the history function
/// when history is on) and print its position as the admin endpoint answers it.
async fn publish_to_redis(
    args: &PublishArgs,
    data: &serde_json::Value,
    config: &Config,
) -> Result<(), Failure> {
    let account = AccountId::parse(&args.account).map_err(usage)?;
    let topic: crate::scope::Topic =
        args.channel.parse().map_err(|_| usage(anyhow!("unknown channel `{}`", args.channel)))?;
    let channel = crate::broker::ChannelKey::new(args.env, account, topic);
    let raw = serde_json::value::to_raw_value(data)?;
    let (payload, id) = crate::broker::codec::encode(&args.event, None, None, &raw);
    let backends = Backends::build_for_command(config)?;
    let position = backends
        .hub
        .broker()
        .publish(&channel, payload)
        .await
        .map_err(|e| Failure(1, anyhow!("{e}")))?;
    let mut answer = serde_json::json!({"published": true, "id": id, "channel": channel.topic});
    if let Some(p) = position {
        answer["offset"] = p.offset.into();
        answer["epoch"] = p.epoch.as_ref().into();
    }
    print_json(&answer)
}

/// One HTTP/1.1 POST with a bearer token; returns status and body text.
async fn post_json(
    addr: SocketAddr,
    path: &str,
    bearer: &str,
    body: String,
) -> anyhow::Result<(hyper::StatusCode, String)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::post(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::AUTHORIZATION, format!("Bearer {bearer}"))
        .body(Full::new(Bytes::from(body)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}
