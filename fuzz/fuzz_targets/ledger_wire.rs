//! `Protocol::Ledger` frames: raft requests as the server decodes them and replies as the
//! caller decodes them. Whatever decodes re-encodes to a frame that decodes to itself.
#![no_main]

use falak_ledger::fuzzing::{decode_replies, decode_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode_request(data) {
        assert_eq!(decode_request(&frame), Ok(frame.clone()), "re-encoded request does not round-trip");
    }
    for reply in decode_replies(data).into_iter().flatten() {
        assert!(decode_replies(&reply).contains(&Ok(reply.clone())), "re-encoded reply does not round-trip");
    }
});
