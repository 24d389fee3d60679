//! Rolling updates of services: the replicas of a service move to another capsule version a few
//! at a time, and back by themselves when the new version does not come up healthy.
//!
//! An update makes a second job for the new version beside the service's current one and
//! records a [`Rollout`]. From then on the ledger leader proposes [`Command::StepRollout`]
//! whenever [`next_step`] has something to do; the state machine computes the step again from
//! the committed state and the command's time, so a duplicate or late proposal does nothing
//! wrong. Each step is one of: start new replicas (within `max_surge` over the replica count),
//! stop one old replica (only while healthy replicas stay at `replicas - max_unavailable` or
//! more), finish (every new replica healthy, no old one left: the service now names the new
//! job), or roll back (a new replica keeps crashing or the deadline passed: the new job is
//! cancelled and the old one brought back to full strength).
//!
//! A replica is *healthy* when it has been RUNNING for `min_ready_ms` (Kubernetes'
//! `minReadySeconds`); an old replica that is RUNNING counts as healthy, since it was before.
//!
//! **Invariant:** a step never stops an old replica that would take the healthy replicas under
//! `replicas - max_unavailable`.
//!
//! [`Command::StepRollout`]: super::Command::StepRollout

use serde::{Deserialize, Serialize};

use super::{Command, LedgerEvent, Outcome, RejectCode, Rejection, State};
use crate::job::{JobId, JobState, Task, TaskId, TaskState, WorkKind};
use crate::{Millis, NodeId};

/// Consecutive quick exits of one new replica that count as "the new version does not start".
pub const CRASHES_TO_ROLL_BACK: u32 = 2;
/// How long a replica must run to count as healthy, unless the update says otherwise.
pub const DEFAULT_MIN_READY_MS: u64 = 2_000;
/// How long an update may take before it is rolled back, unless it says otherwise.
pub const DEFAULT_DEADLINE_MS: u64 = 300_000;

/// What `falak service update` asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceUpdate {
    pub name: String,
    /// The capsule version to move to; the latest when absent.
    pub version: Option<u32>,
    pub max_unavailable: u32,
    pub max_surge: u32,
    pub min_ready_ms: u64,
    pub deadline_ms: u64,
}

/// A service moving between two versions, or how its last move ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub service: String,
    /// The job of the version being replaced, and the job of the new one.
    pub from: JobId,
    pub to: JobId,
    pub from_version: u32,
    pub to_version: u32,
    pub replicas: u32,
    pub max_unavailable: u32,
    pub max_surge: u32,
    pub min_ready_ms: u64,
    pub deadline_ms: u64,
    pub started_at: Millis,
    pub state: RolloutState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Progressing,
    Done { at: Millis },
    RolledBack { at: Millis, reason: String },
}

/// The next thing a rollout does, decided from committed state alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutStep {
    /// Start this many more replicas of the new version.
    AddNew(u32),
    /// Stop this replica of the old version.
    StopOld(TaskId),
    /// Every replica runs the new version and is healthy.
    Finish,
    /// The new version failed: stop it and bring the old one back.
    RollBack(String),
}

/// Counts of one side of a rollout.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Side {
    /// Replicas not ended (queued, running, retrying).
    pub live: u32,
    /// Replicas that count as healthy.
    pub healthy: u32,
}

impl State {
    /// The service's rollout, in progress or the last one.
    pub fn rollout(&self, service: &str) -> Option<&Rollout> {
        self.data.rollouts.get(service)
    }

    /// Every service with a rollout in progress.
    pub fn rollouts_in_progress(&self) -> impl Iterator<Item = &Rollout> {
        self.data.rollouts.values().filter(|r| r.state == RolloutState::Progressing)
    }

    fn side(&self, job: JobId, new: bool, min_ready_ms: u64, now: Millis) -> Side {
        let mut side = Side::default();
        for task in self.job_tasks(job).filter(|t| !t.state.is_terminal()) {
            side.live += 1;
            let ready =
                task.state == TaskState::Running && (!new || now.saturating_sub(task.updated_at) >= min_ready_ms);
            if ready {
                side.healthy += 1;
            }
        }
        side
    }

    pub(super) fn update_service(
        &mut self,
        update: &ServiceUpdate,
        origin: NodeId,
        now: Millis,
        ev: &mut Vec<LedgerEvent>,
    ) -> Outcome {
        let Some(from) = self.data.services.get(&update.name).copied() else {
            return reject(
                RejectCode::NotFound,
                format!("no service named {}; create it with `falak service apply`", update.name),
            );
        };
        if self.rollout(&update.name).is_some_and(|r| r.state == RolloutState::Progressing) {
            return reject(
                RejectCode::Conflict,
                format!(
                    "service {} is already being updated; wait for that update to finish or roll back",
                    update.name
                ),
            );
        }
        let old = self.data.jobs[&from].clone();
        let capsule = match self.resolve_capsule(&old.capsule, update.version) {
            Ok(c) => c.clone(),
            Err(o) => return o,
        };
        if capsule.version == old.version {
            return reject(
                RejectCode::Conflict,
                format!("service {} already runs capsule {} version {}", update.name, old.capsule, old.version),
            );
        }
        if update.max_unavailable == 0 && update.max_surge == 0 {
            return reject(
                RejectCode::Invalid,
                "max_unavailable and max_surge cannot both be 0: no replica could ever be replaced",
            );
        }
        let replicas = old.task_count;
        let to = self.new_job(&capsule, WorkKind::Service, update.name.clone(), 0, u32::MAX, origin, now);
        let rollout = Rollout {
            service: update.name.clone(),
            from,
            to,
            from_version: old.version,
            to_version: capsule.version,
            replicas,
            max_unavailable: update.max_unavailable.min(replicas),
            max_surge: update.max_surge,
            min_ready_ms: update.min_ready_ms,
            deadline_ms: update.deadline_ms,
            started_at: now,
            state: RolloutState::Progressing,
        };
        self.data.rollouts.insert(update.name.clone(), rollout);
        ev.push(LedgerEvent::ServiceUpdating {
            name: update.name.clone(),
            from_version: old.version,
            to_version: capsule.version,
        });
        Outcome::ServiceUpdating { name: update.name.clone(), job: to, version: capsule.version }
    }

    /// What the rollout of `service` does next at `now`; `None` when nothing changes.
    pub fn next_step(&self, service: &str, now: Millis) -> Option<RolloutStep> {
        let r = self.rollout(service).filter(|r| r.state == RolloutState::Progressing)?;
        let old = self.side(r.from, false, r.min_ready_ms, now);
        let new = self.side(r.to, true, r.min_ready_ms, now);
        let new_tasks: Vec<&Task> = self.job_tasks(r.to).collect();
        if let Some(crashing) = new_tasks.iter().find(|t| t.quick_exits >= CRASHES_TO_ROLL_BACK) {
            let mut why = crashing.last_error.clone().unwrap_or_else(|| "it exited".into());
            if let Some(line) = crashing
                .result
                .as_ref()
                .and_then(|r| r.report.stderr_tail.lines().last())
                .filter(|l| !l.trim().is_empty())
            {
                why = format!("{why}; its stderr ended with: {line}");
            }
            return Some(RolloutStep::RollBack(format!(
                "replica {} of version {} exited {} times in a row without staying up ({why})",
                crashing.id, r.to_version, crashing.quick_exits
            )));
        }
        if let Some(failed) = new_tasks.iter().find(|t| t.state == TaskState::Failed) {
            return Some(RolloutStep::RollBack(format!("replica {} of version {} failed", failed.id, r.to_version)));
        }
        if now.saturating_sub(r.started_at) > r.deadline_ms {
            return Some(RolloutStep::RollBack(format!(
                "{} of {} replicas of version {} were healthy after the deadline of {} s",
                new.healthy,
                r.replicas,
                r.to_version,
                r.deadline_ms / 1000
            )));
        }
        if new.healthy >= r.replicas && old.live == 0 {
            return Some(RolloutStep::Finish);
        }
        // Start new replicas while the surge allows.
        let can_add =
            (r.replicas + r.max_surge).saturating_sub(old.live + new.live).min(r.replicas.saturating_sub(new.live));
        if can_add > 0 {
            return Some(RolloutStep::AddNew(can_add));
        }
        // Stop an old replica: one that is not running costs nothing; a running one only while
        // the healthy replicas stay at `replicas - max_unavailable` without it.
        let old_live: Vec<&Task> = self.job_tasks(r.from).filter(|t| !t.state.is_terminal()).collect();
        if let Some(idle) = old_live.iter().rev().find(|t| t.state != TaskState::Running) {
            return Some(RolloutStep::StopOld(idle.id));
        }
        let floor = r.replicas.saturating_sub(r.max_unavailable);
        if (old.healthy + new.healthy).saturating_sub(1) >= floor
            && let Some(running) = old_live.iter().rev().find(|t| t.state == TaskState::Running)
        {
            return Some(RolloutStep::StopOld(running.id));
        }
        None
    }

    pub(super) fn step_rollout(&mut self, service: &str, now: Millis, ev: &mut Vec<LedgerEvent>) -> Outcome {
        let Some(step) = self.next_step(service, now) else { return Outcome::Done };
        let r = self.data.rollouts[service].clone();
        match &step {
            RolloutStep::AddNew(n) => {
                let first = self.data.jobs[&r.to].task_count;
                for index in first..first + n {
                    self.new_task(TaskId { job: r.to, index }, None, now);
                }
                self.data.jobs.get_mut(&r.to).expect("rollout job exists").task_count = first + n;
            }
            RolloutStep::StopOld(task) => {
                self.end_task(
                    *task,
                    TaskState::Cancelled,
                    None,
                    Some(format!("replaced by version {}", r.to_version)),
                    now,
                    ev,
                );
            }
            RolloutStep::Finish => {
                self.finish_job(r.from, JobState::Cancelled, now, ev);
                self.data.services.insert(service.to_owned(), r.to);
                let job = self.data.jobs.get_mut(&r.to).expect("rollout job exists");
                job.cancelled = 0;
                self.set_rollout_state(service, RolloutState::Done { at: now });
                ev.push(LedgerEvent::ServiceUpdated {
                    name: service.to_owned(),
                    version: r.to_version,
                    rolled_back: None,
                });
            }
            RolloutStep::RollBack(reason) => {
                let ids: Vec<TaskId> = self.job_tasks(r.to).filter(|t| !t.state.is_terminal()).map(|t| t.id).collect();
                for id in ids {
                    self.end_task(id, TaskState::Cancelled, None, Some(format!("rolled back: {reason}")), now, ev);
                }
                self.finish_job(r.to, JobState::Cancelled, now, ev);
                // The old version back at full strength: every replica stopped by the update
                // starts again.
                let stopped: Vec<TaskId> =
                    self.job_tasks(r.from).filter(|t| t.state.is_terminal()).map(|t| t.id).collect();
                for id in stopped {
                    self.new_task(id, None, now);
                }
                self.data.jobs.get_mut(&r.from).expect("service job exists").cancelled = 0;
                self.set_rollout_state(service, RolloutState::RolledBack { at: now, reason: reason.clone() });
                ev.push(LedgerEvent::ServiceUpdated {
                    name: service.to_owned(),
                    version: r.from_version,
                    rolled_back: Some(reason.clone()),
                });
            }
        }
        Outcome::RolloutStepped { service: service.to_owned(), step: format!("{step:?}") }
    }

    fn set_rollout_state(&mut self, service: &str, state: RolloutState) {
        if let Some(r) = self.data.rollouts.get_mut(service) {
            r.state = state;
        }
    }

    /// A service removed mid-update takes its new replicas with it.
    pub(super) fn end_rollout_of_removed(&mut self, service: &str, now: Millis, ev: &mut Vec<LedgerEvent>) {
        let Some(r) = self.data.rollouts.remove(service) else { return };
        if r.state != RolloutState::Progressing {
            return;
        }
        let ids: Vec<TaskId> = self.job_tasks(r.to).filter(|t| !t.state.is_terminal()).map(|t| t.id).collect();
        for id in ids {
            self.end_task(id, TaskState::Cancelled, None, Some("service removed".into()), now, ev);
        }
        self.finish_job(r.to, JobState::Cancelled, now, ev);
    }
}

/// The commands the ledger leader of `term` proposes for rollouts at `now`.
pub fn rollout_duties(state: &State, term: u64, now: Millis) -> Vec<Command> {
    state
        .rollouts_in_progress()
        .filter(|r| state.next_step(&r.service, now).is_some())
        .map(|r| Command::StepRollout { service: r.service.clone(), term, now })
        .collect()
}

fn reject(code: RejectCode, message: impl Into<String>) -> Outcome {
    Outcome::Rejected(Rejection { code, message: message.into() })
}
