//! Logging setup and the redaction helpers that keep secrets out of log lines.
//!
//! Owns: the tracing subscriber and what a URI looks like in a log.  May use: tracing.
//! Never: log a `token`/`ticket` query value or an `Authorization` header.

use tracing_subscriber::{fmt, EnvFilter};

/// Installs a stderr subscriber; `RUST_LOG` wins over `filter`. Safe to call twice.
pub fn init(filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ =
        fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

/// The path and query of a URI with `token`, `ticket` and `key` values replaced by `REDACTED`.
pub fn redact_uri(uri: &hyper::Uri) -> String {
    let Some(query) = uri.query() else {
        return uri.path().to_owned();
    };
    let redacted: Vec<String> = query
        .split('&')
        .map(|pair| {
            let name = pair.split_once('=').map_or(pair, |(k, _)| k);
            if ["token", "ticket", "key", "access_token"].contains(&name) {
                format!("{name}=REDACTED")
            } else {
                pair.to_owned()
            }
        })
        .collect();
    format!("{}?{}", uri.path(), redacted.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_queries_are_redacted() {
        let uri: hyper::Uri = "/v1/ws?token=mt_live_sk_secret&x=1&ticket=abc".parse().unwrap();
        assert_eq!(redact_uri(&uri), "/v1/ws?token=REDACTED&x=1&ticket=REDACTED");
        let uri: hyper::Uri = "/healthz".parse().unwrap();
        assert_eq!(redact_uri(&uri), "/healthz");
    }
}
