//! Placement properties: determinism, the best candidate wins, spread, fit reasons.

use std::collections::BTreeMap;

use falak_core::job::{JobId, TaskId};
use falak_core::placement::{Demand, Health, NoFit, NodeView, Strategy, fit, solve};
use falak_core::resources::Resources;
use proptest::prelude::*;

use crate::fixtures::node_id;

fn view(n: u8, cpu: u64) -> NodeView {
    NodeView {
        id: node_id(n),
        name: format!("node-{n}"),
        labels: BTreeMap::from([("zone".into(), format!("z{}", n % 2))]),
        capacity: Resources::new(cpu, 8 << 30),
        reserved: Resources::ZERO,
        health: Health::Healthy,
        tasks: 0,
        rtt_micros: None,
        completed: 0,
        failed: 0,
        cost_per_hour: f64::from(n),
        warm: false,
    }
}

fn demand(strategy: Strategy) -> Demand {
    Demand { resources: Resources::new(100, 32 << 20), labels: BTreeMap::new(), prefer: BTreeMap::new(), strategy }
}

fn tasks(n: u32, strategy: Strategy) -> Vec<(TaskId, Demand)> {
    (0..n).map(|i| (TaskId { job: JobId(1), index: i }, demand(strategy))).collect()
}

fn winners(rankings: &[falak_core::placement::Ranking]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in rankings.iter().filter(|r| r.fitting > 0) {
        *out.entry(r.candidates[0].name.clone()).or_insert(0) += 1;
    }
    out
}

#[test]
fn balanced_spreads_a_batch_across_equal_nodes() {
    let mut nodes = [view(1, 4000), view(2, 4000), view(3, 4000)];
    nodes.iter_mut().for_each(|n| n.cost_per_hour = 1.0);
    let plan = solve(&tasks(30, Strategy::Balanced), &nodes);
    let counts = winners(&plan);
    assert_eq!(counts.len(), 3);
    assert!(counts.values().all(|c| (9..=11).contains(c)), "{counts:?}");
}

#[test]
fn binpack_fills_one_node_first() {
    let nodes = [view(1, 4000), view(2, 4000)];
    let plan = solve(&tasks(10, Strategy::Binpack), &nodes);
    assert_eq!(winners(&plan).len(), 1);
}

#[test]
fn cheapest_prefers_low_cost() {
    let nodes = [view(3, 4000), view(1, 4000), view(2, 4000)];
    let plan = solve(&tasks(1, Strategy::Cheapest), &nodes);
    assert_eq!(plan[0].candidates[0].name, "node-1");
}

#[test]
fn labels_and_capacity_exclude_with_reasons() {
    let mut d = demand(Strategy::Balanced);
    d.labels.insert("zone".into(), "z1".into());
    let err = fit(&view(2, 4000), &d, Resources::ZERO).unwrap_err();
    assert_eq!(err.to_string(), "label zone=z1 required, node has z0");
    let big = Demand { resources: Resources::new(8000, 0), ..demand(Strategy::Balanced) };
    assert!(matches!(fit(&view(1, 4000), &big, Resources::ZERO), Err(NoFit::NeverFits { .. })));
    let mut down = view(1, 4000);
    down.health = Health::Suspect;
    assert_eq!(fit(&down, &demand(Strategy::Balanced), Resources::ZERO).unwrap_err().to_string(), "node is SUSPECT");
}

#[test]
fn nothing_fits_means_no_winner_and_every_reason_listed() {
    let big = vec![(
        TaskId { job: JobId(1), index: 0 },
        Demand { resources: Resources::new(64_000, 0), ..demand(Strategy::Balanced) },
    )];
    let plan = solve(&big, &[view(1, 4000), view(2, 4000)]);
    assert_eq!(plan[0].fitting, 0);
    assert!(plan[0].candidates.iter().all(|c| c.no_fit.is_some()));
}

#[test]
fn planning_respects_capacity_within_a_batch() {
    // 1 core per node, 100m per task: at most 10 tasks fit per node.
    let plan = solve(&tasks(25, Strategy::Binpack), &[view(1, 1000), view(2, 1000)]);
    let counts = winners(&plan);
    assert!(counts.values().all(|c| *c <= 10), "{counts:?}");
    assert_eq!(plan.iter().filter(|r| r.fitting == 0).count(), 5);
}

proptest! {
    #[test]
    fn solve_is_deterministic_and_order_of_nodes_does_not_matter(cpus in proptest::collection::vec(500u64..8000, 1..6), n in 1u32..40) {
        let nodes: Vec<NodeView> = cpus.iter().enumerate().map(|(i, c)| view(i as u8 + 1, *c)).collect();
        let mut reversed = nodes.clone();
        reversed.reverse();
        let a = solve(&tasks(n, Strategy::Balanced), &nodes);
        let b = solve(&tasks(n, Strategy::Balanced), &reversed);
        let pick = |p: &[falak_core::placement::Ranking]| p.iter().map(|r| (r.fitting > 0).then(|| r.candidates[0].node)).collect::<Vec<_>>();
        prop_assert_eq!(pick(&a), pick(&b));
    }

    #[test]
    fn the_winner_has_the_highest_gravity_among_fitting(cpus in proptest::collection::vec(500u64..8000, 1..6)) {
        let nodes: Vec<NodeView> = cpus.iter().enumerate().map(|(i, c)| view(i as u8 + 1, *c)).collect();
        let plan = solve(&tasks(1, Strategy::Balanced), &nodes);
        let r = &plan[0];
        for c in &r.candidates[..r.fitting] {
            prop_assert!(r.candidates[0].gravity >= c.gravity);
        }
    }
}
