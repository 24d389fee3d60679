//! Prometheus metrics, rendered in the text exposition format on each scrape.
//!
//! Counters and histograms are owned by the main loop; gauges (node states, tasks by state) are
//! computed from committed state at scrape time so they can never drift from it.

use std::fmt::Write;

/// A cumulative histogram with fixed bucket bounds, in seconds.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Bounds suited to latencies from 100 µs to 10 s.
pub const LATENCY_BOUNDS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    pub fn observe(&mut self, seconds: f64) {
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }

    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.render_labeled(out, name, "");
    }

    /// The samples of one series of a family whose HELP and TYPE are already written; `labels`
    /// is `key="value",...` or empty.
    pub fn render_labeled(&self, out: &mut String, name: &str, labels: &str) {
        let (bucket, total) = if labels.is_empty() {
            (String::new(), String::new())
        } else {
            (format!("{labels},"), format!("{{{labels}}}"))
        };
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{bucket}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{bucket}le=\"+Inf\"}} {}\n{name}_sum{total} {}\n{name}_count{total} {}",
            self.count, self.sum, self.count
        );
    }
}

/// Counters and histograms of one node.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub elections_won: u64,
    pub claims_proposed: u64,
    pub claims_rejected: u64,
    pub results_rejected: u64,
    pub tasks_started: u64,
    pub tasks_failed_to_start: u64,
    pub ledger_writes_failed: u64,
    /// From proposing a claim to seeing it committed, on the proposing node.
    pub claim_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            elections_won: 0,
            claims_proposed: 0,
            claims_rejected: 0,
            results_rejected: 0,
            tasks_started: 0,
            tasks_failed_to_start: 0,
            ledger_writes_failed: 0,
            claim_latency: Histogram::new(LATENCY_BOUNDS),
        }
    }
}

/// Append one counter.
pub fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
}

/// Append one counter family with labelled values.
pub fn counter_family<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value_label, value) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{value_label}\"}} {value}");
    }
}

/// Append one gauge family with labelled values.
pub fn gauge_family<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, f64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (value_label, value) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{value_label}\"}} {value}");
    }
}

impl Metrics {
    pub fn render_counters(&self, out: &mut String) {
        counter(out, "falak_elections_won_total", "Claims this node won (committed).", self.elections_won);
        counter(out, "falak_claims_proposed_total", "Claims this node proposed.", self.claims_proposed);
        counter(out, "falak_claims_rejected_total", "Claims by this node the ledger rejected.", self.claims_rejected);
        counter(
            out,
            "falak_results_rejected_total",
            "Task results rejected for a stale fencing token (whole mesh).",
            self.results_rejected,
        );
        counter(out, "falak_tasks_started_total", "Task attempts this node started.", self.tasks_started);
        counter(
            out,
            "falak_tasks_failed_to_start_total",
            "Task attempts this node could not start.",
            self.tasks_failed_to_start,
        );
        counter(
            out,
            "falak_ledger_writes_failed_total",
            "Ledger writes from this node that failed.",
            self.ledger_writes_failed,
        );
        self.claim_latency.render(out, "falak_claim_latency_seconds", "From proposing a claim to seeing it committed.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let mut h = Histogram::new(&[0.001, 0.01]);
        h.observe(0.0005);
        h.observe(0.005);
        h.observe(1.0);
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.001\"} 1\n"));
        assert!(out.contains("x_bucket{le=\"0.01\"} 2\n"));
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_count 3\n"));
    }
}
