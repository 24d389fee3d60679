//! Invariant: every live peer reports a crashed node OFFLINE within the configured bound, a
//! paused node that resumes within its tolerance is never reported OFFLINE, and a restarted
//! node is HEALTHY again everywhere.

use std::time::Duration;

use falak_membership::{Health, MembershipConfig, MembershipEvent};

use crate::sim::{Sim, node_id};

const SEEDS: u64 = 50;
const SIZE: usize = 5;

fn victim(seed: u64) -> usize {
    1 + usize::try_from(seed).expect("small seed") % (SIZE - 1)
}

#[test]
fn five_nodes_converge_to_all_healthy() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, SIZE, MembershipConfig::lan());
        for node in 1..SIZE {
            sim.join(node, 0);
        }
        let converged = sim.run_until_true(Duration::from_secs(2), Sim::all_healthy);
        assert!(converged.is_some(), "seed {seed}: not all healthy after 2 s");
    }
}

#[test]
fn crash_is_offline_on_every_peer_within_the_bound() {
    let config = MembershipConfig::lan();
    // Worst case: the probe that finds the dead node, then the suspicion window, then a few
    // gossip rounds to spread the verdict.
    let bound = config.probe_period * 3 + config.suspect_to_offline + config.gossip_interval * 4;
    let mut latencies = Vec::new();
    for seed in 0..SEEDS {
        let mut sim = Sim::joined(seed, SIZE, config.clone(), Duration::from_secs(2));
        assert!(sim.all_healthy(), "seed {seed}: did not converge");
        let (victim, crashed_at) = (victim(seed), sim.now);
        sim.crash(victim);
        sim.run_for(bound + Duration::from_secs(1));
        for peer in (0..SIZE).filter(|&p| p != victim) {
            let at = sim.first_event(peer, MembershipEvent::Offline(node_id(victim)), crashed_at);
            let at = at.unwrap_or_else(|| panic!("seed {seed}: node {peer} never saw {victim} offline"));
            let latency = at - crashed_at;
            assert!(latency <= bound, "seed {seed}: node {peer} took {latency:?} (bound {bound:?})");
            latencies.push(latency);
        }
    }
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    assert!(p50 <= Duration::from_millis(1500), "p50 detection {p50:?} over 1.5 s");
}

#[test]
fn pause_within_tolerance_is_never_offline() {
    for config in [MembershipConfig::lan(), MembershipConfig::pause_tolerant()] {
        let pause = config.tolerated_pause();
        for seed in 0..SEEDS / 2 {
            let mut sim = Sim::joined(seed, SIZE, config.clone(), Duration::from_secs(2));
            let (victim, paused_at) = (victim(seed), sim.now);
            sim.pause(victim);
            sim.run_for(pause);
            sim.resume(victim);
            sim.run_for(Duration::from_secs(3));
            for peer in (0..SIZE).filter(|&p| p != victim) {
                let offline = sim.first_event(peer, MembershipEvent::Offline(node_id(victim)), paused_at);
                assert_eq!(offline, None, "seed {seed}: {pause:?} pause reported offline by node {peer}");
            }
            assert!(sim.all_healthy(), "seed {seed}: not all healthy after the pause");
            assert_eq!(sim.nodes[victim].core.stats().rejoins, 0, "seed {seed}: paused node had to rejoin");
        }
    }
}

#[test]
fn long_pause_is_offline_then_healthy_again_under_a_new_generation() {
    for seed in 0..SEEDS / 2 {
        let mut sim = Sim::joined(seed, SIZE, MembershipConfig::lan(), Duration::from_secs(2));
        let (victim, paused_at) = (victim(seed), sim.now);
        sim.pause(victim);
        sim.run_for(Duration::from_secs(3));
        for peer in (0..SIZE).filter(|&p| p != victim) {
            assert!(sim.sees(peer, victim, Health::Offline), "seed {seed}: node {peer} missed the offline node");
        }
        sim.resume(victim);
        let healed = sim.run_until_true(Duration::from_secs(3), Sim::all_healthy);
        assert!(healed.is_some(), "seed {seed}: resumed node did not come back");
        assert!(sim.nodes[victim].core.identity().generation > 1, "seed {seed}: no new generation");
        assert!(sim.first_event(0, MembershipEvent::Offline(node_id(victim)), paused_at).is_some());
    }
}

#[test]
fn restarted_node_is_healthy_again_everywhere() {
    for seed in 0..SEEDS {
        let mut sim = Sim::joined(seed, SIZE, MembershipConfig::lan(), Duration::from_secs(2));
        let victim = victim(seed);
        sim.crash(victim);
        sim.run_for(Duration::from_secs(3));
        let restarted_at = sim.now;
        sim.restart(victim, 2, 0);
        let healed = sim.run_until_true(Duration::from_secs(2), Sim::all_healthy);
        assert!(healed.is_some(), "seed {seed}: restarted node not healthy everywhere within 2 s");
        for peer in (0..SIZE).filter(|&p| p != victim) {
            let view = sim.nodes[peer].core.view();
            let entry = view.iter().find(|v| v.id == node_id(victim)).expect("in view");
            assert_eq!(entry.generation, 2, "seed {seed}: node {peer} kept the old generation");
            assert!(sim.first_event(peer, MembershipEvent::Healthy(node_id(victim)), restarted_at).is_some());
        }
    }
}

#[test]
fn fast_restart_before_detection_reports_the_old_run_offline() {
    for seed in 0..SEEDS / 2 {
        let mut sim = Sim::joined(seed, SIZE, MembershipConfig::lan(), Duration::from_secs(2));
        let (victim, crashed_at) = (victim(seed), sim.now);
        sim.crash(victim);
        sim.run_for(Duration::from_millis(50));
        sim.restart(victim, 2, 0);
        let healed = sim.run_until_true(Duration::from_secs(3), |s| {
            s.all_healthy() && (0..SIZE).all(|p| p == victim || generation_seen(s, p, victim) == Some(2))
        });
        assert!(healed.is_some(), "seed {seed}: restarted node not back");
        for peer in (0..SIZE).filter(|&p| p != victim) {
            // Whatever the old run held is gone, so consumers must hear about it.
            let offline = sim.first_event(peer, MembershipEvent::Offline(node_id(victim)), crashed_at);
            assert!(offline.is_some(), "seed {seed}: node {peer} never reported the old run offline");
        }
    }
}

#[test]
fn same_seed_replays_the_same_history() {
    let run = |seed| {
        let mut sim = Sim::joined(seed, SIZE, MembershipConfig::lan(), Duration::from_secs(2));
        sim.loss = 0.05;
        sim.crash(victim(seed));
        sim.run_for(Duration::from_secs(3));
        sim.nodes.iter().map(|n| n.events.clone()).collect::<Vec<_>>()
    };
    for seed in 0..5 {
        assert_eq!(run(seed), run(seed), "seed {seed} is not deterministic");
    }
}

#[test]
fn lossy_network_still_detects_and_keeps_live_nodes_healthy() {
    for seed in 0..SEEDS / 2 {
        let mut sim = Sim::joined(seed, SIZE, MembershipConfig::lan(), Duration::from_secs(2));
        sim.loss = 0.05;
        let (victim, crashed_at) = (victim(seed), sim.now);
        sim.crash(victim);
        sim.run_for(Duration::from_secs(4));
        for peer in (0..SIZE).filter(|&p| p != victim) {
            assert!(sim.sees(peer, victim, Health::Offline), "seed {seed}: node {peer} missed the crash");
            for other in (0..SIZE).filter(|&o| o != victim && o != peer) {
                let false_offline = sim.first_event(peer, MembershipEvent::Offline(node_id(other)), crashed_at);
                assert_eq!(false_offline, None, "seed {seed}: 5% loss made node {peer} drop live node {other}");
            }
        }
    }
}

fn generation_seen(sim: &Sim, observer: usize, subject: usize) -> Option<u64> {
    sim.nodes[observer].core.view().iter().find(|v| v.id == node_id(subject)).map(|v| v.generation)
}
