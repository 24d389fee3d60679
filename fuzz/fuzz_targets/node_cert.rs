//! The node id read from a peer's certificate (X.509 DER), as the transport does for every
//! connection after TLS has verified the chain.
#![no_main]

use falak_transport::node_id_from_cert;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = node_id_from_cert(data);
});
