//! The QUIC transport's request and reply framing (length-prefixed bodies, status bytes), as
//! read from a stream: limits are checked from the header, and replies round-trip.
#![no_main]

use falak_transport::quic::fuzzing::{decode_reply, decode_request, encode_reply, encode_request};
use libfuzzer_sys::fuzz_target;

/// Small, so the size check is exercised by short inputs.
const LIMIT: usize = 1024;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = decode_request(data, LIMIT) {
        assert!(body.len() <= LIMIT);
        assert_eq!(decode_request(&encode_request(&body), LIMIT).expect("re-decodes"), body);
    }
    if let Ok(reply) = decode_reply(data, LIMIT) {
        // Reply text is decoded lossily: each invalid byte becomes U+FFFD, three bytes when
        // encoded again, and a short too-large payload is re-encoded at its full 16 bytes.
        let again = decode_reply(&encode_reply(reply.clone()), 3 * LIMIT + 16).expect("re-decodes");
        assert_eq!(again, reply);
    }
});
