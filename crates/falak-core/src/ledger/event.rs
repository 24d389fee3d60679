//! Where a ledger event sits in the one event history every replica shares.
//!
//! Applying a committed entry produces the same events on every replica, in the same order, so
//! an event is named by the log index of its entry and its position among that entry's events.
//! The name is the same on every node and survives restarts: a reader can resume from it on any
//! node.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The position of one ledger event: `index.n`, the `n`th event (from 0) of log entry `index`.
///
/// Ordered as the history is: by index, then by position. Written `1234.2`; `1234` alone names
/// the end of entry 1234 (every event of it), which is where a reader that saw it resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId {
    pub index: u64,
    pub n: u32,
}

impl EventId {
    pub fn new(index: u64, n: u32) -> EventId {
        EventId { index, n }
    }

    /// The last position of entry `index`: every event of that entry is at or before it.
    pub fn end_of(index: u64) -> EventId {
        EventId { index, n: u32::MAX }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.n == u32::MAX { write!(f, "{}", self.index) } else { write!(f, "{}.{}", self.index, self.n) }
    }
}

/// Why a text is not an [`EventId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an event id; event ids look like 1234.2 (ledger index, then position), or 1234")]
pub struct ParseEventIdError(pub String);

impl FromStr for EventId {
    type Err = ParseEventIdError;

    fn from_str(text: &str) -> Result<EventId, ParseEventIdError> {
        let bad = || ParseEventIdError(text.chars().take(64).collect());
        let text = text.trim();
        let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
        match text.split_once('.') {
            None if digits(text) => Ok(EventId::end_of(text.parse().map_err(|_| bad())?)),
            Some((index, n)) if digits(index) && digits(n) => {
                let n: u32 = n.parse().map_err(|_| bad())?;
                if n == u32::MAX {
                    return Err(bad());
                }
                Ok(EventId { index: index.parse().map_err(|_| bad())?, n })
            }
            _ => Err(bad()),
        }
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_order_as_the_history() {
        let id: EventId = "1234.2".parse().unwrap();
        assert_eq!(id, EventId::new(1234, 2));
        assert_eq!(id.to_string(), "1234.2");
        let end: EventId = "1234".parse().unwrap();
        assert_eq!(end, EventId::end_of(1234));
        assert_eq!(end.to_string(), "1234");
        assert!(EventId::new(1234, 9) < end && end < EventId::new(1235, 0));
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"1234.2\"");
        assert_eq!(serde_json::from_str::<EventId>("\"7.0\"").unwrap(), EventId::new(7, 0));
    }

    #[test]
    fn bad_ids_are_refused_with_the_expected_shape() {
        for bad in ["", "x", "1.", ".1", "1.2.3", "-1", "1.-2", "99999999999999999999999", "1.4294967295"] {
            let error = bad.parse::<EventId>().unwrap_err().to_string();
            assert!(error.contains("1234.2"), "{bad}: {error}");
        }
    }
}
