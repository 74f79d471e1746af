//! Logging setup and the redaction helpers that keep secrets out of log lines.
//!
//! Owns: the tracing subscriber and what a URI looks like in a log.  May use: tracing.
//! Never: log a `token`/`ticket` query value or an `Authorization` header.

use tracing_subscriber::{fmt, EnvFilter};

/// Libraries that log message contents (an auth frame carries a token) at debug/trace:
/// always capped at info, whatever the filter says.
const QUIET: [&str; 2] = ["tungstenite=info", "tokio_tungstenite=info"];

/// Installs a stderr subscriber; `RUST_LOG` wins over `filter`. Safe to call twice.
pub fn init(filter: &str) {
    let mut filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    for directive in QUIET {
        if let Ok(d) = directive.parse() {
            filter = filter.add_directive(d);
        }
    }
    let _ =
        fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

/// The path and query of a URI with every value redacted whose (percent-decoded) name is a
/// credential (`token`, `ticket`, `key`, `access_token`) or that looks like a secret.
pub fn redact_uri(uri: &hyper::Uri) -> String {
    let Some(query) = uri.query() else {
        return uri.path().to_owned();
    };
    let redacted: Vec<String> = query
        .split('&')
        .map(|pair| {
            let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = |s: &str| {
                form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            let (name, value) = (decoded(raw_name), decoded(raw_value));
            let secret_name = ["token", "ticket", "key", "access_token"].contains(&name.as_str());
            let secret_value = value.contains("_sk_") || value.contains("_tk_");
            if secret_name || secret_value {
                format!("{raw_name}=REDACTED")
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
        // Encoded names and secret-looking values under other names are caught too.
        let uri: hyper::Uri =
            "/v1/ws?tok%65n=mt_live_sk_abc&x=mt%5Ftest%5Fsk%5Fdef".parse().unwrap();
        assert_eq!(redact_uri(&uri), "/v1/ws?tok%65n=REDACTED&x=REDACTED");
    }
}
