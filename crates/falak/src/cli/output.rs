//! Rendering for people (aligned plain-text tables, short quantities) and for programs (JSON).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

/// How commands print their answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns and short sentences for people.
    #[default]
    Table,
    /// The API's JSON, pretty-printed, for programs.
    Json,
}

/// A plain-text table: a header row and aligned columns separated by two spaces.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table { header: header.iter().map(|h| (*h).to_owned()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, each line ending in a newline, no trailing spaces.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).chain([self.header.len()]).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = widths[i] - cell.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Print a value as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    println!("{text}");
    Ok(())
}

/// Print text as it is (no newline added) and flush, for logs and results.
pub fn print_raw(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// Millicores as cores: `500m`, `2`, `1.5`.
pub fn cpu(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else if millis < 1000 {
        format!("{millis}m")
    } else {
        format!("{:.1}", millis as f64 / 1000.0)
    }
}

/// Bytes as `32Mi`, `1.5Gi`.
pub fn bytes(n: u64) -> String {
    falak_core::resources::format_bytes(n)
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC, to the second.
pub fn timestamp(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A duration for people: `850ms`, `4.2s`, `3m05s`, `2h07m`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// `key=value,key=value`, or `-` when empty.
pub fn labels(map: &BTreeMap<String, String>) -> String {
    if map.is_empty() {
        "-".to_owned()
    } else {
        map.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    }
}

/// An optional value, or `-`.
pub fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// The first line of `text`, cut to `max` characters with `…` when longer.
pub fn short(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    if line.chars().count() <= max && line.len() == text.trim_end().len() {
        return line.to_owned();
    }
    let cut: String = line.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_trim() {
        let mut t = Table::new(&["NAME", "STATE", "NOTE"]);
        t.row(vec!["node-a".into(), "HEALTHY".into(), "".into()]);
        t.row(vec!["b".into(), "OFFLINE".into(), "gone since 3s".into()]);
        expect_test::expect![[r#"
            NAME    STATE    NOTE
            node-a  HEALTHY
            b       OFFLINE  gone since 3s
        "#]]
        .assert_eq(&t.render());
    }

    #[test]
    fn quantities_for_people() {
        assert_eq!([cpu(500), cpu(2000), cpu(1500)], ["500m", "2", "1.5"]);
        assert_eq!(
            [duration(850), duration(4200), duration(185_000), duration(7_620_000)],
            ["850ms", "4.2s", "3m05s", "2h07m"]
        );
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(labels(&BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())])), "a=1,b=2");
        assert_eq!(short("first line\nsecond", 40), "first line…");
        assert_eq!(short("abcdef", 4), "abc…");
        assert_eq!(short("abc", 4), "abc");
    }
}
