//! The state machine: one command in, the exact outcome and state out.

use falak_core::job::{JobId, JobState, TaskId, TaskReport, TaskState};
use falak_core::ledger::{Command, LedgerEvent, Outcome, PlantedBug, RejectCode, State};

use crate::fixtures::*;

fn t(job: u64, index: u32) -> TaskId {
    TaskId { job: JobId(job), index }
}

fn ok_report() -> TaskReport {
    TaskReport {
        exit_code: Some(0),
        error: None,
        duration_ms: 5,
        stdout_tail: "out".into(),
        stderr_tail: String::new(),
    }
}

fn failed_report() -> TaskReport {
    TaskReport { exit_code: Some(3), ..ok_report() }
}

fn code(outcome: &Outcome) -> RejectCode {
    outcome.rejection().unwrap_or_else(|| panic!("expected a rejection, got {outcome:?}")).code
}

#[test]
fn submit_creates_queued_tasks_with_sequential_ids() {
    let mut s = mesh();
    assert_eq!(s.apply(&job("c", 3)).outcome, Outcome::JobSubmitted { job: JobId(1), tasks: 3 });
    assert_eq!(s.apply(&job("c", 1)).outcome, Outcome::JobSubmitted { job: JobId(2), tasks: 1 });
    assert_eq!(s.open_count(), 4);
    assert!(s.job_tasks(JobId(1)).all(|t| t.state == TaskState::Queued && t.attempt == 1));
}

#[test]
fn unknown_capsule_and_bad_counts_are_rejected_without_change() {
    let mut s = mesh();
    let before = s.clone();
    let out = s.apply(&job("nope", 1)).outcome;
    assert_eq!(code(&out), RejectCode::NotFound);
    assert!(out.rejection().unwrap().message.contains("falak capsule apply"));
    assert_eq!(code(&s.apply(&job("c", 0)).outcome), RejectCode::Invalid);
    assert_eq!(s.data().jobs, before.data().jobs);
    assert_eq!(s.open_count(), 0);
}

#[test]
fn first_valid_claim_wins_and_the_second_is_stale() {
    let mut s = mesh();
    s.apply(&job("c", 1));
    let first = s.apply(&claim(t(1, 0), 1, node_id(1), 10)).outcome;
    let fencing = fencing_of(&first);
    let second = s.apply(&claim(t(1, 0), 1, node_id(2), 11));
    assert_eq!(code(&second.outcome), RejectCode::Stale);
    assert!(matches!(second.events[0], LedgerEvent::ClaimRejected { .. }));
    let task = s.task(t(1, 0)).unwrap();
    assert_eq!(task.state, TaskState::Assigned);
    assert_eq!(task.claim.as_ref().unwrap().fencing, fencing);
    assert_eq!(s.claim_count(&node_id(1)), 1);
    assert!(s.indexes_consistent());
}

#[test]
fn planted_bug_lets_a_second_claim_through() {
    let mut s = State::with_planted_bug(PlantedBug::SkipAttemptCheck);
    s.apply(&falak_core::signing::deployer_for_tests().1);
    for n in 1..=2 {
        s.apply(&Command::AdmitNode {
            record: record(n, falak_core::resources::Resources::new(2000, 4 << 30)),
            now: 0,
        });
    }
    s.apply(&capsule("c", "500m", 2));
    s.apply(&job("c", 1));
    fencing_of(&s.apply(&claim(t(1, 0), 1, node_id(1), 10)).outcome);
    fencing_of(&s.apply(&claim(t(1, 0), 1, node_id(2), 11)).outcome);
    assert!(s.indexes_consistent());
}

#[test]
fn claims_respect_committed_capacity() {
    let mut s = mesh();
    s.apply(&job("c", 5));
    for i in 0..4 {
        fencing_of(&s.apply(&claim(t(1, i), 1, node_id(1), 10)).outcome);
    }
    let over = s.apply(&claim(t(1, 4), 1, node_id(1), 10)).outcome;
    assert_eq!(code(&over), RejectCode::NoFit);
    assert!(over.rejection().unwrap().message.contains("over capacity"));
    assert_eq!(s.reserved(&node_id(1)).cpu_millis, 2000);
}

#[test]
fn fencing_tokens_strictly_increase_and_stale_results_are_rejected() {
    let mut s = mesh();
    s.apply(&job("c", 1));
    let f1 = fencing_of(&s.apply(&claim(t(1, 0), 1, node_id(1), 10)).outcome);
    // Node 1 goes offline: the task is re-opened at attempt 2 and claimed by node 2.
    s.apply(&Command::SetNodeOffline { node: node_id(1), offline: true, term: 0, now: 20 });
    let task = s.task(t(1, 0)).unwrap();
    assert_eq!((task.state, task.attempt), (TaskState::Retrying, 2));
    let f2 = fencing_of(&s.apply(&claim(t(1, 0), 2, node_id(2), 30)).outcome);
    assert!(f2 > f1);
    // The late result of attempt 1 is refused; the current one is accepted.
    let late = s.apply(&Command::Finish { task: t(1, 0), node: node_id(1), fencing: f1, report: ok_report(), now: 40 });
    assert_eq!(code(&late.outcome), RejectCode::Stale);
    assert_eq!(s.rejected_results(), 1);
    assert!(
        matches!(late.events[0], LedgerEvent::ResultRejected { node, .. } if node == node_id(1)),
        "the rejection names the stale holder: {:?}",
        late.events
    );
    // A node that does not hold the claim cannot finish it, even with the current token.
    let forged =
        s.apply(&Command::Finish { task: t(1, 0), node: node_id(1), fencing: f2, report: ok_report(), now: 45 });
    assert_eq!(code(&forged.outcome), RejectCode::Stale);
    assert!(s.task(t(1, 0)).unwrap().result.is_none());
    let done = s.apply(&Command::Finish { task: t(1, 0), node: node_id(2), fencing: f2, report: ok_report(), now: 50 });
    assert_eq!(done.outcome, Outcome::Finished { task: t(1, 0), state: TaskState::Completed });
    assert_eq!(s.job(JobId(1)).unwrap().state, JobState::Completed);
    assert_eq!(s.task(t(1, 0)).unwrap().result.as_ref().unwrap().node, node_id(2));
}

#[test]
fn offline_nodes_cannot_claim() {
    let mut s = mesh();
    s.apply(&job("c", 1));
    s.apply(&Command::SetNodeOffline { node: node_id(3), offline: true, term: 0, now: 5 });
    assert_eq!(code(&s.apply(&claim(t(1, 0), 1, node_id(3), 10)).outcome), RejectCode::NoFit);
}

#[test]
fn a_node_without_namespaces_cannot_claim_a_task_that_asks_for_a_network_of_its_own() {
    let mut s = mesh();
    let mut unable = record(3, falak_core::resources::Resources::new(2000, 4 << 30));
    unable.namespaces = Some(falak_core::node::Namespaces::Unavailable);
    s.apply(&Command::AdmitNode { record: unable, now: 1 });
    s.apply(&job("c", 2)); // capsule c: network none, the default
    let refused = s.apply(&claim(t(1, 0), 1, node_id(3), 10)).outcome;
    assert_eq!(code(&refused), RejectCode::NoFit);
    assert_eq!(
        refused.rejection().unwrap().message,
        "node node-3 cannot create namespaces, and capsule c asks for a network of its own"
    );
    fencing_of(&s.apply(&claim(t(1, 0), 1, node_id(1), 10)).outcome);
    // Work on the host's network it still takes.
    let host = "name: h\nkind: process\ncommand: [/bin/true]\nnetwork: host";
    s.apply(&falak_core::ledger::Command::signed_capsule(
        falak_core::capsule::CapsuleDocument::parse(host).unwrap(),
        &falak_core::signing::deployer_for_tests().0,
        1,
    ));
    s.apply(&job("h", 1));
    fencing_of(&s.apply(&claim(t(2, 0), 1, node_id(3), 11)).outcome);
}

#[test]
fn a_node_record_from_before_namespaces_were_declared_still_reads() {
    let mut old = serde_json::to_value(record(1, falak_core::resources::Resources::new(2000, 4 << 30))).unwrap();
    assert!(old.get("namespaces").is_none(), "an undeclared field is left out: {old}");
    old.as_object_mut().unwrap().remove("namespaces");
    let read: falak_core::node::NodeRecord = serde_json::from_value(old).unwrap();
    assert_eq!(read.namespaces, None);
    let mut declared = read;
    declared.namespaces = Some(falak_core::node::Namespaces::Unavailable);
    let json = serde_json::to_value(&declared).unwrap();
    assert_eq!(json["namespaces"], "unavailable");
    assert_eq!(serde_json::from_value::<falak_core::node::NodeRecord>(json).unwrap(), declared);
}

#[test]
fn failures_retry_until_max_attempts_then_fail_the_job() {
    let mut s = mesh();
    s.apply(&job("c", 1)); // capsule c allows 2 attempts
    let f1 = fencing_of(&s.apply(&claim(t(1, 0), 1, node_id(1), 10)).outcome);
    let r1 =
        s.apply(&Command::Finish { task: t(1, 0), node: node_id(1), fencing: f1, report: failed_report(), now: 11 });
    assert_eq!(r1.outcome, Outcome::Finished { task: t(1, 0), state: TaskState::Retrying });
    let f2 = fencing_of(&s.apply(&claim(t(1, 0), 2, node_id(2), 12)).outcome);
    let r2 =
        s.apply(&Command::Finish { task: t(1, 0), node: node_id(2), fencing: f2, report: failed_report(), now: 13 });
    assert_eq!(r2.outcome, Outcome::Finished { task: t(1, 0), state: TaskState::Failed });
    assert_eq!(s.job(JobId(1)).unwrap().state, JobState::Failed);
    assert_eq!(s.node(&node_id(1)).unwrap().failed, 1);
    assert!(s.indexes_consistent());
}

#[test]
fn leases_expire_unless_renewed() {
    let mut s = mesh();
    s.apply(&job("c", 2));
    let fa = fencing_of(&s.apply(&claim(t(1, 0), 1, node_id(1), 0)).outcome);
    fencing_of(&s.apply(&claim(t(1, 1), 1, node_id(2), 0)).outcome);
    let renew = s.apply(&Command::RenewLeases {
        node: node_id(1),
        leases: vec![(t(1, 0), fa), (t(1, 1), 99)],
        lease_ms: 1000,
        now: 900,
    });
    assert_eq!(renew.outcome, Outcome::Renewed { renewed: 1, lost: vec![t(1, 1)] });
    let out = s.apply(&Command::ExpireLeases { term: 0, now: 1500 });
    assert_eq!(out.outcome, Outcome::Expired { tasks: vec![t(1, 1)] });
    assert_eq!(s.task(t(1, 1)).unwrap().state, TaskState::Retrying);
    assert!(s.task(t(1, 1)).unwrap().last_error.as_ref().unwrap().contains("lease expired"));
    assert_eq!(s.task(t(1, 0)).unwrap().state, TaskState::Assigned);
}

#[test]
fn cancel_ends_open_and_claimed_tasks() {
    let mut s = mesh();
    s.apply(&job("c", 3));
    fencing_of(&s.apply(&claim(t(1, 0), 1, node_id(1), 0)).outcome);
    let out = s.apply(&Command::CancelJob { job: JobId(1), now: 5 }).outcome;
    assert_eq!(out, Outcome::JobCancelled { job: JobId(1), cancelled: 3 });
    assert_eq!(s.job(JobId(1)).unwrap().state, JobState::Cancelled);
    assert_eq!(s.open_count(), 0);
    assert_eq!(s.claim_count(&node_id(1)), 0);
    assert_eq!(code(&s.apply(&Command::CancelJob { job: JobId(1), now: 6 }).outcome), RejectCode::Conflict);
    assert_eq!(code(&s.apply(&claim(t(1, 1), 1, node_id(2), 7)).outcome), RejectCode::Stale);
}

#[test]
fn capsule_versions_are_immutable() {
    let mut s = mesh();
    // Same content again: unchanged, same version.
    assert_eq!(
        s.apply(&capsule("c", "500m", 2)).outcome,
        Outcome::CapsuleApplied { name: "c".into(), version: 1, unchanged: true }
    );
    // New content: next version.
    assert_eq!(
        s.apply(&capsule("c", "1", 2)).outcome,
        Outcome::CapsuleApplied { name: "c".into(), version: 2, unchanged: false }
    );
    // Explicit duplicate version with other content: conflict.
    let Command::ApplyCapsule { mut spec, signature, now } = capsule("c", "2", 2) else { unreachable!() };
    spec.version = Some(1); // the version is not signed: the ledger may assign it
    let out = s.apply(&Command::ApplyCapsule { spec, signature, now }).outcome;
    assert_eq!(code(&out), RejectCode::Conflict);
    assert!(out.rejection().unwrap().message.contains("immutable"));
    assert_eq!(s.capsule_versions("c").unwrap().len(), 2);
}

#[test]
fn services_scale_up_and_down() {
    use falak_core::job::ServiceRequest;
    let mut s = mesh();
    let apply = |replicas| Command::ApplyService {
        request: ServiceRequest { name: "web".into(), capsule: "c".into(), version: None, replicas },
        origin: node_id(1),
        now: 3,
    };
    let out = s.apply(&apply(3)).outcome;
    let Outcome::ServiceApplied { job, replicas: 3, .. } = out else { panic!("{out:?}") };
    assert_eq!(s.open_count(), 3);
    let f = fencing_of(&s.apply(&claim(TaskId { job, index: 2 }, 1, node_id(1), 4)).outcome);
    // A replica that exits is re-opened, never failed.
    let fin = s.apply(&Command::Finish {
        task: TaskId { job, index: 2 },
        node: node_id(1),
        fencing: f,
        report: failed_report(),
        now: 5,
    });
    assert_eq!(fin.outcome, Outcome::Finished { task: TaskId { job, index: 2 }, state: TaskState::Retrying });
    s.apply(&apply(1));
    assert_eq!(s.job_tasks(job).count(), 1);
    assert_eq!(s.open_count(), 1);
    assert_eq!(
        s.apply(&Command::RemoveService { name: "web".into(), now: 9 }).outcome,
        Outcome::ServiceRemoved { name: "web".into() }
    );
    assert!(s.service("web").is_none());
    assert!(s.indexes_consistent());
}

#[test]
fn a_replica_that_keeps_exiting_quickly_restarts_ever_more_slowly() {
    use falak_core::election::{Candidacy, ElectionConfig};
    use falak_core::job::{RESTART_HEALTHY_RUN_MS, ServiceRequest};
    let mut s = mesh();
    let request = ServiceRequest { name: "web".into(), capsule: "c".into(), version: None, replicas: 1 };
    let out = s.apply(&Command::ApplyService { request, origin: node_id(1), now: 3 }).outcome;
    let Outcome::ServiceApplied { job, .. } = out else { panic!("{out:?}") };
    let id = TaskId { job, index: 0 };
    let mut now = 10;
    let mut waits = Vec::new();
    for (attempt, ran_ms) in [(1, 5), (2, 5), (3, 5), (4, RESTART_HEALTHY_RUN_MS), (5, 5)] {
        let f = fencing_of(&s.apply(&claim(id, attempt, node_id(1), now)).outcome);
        let report = TaskReport { duration_ms: ran_ms, ..failed_report() };
        s.apply(&Command::Finish { task: id, node: node_id(1), fencing: f, report, now });
        let task = s.task(id).unwrap();
        assert_eq!(task.state, TaskState::Retrying);
        let wait = task.not_before.map_or(0, |at| at - now);
        waits.push(wait);
        now += wait;
    }
    // 250 ms, doubling per quick exit; a healthy run resets it.
    assert_eq!(waits, [250, 500, 1000, 0, 250]);
    // Candidacy leaves a task alone until its backoff is over.
    let task = s.task(id).unwrap().clone();
    let at = task.not_before.unwrap();
    let mut candidacy = Candidacy::default();
    let config = ElectionConfig::default();
    let observed = std::collections::BTreeMap::new();
    assert!(candidacy.step(&s, &observed, node_id(1), at - 1, &config).is_empty());
    let mut claims = Vec::new();
    for later in at..at + 5 * config.stagger_ms {
        claims.extend(candidacy.step(&s, &observed, node_id(1), later, &config));
    }
    assert!(!claims.is_empty(), "elected once the backoff is over");
}

#[test]
fn batches_apply_in_order_and_snapshots_round_trip() {
    let mut s = mesh();
    s.apply(&job("c", 2));
    let out = s.apply(&Command::Batch(vec![
        claim(t(1, 0), 1, node_id(1), 1),
        claim(t(1, 0), 1, node_id(2), 1),
        claim(t(1, 1), 1, node_id(2), 1),
    ]));
    let Outcome::Batch(outs) = out.outcome else { panic!() };
    assert!(matches!(outs[0], Outcome::Claimed { .. }));
    assert_eq!(code(&outs[1]), RejectCode::Stale);
    assert!(matches!(outs[2], Outcome::Claimed { .. }));
    let json = serde_json::to_string(&s).unwrap();
    let back: State = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
    assert!(back.indexes_consistent());
}

#[test]
fn a_deposed_leaders_offline_mark_is_refused_in_a_later_term() {
    let mut s = mesh();
    s.apply(&job("c", 1));
    s.apply_in_term(3, &claim(t(1, 0), 1, node_id(2), 10));
    // The leader of term 3, cut off, marked every peer OFFLINE; its write reached the log only
    // after node 2 was elected in term 4.
    let stale = s.apply_in_term(4, &Command::SetNodeOffline { node: node_id(2), offline: true, term: 3, now: 20 });
    assert_eq!(code(&stale.outcome), RejectCode::Stale);
    assert!(stale.outcome.rejection().unwrap().message.contains("term 3"), "{:?}", stale.outcome);
    assert!(stale.events.is_empty());
    assert!(!s.node(&node_id(2)).unwrap().offline);
    assert_eq!(s.task(t(1, 0)).unwrap().state, TaskState::Assigned, "its task keeps its attempt");
    // Lease expiry from the old term is refused the same way.
    assert_eq!(code(&s.apply_in_term(4, &Command::ExpireLeases { term: 3, now: 5_000 }).outcome), RejectCode::Stale);
    assert_eq!(s.task(t(1, 0)).unwrap().state, TaskState::Assigned);
    // The current leader's own marks apply, and name the term that made them.
    let mark = s.apply_in_term(4, &Command::SetNodeOffline { node: node_id(3), offline: true, term: 4, now: 30 });
    assert_eq!(mark.events, vec![LedgerEvent::NodeOffline { node: node_id(3), term: 4 }]);
    assert_eq!(s.term(), 4);
    // A planted bug skips the check (for the simulation's checker only).
    let mut buggy = State::with_planted_bug(PlantedBug::SkipTermCheck);
    buggy.apply(&falak_core::signing::deployer_for_tests().1);
    buggy.apply(&Command::AdmitNode { record: record(2, falak_core::resources::Resources::new(1, 1)), now: 0 });
    buggy.apply_in_term(4, &Command::SetNodeOffline { node: node_id(2), offline: true, term: 3, now: 1 });
    assert!(buggy.node(&node_id(2)).unwrap().offline);
}

fn keyed(key: &str, what: &str, command: Command) -> Command {
    Command::Idempotent {
        key: key.parse().unwrap(),
        request: falak_core::ledger::RequestFingerprint::of("test", &what),
        command: Box::new(command),
    }
}

#[test]
fn a_keyed_write_repeated_takes_effect_once() {
    let mut s = mesh();
    let first = s.apply(&keyed("k1", "three tasks", job("c", 3)));
    assert_eq!(first.outcome, Outcome::JobSubmitted { job: JobId(1), tasks: 3 });
    assert!(!first.events.is_empty());
    // The same key and request again, through any node: the first outcome, nothing applied.
    let again = s.apply(&keyed("k1", "three tasks", job("c", 3)));
    assert_eq!(again.outcome, first.outcome);
    assert!(again.events.is_empty());
    assert_eq!(s.jobs().count(), 1);
    // The same key for another request: a conflict, nothing applied.
    let other = s.apply(&keyed("k1", "five tasks", job("c", 5)));
    assert_eq!(code(&other.outcome), RejectCode::Conflict);
    assert!(other.outcome.rejection().unwrap().message.contains("new key"), "{:?}", other.outcome);
    assert_eq!(s.jobs().count(), 1);
    // A rejected write is not remembered: fixed and retried with its key, it applies.
    assert_eq!(code(&s.apply(&keyed("k2", "late", job("later", 1))).outcome), RejectCode::NotFound);
    s.apply(&capsule("later", "100m", 1));
    assert!(matches!(s.apply(&keyed("k2", "late", job("later", 1))).outcome, Outcome::JobSubmitted { .. }));
    // Keys survive a snapshot.
    let restored: State = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert!(restored.indexes_consistent());
    assert_eq!(restored.remembered_keys(), 2);
    // A key wraps one plain write, never a batch or another key.
    let nested = keyed("k3", "n", keyed("k4", "n", job("c", 1)));
    assert_eq!(code(&s.apply(&nested).outcome), RejectCode::Invalid);
    let batch = keyed("k5", "b", Command::Batch(vec![job("c", 1)]));
    assert_eq!(code(&s.apply(&batch).outcome), RejectCode::Invalid);
    assert_eq!(s.jobs().count(), 2);
}

#[test]
fn keys_are_forgotten_after_the_retention_or_beyond_the_count() {
    use falak_core::ledger::{IDEMPOTENCY_RETENTION_MS, MAX_IDEMPOTENCY_KEYS};
    let mut s = mesh();
    s.apply(&keyed("old", "x", Command::Noop { now: 10 }));
    assert!(s.idempotent_outcome(&"old".parse().unwrap()).is_some());
    // Ledger time moves past the retention: the key is forgotten and may be used afresh.
    s.apply(&Command::Noop { now: 10 + IDEMPOTENCY_RETENTION_MS });
    s.apply(&keyed("new", "y", Command::Noop { now: 11 + IDEMPOTENCY_RETENTION_MS }));
    assert!(s.idempotent_outcome(&"old".parse().unwrap()).is_none());
    assert_eq!(s.remembered_keys(), 1);
    for i in 0..MAX_IDEMPOTENCY_KEYS + 5 {
        s.apply(&keyed(&format!("n{i}"), "z", Command::Noop { now: 12 + IDEMPOTENCY_RETENTION_MS }));
    }
    assert_eq!(s.remembered_keys(), MAX_IDEMPOTENCY_KEYS);
    assert!(s.idempotent_outcome(&"new".parse().unwrap()).is_none(), "the oldest go first");
    assert!(s.idempotent_outcome(&format!("n{}", MAX_IDEMPOTENCY_KEYS + 4).parse().unwrap()).is_some());
    assert!(s.indexes_consistent());
}

#[test]
fn a_capsule_rolls_back_to_an_earlier_version_as_a_new_one_with_its_signature() {
    let mut s = mesh();
    let only = s.apply(&Command::RollbackCapsule { name: "c".into(), version: None, now: 3 }).outcome;
    assert_eq!(code(&only), RejectCode::NotFound);
    assert!(only.rejection().unwrap().message.contains("nothing to roll back to"), "{only:?}");
    s.apply(&capsule("c", "400m", 2));
    let back = s.apply(&Command::RollbackCapsule { name: "c".into(), version: None, now: 4 }).outcome;
    assert_eq!(back, Outcome::CapsuleApplied { name: "c".into(), version: 3, unchanged: false });
    let versions = s.capsule_versions("c").unwrap();
    assert_eq!(versions[2].spec.resources, versions[0].spec.resources, "version 3 is version 1's spec");
    assert_eq!(versions[2].signature, versions[0].signature, "with its signature, which still verifies");
    // Already the latest content: nothing new.
    let again = s.apply(&Command::RollbackCapsule { name: "c".into(), version: Some(1), now: 5 }).outcome;
    assert_eq!(again, Outcome::CapsuleApplied { name: "c".into(), version: 3, unchanged: true });
    let missing = s.apply(&Command::RollbackCapsule { name: "c".into(), version: Some(9), now: 6 }).outcome;
    assert!(missing.rejection().unwrap().message.contains("has no version 9"), "{missing:?}");
}

#[test]
fn a_function_keeps_its_earlier_versions_and_rolls_back_to_one() {
    use falak_core::function::{FunctionDocument, MAX_FUNCTION_HISTORY};
    let mut s = mesh();
    let key = falak_core::signing::deployer_for_tests().0;
    let deploy = |s: &mut State, timeout: u32| {
        let text = format!(
            "name: f\nkind: function\nruntime: python\nhandler: main.handle\ntimeout: {timeout}s\nartifact: \"{}\"\n",
            "ab".repeat(32)
        );
        let spec = FunctionDocument::parse(&text).unwrap().validate(0).unwrap();
        let signature = Some(key.sign(falak_core::signing::SpecKind::Function, &spec.signed_form()));
        s.apply(&Command::DeployFunction { spec, signature, now: 5 }).outcome
    };
    for timeout in 1..=3 {
        assert!(matches!(deploy(&mut s, timeout), Outcome::FunctionDeployed { unchanged: false, .. }));
    }
    let entry = s.function("f").unwrap();
    assert_eq!(entry.history.iter().map(|h| h.spec.version).collect::<Vec<_>>(), [1, 2]);
    let back = s.apply(&Command::RollbackFunction { name: "f".into(), version: Some(1), now: 6 }).outcome;
    assert_eq!(back, Outcome::FunctionDeployed { name: "f".into(), version: 4, unchanged: false });
    assert_eq!(s.function("f").unwrap().spec.timeout_ms, 1_000, "version 4 is version 1's spec");
    let none = s.apply(&Command::RollbackFunction { name: "f".into(), version: Some(4), now: 7 }).outcome;
    assert!(none.rejection().unwrap().message.contains("is at version 4 already"), "{none:?}");
    for timeout in 10..30 {
        deploy(&mut s, timeout);
    }
    assert_eq!(s.function("f").unwrap().history.len(), MAX_FUNCTION_HISTORY, "the history is bounded");
}
