//! Membership datagrams: raw bytes from the network (the seal must refuse them), and the same
//! bytes sealed under the mesh key, as an insider could send them (foca's decoder, the codec's
//! placeholder checks and the gossip decoder must refuse or accept them without panicking).
#![no_main]

use std::net::SocketAddr;
use std::time::Duration;

use falak_core::NodeId;
use falak_membership::seal::{MAX_PLAINTEXT, Sealer};
use falak_membership::{MemberIdentity, Membership, MembershipConfig, MeshSecret};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const SECRET: MeshSecret = MeshSecret([7; 32]);

fuzz_target!(|data: &[u8]| {
    let local = MemberIdentity::new(NodeId([9; 32]), SocketAddr::from(([127, 0, 0, 1], 7000)), 1);
    let mut core =
        Membership::new(local, &SECRET, MembershipConfig::lan(), ChaCha8Rng::seed_from_u64(1)).expect("valid core");
    let from = SocketAddr::from(([127, 0, 0, 1], 7001));
    core.handle_datagram(Duration::ZERO, from, data);
    let before = core.stats();
    assert_eq!(before.dropped_malformed, 0, "raw bytes got past the seal");
    if data.len() <= MAX_PLAINTEXT {
        let sealed = Sealer::new(&SECRET).seal(data, [3; 24]).expect("fits");
        core.handle_datagram(Duration::from_millis(1), from, &sealed);
        while core.poll_output().is_some() {}
        let _ = core.view();
    }
});
