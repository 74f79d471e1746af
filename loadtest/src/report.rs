//! A run's results: one JSON line for machines, a few lines for people.

use serde_json::{json, Value};

pub struct Report {
    pub scenario: &'static str,
    pub params: Value,
    pub results: Value,
    pub lines: Vec<String>,
}

impl Report {
    pub fn json(&self) -> String {
        json!({"scenario": self.scenario, "params": self.params, "results": self.results})
            .to_string()
    }

    pub fn summary(&self) -> String {
        let mut s = format!("== {} ==\n", self.scenario);
        for l in &self.lines {
            s.push_str("  ");
            s.push_str(l);
            s.push('\n');
        }
        s
    }
}

/// p50/p90/p99/max of latencies in microseconds, and the sample count.
pub fn latency(samples: &[u32]) -> Value {
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
        .expect("histogram bounds");
    for s in samples {
        let _ = h.record(u64::from((*s).max(1)));
    }
    json!({
        "samples": h.len(),
        "p50_us": h.value_at_quantile(0.50),
        "p90_us": h.value_at_quantile(0.90),
        "p99_us": h.value_at_quantile(0.99),
        "max_us": h.max(),
    })
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
