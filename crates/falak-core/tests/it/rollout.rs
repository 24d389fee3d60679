//! Rolling updates in the state machine, driven tick by tick: nodes claim and start what is
//! open, a bad version's replicas crash, the leader proposes what `rollout_duties` says. The
//! healthy replicas never go under `replicas - max_unavailable`, a good version ends with every
//! replica on it, and a bad one is rolled back to the old version at full strength.

use falak_core::job::{JobId, TaskReport, TaskState};
use falak_core::ledger::{Command, Outcome, RejectCode, RolloutState, ServiceUpdate, State, rollout_duties};

use crate::fixtures::*;

const REPLICAS: u32 = 4;

struct Driver {
    s: State,
    now: u64,
    /// Jobs whose replicas exit right after starting.
    crashing: Vec<JobId>,
    /// The fewest RUNNING replicas seen while the rollout was in progress.
    fewest_running: u32,
}

impl Driver {
    fn new() -> (Driver, JobId) {
        let mut s = mesh();
        let request = falak_core::job::ServiceRequest {
            name: "web".into(),
            capsule: "c".into(),
            version: None,
            replicas: REPLICAS,
        };
        let out = s.apply(&Command::ApplyService { request, origin: node_id(1), now: 3 }).outcome;
        let Outcome::ServiceApplied { job, .. } = out else { panic!("{out:?}") };
        let mut d = Driver { s, now: 10, crashing: Vec::new(), fewest_running: u32::MAX };
        for _ in 0..5 {
            d.tick();
        }
        assert_eq!(d.running(), REPLICAS);
        (d, job)
    }

    fn running(&self) -> u32 {
        let jobs: Vec<JobId> = self.s.services().map(|j| j.id).chain(self.s.rollout("web").map(|r| r.to)).collect();
        let mut seen = std::collections::BTreeSet::new();
        jobs.iter()
            .flat_map(|j| self.s.job_tasks(*j))
            .filter(|t| t.state == TaskState::Running && seen.insert(t.id))
            .count() as u32
    }

    /// 100 ms: replicas claimed and started, crashing ones ended, the leader's duties applied.
    fn tick(&mut self) {
        self.now += 100;
        let now = self.now;
        let open: Vec<_> = self
            .s
            .data()
            .tasks
            .values()
            .filter(|t| matches!(t.state, TaskState::Queued | TaskState::Retrying))
            .filter(|t| t.not_before.is_none_or(|at| at <= now))
            .map(|t| (t.id, t.attempt))
            .collect();
        for (i, (task, attempt)) in open.into_iter().enumerate() {
            // The first of the three nodes, from a rotating start, with room for it.
            for n in 0..3 {
                let node = node_id(1 + ((i + n) % 3) as u8);
                if let Outcome::Claimed { fencing, .. } = self.s.apply(&claim(task, attempt, node, now)).outcome {
                    self.s.apply(&Command::Started { task, fencing, now });
                    break;
                }
            }
        }
        let crashed: Vec<_> = self
            .s
            .data()
            .tasks
            .values()
            .filter(|t| t.state == TaskState::Running && self.crashing.contains(&t.id.job))
            .filter_map(|t| Some((t.id, t.claim.clone()?)))
            .collect();
        for (task, claim) in crashed {
            let report = TaskReport {
                exit_code: Some(1),
                error: None,
                duration_ms: 5,
                stdout_tail: String::new(),
                stderr_tail: "bad config".into(),
            };
            self.s.apply(&Command::Finish { task, node: claim.node, fencing: claim.fencing, report, now });
        }
        for command in rollout_duties(&self.s, 0, now) {
            self.s.apply(&command);
        }
        if self.s.rollout("web").is_some_and(|r| r.state == RolloutState::Progressing) {
            self.fewest_running = self.fewest_running.min(self.running());
        }
    }

    fn update(&mut self, max_unavailable: u32, max_surge: u32) -> Outcome {
        let update = ServiceUpdate {
            name: "web".into(),
            version: None,
            max_unavailable,
            max_surge,
            min_ready_ms: 500,
            deadline_ms: 60_000,
        };
        self.s.apply(&Command::UpdateService { update, origin: node_id(1), now: self.now }).outcome
    }

    fn until_settled(&mut self) {
        for _ in 0..2_000 {
            self.tick();
            if self.s.rollout("web").is_some_and(|r| r.state != RolloutState::Progressing) {
                return;
            }
        }
        panic!("the rollout never settled: {:?}", self.s.rollout("web"));
    }
}

#[test]
fn an_update_replaces_replicas_one_at_a_time_and_keeps_three_of_four_healthy() {
    for (max_unavailable, max_surge) in [(1, 0), (0, 1), (2, 1), (1, 2)] {
        let (mut d, old) = Driver::new();
        d.s.apply(&capsule("c", "400m", 2));
        let out = d.update(max_unavailable, max_surge);
        let Outcome::ServiceUpdating { job: new, version: 2, .. } = out else { panic!("{out:?}") };
        d.until_settled();
        let rollout = d.s.rollout("web").unwrap();
        assert!(matches!(rollout.state, RolloutState::Done { .. }), "{rollout:?}");
        assert_eq!(d.s.service("web").map(|j| j.id), Some(new));
        assert!(d.s.job_tasks(old).all(|t| t.state.is_terminal()));
        for _ in 0..10 {
            d.tick();
        }
        assert_eq!(d.s.job_tasks(new).filter(|t| t.state == TaskState::Running).count() as u32, REPLICAS);
        assert!(
            d.fewest_running >= REPLICAS - max_unavailable,
            "max_unavailable {max_unavailable}, max_surge {max_surge}: {} running at the lowest",
            d.fewest_running
        );
        assert!(d.s.indexes_consistent());
    }
}

#[test]
fn a_version_that_keeps_crashing_is_rolled_back_to_the_old_one_at_full_strength() {
    let (mut d, old) = Driver::new();
    d.s.apply(&capsule("c", "400m", 2));
    let Outcome::ServiceUpdating { job: new, .. } = d.update(1, 0) else { panic!() };
    d.crashing.push(new);
    d.until_settled();
    let rollout = d.s.rollout("web").unwrap().clone();
    let RolloutState::RolledBack { reason, .. } = &rollout.state else { panic!("{rollout:?}") };
    assert!(reason.contains("exited 2 times in a row") && reason.contains("bad config"), "{reason}");
    assert_eq!(d.s.service("web").map(|j| j.id), Some(old), "the service stays on the old job");
    assert!(d.s.job_tasks(new).all(|t| t.state.is_terminal()));
    for _ in 0..10 {
        d.tick();
    }
    assert_eq!(d.s.job_tasks(old).filter(|t| t.state == TaskState::Running).count() as u32, REPLICAS);
    assert!(d.fewest_running >= REPLICAS - 1, "{} running at the lowest", d.fewest_running);
    assert!(d.s.indexes_consistent());
}

#[test]
fn updates_are_refused_when_they_cannot_proceed_and_scaling_waits_for_them() {
    let (mut d, _) = Driver::new();
    let same = d.update(1, 0);
    assert_eq!(same.rejection().unwrap().code, RejectCode::Conflict, "{same:?}");
    assert!(same.rejection().unwrap().message.contains("already runs capsule c version 1"));
    d.s.apply(&capsule("c", "400m", 2));
    let stuck = d.update(0, 0);
    assert_eq!(stuck.rejection().unwrap().code, RejectCode::Invalid);
    assert!(matches!(d.update(1, 0), Outcome::ServiceUpdating { .. }));
    let again = d.update(1, 0);
    assert!(again.rejection().unwrap().message.contains("already being updated"), "{again:?}");
    let request =
        falak_core::job::ServiceRequest { name: "web".into(), capsule: "c".into(), version: None, replicas: 6 };
    let scale = d.s.apply(&Command::ApplyService { request, origin: node_id(1), now: d.now }).outcome;
    assert!(scale.rejection().unwrap().message.contains("is being updated"), "{scale:?}");
    // Removing the service mid-update ends both versions' replicas.
    d.tick();
    d.s.apply(&Command::RemoveService { name: "web".into(), now: d.now });
    assert!(d.s.data().tasks.values().all(|t| t.state.is_terminal()));
    assert!(d.s.rollout("web").is_none());
}
