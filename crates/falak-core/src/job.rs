//! Jobs, services and their tasks.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::placement::Decision;
use crate::resources::Resources;
use crate::{Millis, NodeId};

/// Ledger-assigned job id, displayed `j<N>`. Serialized as that text in human-readable
/// formats (JSON), as a number otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u64);

/// A task: the `index`-th task of a job, displayed `j<N>-t<I>`. Serialized as that text in
/// human-readable formats (JSON, where it is also a map key), as a pair otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId {
    pub job: JobId,
    pub index: u32,
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "j{}", self.0)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-t{}", self.job, self.index)
    }
}

/// Why a string is not a job or task id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a {1} id; ids look like {2}")]
pub struct ParseIdError(pub String, pub &'static str, pub &'static str);

impl FromStr for JobId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix('j')
            .and_then(|n| n.parse().ok())
            .map(JobId)
            .ok_or_else(|| ParseIdError(s.to_owned(), "job", "`j12`"))
    }
}

impl FromStr for TaskId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseIdError(s.to_owned(), "task", "`j12-t3`");
        let (job, index) = s.split_once("-t").ok_or_else(bad)?;
        Ok(TaskId { job: job.parse().map_err(|_| bad())?, index: index.parse().map_err(|_| bad())? })
    }
}

impl Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() { s.collect_str(self) } else { s.serialize_u64(self.0) }
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
        } else {
            Ok(JobId(u64::deserialize(d)?))
        }
    }
}

impl Serialize for TaskId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() { s.collect_str(self) } else { (self.job.0, self.index).serialize(s) }
    }
}

impl<'de> Deserialize<'de> for TaskId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
        } else {
            let (job, index) = <(u64, u32)>::deserialize(d)?;
            Ok(TaskId { job: JobId(job), index })
        }
    }
}

/// Whether a job is a batch of finite tasks or a service of long-running replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkKind {
    Batch,
    Service,
}

/// What happens to a task when its node loses the lease (e.g. is partitioned away).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// The node lets the task finish; its stale result is rejected. The default.
    #[default]
    AtLeastOnce,
    /// The node stops the task as soon as it learns it lost the lease.
    AtMostOnce,
}

/// Task states. `RETRYING` sits between attempts; `CANCELLED` ends tasks of a cancelled job or
/// of replicas removed by scaling down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskState {
    Queued,
    Assigned,
    Running,
    Completed,
    Failed,
    Retrying,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 7] = [
        TaskState::Queued,
        TaskState::Assigned,
        TaskState::Running,
        TaskState::Completed,
        TaskState::Failed,
        TaskState::Retrying,
        TaskState::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Completed | TaskState::Failed | TaskState::Cancelled)
    }

    /// Waiting for an election.
    pub fn is_open(self) -> bool {
        matches!(self, TaskState::Queued | TaskState::Retrying)
    }

    pub fn name(self) -> &'static str {
        match self {
            TaskState::Queued => "QUEUED",
            TaskState::Assigned => "ASSIGNED",
            TaskState::Running => "RUNNING",
            TaskState::Completed => "COMPLETED",
            TaskState::Failed => "FAILED",
            TaskState::Retrying => "RETRYING",
            TaskState::Cancelled => "CANCELLED",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn name(self) -> &'static str {
        match self {
            JobState::Running => "RUNNING",
            JobState::Completed => "COMPLETED",
            JobState::Failed => "FAILED",
            JobState::Cancelled => "CANCELLED",
        }
    }
}

/// A job as submitted (already validated by the API layer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    pub capsule: String,
    /// A specific capsule version; the latest when absent.
    pub version: Option<u32>,
    /// Either a task count or one input per task.
    pub tasks: TaskInputs,
    /// Attempts per task; the capsule's `max_attempts` when absent.
    pub max_attempts: Option<u32>,
    /// Per-task timeout; the capsule's when absent.
    pub timeout_ms: Option<u64>,
    pub delivery: Delivery,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskInputs {
    Count(u32),
    Inputs(Vec<String>),
}

/// The most tasks one job may have.
pub const MAX_TASKS_PER_JOB: u32 = 100_000;
/// The most bytes of one task input.
pub const MAX_INPUT_BYTES: usize = 64 * 1024;

/// A job in committed state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub kind: WorkKind,
    /// For services, the service name; for batch jobs, the capsule name.
    pub name: String,
    pub capsule: String,
    pub version: u32,
    pub task_count: u32,
    pub max_attempts: u32,
    pub timeout_ms: Option<u64>,
    pub delivery: Delivery,
    pub resources: Resources,
    /// The node that accepted the submission; proximity is measured from it.
    pub origin: NodeId,
    pub state: JobState,
    pub created_at: Millis,
    pub finished_at: Option<Millis>,
    pub completed: u32,
    pub failed: u32,
    pub cancelled: u32,
}

/// A won claim: the node may run this attempt while the lease holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub node: NodeId,
    pub attempt: u32,
    /// Strictly increasing across the whole ledger; a result must carry the current one.
    pub fencing: u64,
    pub claimed_at: Millis,
    pub lease_until: Millis,
    pub started_at: Option<Millis>,
}

/// What a node reports when a task attempt ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    pub exit_code: Option<i32>,
    /// Set when the attempt did not run to a normal exit (timeout, start failure, signal).
    pub error: Option<String>,
    pub duration_ms: u64,
    pub stdout_tail: String,
    pub stderr_tail: String,
}

impl TaskReport {
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && self.error.is_none()
    }
}

/// The most output bytes per stream kept in the ledger for one attempt; full logs stay on the
/// node that ran the task.
pub const LEDGER_TAIL_BYTES: usize = 4096;

/// The outcome of the attempt that ended a task (or of its latest attempt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    pub node: NodeId,
    pub attempt: u32,
    pub report: TaskReport,
    pub finished_at: Millis,
}

/// A task in committed state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub input: Option<String>,
    pub state: TaskState,
    /// The current attempt, from 1.
    pub attempt: u32,
    pub claim: Option<Claim>,
    /// The latest finished attempt.
    pub result: Option<TaskResult>,
    /// Why the latest attempt ended without a result (lease expired, node offline).
    pub last_error: Option<String>,
    /// The decision record of the latest won election.
    pub decision: Option<Decision>,
    pub updated_at: Millis,
    /// No election before this time: a service replica that exited waits out its backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Millis>,
    /// Consecutive exits of a service replica that ran shorter than [`RESTART_HEALTHY_RUN_MS`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub quick_exits: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A service replica that exits is restarted after `RESTART_BACKOFF_BASE_MS × 2^(quick exits − 1)`,
/// at most [`RESTART_BACKOFF_MAX_MS`].
pub const RESTART_BACKOFF_BASE_MS: u64 = 250;
pub const RESTART_BACKOFF_MAX_MS: u64 = 30_000;
/// A replica that ran at least this long was healthy: its next restart is immediate.
pub const RESTART_HEALTHY_RUN_MS: u64 = 10_000;

/// The restart delay after `quick_exits` consecutive quick exits (0 after a healthy run).
pub fn restart_backoff_ms(quick_exits: u32) -> u64 {
    match quick_exits {
        0 => 0,
        n => RESTART_BACKOFF_BASE_MS.saturating_mul(1 << (n - 1).min(16)).min(RESTART_BACKOFF_MAX_MS),
    }
}

/// A service as submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRequest {
    pub name: String,
    pub capsule: String,
    pub version: Option<u32>,
    pub replicas: u32,
}

/// The most replicas one service may ask for.
pub const MAX_REPLICAS: u32 = 10_000;

/// Truncate `text` to its last `max` bytes on a character boundary.
pub fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let t = TaskId { job: JobId(12), index: 3 };
        assert_eq!(t.to_string(), "j12-t3");
        assert_eq!("j12-t3".parse::<TaskId>().unwrap(), t);
        assert_eq!("j7".parse::<JobId>().unwrap(), JobId(7));
        assert!("12".parse::<JobId>().is_err());
        assert!("j1-x3".parse::<TaskId>().is_err());
    }

    #[test]
    fn tail_keeps_last_bytes_on_char_boundary() {
        assert_eq!(tail("hello", 3), "llo");
        assert_eq!(tail("héllo", 4), "llo");
        assert_eq!(tail("ab", 5), "ab");
    }
}
