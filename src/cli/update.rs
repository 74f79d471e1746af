//! `keys update KEY_ID [--name N] [--scopes S,…] [--ip CIDR]… [--any-ip]
//! [--expires-at T | --no-expiry]`: changes a key in place (SPEC §8), on the store the config
//! selects; in Redis mode every running node applies it to the key's open streams.
//!
//! May use: the parent module, keys (service, StoreError), ids, scope.

use anyhow::{anyhow, Context};
use clap::Args;
use ipnet::IpNet;
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use super::{print_json, usage, Failure};
use crate::{
    ids::KeyId,
    keys::{
        service::{Changes, KeyError, KeyService},
        StoreError,
    },
    scope::parse_scopes,
};

#[derive(Args, Debug)]
pub(super) struct UpdateArgs {
    #[arg(value_name = "KEY_ID")]
    key_id: String,
    #[arg(long)]
    name: Option<String>,
    /// The new scopes (all of them, comma-separated).
    #[arg(long, value_delimiter = ',')]
    scopes: Option<Vec<String>>,
    /// The new IP allowlist (repeat for several networks).
    #[arg(long = "ip", value_name = "CIDR", conflicts_with = "any_ip")]
    ip: Vec<String>,
    /// Clears the IP allowlist: any address.
    #[arg(long)]
    any_ip: bool,
    /// The new expiry (RFC 3339; a past time expires the key now).
    #[arg(long, value_name = "RFC3339", conflicts_with = "no_expiry")]
    expires_at: Option<String>,
    /// Clears the expiry.
    #[arg(long)]
    no_expiry: bool,
}

pub(super) async fn run(args: UpdateArgs, service: &KeyService) -> Result<(), Failure> {
    let id = KeyId::parse(&args.key_id)
        .ok_or_else(|| Failure(1, anyhow!("no key with id {}", args.key_id)))?;
    let changes = changes(&args).map_err(usage)?;
    if changes.is_empty() {
        return Err(usage(anyhow!(
            "nothing to change: give --name, --scopes, --ip, --any-ip, --expires-at or --no-expiry"
        )));
    }
    match service.update(&id, changes).await {
        Ok(rec) => print_json(&rec.view()),
        Err(KeyError::NotFound | KeyError::Store(StoreError::NotFound)) => {
            Err(Failure(1, anyhow!("no key with id {}", args.key_id)))
        }
        Err(e) => Err(Failure(1, anyhow!("{e}"))),
    }
}

fn changes(args: &UpdateArgs) -> anyhow::Result<Changes> {
    let mut c = Changes::default();
    if let Some(name) = &args.name {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(anyhow!("--name must be 1 to 200 characters"));
        }
        c.name = Some(name.to_owned());
    }
    if let Some(scopes) = &args.scopes {
        let scopes = parse_scopes(scopes).map_err(|e| anyhow!("unknown scope `{}`", e.0))?;
        if scopes.is_empty() {
            return Err(anyhow!("--scopes must name at least one scope"));
        }
        c.scopes = Some(scopes);
    }
    if args.any_ip {
        c.ip_allowlist = Some(Vec::new());
    } else if !args.ip.is_empty() {
        let nets = args
            .ip
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .map(|n| n.trunc())
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| anyhow!("--ip must be a CIDR such as 10.0.0.0/8 or 2001:db8::/32"))?;
        c.ip_allowlist = Some(nets);
    }
    if args.no_expiry {
        c.expires_at = Some(None);
    } else if let Some(s) = &args.expires_at {
        let t = OffsetDateTime::parse(s, &Rfc3339)
            .with_context(|| format!("--expires-at `{s}` is not RFC 3339"))?;
        c.expires_at = Some(Some(t));
    }
    Ok(c)
}
