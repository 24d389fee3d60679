//! Versioned encoding of everything the ledger writes to disk.
//!
//! Every record (log entry, vote, committed and purged log ids, snapshot metadata and snapshot
//! payload) is one format byte followed by JSON. JSON because the core types are opaque to this
//! crate and keep growing: a self-describing format tolerates serde attributes (tagged enums,
//! defaults, skipped fields) that a positional format like postcard would not.
//!
//! **Migration path:** when a record's shape changes incompatibly, add `FORMAT_V2`, keep the V1
//! decoder, and convert V1 records to the new type in [`decode`] (read old, write new). Records
//! are never rewritten in place: log entries disappear through purge and snapshots are replaced
//! by newer ones, so after one snapshot cycle a node holds only the newest format. A node must
//! refuse (not misread) a format newer than it knows, which [`decode`] does.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The only record format so far: `[1] ++ json`.
pub(crate) const FORMAT_V1: u8 = 1;

/// Why a stored record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeRecordError {
    #[error("record is empty")]
    Empty,
    #[error("record has format {0}, this build reads only format {FORMAT_V1}; upgrade the node")]
    UnknownFormat(u8),
    #[error("record is not valid: {0}")]
    Invalid(#[from] serde_json::Error),
}

/// Encode one record in the current format.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(128);
    out.push(FORMAT_V1);
    serde_json::to_writer(&mut out, value)?;
    Ok(out)
}

/// Decode one record written by [`encode`] (or, later, by an older format).
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeRecordError> {
    match bytes.split_first() {
        None => Err(DecodeRecordError::Empty),
        Some((&FORMAT_V1, json)) => Ok(serde_json::from_slice(json)?),
        Some((&other, _)) => Err(DecodeRecordError::UnknownFormat(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_carry_their_format() {
        let bytes = encode(&vec![1u64, 2, 3]).unwrap();
        assert_eq!(bytes[0], FORMAT_V1);
        assert_eq!(decode::<Vec<u64>>(&bytes).unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn unknown_formats_and_garbage_are_refused() {
        assert!(matches!(decode::<u64>(&[]), Err(DecodeRecordError::Empty)));
        assert!(matches!(decode::<u64>(&[9, b'1']), Err(DecodeRecordError::UnknownFormat(9))));
        assert!(matches!(decode::<u64>(&[FORMAT_V1, b'x']), Err(DecodeRecordError::Invalid(_))));
    }
}
