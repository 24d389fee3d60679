//! Invariant: only datagrams sealed under this mesh's secret reach the protocol; everything
//! else is dropped and counted, and no input panics.

use std::time::Duration;

use falak_membership::seal::{MAX_PLAINTEXT, Sealer};
use falak_membership::{MAX_DATAGRAM, MemberIdentity, Membership, MembershipConfig, MeshSecret, Output};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::sim::{SECRET, addr, node_id};

fn core(index: usize, secret: &MeshSecret) -> Membership {
    let identity = MemberIdentity::new(node_id(index), addr(index), 1);
    Membership::new(identity, secret, MembershipConfig::lan(), ChaCha8Rng::seed_from_u64(index as u64))
        .expect("valid core")
}

/// A genuine announce from node 1 to node 0.
fn announce(secret: &MeshSecret) -> Vec<u8> {
    let mut joiner = core(1, secret);
    joiner.join(Duration::ZERO, addr(0)).expect("join");
    std::iter::from_fn(|| joiner.poll_output())
        .find_map(|o| match o {
            Output::Send { bytes, .. } => Some(bytes.to_vec()),
            _ => None,
        })
        .expect("an announce")
}

#[test]
fn packet_from_another_mesh_is_dropped_and_counted() {
    let mut node = core(0, &SECRET);
    // The maintenance tick is scheduled at creation; what follows must add nothing.
    assert!(matches!(node.poll_output(), Some(Output::Schedule { .. })));
    assert_eq!(node.poll_output(), None);
    node.handle_datagram(Duration::ZERO, addr(1), &announce(&MeshSecret([7; 32])));
    assert_eq!(node.stats().dropped_bad_seal, 1);
    assert_eq!(node.poll_output(), None, "a foreign packet must cause nothing");
    assert!(node.view().is_empty());

    node.handle_datagram(Duration::ZERO, addr(1), &announce(&SECRET));
    assert_eq!(node.view().len(), 1, "the genuine announce is accepted");
}

#[test]
fn thousands_of_mutations_are_dropped_without_panic() {
    let mut rng = ChaCha8Rng::seed_from_u64(0xfa1a);
    let genuine = announce(&SECRET);
    let mut node = core(0, &SECRET);
    assert!(matches!(node.poll_output(), Some(Output::Schedule { .. })), "the maintenance tick");
    let rounds = 4000;
    for round in 0..rounds {
        let mut bytes = genuine.clone();
        match round % 5 {
            0 => {
                let at = rng.gen_range(0..bytes.len());
                bytes[at] ^= 1 << rng.gen_range(0..8);
            }
            1 => bytes.truncate(rng.gen_range(0..bytes.len())),
            2 => bytes = (0..rng.gen_range(0..1600)).map(|_| rng.r#gen()).collect(),
            3 => bytes.extend((0..rng.gen_range(1..64)).map(|_| rng.r#gen::<u8>())),
            _ => bytes = vec![1; MAX_DATAGRAM + rng.gen_range(1..200)],
        }
        node.handle_datagram(Duration::ZERO, addr(1), &bytes);
    }
    let stats = node.stats();
    let dropped =
        stats.dropped_bad_seal + stats.dropped_truncated + stats.dropped_unknown_format + stats.dropped_oversized;
    assert_eq!(dropped, rounds, "{stats:?}");
    assert!(stats.dropped_oversized >= rounds / 5);
    assert!(stats.dropped_bad_seal > 0 && stats.dropped_truncated > 0 && stats.dropped_unknown_format > 0);
    assert!(node.view().is_empty(), "no forged member got in");
    assert_eq!(node.poll_output(), None);
}

#[test]
fn authentic_garbage_is_refused_by_the_protocol_without_panic() {
    // An insider (or a bug) sealing junk under the right key must not crash foca either.
    let sealer = Sealer::new(&SECRET);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut node = core(0, &SECRET);
    let genuine = Sealer::new(&SECRET).open(&announce(&SECRET)).expect("opens");
    for round in 0..3000 {
        let packet: Vec<u8> = if round % 2 == 0 {
            (0..rng.gen_range(0..MAX_PLAINTEXT)).map(|_| rng.r#gen()).collect()
        } else {
            let mut p = genuine.clone();
            let at = rng.gen_range(0..p.len());
            p[at] = rng.r#gen();
            p
        };
        let datagram = sealer.seal(&packet, rng.r#gen()).expect("fits");
        node.handle_datagram(Duration::ZERO, addr(1), &datagram);
        while node.poll_output().is_some() {}
    }
    assert_eq!(node.stats().dropped_bad_seal, 0);
    assert!(node.stats().dropped_malformed > 0);
}
