//! Placement properties: determinism, the best candidate wins, spread, fit reasons.

use std::collections::BTreeMap;

use falak_core::capsule::NetworkMode;
use falak_core::job::{JobId, TaskId};
use falak_core::node::Namespaces;
use falak_core::placement::{Demand, Health, NoFit, NodeView, Strategy, check_isolation, fit, gravity, solve};
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
        holds: Default::default(),
        namespaces: Some(Namespaces::User),
    }
}

fn demand(strategy: Strategy) -> Demand {
    Demand {
        resources: Resources::new(100, 32 << 20),
        labels: BTreeMap::new(),
        prefer: BTreeMap::new(),
        strategy,
        network: NetworkMode::None,
        code: None,
    }
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

/// `view(n)` that declared `namespaces`.
fn declaring(n: u8, namespaces: Option<Namespaces>) -> NodeView {
    NodeView { namespaces, ..view(n, 4000) }
}

#[test]
fn a_private_network_needs_a_node_that_can_create_namespaces() {
    let none = demand(Strategy::Balanced);
    let host = Demand { network: NetworkMode::Host, ..demand(Strategy::Balanced) };
    let unable = declaring(1, Some(Namespaces::Unavailable));
    let err = fit(&unable, &none, Resources::ZERO).unwrap_err();
    assert_eq!(err, NoFit::NoNetworkNamespace);
    assert_eq!(err.to_string(), "needs a network of its own (network: none), node cannot create namespaces");
    // The host's network needs no namespace: the node without them still takes that work.
    assert_eq!(fit(&unable, &host, Resources::ZERO), Ok(()));
    for able in [Some(Namespaces::Privileged), Some(Namespaces::User), None] {
        assert_eq!(fit(&declaring(1, able), &none, Resources::ZERO), Ok(()), "{able:?}");
    }
    // Among a node that can and one that cannot, every task goes to the one that can, and the
    // other's reason is listed for `falak explain`.
    let plan = solve(&tasks(6, Strategy::Spread), &[unable, declaring(2, Some(Namespaces::Privileged))]);
    assert_eq!(winners(&plan), BTreeMap::from([("node-2".to_owned(), 6)]));
    let loser = plan[0].candidates.iter().find(|c| c.name == "node-1").unwrap();
    assert_eq!(loser.no_fit, Some(NoFit::NoNetworkNamespace));
}

#[test]
fn a_submission_is_refused_only_when_no_live_node_can_give_its_network() {
    let none = demand(Strategy::Balanced);
    let check = |nodes: &[NodeView]| check_isolation("c", 2, &none, nodes);
    let unable = |n| declaring(n, Some(Namespaces::Unavailable));
    let refused = check(&[unable(1), unable(2)]).unwrap_err();
    assert_eq!((refused.unable.clone(), refused.offline.clone()), (vec!["node-1".into(), "node-2".into()], vec![]));
    expect_test::expect![[r#"
        capsule c v2 asks for a network of its own (network: none, the default), but none of the nodes that are up and could run it can create network namespaces (node-1, node-2: namespaces unavailable; each node's log says why); nothing was written. To run it, let the nodes create namespaces and restart them (allow unprivileged user namespaces: sysctl user.max_user_namespaces above 0, e.g. `sysctl -w user.max_user_namespaces=15000`, and where they exist kernel.unprivileged_userns_clone=1 and kernel.apparmor_restrict_unprivileged_userns=0; or run the nodes as root), or add a node that can; or, if the workload may share its node's network, set `network: host` in the capsule and apply it again"#]]
    .assert_eq(&refused.to_string());

    // One node that can is enough, even SUSPECT, or one that never said (an older node).
    let mut suspect = declaring(3, Some(Namespaces::Privileged));
    suspect.health = Health::Suspect;
    assert_eq!(check(&[unable(1), suspect]), Ok(()));
    assert_eq!(check(&[unable(1), declaring(3, None)]), Ok(()));
    // The host's network needs none.
    let host = Demand { network: NetworkMode::Host, ..demand(Strategy::Balanced) };
    assert_eq!(check_isolation("c", 2, &host, &[unable(1)]), Ok(()));

    // An OFFLINE node that could does not count, but the error names it.
    let mut offline = declaring(3, Some(Namespaces::User));
    offline.health = Health::Offline;
    let refused = check(&[unable(1), offline]).unwrap_err();
    assert_eq!(refused.offline, vec!["node-3".to_owned()]);
    assert!(refused.to_string().contains("(node-1: namespaces unavailable; each node's log says why); node-3 could, but it is OFFLINE; nothing was written"), "{refused}");

    // Only the nodes that carry the capsule's labels count (`view` puts odd nodes in zone z1).
    let mut zoned = demand(Strategy::Balanced);
    zoned.labels.insert("zone".into(), "z1".into());
    let refused = check_isolation("c", 2, &zoned, &[unable(1), declaring(2, Some(Namespaces::User))]).unwrap_err();
    assert_eq!(refused.unable, vec!["node-1".to_owned()]);
    // With no live node that carries them at all, the work waits as any work nothing fits.
    assert_eq!(check_isolation("c", 2, &zoned, &[declaring(2, Some(Namespaces::User))]), Ok(()));
    assert_eq!(check(&[]), Ok(()));
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

#[test]
fn a_node_that_holds_the_capsule_s_code_is_warm_and_ranks_higher() {
    let cold = view(1, 4000);
    let mut warm = view(2, 4000);
    warm.cost_per_hour = cold.cost_per_hour;
    warm.labels = cold.labels.clone();
    warm.holds.insert("00aa11bb22cc33dd".into());
    let wanting = Demand { code: Some("00aa11bb22cc33dd".into()), ..demand(Strategy::Balanced) };
    let warmth = |n: &NodeView, d: &Demand| {
        gravity(n, d, Resources::ZERO, 0, 2.0).1.into_iter().find(|t| t.name == "warmth").unwrap().value
    };
    assert_eq!((warmth(&warm, &wanting), warmth(&cold, &wanting)), (1.0, 0.0));
    assert_eq!(warmth(&warm, &demand(Strategy::Balanced)), 0.0, "a capsule without code warms no node");
    assert!(gravity(&warm, &wanting, Resources::ZERO, 0, 2.0).0 > gravity(&cold, &wanting, Resources::ZERO, 0, 2.0).0);
}
