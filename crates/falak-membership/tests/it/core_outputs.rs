//! The core fed one input at a time, with the exact outputs asserted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use falak_core::gossip::GossipState;
use falak_membership::gossip::MAX_GOSSIP_BYTES;
use falak_membership::{
    CreateMembershipError, Health, JoinError, MemberIdentity, Membership, MembershipConfig, MembershipEvent, Output,
    PublishGossipError,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::sim::{SECRET, addr, gossip, node_id};

fn core(index: usize) -> Membership {
    let identity = MemberIdentity::new(node_id(index), addr(index), 1);
    Membership::new(identity, &SECRET, MembershipConfig::lan(), ChaCha8Rng::seed_from_u64(index as u64))
        .expect("valid core")
}

fn drain(core: &mut Membership) -> Vec<Output> {
    std::iter::from_fn(|| core.poll_output()).collect()
}

fn sends(outputs: &[Output]) -> Vec<(SocketAddr, Bytes)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { to, bytes } => Some((*to, bytes.clone())),
            _ => None,
        })
        .collect()
}

fn events(outputs: &[Output]) -> Vec<MembershipEvent> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(*e),
            _ => None,
        })
        .collect()
}

/// Delivers datagrams between cores (timers ignored) until none are left; returns every
/// datagram delivered, by receiver, and every event, by node.
fn pump(
    cores: &mut [Membership],
    mut inflight: Vec<(SocketAddr, SocketAddr, Bytes)>,
) -> (BTreeMap<usize, Vec<Bytes>>, BTreeMap<usize, Vec<MembershipEvent>>) {
    let (mut delivered, mut seen) = (BTreeMap::<usize, Vec<Bytes>>::new(), BTreeMap::<usize, Vec<_>>::new());
    while let Some((from, to, bytes)) = inflight.pop() {
        let Some(index) = (0..cores.len()).find(|&i| addr(i) == to) else { continue };
        cores[index].handle_datagram(Duration::ZERO, from, &bytes);
        delivered.entry(index).or_default().push(bytes);
        let outputs = drain(&mut cores[index]);
        seen.entry(index).or_default().extend(events(&outputs));
        inflight.extend(sends(&outputs).into_iter().map(|(dst, b)| (to, dst, b)));
    }
    (delivered, seen)
}

#[test]
fn join_announces_to_the_seed_and_arms_the_rejoin_timer() {
    let mut a = core(0);
    a.join(Duration::ZERO, addr(1)).expect("join");
    let outputs = drain(&mut a);
    assert_eq!(outputs.len(), 2, "{outputs:?}");
    assert!(matches!(&outputs[0], Output::Schedule { after, .. } if *after == MembershipConfig::lan().rejoin_interval));
    assert!(matches!(&outputs[1], Output::Send { to, bytes } if *to == addr(1) && bytes.len() <= 1400));
}

#[test]
fn announce_to_an_unknown_node_id_is_answered_and_both_become_healthy() {
    let mut cores = vec![core(0), core(1)];
    cores[0].join(Duration::ZERO, addr(1)).expect("join");
    let first = sends(&drain(&mut cores[0]));
    let (_, seen) = pump(&mut cores, first.into_iter().map(|(to, b)| (addr(0), to, b)).collect());
    assert_eq!(seen[&1], vec![MembershipEvent::Healthy(node_id(0))]);
    assert_eq!(seen[&0], vec![MembershipEvent::Healthy(node_id(1))]);
    assert_eq!(cores[0].health(&node_id(1)), Some(Health::Healthy));
    assert_eq!(cores[1].view()[0].addr, addr(0));
}

#[test]
fn leaving_node_is_offline_at_its_peer_at_once() {
    let mut cores = vec![core(0), core(1)];
    cores[0].join(Duration::ZERO, addr(1)).expect("join");
    let first = sends(&drain(&mut cores[0]));
    pump(&mut cores, first.into_iter().map(|(to, b)| (addr(0), to, b)).collect());
    cores[0].leave(Duration::from_secs(1));
    let goodbye = sends(&drain(&mut cores[0]));
    let (_, seen) = pump(&mut cores, goodbye.into_iter().map(|(to, b)| (addr(0), to, b)).collect());
    assert_eq!(seen[&1], vec![MembershipEvent::Offline(node_id(0))]);
    assert!(matches!(cores[0].join(Duration::from_secs(2), addr(1)), Err(JoinError::Left)));
}

#[test]
fn replayed_old_gossip_never_replaces_newer() {
    let mut cores = vec![core(0), core(1)];
    cores[0].join(Duration::ZERO, addr(1)).expect("join");
    let first = sends(&drain(&mut cores[0]));
    pump(&mut cores, first.into_iter().map(|(to, b)| (addr(0), to, b)).collect());

    cores[0].set_local_gossip(Duration::ZERO, gossip(1, 10)).expect("v1");
    let v1 = sends(&drain(&mut cores[0]));
    let (delivered, _) = pump(&mut cores, v1.into_iter().map(|(to, b)| (addr(0), to, b)).collect());
    cores[0].set_local_gossip(Duration::ZERO, gossip(2, 20)).expect("v2");
    let v2 = sends(&drain(&mut cores[0]));
    pump(&mut cores, v2.into_iter().map(|(to, b)| (addr(0), to, b)).collect());
    assert_eq!(cores[1].view()[0].gossip.as_ref().map(|g| g.version), Some(2));

    // An attacker (or a slow network) replays the datagrams that carried version 1.
    let stale_before = cores[1].stats().gossip_stale;
    let replay: Vec<_> = delivered[&1].iter().map(|b| (addr(0), addr(1), b.clone())).collect();
    let (_, seen) = pump(&mut cores, replay);
    assert_eq!(cores[1].view()[0].gossip.as_ref().map(|g| (g.version, g.running)), Some((2, 20)));
    assert!(!seen.get(&1).is_some_and(|e| e.contains(&MembershipEvent::Gossip(node_id(0)))));
    assert!(cores[1].stats().gossip_stale > stale_before);
}

#[test]
fn refused_inputs_name_the_problem_and_change_nothing() {
    let mut a = core(0);
    assert!(matches!(a.join(Duration::ZERO, addr(0)), Err(JoinError::OwnAddress(_))));
    a.set_local_gossip(Duration::ZERO, gossip(5, 1)).expect("first state");
    assert!(matches!(
        a.set_local_gossip(Duration::ZERO, gossip(5, 2)),
        Err(PublishGossipError::StaleVersion { given: 5, published: 5 })
    ));
    let unknown = GossipState { format: 99, ..gossip(6, 1) };
    assert!(matches!(
        a.set_local_gossip(Duration::ZERO, unknown),
        Err(PublishGossipError::UnknownFormat { given: 99 })
    ));
    let huge = GossipState { api_url: "x".repeat(MAX_GOSSIP_BYTES), ..gossip(7, 1) };
    assert!(matches!(a.set_local_gossip(Duration::ZERO, huge), Err(PublishGossipError::TooLarge { .. })));
    assert_eq!(a.local_gossip().map(|g| (g.version, g.running)), Some((5, 1)));

    let placeholder = MemberIdentity::new(falak_core::NodeId([0; 32]), addr(0), 1);
    let refused = Membership::new(placeholder, &SECRET, MembershipConfig::lan(), ChaCha8Rng::seed_from_u64(0));
    assert!(matches!(refused, Err(CreateMembershipError::PlaceholderNodeId)));
}

#[test]
fn largest_allowed_gossip_still_travels() {
    let mut cores = vec![core(0), core(1)];
    cores[0].join(Duration::ZERO, addr(1)).expect("join");
    let first = sends(&drain(&mut cores[0]));
    pump(&mut cores, first.into_iter().map(|(to, b)| (addr(0), to, b)).collect());
    // Grow the state to just under the limit.
    let mut state = gossip(1, 1);
    let base = postcard::to_stdvec(&state).expect("encodes").len();
    state.api_url = "u".repeat(MAX_GOSSIP_BYTES - base - 80);
    cores[0].set_local_gossip(Duration::ZERO, state.clone()).expect("fits");
    let out = sends(&drain(&mut cores[0]));
    assert!(out.iter().all(|(_, b)| b.len() <= 1400));
    pump(&mut cores, out.into_iter().map(|(to, b)| (addr(0), to, b)).collect());
    assert_eq!(cores[1].view()[0].gossip.as_ref(), Some(&state));
}
