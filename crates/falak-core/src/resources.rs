//! Resource quantities: cpu in millicores, memory in bytes, gpus as a count.
//!
//! Specs write quantities the way Kubernetes users expect: `cpu: 100m`, `cpu: 0.5`, `cpu: 2`,
//! `memory: 32Mi`, `memory: 1G`, `memory: 1048576`.

use std::fmt;
use std::ops::{Add, Sub};

use serde::{Deserialize, Serialize};

/// The most cpu a single request or node may declare: 100,000 cores.
pub const MAX_CPU_MILLIS: u64 = 100_000_000;
/// The most memory a single request or node may declare: 1 PiB.
pub const MAX_MEMORY_BYTES: u64 = 1 << 50;
/// The most gpus a single request or node may declare.
pub const MAX_GPUS: u32 = 1024;

/// An amount of compute resources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    #[serde(default)]
    pub gpus: u32,
}

impl Resources {
    pub const ZERO: Resources = Resources { cpu_millis: 0, memory_bytes: 0, gpus: 0 };

    pub fn new(cpu_millis: u64, memory_bytes: u64) -> Self {
        Resources { cpu_millis, memory_bytes, gpus: 0 }
    }

    /// Whether `self` fits inside `available` on every dimension.
    pub fn fits_in(&self, available: &Resources) -> bool {
        self.cpu_millis <= available.cpu_millis
            && self.memory_bytes <= available.memory_bytes
            && self.gpus <= available.gpus
    }
}

impl Add for Resources {
    type Output = Resources;
    fn add(self, o: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(o.memory_bytes),
            gpus: self.gpus.saturating_add(o.gpus),
        }
    }
}

impl Sub for Resources {
    type Output = Resources;
    /// Saturating: free capacity never goes below zero.
    fn sub(self, o: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(o.memory_bytes),
            gpus: self.gpus.saturating_sub(o.gpus),
        }
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpu {}m, memory {}", self.cpu_millis, format_bytes(self.memory_bytes))?;
        if self.gpus > 0 {
            write!(f, ", gpus {}", self.gpus)?;
        }
        Ok(())
    }
}

/// Bytes as a short human string (`32Mi`, `1.5Gi`).
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["", "Ki", "Mi", "Gi", "Ti", "Pi"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 { format!("{}{}", value as u64, UNITS[unit]) } else { format!("{value:.1}{}", UNITS[unit]) }
}

/// Why a quantity string is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{0:?} is negative; quantities must be zero or more")]
    Negative(String),
    #[error("{0:?} is not a quantity; write e.g. {1}")]
    Malformed(String, &'static str),
    #[error("{value:?} is more than the allowed maximum of {max}")]
    TooLarge { value: String, max: String },
}

/// Parse a cpu quantity into millicores: `100m`, `0.5`, `2`.
pub fn parse_cpu(text: &str) -> Result<u64, QuantityError> {
    const EXAMPLE: &str = "`100m`, `0.5` or `2`";
    let t = text.trim();
    if t.starts_with('-') {
        return Err(QuantityError::Negative(text.to_owned()));
    }
    let millis = if let Some(m) = t.strip_suffix('m') {
        m.parse::<u64>().map_err(|_| QuantityError::Malformed(text.to_owned(), EXAMPLE))?
    } else {
        let cores: f64 = t.parse().map_err(|_| QuantityError::Malformed(text.to_owned(), EXAMPLE))?;
        if !cores.is_finite() {
            return Err(QuantityError::Malformed(text.to_owned(), EXAMPLE));
        }
        if cores * 1000.0 > MAX_CPU_MILLIS as f64 {
            return Err(QuantityError::TooLarge {
                value: text.to_owned(),
                max: format!("{} cores", MAX_CPU_MILLIS / 1000),
            });
        }
        (cores * 1000.0).round() as u64
    };
    if millis > MAX_CPU_MILLIS {
        return Err(QuantityError::TooLarge {
            value: text.to_owned(),
            max: format!("{} cores", MAX_CPU_MILLIS / 1000),
        });
    }
    Ok(millis)
}

/// Parse a memory quantity into bytes: `32Mi`, `1Gi`, `512M`, `1048576`.
pub fn parse_memory(text: &str) -> Result<u64, QuantityError> {
    const EXAMPLE: &str = "`32Mi`, `1Gi` or `512M`";
    let t = text.trim();
    if t.starts_with('-') {
        return Err(QuantityError::Negative(text.to_owned()));
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let multiplier: u64 = match unit {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return Err(QuantityError::Malformed(text.to_owned(), EXAMPLE)),
    };
    let value: f64 = number.parse().map_err(|_| QuantityError::Malformed(text.to_owned(), EXAMPLE))?;
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes > MAX_MEMORY_BYTES as f64 {
        return Err(QuantityError::TooLarge { value: text.to_owned(), max: format_bytes(MAX_MEMORY_BYTES) });
    }
    Ok(bytes.round() as u64)
}

/// A quantity as written in a spec: a string (`100m`) or a bare number (`2`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Quantity {
    Text(String),
    Number(f64),
}

impl Quantity {
    pub fn as_text(&self) -> String {
        match self {
            Quantity::Text(t) => t.clone(),
            Quantity::Number(n) => n.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities() {
        assert_eq!(parse_cpu("100m"), Ok(100));
        assert_eq!(parse_cpu("0.5"), Ok(500));
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert!(matches!(parse_cpu("-1"), Err(QuantityError::Negative(_))));
        assert!(matches!(parse_cpu("lots"), Err(QuantityError::Malformed(..))));
        assert!(matches!(parse_cpu("1e12"), Err(QuantityError::TooLarge { .. })));
        assert!(matches!(parse_cpu("NaN"), Err(QuantityError::Malformed(..))));
    }

    #[test]
    fn memory_quantities() {
        assert_eq!(parse_memory("32Mi"), Ok(32 << 20));
        assert_eq!(parse_memory("1Gi"), Ok(1 << 30));
        assert_eq!(parse_memory("512M"), Ok(512_000_000));
        assert_eq!(parse_memory("4096"), Ok(4096));
        assert!(matches!(parse_memory("-5Mi"), Err(QuantityError::Negative(_))));
        assert!(matches!(parse_memory("12Qi"), Err(QuantityError::Malformed(..))));
        assert!(matches!(parse_memory("9999999Ti"), Err(QuantityError::TooLarge { .. })));
    }

    #[test]
    fn formatting() {
        assert_eq!(format_bytes(32 << 20), "32Mi");
        assert_eq!(format_bytes(1536 << 20), "1.5Gi");
        assert_eq!(Resources::new(100, 32 << 20).to_string(), "cpu 100m, memory 32Mi");
    }
}
