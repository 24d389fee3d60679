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

/// One genuine packet of every SWIM message type, as foca would put it on the wire (header,
/// then member updates or a gossip broadcast), sealed under the mesh key from node 1 to node 0.
fn every_message_type() -> Vec<(&'static str, Vec<u8>)> {
    use bytes::BufMut;
    use falak_core::gossip::{GOSSIP_FORMAT, GossipState};
    use falak_membership::gossip::{GOSSIP_UPDATE_FORMAT, GossipUpdate};
    use falak_membership::identity::FalakCodec;
    use foca::{Codec, Header, Member, Message};

    let (from, to, third) = (
        MemberIdentity::new(node_id(1), addr(1), 1),
        MemberIdentity::new(node_id(0), addr(0), 1),
        MemberIdentity::new(node_id(2), addr(2), 1),
    );
    let messages = [
        ("ping", Message::Ping(7)),
        ("ack", Message::Ack(7)),
        ("ping-req", Message::PingReq { target: third.clone(), probe_number: 7 }),
        ("indirect-ping", Message::IndirectPing { origin: third.clone(), probe_number: 7 }),
        ("indirect-ack", Message::IndirectAck { target: third.clone(), probe_number: 7 }),
        ("forwarded-ack", Message::ForwardedAck { origin: third.clone(), probe_number: 7 }),
        ("announce", Message::Announce),
        ("feed", Message::Feed),
        ("gossip", Message::Gossip),
        ("broadcast", Message::Broadcast),
        ("turn-undead", Message::TurnUndead),
    ];
    let sealer = Sealer::new(&SECRET);
    let mut codec = FalakCodec::new(from.node);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    messages
        .into_iter()
        .map(|(name, message)| {
            let mut packet = Vec::new();
            let kind = message.clone();
            let header = Header { src: from.clone(), src_incarnation: 0, dst: to.clone(), message };
            codec.encode_header(&header, &mut packet).expect("encodes");
            match kind {
                Message::Announce | Message::TurnUndead => {}
                Message::Broadcast => {
                    let state = GossipState { format: GOSSIP_FORMAT, version: 3, ..GossipState::default() };
                    let update = GossipUpdate { format: GOSSIP_UPDATE_FORMAT, node: from.node, generation: 1, state };
                    packet.extend(update.encode().expect("encodes"));
                }
                _ => {
                    packet.put_u16(1);
                    codec.encode_member(&Member::alive(third.clone()), &mut packet).expect("encodes");
                }
            }
            (name, sealer.seal(&packet, rng.r#gen()).expect("fits"))
        })
        .collect()
}

/// Flips a bit, overwrites, inserts, deletes or truncates bytes; never returns the input.
pub(crate) fn mutate(rng: &mut ChaCha8Rng, genuine: &[u8]) -> Vec<u8> {
    loop {
        let mut bytes = genuine.to_vec();
        let at = rng.gen_range(0..bytes.len());
        match rng.gen_range(0..5) {
            0 => bytes[at] ^= 1 << rng.gen_range(0..8),
            1 => bytes[at] = rng.r#gen(),
            2 => bytes.insert(at, rng.r#gen()),
            3 => drop(bytes.drain(at..(at + rng.gen_range(1..8)).min(bytes.len()))),
            _ => bytes.truncate(at),
        }
        if bytes != genuine {
            return bytes;
        }
    }
}

/// Must-show: 1,000 mutated packets of every SWIM message type are all rejected, by the seal.
///
/// The layer that rejects them is the AEAD (XChaCha20-Poly1305, the format byte bound in as
/// associated data): `Sealer::open` refuses every one, so none reaches foca's decoder, and the
/// core counts each as dropped (bad seal, truncated, unknown format), never as malformed.
#[test]
fn a_thousand_mutations_of_every_message_type_are_all_refused_by_the_seal() {
    let sealer = Sealer::new(&SECRET);
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed);
    for (name, genuine) in every_message_type() {
        assert!(sealer.open(&genuine).is_ok(), "the genuine {name} opens");
        let mut node = core(0, &SECRET);
        while node.poll_output().is_some() {}
        for _ in 0..1000 {
            let mutated = mutate(&mut rng, &genuine);
            assert!(sealer.open(&mutated).is_err(), "a mutated {name} opened: {mutated:?}");
            node.handle_datagram(Duration::ZERO, addr(1), &mutated);
        }
        let stats = node.stats();
        let refused = stats.dropped_bad_seal + stats.dropped_truncated + stats.dropped_unknown_format;
        assert_eq!((refused, stats.dropped_malformed), (1000, 0), "{name}: {stats:?}");
        assert!(node.view().is_empty(), "{name}: a mutated packet changed the view");
        assert_eq!(node.poll_output(), None, "{name}: a mutated packet caused output");
        // The genuine packet still gets through, so the core was listening all along.
        node.handle_datagram(Duration::ZERO, addr(1), &genuine);
        assert_eq!(node.stats().datagrams_received, 1001);
    }
}
