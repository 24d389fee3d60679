//! One result row per benchmark, the summary table and the JSON report.

use std::time::{SystemTime, UNIX_EPOCH};

/// How a measurement compares with its DESIGN.md §6 target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Miss,
    /// The benchmark could not complete.
    Error,
}

impl Verdict {
    pub fn of(pass: bool) -> Verdict {
        if pass { Verdict::Pass } else { Verdict::Miss }
    }

    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
            Verdict::Error => "ERROR",
        }
    }
}

/// One line of the summary.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    /// What was measured, e.g. `p50 3.21 ms, p99 9.80 ms (n=200)`.
    pub measured: String,
    /// The floor measured in the same run.
    pub floor: String,
    /// The measurement over the floor.
    pub ratio: String,
    pub target: String,
    pub verdict: Verdict,
    /// The one-line verdict with the numbers.
    pub reason: String,
    /// Raw numbers for `--json`.
    pub data: serde_json::Value,
}

impl Row {
    pub fn error(name: &str, target: &str, error: &anyhow::Error) -> Row {
        Row {
            name: name.to_owned(),
            measured: "—".into(),
            floor: "—".into(),
            ratio: "—".into(),
            target: target.to_owned(),
            verdict: Verdict::Error,
            reason: format!("{error:#}"),
            data: serde_json::json!({ "error": format!("{error:#}") }),
        }
    }

    /// `NAME: PASS|MISS — reason`.
    pub fn verdict_line(&self) -> String {
        format!("{}: {} — {}", self.name, self.verdict.name(), self.reason)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "measured": self.measured,
            "floor": self.floor,
            "ratio": self.ratio,
            "target": self.target,
            "verdict": self.verdict.name(),
            "reason": self.reason,
            "data": self.data,
        })
    }
}

/// The summary as a Markdown table (readable in a terminal too).
pub fn table(rows: &[Row]) -> String {
    let header = ["benchmark", "measured", "floor (same run)", "ratio to floor", "target", "verdict"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.measured.clone(),
                r.floor.clone(),
                r.ratio.clone(),
                r.target.clone(),
                r.verdict.name().to_owned(),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: &[String]| {
        let padded: Vec<String> =
            cols.iter().zip(widths).map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count()))).collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(&header.map(str::to_owned));
    out.push_str(&format!("|{}|\n", widths.map(|w| "-".repeat(w + 2)).join("|")));
    for row in &cells {
        out.push_str(&line(row));
    }
    out
}

/// What the run was measured on.
pub fn machine() -> serde_json::Value {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    serde_json::json!({ "nproc": nproc, "kernel": kernel, "cpu": cpu, "date_utc": utc_now() })
}

/// The current UTC time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Howard Hinnant's days-since-epoch → (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn table_aligns() {
        let row = Row {
            name: "x".into(),
            measured: "1 ms".into(),
            floor: "—".into(),
            ratio: "—".into(),
            target: "≤ 5 ms".into(),
            verdict: Verdict::Pass,
            reason: String::new(),
            data: serde_json::Value::Null,
        };
        let t = table(&[row]);
        let widths: Vec<usize> = t.lines().map(|l| l.chars().count()).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{t}");
    }
}
