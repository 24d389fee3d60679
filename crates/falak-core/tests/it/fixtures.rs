//! Builders shared by the tests.

use std::collections::BTreeMap;

use falak_core::NodeId;
use falak_core::capsule::CapsuleDocument;
use falak_core::job::{Delivery, JobRequest, TaskId, TaskInputs};
use falak_core::ledger::{Command, Outcome, State};
use falak_core::node::NodeRecord;
use falak_core::placement::{Decision, Strategy};
use falak_core::resources::Resources;

pub fn node_id(n: u8) -> NodeId {
    NodeId([n; 32])
}

pub fn record(n: u8, capacity: Resources) -> NodeRecord {
    NodeRecord {
        id: node_id(n),
        name: format!("node-{n}"),
        labels: BTreeMap::from([("zone".to_owned(), format!("z{}", n % 2))]),
        capacity,
        cost_per_hour: f64::from(n),
        transport_addr: format!("127.0.0.1:{}", 7000 + u16::from(n)),
        gossip_addr: format!("127.0.0.1:{}", 7100 + u16::from(n)),
        api_url: format!("http://127.0.0.1:{}", 7200 + u16::from(n)),
        namespaces: None,
    }
}

pub fn capsule(name: &str, cpu: &str, attempts: u32) -> Command {
    let text = format!(
        "name: {name}\nkind: process\ncommand: [/bin/true]\nresources: {{ cpu: {cpu}, memory: 32Mi }}\nplacement: {{ max_attempts: {attempts} }}"
    );
    Command::signed_capsule(CapsuleDocument::parse(&text).unwrap(), &falak_core::signing::deployer_for_tests().0, 1)
}

pub fn job(capsule: &str, tasks: u32) -> Command {
    Command::SubmitJob {
        request: JobRequest {
            capsule: capsule.into(),
            version: None,
            tasks: TaskInputs::Count(tasks),
            max_attempts: None,
            timeout_ms: None,
            delivery: Delivery::AtLeastOnce,
        },
        origin: node_id(1),
        now: 2,
    }
}

pub fn decision(task: TaskId, attempt: u32, winner: NodeId) -> Decision {
    Decision { task, attempt, strategy: Strategy::Balanced, winner, winner_rank: 0, candidates: vec![], decided_at: 0 }
}

pub fn claim(task: TaskId, attempt: u32, node: NodeId, now: u64) -> Command {
    Command::Claim { task, attempt, node, lease_ms: 1000, decision: decision(task, attempt, node), now }
}

/// A state with three 2-core nodes, a capsule `c` and nothing else.
pub fn mesh() -> State {
    let mut s = State::default();
    s.apply(&falak_core::signing::deployer_for_tests().1);
    for n in 1..=3 {
        s.apply(&Command::AdmitNode { record: record(n, Resources::new(2000, 4 << 30)), now: 0 });
    }
    s.apply(&capsule("c", "500m", 2));
    s
}

pub fn fencing_of(outcome: &Outcome) -> u64 {
    match outcome {
        Outcome::Claimed { fencing, .. } => *fencing,
        other => panic!("expected a claim, got {other:?}"),
    }
}
