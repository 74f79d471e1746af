//! Logging setup and the redaction helpers that keep secrets out of log lines.
//!
//! - Libraries that log message contents (an auth frame carries a token) at debug/trace —
//!   tungstenite and tokio-tungstenite — are capped at INFO whatever `RUST_LOG`/`log` says:
//!   their directives are clamped before the filter is built (`capped`).
//! - Output is plain text (ANSI colours only when stderr is a terminal) or, with
//!   `log_format = "json"`, one JSON object per line. A write error on stderr (a closed pipe)
//!   is ignored: logging never takes the server down. `print_line` does the same for stdout.
//! - `redact_uri` removes credentials from paths and queries.
//!
//! Owns: the tracing subscriber and what a URI looks like in a log.  May use: tracing.
//! Never: log a `token`/`ticket` query value or an `Authorization` header.

use std::io::{IsTerminal, Write};

use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

/// Targets whose debug/trace events may carry message payloads.
const PAYLOAD_LOGGERS: [&str; 2] = ["tungstenite", "tokio_tungstenite"];

/// The user's filter with every directive for a payload logger clamped to `info`, plus
/// `tungstenite=info,tokio_tungstenite=info` (which win over a bare level). Done on the
/// directives rather than by a second filter so the subscriber keeps its static max level:
/// a per-layer filter without one makes every `log` call in tungstenite's frame path (it
/// logs each frame at trace) reach the subscriber, which cost 25–40 % of fan-out.
fn capped(filter: &str) -> String {
    let mut out: Vec<String> = filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            let target = d.split(['[', '=']).next().unwrap_or_default();
            let payload = PAYLOAD_LOGGERS
                .iter()
                .any(|t| target == *t || target.starts_with(&format!("{t}::")));
            let verbose = d.rsplit('=').next().is_some_and(|l| {
                matches!(l.trim().to_ascii_lowercase().as_str(), "debug" | "trace" | "5" | "4")
            });
            if payload && d.contains('=') && verbose {
                format!("{}=info", &d[..d.rfind('=').unwrap_or(d.len())])
            } else {
                d.to_owned()
            }
        })
        .collect();
    for t in PAYLOAD_LOGGERS {
        if !out.iter().any(|d| d.split('=').next() == Some(t)) {
            out.push(format!("{t}=info"));
        }
    }
    out.join(",")
}

/// Stderr whose write errors are swallowed (a closed pipe must not stop the server).
struct QuietStderr;

impl Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Installs the stderr subscriber; `RUST_LOG` wins over `filter`. `json` selects one JSON
/// object per line. Safe to call twice.
pub fn init(filter: &str, json: bool) {
    let wanted = std::env::var("RUST_LOG").ok().filter(|f| !f.trim().is_empty());
    let env = EnvFilter::try_new(capped(wanted.as_deref().unwrap_or(filter)))
        .unwrap_or_else(|_| EnvFilter::new(capped("info")));
    let writer = || QuietStderr;
    let ansi = std::io::stderr().is_terminal();
    let layer = if json {
        fmt::layer().json().with_writer(writer).with_target(true).boxed()
    } else {
        fmt::layer().with_writer(writer).with_target(false).with_ansi(ansi).boxed()
    };
    let _ = tracing_subscriber::registry().with(env).with(layer).try_init();
}

/// Prints one line on stdout, ignoring a closed stdout (scripts read these lines; a write
/// error must never crash the server).
pub fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Prints one line on stderr, ignoring a closed stderr.
pub fn eprint_line(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Whether a string looks like one of our secrets (`mt_live_sk_…`, `mt_test_tk_…`).
fn secret_shaped(s: &str) -> bool {
    s.contains("_sk_") || s.contains("_tk_")
}

/// The path and query of a URI with every secret-shaped path segment replaced, and every
/// query value redacted whose (percent-decoded) name is a credential (`token`, `ticket`,
/// `key`, `access_token`) or that looks like a secret.
pub fn redact_uri(uri: &hyper::Uri) -> String {
    let decoded = |s: &str| {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let path: Vec<&str> = uri
        .path()
        .split('/')
        .map(|seg| if secret_shaped(&decoded(seg)) { "REDACTED" } else { seg })
        .collect();
    let path = path.join("/");
    let Some(query) = uri.query() else {
        return path;
    };
    let redacted: Vec<String> = query
        .split('&')
        .map(|pair| {
            let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let (name, value) = (decoded(raw_name), decoded(raw_value));
            let secret_name = ["token", "ticket", "key", "access_token"].contains(&name.as_str());
            if secret_name || secret_shaped(&value) || secret_shaped(&name) {
                format!("{}=REDACTED", if secret_shaped(&name) { "REDACTED" } else { raw_name })
            } else {
                pair.to_owned()
            }
        })
        .collect();
    format!("{path}?{}", redacted.join("&"))
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

    #[test]
    fn payload_loggers_are_capped_whatever_the_filter_says() {
        assert_eq!(capped("trace"), "trace,tungstenite=info,tokio_tungstenite=info");
        assert_eq!(
            capped("info,tungstenite::protocol=trace, tokio_tungstenite=DEBUG,hyper=trace"),
            "info,tungstenite::protocol=info,tokio_tungstenite=info,hyper=trace,tungstenite=info"
        );
        assert_eq!(
            capped("tungstenite[x]=trace"),
            "tungstenite[x]=info,tungstenite=info,tokio_tungstenite=info"
        );
        assert_eq!(capped("tungstenite=warn"), "tungstenite=warn,tokio_tungstenite=info");
    }

    #[test]
    fn secrets_in_paths_are_redacted() {
        let uri: hyper::Uri = "/v1/api-keys/mt_test_sk_abcdef/rotate".parse().unwrap();
        assert_eq!(redact_uri(&uri), "/v1/api-keys/REDACTED/rotate");
        let uri: hyper::Uri = "/v1/api-keys/mt%5Flive%5Fsk%5Fabc?mt_live_tk_x=1".parse().unwrap();
        assert_eq!(redact_uri(&uri), "/v1/api-keys/REDACTED?REDACTED=REDACTED");
        let uri: hyper::Uri = "/v1/api-keys/key_123".parse().unwrap();
        assert_eq!(redact_uri(&uri), "/v1/api-keys/key_123");
    }
}
