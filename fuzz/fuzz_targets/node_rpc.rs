//! Node RPC requests (`Protocol::Rpc`, JSON) as the daemon's handler decodes them.
#![no_main]

use falak_node::api::RpcRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<RpcRequest>(data) {
        let again = serde_json::to_vec(&request).expect("encodes");
        serde_json::from_slice::<RpcRequest>(&again).expect("re-decodes");
    }
});
