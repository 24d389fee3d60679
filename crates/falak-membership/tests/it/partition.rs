//! Invariant: a partition makes each side see the other OFFLINE, and once it heals every node
//! sees every other HEALTHY again without outside help.

use std::time::Duration;

use falak_membership::{Health, MembershipConfig};

use crate::sim::Sim;

#[test]
fn partition_heals_to_all_healthy() {
    for seed in 0..20 {
        let mut sim = Sim::joined(seed, 5, MembershipConfig::lan(), Duration::from_secs(2));
        sim.partition(&[0, 1]);
        sim.run_for(Duration::from_secs(4));
        for (a, b) in [(0, 2), (1, 4), (3, 0), (4, 1)] {
            assert!(sim.sees(a, b, Health::Offline), "seed {seed}: {a} still sees {b} across the partition");
        }
        assert!(sim.sees(0, 1, Health::Healthy) && sim.sees(2, 4, Health::Healthy), "seed {seed}: a side split");
        sim.heal();
        let healed = sim.run_until_true(Duration::from_secs(5), Sim::all_healthy);
        assert!(healed.is_some(), "seed {seed}: partition did not heal within 5 s");
    }
}
