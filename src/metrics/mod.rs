//! Node metrics and their text exports (admin listener `/metrics`): the Prometheus text
//! format 0.0.4 by default, OpenMetrics 1.0 when the scraper asks for it.
//!
//! Owns: metric names and help texts.  May use: prometheus-client, its child `latency`.  Never: label a metric
//! with a secret or any unbounded value (only codes from closed sets).
//! Invariants: the per-delivery path adds to a counter once per event, not once per socket.

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

mod latency;
pub use latency::LatencyHistogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SecretLabel {
    /// `current`, or `previous` for a secret inside a rotation's grace period.
    pub secret: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    /// `head` or `history`.
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabel {
    pub code: u16,
}

/// Every counter and gauge of one node.
pub struct Metrics {
    registry: Registry,
    pub connections_open: Gauge,
    pub connections_total: Counter,
    pub connections_by_secret: Family<SecretLabel, Gauge>,
    pub auth_failures: Family<CodeLabel, Counter>,
    pub closes: Family<CloseLabel, Counter>,
    pub events_published: Counter,
    pub events_received: Counter,
    pub events_malformed: Counter,
    pub deliveries: Counter,
    pub slow_consumer_closes: Counter,
    pub broker_gaps: Counter,
    pub broker_overflows: Counter,
    /// Holes in a channel's offsets (or broker reconnects) that history filled / could not.
    pub gaps_repaired: Counter,
    pub gaps_unrepaired: Counter,
    /// Channels whose history was found behind what this node delivered (a rollback).
    pub history_rollbacks: Counter,
    /// Resumes (SPEC §7) that delivered the missed events / that answered `recovered: false`.
    pub resumes_recovered: Counter,
    pub resumes_unrecovered: Counter,
    /// Resumes a broker error left unanswered (the stream closed 1013, or `broker_unavailable`).
    pub resumes_failed: Counter,
    /// Channel head/history reads sent to the broker, and those answered by a read another
    /// caller sent (concurrent identical reads are sent once: `broker::coalesce`).
    pub broker_reads: Family<OpLabel, Counter>,
    pub broker_reads_shared: Family<OpLabel, Counter>,
    pub rate_limited: Family<LimitLabel, Counter>,
    /// Requests refused by a policy rather than a rate (an `Origin` not allowed, …).
    pub refused: Family<ReasonLabel, Counter>,
    /// From the start of a `/v1/ws` request to `auth.success` being queued.
    pub handshake_seconds: Histogram,
    /// From the broker handing this node an event to its frame being flushed to a socket
    /// (the oldest frame of each socket write).
    pub delivery_seconds: LatencyHistogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("miteos"),
            connections_open: Gauge::default(),
            connections_total: Counter::default(),
            connections_by_secret: Family::default(),
            auth_failures: Family::default(),
            closes: Family::default(),
            events_published: Counter::default(),
            events_received: Counter::default(),
            events_malformed: Counter::default(),
            deliveries: Counter::default(),
            slow_consumer_closes: Counter::default(),
            broker_gaps: Counter::default(),
            broker_overflows: Counter::default(),
            gaps_repaired: Counter::default(),
            gaps_unrepaired: Counter::default(),
            history_rollbacks: Counter::default(),
            resumes_recovered: Counter::default(),
            resumes_unrecovered: Counter::default(),
            resumes_failed: Counter::default(),
            broker_reads: Family::default(),
            broker_reads_shared: Family::default(),
            rate_limited: Family::default(),
            refused: Family::default(),
            // 1 ms … ~16 s.
            handshake_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            delivery_seconds: LatencyHistogram::default(),
        };
        let r = &mut m.registry;
        r.register(
            "connections_open",
            "WebSocket connections open on this node",
            m.connections_open.clone(),
        );
        r.register(
            "connections",
            "WebSocket connections upgraded on this node",
            m.connections_total.clone(),
        );
        r.register(
            "connections_by_secret",
            "Open WebSocket connections by the secret they use (previous = rotated, in grace)",
            m.connections_by_secret.clone(),
        );
        r.register(
            "auth_failures",
            "Failed authentications by error code",
            m.auth_failures.clone(),
        );
        r.register(
            "ws_closes",
            "Server-initiated WebSocket closes by close code",
            m.closes.clone(),
        );
        r.register(
            "events_published",
            "Events accepted by this node's publish endpoint",
            m.events_published.clone(),
        );
        r.register(
            "events_received",
            "Valid events this node received from the broker",
            m.events_received.clone(),
        );
        r.register(
            "events_malformed",
            "Producer messages dropped as malformed or oversized",
            m.events_malformed.clone(),
        );
        r.register(
            "deliveries",
            "Event frames queued to WebSocket connections",
            m.deliveries.clone(),
        );
        r.register(
            "slow_consumer_closes",
            "Connections closed with 4009 because their queue overflowed",
            m.slow_consumer_closes.clone(),
        );
        r.register(
            "broker_gaps",
            "Broker reconnects; events published meanwhile were lost",
            m.broker_gaps.clone(),
        );
        r.register(
            "broker_overflows",
            "Times this node dropped its broker subscription because events arrived faster than it delivered them",
            m.broker_overflows.clone(),
        );
        r.register(
            "gaps_repaired",
            "Holes in a channel's offsets and broker reconnects that this node repaired from history",
            m.gaps_repaired.clone(),
        );
        r.register(
            "gaps_unrepaired",
            "Holes in a channel's offsets that history no longer covered (subscribers got a gap message)",
            m.gaps_unrepaired.clone(),
        );
        r.register(
            "history_rollbacks",
            "Channels whose history had forgotten events this node delivered (a replica promoted behind its master): a new epoch was started",
            m.history_rollbacks.clone(),
        );
        r.register(
            "resumes_recovered",
            "Channel resumes that delivered every missed event",
            m.resumes_recovered.clone(),
        );
        r.register(
            "resumes_unrecovered",
            "Channel resumes answered recovered: false",
            m.resumes_unrecovered.clone(),
        );
        r.register(
            "resumes_failed",
            "Channel resumes not answered because a broker read failed (stream closed with 1013, or a subscribe answered broker_unavailable)",
            m.resumes_failed.clone(),
        );
        r.register(
            "broker_reads",
            "Channel head and history reads sent to the broker, by op",
            m.broker_reads.clone(),
        );
        r.register(
            "broker_reads_shared",
            "Channel head and history reads answered by an identical read another caller sent, by op",
            m.broker_reads_shared.clone(),
        );
        r.register(
            "rate_limited",
            "Requests and connections refused by a limit",
            m.rate_limited.clone(),
        );
        r.register(
            "requests_refused",
            "Requests and upgrades refused by a policy, by reason",
            m.refused.clone(),
        );
        r.register(
            "ws_handshake_seconds",
            "Time from a WebSocket request to auth.success",
            m.handshake_seconds.clone(),
        );
        r.register(
            "delivery_seconds",
            "Time from the broker handing this node an event to the socket write that carried it (oldest frame per write)",
            m.delivery_seconds.clone(),
        );
        m
    }

    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn rate_limited(&self, limit: &'static str) {
        self.rate_limited.get_or_create(&LimitLabel { limit }).inc();
    }

    /// The counters of one kind of broker read (`head`, `history`): (sent, shared).
    pub fn broker_read_counters(&self, op: &'static str) -> (Counter, Counter) {
        let label = OpLabel { op };
        let sent = self.broker_reads.get_or_create(&label).clone();
        (sent, self.broker_reads_shared.get_or_create(&label).clone())
    }

    pub fn auth_failure(&self, code: &'static str) {
        self.auth_failures.get_or_create(&CodeLabel { code }).inc();
    }

    /// Sets the per-secret connection gauges (computed at scrape time).
    pub fn set_by_secret(&self, current: usize, previous: usize) {
        self.connections_by_secret
            .get_or_create(&SecretLabel { secret: "current" })
            .set(current as i64);
        self.connections_by_secret
            .get_or_create(&SecretLabel { secret: "previous" })
            .set(previous as i64);
    }

    /// Every metric in the OpenMetrics 1.0 text format.
    pub fn render_openmetrics(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Every metric in the Prometheus text format 0.0.4 (what every scraper reads).
    pub fn render(&self) -> String {
        openmetrics_to_text(&self.render_openmetrics())
    }
}

/// Rewrites OpenMetrics text as the Prometheus text format 0.0.4: a counter family is named
/// after its `_total` sample (`# TYPE x_total counter`), and `# UNIT` and `# EOF` lines go.
fn openmetrics_to_text(open: &str) -> String {
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_counters_with_labels() {
        let m = Metrics::new();
        m.auth_failure("invalid_api_key");
        m.deliveries.inc_by(3);
        m.closes.get_or_create(&CloseLabel { code: 4009 }).inc();
        let text = m.render();
        assert!(text.contains("miteos_auth_failures_total{code=\"invalid_api_key\"} 1"), "{text}");
        assert!(text.contains("miteos_deliveries_total 3"), "{text}");
        assert!(text.contains("miteos_ws_closes_total{code=\"4009\"} 1"), "{text}");
        assert!(text.contains("miteos_connections_open 0"), "{text}");
        assert!(text.contains("# TYPE miteos_deliveries_total counter\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        let open = m.render_openmetrics();
        assert!(open.contains("# TYPE miteos_deliveries counter\n"), "{open}");
        assert!(open.ends_with("# EOF\n"), "{open}");
    }

    #[test]
    fn histograms_render_buckets_in_both_formats() {
        let m = Metrics::new();
        m.handshake_seconds.observe(0.003);
        for text in [m.render(), m.render_openmetrics()] {
            assert!(text.contains("# TYPE miteos_ws_handshake_seconds histogram"), "{text}");
            assert!(text.contains("miteos_ws_handshake_seconds_bucket{le=\"0.004\"} 1"), "{text}");
            assert!(text.contains("miteos_ws_handshake_seconds_count 1"), "{text}");
        }
        m.delivery_seconds.observe(std::time::Duration::from_micros(150));
        for text in [m.render(), m.render_openmetrics()] {
            assert!(text.contains("# TYPE miteos_delivery_seconds histogram"), "{text}");
            assert!(text.contains("miteos_delivery_seconds_bucket{le=\"0.0001\"} 0"), "{text}");
            assert!(text.contains("miteos_delivery_seconds_bucket{le=\"0.0002\"} 1"), "{text}");
            assert!(text.contains("miteos_delivery_seconds_bucket{le=\"+Inf\"} 1"), "{text}");
            assert!(text.contains("miteos_delivery_seconds_count 1"), "{text}");
        }
    }
}
