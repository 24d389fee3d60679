//! `Protocol::Artifact` messages: chunk requests as the server reads them and replies as the
//! fetcher reads them; both round-trip (as values: postcard accepts over-long varints, so not
//! always to the same bytes).
#![no_main]

use bytes::Bytes;
use falak_artifact::{ChunkRequest, decode_reply, encode_reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = ChunkRequest::decode(data) {
        assert_eq!(ChunkRequest::decode(&request.encode()), Ok(request), "a request does not round-trip");
    }
    if let Ok((header, chunk)) = decode_reply(Bytes::copy_from_slice(data)) {
        let again = decode_reply(encode_reply(&header, &chunk)).expect("re-decodes");
        assert_eq!(again, (header, chunk), "a reply does not round-trip");
    }
});
