//! Invariant: every node's latest gossip state reaches every live node, and an older state
//! never replaces a newer one (the simulation asserts the latter on every `Gossip` event).

use std::time::Duration;

use falak_membership::MembershipConfig;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::sim::{Sim, gossip, node_id};

const SIZE: usize = 5;

/// Whether every live node's view holds `expected[subject]` as the version of every other node.
fn all_see(sim: &Sim, expected: &[(u64, u64)]) -> bool {
    (0..SIZE).filter(|&o| sim.nodes[o].up).all(|observer| {
        let view = sim.nodes[observer].core.view();
        (0..SIZE).filter(|&s| s != observer && sim.nodes[s].up).all(|subject| {
            view.iter()
                .find(|v| v.id == node_id(subject))
                .is_some_and(|v| v.gossip.as_ref().map(|g| (v.generation, g.version)) == Some(expected[subject]))
        })
    })
}

#[test]
fn latest_gossip_reaches_everyone_and_never_goes_back() {
    for seed in 0..50 {
        let mut sim = Sim::joined(seed, SIZE, MembershipConfig::lan(), Duration::from_secs(2));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut versions = [0u64; SIZE];
        // Bursts of updates from random nodes, some faster than dissemination.
        for _ in 0..30 {
            let node = rng.gen_range(0..SIZE);
            versions[node] += rng.gen_range(1..3);
            sim.set_gossip(node, gossip(versions[node], u32::try_from(versions[node]).expect("small")));
            sim.run_for(Duration::from_millis(rng.gen_range(0..80)));
        }
        let expected: Vec<(u64, u64)> = versions.iter().map(|&v| (1, v)).collect();
        let done = sim.run_until_true(Duration::from_secs(2), |s| all_see(s, &expected));
        assert!(done.is_some(), "seed {seed}: latest gossip did not reach everyone within 2 s");
    }
}

#[test]
fn late_joiner_learns_existing_gossip() {
    for seed in 0..20 {
        let mut sim = Sim::new(seed, SIZE, MembershipConfig::lan());
        for node in 1..SIZE - 1 {
            sim.join(node, 0);
        }
        sim.run_for(Duration::from_secs(1));
        for node in 0..SIZE - 1 {
            sim.set_gossip(node, gossip(7, 1));
        }
        // Long enough for every update to exhaust its transmissions.
        sim.run_for(Duration::from_secs(3));
        sim.set_gossip(SIZE - 1, gossip(1, 1));
        sim.join(SIZE - 1, 2);
        let mut expected = vec![(1, 7); SIZE];
        expected[SIZE - 1] = (1, 1);
        let done = sim.run_until_true(Duration::from_secs(2), |s| all_see(s, &expected));
        if done.is_none() {
            for o in 0..SIZE {
                let v: Vec<_> = sim.nodes[o]
                    .core
                    .view()
                    .iter()
                    .map(|v| (v.id, v.health, v.generation, v.gossip.as_ref().map(|g| g.version)))
                    .collect();
                eprintln!("node {o}: {v:?}");
            }
        }
        assert!(done.is_some(), "seed {seed}: late joiner did not learn the mesh's gossip");
    }
}

#[test]
fn restarted_node_gossip_wins_despite_a_lower_version() {
    for seed in 0..20 {
        let mut sim = Sim::joined(seed, SIZE, MembershipConfig::lan(), Duration::from_secs(2));
        for node in 0..SIZE {
            sim.set_gossip(node, gossip(50, 0));
        }
        sim.run_for(Duration::from_secs(1));
        sim.crash(3);
        sim.run_for(Duration::from_secs(2));
        sim.restart(3, 2, 0);
        sim.set_gossip(3, gossip(1, 9));
        let mut expected = vec![(1, 50); SIZE];
        expected[3] = (2, 1);
        let done = sim.run_until_true(Duration::from_secs(2), |s| all_see(s, &expected));
        assert!(done.is_some(), "seed {seed}: restarted node's fresh gossip did not replace the old run's");
    }
}
