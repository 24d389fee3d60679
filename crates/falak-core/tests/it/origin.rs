//! Commands stamped with their origin (`Command::Sent`): a node claims, starts, renews,
//! finishes and reports only as itself, admits only itself, and makes no leader duty unless it
//! appended the entry. Every refusal is `Forbidden` and changes nothing.

use falak_core::NodeId;
use falak_core::job::{JobId, TaskId, TaskReport};
use falak_core::ledger::{Command, Outcome, RejectCode, State};
use falak_core::resources::Resources;

use crate::fixtures::{claim, fencing_of, job, mesh, node_id, record};

fn t(index: u32) -> TaskId {
    TaskId { job: JobId(1), index }
}

fn sent(by: NodeId, command: Command) -> Command {
    Command::Sent { by, command: Box::new(command) }
}

fn report() -> TaskReport {
    TaskReport {
        exit_code: Some(0),
        error: None,
        duration_ms: 5,
        stdout_tail: "forged".into(),
        stderr_tail: String::new(),
    }
}

/// `command` sent by `by` is refused as forbidden, saying `says`, and leaves `state` as it was.
fn refused(state: &mut State, by: NodeId, command: Command, says: &str) {
    let before = serde_json::to_value(&*state).unwrap();
    let outcome = state.apply(&sent(by, command)).outcome;
    let rejection = outcome.rejection().unwrap_or_else(|| panic!("not refused: {outcome:?}"));
    assert_eq!(rejection.code, RejectCode::Forbidden, "{}", rejection.message);
    assert!(rejection.message.contains(says), "{}", rejection.message);
    // Only the clock and the count of applied commands may move.
    let mut after = serde_json::to_value(&*state).unwrap();
    for field in ["clock", "applied"] {
        after[field] = before[field].clone();
    }
    assert_eq!(after, before, "a refused command changed the state");
}

#[test]
fn a_node_claims_starts_renews_and_finishes_only_as_itself() {
    let (a, b) = (node_id(1), node_id(2));
    let mut s = mesh();
    assert!(matches!(s.apply(&sent(a, job("c", 2))).outcome, Outcome::JobSubmitted { .. }));
    // B claims in A's name, alone or hidden in a batch or behind an idempotency key.
    refused(&mut s, b, claim(t(0), 1, a, 10), "in the name of node");
    let batch = Command::Batch(vec![claim(t(1), 1, b, 10), claim(t(0), 1, a, 10)]);
    refused(&mut s, b, batch, "in the name of node");
    // A claims for itself; B may not say it started, renew it or finish it.
    let fencing = fencing_of(&s.apply(&sent(a, claim(t(0), 1, a, 10))).outcome);
    refused(&mut s, b, Command::Started { task: t(0), fencing, now: 11 }, "holds its claim");
    let renew = Command::RenewLeases { node: a, leases: vec![(t(0), fencing)], lease_ms: 1000, now: 12 };
    refused(&mut s, b, renew, "a lease renewal");
    let finish = Command::Finish { task: t(0), node: a, fencing, report: report(), now: 13 };
    refused(&mut s, b, finish.clone(), "a task's result");
    // B claiming as itself is fine; A goes on with its own task.
    assert!(matches!(s.apply(&sent(b, claim(t(1), 1, b, 10))).outcome, Outcome::Claimed { .. }));
    assert_eq!(
        s.apply(&sent(a, Command::Started { task: t(0), fencing, now: 11 })).outcome,
        Outcome::Started { task: t(0) }
    );
    assert!(matches!(s.apply(&sent(a, finish)).outcome, Outcome::Finished { .. }));
}

#[test]
fn a_node_submits_only_as_itself_and_admits_only_itself() {
    let (a, b) = (node_id(1), node_id(2));
    let mut s = mesh();
    refused(&mut s, b, job("c", 1), "a job submission");
    // Re-admitting A with an address B controls, or a node nobody admitted.
    let mut hijacked = record(1, Resources::new(2000, 4 << 30));
    hijacked.api_url = "https://evil.example".into();
    refused(&mut s, b, Command::AdmitNode { record: hijacked.clone(), now: 5 }, "only its own record");
    refused(&mut s, b, Command::AdmitNode { record: record(9, Resources::new(1, 1)), now: 5 }, "join token");
    // A updates its own.
    assert_eq!(
        s.apply(&sent(a, Command::AdmitNode { record: hijacked, now: 5 })).outcome,
        Outcome::NodeAdmitted { node: a }
    );
    // Nobody sends an origin of their own.
    refused(&mut s, a, sent(b, Command::Noop { now: 1 }), "names its own origin");
}

#[test]
fn leader_duties_come_only_from_the_leader_that_appended_the_entry() {
    let (a, b) = (node_id(1), node_id(2));
    let mut s = mesh();
    let offline = Command::SetNodeOffline { node: a, offline: true, term: 4, now: 20 };
    let forged = s.apply_entry(4, Some(a), &sent(b, offline.clone()));
    assert_eq!(forged.outcome.rejection().map(|r| r.code), Some(RejectCode::Forbidden), "{forged:?}");
    assert!(!s.node(&a).unwrap().offline);
    let expiry = s.apply_entry(4, Some(a), &sent(b, Command::ExpireLeases { term: 4, now: 30 }));
    assert_eq!(expiry.outcome.rejection().map(|r| r.code), Some(RejectCode::Forbidden));
    // The leader's own mark applies.
    let marked = s.apply_entry(4, Some(b), &sent(b, offline));
    assert!(marked.outcome.rejection().is_none(), "{marked:?}");
    assert!(s.node(&a).unwrap().offline);
}

#[test]
fn entries_from_before_origins_apply_as_they_did() {
    let mut s = mesh();
    s.apply(&job("c", 1));
    assert!(matches!(s.apply(&claim(t(0), 1, node_id(2), 10)).outcome, Outcome::Claimed { .. }));
}
