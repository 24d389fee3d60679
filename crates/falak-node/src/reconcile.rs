//! The node's sans-IO core: from committed state and local task events to actions.
//!
//! Level-triggered: every `step` compares what committed state says this node holds with what
//! it runs, so a missed notification or a restart costs nothing but a step. The daemon and the
//! seeded simulation both drive this same code; only the IO around it differs.
//!
//! Pure: no IO, no clock (`now` comes in), no randomness.

use std::collections::{BTreeMap, BTreeSet};

use falak_core::election::{Candidacy, ElectionConfig, Observed, leader_duties};
use falak_core::job::{Delivery, JobState, TaskId, TaskReport, TaskState};
use falak_core::ledger::{Command, State};
use falak_core::resources::Resources;
use falak_core::signing::SpecKind;
use falak_core::{Millis, NodeId};

/// How recently a node must have answered this node's ledger RPCs to count as answering
/// ([`falak_core::election::Observed::answering`]): 10 of the leader's 50 ms heartbeats.
pub const ANSWERING_WITHIN: std::time::Duration = std::time::Duration::from_millis(500);

/// Everything an executor needs to start one task attempt. `Debug` shows `env`'s names only:
/// the runner opens the capsule's secrets into it.
#[derive(Clone, PartialEq, derive_more::Debug)]
pub struct TaskLaunch {
    pub task: TaskId,
    pub attempt: u32,
    pub fencing: u64,
    pub command: Vec<String>,
    #[debug("{:?}", env.keys().collect::<Vec<_>>())]
    pub env: BTreeMap<String, String>,
    #[debug("{:?}", stdin.as_ref().map(Vec::len))]
    pub stdin: Option<Vec<u8>>,
    pub timeout_ms: Option<u64>,
    pub resources: Resources,
    /// The attempt's disk limit: the capsule's `resources.disk` or the default.
    pub disk_bytes: u64,
    pub network: falak_core::capsule::NetworkMode,
    /// The capsule's sealed secrets, opened by the runner into the task's environment, and the
    /// capsule they belong to (part of what each is sealed to).
    pub secrets: BTreeMap<String, falak_core::secret::SealedSecret>,
    pub capsule: String,
    /// The capsule's code bundle: the attempt's working directory starts with a copy of it.
    pub artifact: Option<falak_core::ArtifactId>,
    /// A container capsule's image and what runs of it.
    pub container: Option<Box<falak_core::capsule::ContainerSpec>>,
    /// Why the capsule must not run although its claim committed: its signature no longer
    /// verifies against the keys the ledger trusts (the key was revoked, the stored spec was
    /// changed). The runner reports the attempt failed without starting anything.
    pub refused: Option<String>,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Queue this command for the ledger. `kind` says what to call back on failure.
    Propose { command: Box<Command>, kind: ProposalKind },
    /// Start a task attempt; report `Started`/`Exited` back.
    Start(Box<TaskLaunch>),
    /// Stop a running attempt (the whole process group).
    Stop { task: TaskId, fencing: u64, reason: String },
}

/// Which kind of proposal an [`Action::Propose`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProposalKind {
    Claim,
    Started(TaskId),
    Finish(TaskId),
    Renew,
    LeaderDuty,
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Starting,
    Running,
    Exited(TaskReport),
    Stopping,
}

#[derive(Debug, Clone, PartialEq)]
struct Local {
    attempt: u32,
    fencing: u64,
    phase: Phase,
    started_proposed: bool,
    finish_proposed: bool,
}

/// Timing of the node's duties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileConfig {
    pub election: ElectionConfig,
    /// How often held leases are renewed.
    pub renew_every_ms: u64,
    /// How often the leader proposes duties at most.
    pub duties_every_ms: u64,
}

impl ReconcileConfig {
    pub fn with_lease(lease_ms: u64) -> Self {
        ReconcileConfig {
            election: ElectionConfig { lease_ms, ..ElectionConfig::default() },
            renew_every_ms: (lease_ms / 3).max(100),
            duties_every_ms: 100,
        }
    }
}

/// One node's reconciler.
#[derive(Debug)]
pub struct Reconciler {
    me: NodeId,
    config: ReconcileConfig,
    candidacy: Candidacy,
    /// Task attempts this node runs or ran, until committed state no longer lists them.
    local: BTreeMap<TaskId, Local>,
    last_renew: Millis,
    last_duties: Millis,
    duties_in_flight: bool,
    /// Claim no new tasks (the node's disk is under its reserve); what it holds runs on.
    claims_paused: bool,
}

impl Reconciler {
    pub fn new(me: NodeId, config: ReconcileConfig) -> Self {
        Reconciler {
            me,
            config,
            candidacy: Candidacy::default(),
            local: BTreeMap::new(),
            last_renew: 0,
            last_duties: 0,
            duties_in_flight: false,
            claims_paused: false,
        }
    }

    /// Stop or resume claiming new tasks. Paused, the node still starts, renews and reports
    /// what it already holds and does its leader duties; other nodes claim the open tasks
    /// after their stagger.
    pub fn pause_claims(&mut self, paused: bool) {
        self.claims_paused = paused;
    }

    pub fn claims_paused(&self) -> bool {
        self.claims_paused
    }

    pub fn config(&self) -> &ReconcileConfig {
        &self.config
    }

    /// Tasks this node is running right now (for gossip and metrics).
    pub fn running(&self) -> usize {
        self.local.values().filter(|l| matches!(l.phase, Phase::Running | Phase::Stopping)).count()
    }

    /// Tasks this node holds that have not started yet.
    pub fn starting(&self) -> usize {
        self.local.values().filter(|l| l.phase == Phase::Starting).count()
    }

    /// The executor started the attempt.
    pub fn task_started(&mut self, task: TaskId, fencing: u64) {
        if let Some(l) = self.local.get_mut(&task).filter(|l| l.fencing == fencing && l.phase == Phase::Starting) {
            l.phase = Phase::Running;
        }
    }

    /// The attempt ended (or could not start); `report` says how.
    pub fn task_exited(&mut self, task: TaskId, fencing: u64, report: TaskReport) {
        if let Some(l) = self.local.get_mut(&task).filter(|l| l.fencing == fencing) {
            l.phase = Phase::Exited(report);
            l.finish_proposed = false;
        }
    }

    /// A proposal failed to commit (no leader, timeout): allow it to be proposed again.
    pub fn proposal_failed(&mut self, kind: ProposalKind) {
        match kind {
            ProposalKind::Started(task) => {
                if let Some(l) = self.local.get_mut(&task) {
                    l.started_proposed = false;
                }
            }
            ProposalKind::Finish(task) => {
                if let Some(l) = self.local.get_mut(&task) {
                    l.finish_proposed = false;
                }
            }
            ProposalKind::LeaderDuty => self.duties_in_flight = false,
            ProposalKind::Claim | ProposalKind::Renew => {}
        }
    }

    /// A leader duty proposal settled.
    pub fn duty_settled(&mut self) {
        self.duties_in_flight = false;
    }

    /// Compare committed state with what runs here and decide what to do. `leader_term` is the
    /// term this node leads the ledger in, when it does: its duties carry it, so that they
    /// are refused if they reach the log after another leader took over.
    pub fn step(
        &mut self,
        state: &State,
        observed: &BTreeMap<NodeId, Observed>,
        leader_term: Option<u64>,
        now: Millis,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let me = self.me;
        // 1. Claims committed to this node that it does not run yet.
        let mine: Vec<(TaskId, u64, u32)> =
            state.claims_of(&me).filter_map(|t| t.claim.as_ref().map(|c| (t.id, c.fencing, c.attempt))).collect();
        let held: BTreeSet<TaskId> = mine.iter().map(|(id, _, _)| *id).collect();
        for (task, fencing, attempt) in &mine {
            let known = self.local.get(task).is_some_and(|l| l.fencing == *fencing);
            if known {
                continue;
            }
            if let Some(launch) = launch_for(state, *task, *fencing, *attempt) {
                // A stale local entry for an older attempt is replaced: its result is moot.
                self.local.insert(
                    *task,
                    Local {
                        attempt: *attempt,
                        fencing: *fencing,
                        phase: Phase::Starting,
                        started_proposed: false,
                        finish_proposed: false,
                    },
                );
                out.push(Action::Start(Box::new(launch)));
            }
        }
        // 2. Local attempts: report progress, or stop what this node no longer holds.
        let mut done = Vec::new();
        for (task, local) in &mut self.local {
            let current = held.contains(task)
                && state.task(*task).and_then(|t| t.claim.as_ref()).is_some_and(|c| c.fencing == local.fencing);
            if current {
                match &local.phase {
                    Phase::Running
                        if !local.started_proposed
                            && state.task(*task).is_some_and(|t| t.state == TaskState::Assigned) =>
                    {
                        local.started_proposed = true;
                        out.push(Action::Propose {
                            command: Box::new(Command::Started { task: *task, fencing: local.fencing, now }),
                            kind: ProposalKind::Started(*task),
                        });
                    }
                    Phase::Exited(report) if !local.finish_proposed => {
                        local.finish_proposed = true;
                        out.push(report_finish(*task, me, local.fencing, report, now));
                    }
                    _ => {}
                }
                continue;
            }
            // This node no longer holds the attempt: the task finished, was cancelled, or the
            // lease was lost.
            match &local.phase {
                Phase::Exited(report) => {
                    if !local.finish_proposed && lost_while_running(state, *task, local.attempt) {
                        // The attempt ended after the lease was lost: report it anyway so the
                        // ledger records (and rejects) the late result.
                        local.finish_proposed = true;
                        out.push(report_finish(*task, me, local.fencing, report, now));
                    } else {
                        done.push(*task);
                    }
                }
                Phase::Starting | Phase::Running => {
                    if let Some(reason) = stop_reason(state, *task) {
                        local.phase = Phase::Stopping;
                        out.push(Action::Stop { task: *task, fencing: local.fencing, reason });
                    }
                }
                Phase::Stopping => {}
            }
        }
        for task in done {
            self.local.remove(&task);
        }
        // 3. Renew the leases this node holds, in one command.
        if !mine.is_empty() && now.saturating_sub(self.last_renew) >= self.config.renew_every_ms {
            self.last_renew = now;
            let leases = mine.iter().map(|(t, f, _)| (*t, *f)).collect();
            out.push(Action::Propose {
                command: Box::new(Command::RenewLeases {
                    node: me,
                    leases,
                    lease_ms: self.config.election.lease_ms,
                    now,
                }),
                kind: ProposalKind::Renew,
            });
        }
        // 4. Elections.
        if !self.claims_paused {
            for command in self.candidacy.step(state, observed, me, now, &self.config.election) {
                out.push(Action::Propose { command: Box::new(command), kind: ProposalKind::Claim });
            }
        }
        // 5. Leader duties.
        if let Some(term) = leader_term
            && !self.duties_in_flight
            && now.saturating_sub(self.last_duties) >= self.config.duties_every_ms
        {
            self.last_duties = now;
            let duties = leader_duties(state, observed, me, term, now);
            if !duties.is_empty() {
                self.duties_in_flight = true;
                let command = if duties.len() == 1 {
                    duties.into_iter().next().expect("one duty")
                } else {
                    Command::Batch(duties)
                };
                out.push(Action::Propose { command: Box::new(command), kind: ProposalKind::LeaderDuty });
            }
        }
        out
    }
}

/// Report how an attempt ended.
fn report_finish(task: TaskId, node: NodeId, fencing: u64, report: &TaskReport, now: Millis) -> Action {
    Action::Propose {
        command: Box::new(Command::Finish { task, node, fencing, report: report.clone(), now }),
        kind: ProposalKind::Finish(task),
    }
}

/// Whether the task moved on from `attempt` without being finished by it (lease lost).
fn lost_while_running(state: &State, task: TaskId, attempt: u32) -> bool {
    state.task(task).is_some_and(|t| {
        t.attempt > attempt
            || (t.attempt == attempt
                && t.result.as_ref().is_none_or(|r| r.attempt != attempt)
                && !t.state.is_terminal())
    })
}

/// Why a running attempt this node no longer holds must stop, or `None` to let it finish
/// (at-least-once delivery: its result will be rejected).
fn stop_reason(state: &State, task: TaskId) -> Option<String> {
    let Some(t) = state.task(task) else { return Some("task no longer exists".into()) };
    let job = state.job(task.job)?;
    if t.state == TaskState::Cancelled || job.state == JobState::Cancelled {
        return Some("cancelled".into());
    }
    if t.state.is_terminal() {
        return Some(format!("task is already {}", t.state.name()));
    }
    (job.delivery == Delivery::AtMostOnce).then(|| "lease lost (at-most-once delivery)".into())
}

/// Build the launch description for a committed claim.
pub fn launch_for(state: &State, task: TaskId, fencing: u64, attempt: u32) -> Option<TaskLaunch> {
    let t = state.task(task)?;
    let job = state.job(task.job)?;
    let capsule = state.capsule(&job.capsule, Some(job.version))?;
    let mut env = capsule.spec.env.clone();
    env.insert("FALAK_JOB_ID".into(), task.job.to_string());
    env.insert("FALAK_TASK_ID".into(), task.to_string());
    env.insert("FALAK_TASK_INDEX".into(), task.index.to_string());
    env.insert("FALAK_TASK_COUNT".into(), job.task_count.to_string());
    env.insert("FALAK_ATTEMPT".into(), attempt.to_string());
    Some(TaskLaunch {
        task,
        attempt,
        fencing,
        command: capsule.spec.command.clone(),
        env,
        stdin: t.input.as_ref().map(|i| format!("{i}\n").into_bytes()),
        timeout_ms: job.timeout_ms,
        resources: job.resources,
        disk_bytes: capsule.spec.disk_limit_bytes(),
        network: capsule.spec.network,
        secrets: capsule
            .spec
            .secrets
            .iter()
            .filter_map(|(k, v)| match v {
                falak_core::secret::SecretValue::Sealed(s) => Some((k.clone(), s.clone())),
                _ => None,
            })
            .collect(),
        capsule: capsule.spec.name.clone(),
        artifact: capsule.spec.artifact,
        container: capsule.spec.container.clone(),
        refused: state
            .check_signature(SpecKind::Capsule, &capsule.spec.signed_form(), capsule.signature.as_ref())
            .err()
            .map(|e| format!("not run: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_launch_printed_for_debugging_shows_env_names_not_values() {
        let launch = TaskLaunch {
            task: TaskId { job: falak_core::job::JobId(1), index: 0 },
            attempt: 1,
            fencing: 1,
            command: vec!["true".into()],
            env: BTreeMap::from([("TOKEN".to_owned(), "hunter2".to_owned())]),
            stdin: Some(b"hunter2".to_vec()),
            timeout_ms: None,
            resources: Resources::default(),
            disk_bytes: 1 << 30,
            network: falak_core::capsule::NetworkMode::default(),
            secrets: BTreeMap::new(),
            capsule: "c".into(),
            artifact: None,
            container: None,
            refused: None,
        };
        let printed = format!("{launch:?}");
        assert!(printed.contains("TOKEN") && !printed.contains("hunter2"), "{printed}");
    }

    /// One admitted node, `me`, and a job of two tasks of a capsule with `resources.disk`.
    fn state_with_an_open_job(me: NodeId) -> State {
        let mut state = State::default();
        let record = falak_core::node::NodeRecord {
            id: me,
            name: "n1".into(),
            labels: BTreeMap::new(),
            capacity: Resources::new(4000, 8 << 30),
            cost_per_hour: 0.0,
            transport_addr: "mem:1".into(),
            gossip_addr: "mem:1".into(),
            api_url: String::new(),
            namespaces: None,
        };
        state.apply(&Command::AdmitNode { record, now: 1 });
        let (key, trust) = falak_core::signing::deployer_for_tests();
        state.apply(&trust);
        let text = "name: work\nkind: process\ncommand: [/bin/true]\nresources: { disk: 64Mi }";
        let spec = falak_core::capsule::CapsuleDocument::parse(text).unwrap();
        state.apply(&Command::signed_capsule(spec, &key, 2));
        let request = falak_core::job::JobRequest {
            capsule: "work".into(),
            version: None,
            tasks: falak_core::job::TaskInputs::Count(2),
            max_attempts: None,
            timeout_ms: None,
            delivery: Delivery::AtLeastOnce,
        };
        state.apply(&Command::SubmitJob { request, origin: me, now: 3 });
        state
    }

    fn claims(actions: &[Action]) -> usize {
        let claim = |a: &Action| matches!(a, Action::Propose { kind: ProposalKind::Claim, .. });
        actions.iter().filter(|a| claim(a)).count()
    }

    #[test]
    fn a_node_whose_claims_are_paused_claims_nothing_until_they_resume() {
        let me = NodeId([1; 32]);
        let mut state = state_with_an_open_job(me);
        let mut reconciler = Reconciler::new(me, ReconcileConfig::with_lease(5_000));
        reconciler.pause_claims(true);
        assert_eq!(claims(&reconciler.step(&state, &BTreeMap::new(), None, 10)), 0);
        reconciler.pause_claims(false);
        let actions = reconciler.step(&state, &BTreeMap::new(), None, 20);
        assert_eq!(claims(&actions), 2, "{actions:?}");

        // A claim that committed before the pause still starts, with the capsule's disk limit.
        for action in actions {
            if let Action::Propose { command, .. } = action {
                state.apply(&command);
            }
        }
        reconciler.pause_claims(true);
        let actions = reconciler.step(&state, &BTreeMap::new(), None, 30);
        let started: Vec<u64> =
            actions.iter().filter_map(|a| if let Action::Start(l) = a { Some(l.disk_bytes) } else { None }).collect();
        assert_eq!(started, [64 << 20, 64 << 20], "{actions:?}");
        assert_eq!(claims(&actions), 0);
    }
}
