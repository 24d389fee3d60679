//! Ledger records: log entries (and the commands inside them), votes, snapshot metadata and
//! snapshot payloads, which a follower also decodes from a leader's chunks.
#![no_main]

use falak_ledger::fuzzing::decode_records;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for record in decode_records(data).into_iter().flatten() {
        assert!(decode_records(&record).contains(&Ok(record.clone())), "re-encoded record does not round-trip");
    }
});
