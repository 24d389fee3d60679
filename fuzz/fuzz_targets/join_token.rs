//! Join tokens (`falak-join-v2.<hex json>`), pasted by operators: decode, and a decoded token
//! encodes to a token that decodes to the same.
#![no_main]

use falak_node::mesh_files::JoinToken;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(token) = JoinToken::decode(text) {
        assert_eq!(JoinToken::decode(&token.encode()).expect("re-decodes"), token);
    }
});
