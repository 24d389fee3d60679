//! Percentiles and formatting of measured values.

use std::time::Duration;

/// Measured durations, kept in full so any percentile can be read.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    values: Vec<f64>,
}

impl Samples {
    pub fn new() -> Samples {
        Samples::default()
    }

    /// Add one duration, in seconds.
    pub fn push_secs(&mut self, secs: f64) {
        self.values.push(secs);
    }

    pub fn push(&mut self, d: Duration) {
        self.values.push(d.as_secs_f64());
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The nearest-rank percentile `p` (0–100), in seconds; 0 when empty.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.values.is_empty() {
            return 0.0;
        }
        let mut sorted = self.values.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    pub fn p50(&self) -> f64 {
        self.percentile(50.0)
    }

    pub fn p99(&self) -> f64 {
        self.percentile(99.0)
    }

    pub fn min(&self) -> f64 {
        self.values.iter().copied().fold(f64::INFINITY, f64::min)
    }

    pub fn max(&self) -> f64 {
        self.values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }

    pub fn mean(&self) -> f64 {
        if self.values.is_empty() { 0.0 } else { self.values.iter().sum::<f64>() / self.values.len() as f64 }
    }

    /// Summary numbers in seconds, for the JSON report.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "n": self.len(),
            "p50_s": self.p50(),
            "p99_s": self.p99(),
            "min_s": if self.is_empty() { 0.0 } else { self.min() },
            "max_s": if self.is_empty() { 0.0 } else { self.max() },
            "mean_s": self.mean(),
        })
    }
}

/// A duration in seconds as a short human string: `850 µs`, `3.21 ms`, `1.42 s`.
pub fn fmt_secs(secs: f64) -> String {
    if secs < 1e-3 {
        format!("{:.0} µs", secs * 1e6)
    } else if secs < 1.0 {
        format!("{:.2} ms", secs * 1e3)
    } else {
        format!("{secs:.2} s")
    }
}

/// A rate as `4,812/s`.
pub fn fmt_rate(per_sec: f64) -> String {
    format!("{}/s", group_thousands(per_sec.round() as u64))
}

/// Bytes as MiB with one decimal.
pub fn fmt_mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `a / b` as `2.4×`, or `—` when `b` is zero.
pub fn fmt_ratio(a: f64, b: f64) -> String {
    if b > 0.0 { format!("{:.1}×", a / b) } else { "—".to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s = Samples::new();
        for i in 1..=100 {
            s.push_secs(f64::from(i));
        }
        assert_eq!(s.p50(), 50.0);
        assert_eq!(s.p99(), 99.0);
        assert_eq!(s.percentile(100.0), 100.0);
        let mut one = Samples::new();
        one.push_secs(7.0);
        assert_eq!(one.p50(), 7.0);
        assert_eq!(one.p99(), 7.0);
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_secs(0.000_85), "850 µs");
        assert_eq!(fmt_secs(0.003_21), "3.21 ms");
        assert_eq!(fmt_secs(1.42), "1.42 s");
        assert_eq!(fmt_rate(4812.4), "4,812/s");
        assert_eq!(group_thousands(1_234_567), "1,234,567");
        assert_eq!(fmt_ratio(3.0, 1.5), "2.0×");
    }
}
