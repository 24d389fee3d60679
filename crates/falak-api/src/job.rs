//! `/api/v1/jobs`: submit, list, inspect, cancel jobs and aggregate their results.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use falak_core::capsule::{MAX_ATTEMPTS, parse_duration};
use falak_core::job::{
    Delivery, Job, JobId, JobRequest, JobState, MAX_INPUT_BYTES, MAX_TASKS_PER_JOB, Task, TaskInputs, TaskState,
    WorkKind,
};
use falak_core::ledger::State as LedgerState;
use falak_core::resources::Resources;
use falak_core::spec::{SpecError, validate_name};
use falak_core::{Millis, NodeId};
use serde::{Deserialize, Serialize};

use crate::action::Action;
use crate::error::ApiError;
use crate::routes::{ApiPath, ApiQuery, Body, Ctx, parse_id};
use crate::task::TaskInfo;

/// The body of `POST /api/v1/jobs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSubmission {
    /// The capsule to run.
    pub capsule: String,
    /// A capsule version; the latest when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// How many tasks (each gets its index). Exclusive with `inputs`; 1 when neither is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<u32>,
    /// One task per input line. Exclusive with `tasks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<String>>,
    /// Extra attempts per task after the first fails; the capsule's policy when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Per-task timeout (`30s`, `5m`); the capsule's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// `at_least_once` (default) or `at_most_once`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
}

impl JobSubmission {
    /// Validate the submission into the ledger's request. Errors name the field.
    pub fn into_request(self) -> Result<JobRequest, SpecError> {
        validate_name("capsule", &self.capsule)?;
        if self.version == Some(0) {
            return Err(SpecError::new("version", "versions start at 1"));
        }
        let tasks = match (self.tasks, self.inputs) {
            (Some(_), Some(_)) => return Err(SpecError::new("tasks", "give either `tasks` or `inputs`, not both")),
            (None, None) => TaskInputs::Count(1),
            (Some(n), None) => {
                if n == 0 || n > MAX_TASKS_PER_JOB {
                    return Err(SpecError::new("tasks", format!("must be between 1 and {MAX_TASKS_PER_JOB}, got {n}")));
                }
                TaskInputs::Count(n)
            }
            (None, Some(inputs)) => {
                if inputs.is_empty() || inputs.len() > MAX_TASKS_PER_JOB as usize {
                    return Err(SpecError::new(
                        "inputs",
                        format!("must hold between 1 and {MAX_TASKS_PER_JOB} lines, got {}", inputs.len()),
                    ));
                }
                for (i, input) in inputs.iter().enumerate() {
                    if input.len() > MAX_INPUT_BYTES {
                        return Err(SpecError::new(
                            format!("inputs[{i}]"),
                            format!("longer than {MAX_INPUT_BYTES} bytes"),
                        ));
                    }
                    if input.contains('\0') {
                        return Err(SpecError::new(format!("inputs[{i}]"), "contains a NUL byte"));
                    }
                }
                TaskInputs::Inputs(inputs)
            }
        };
        let max_attempts = match self.retries {
            None => None,
            Some(r) if r >= MAX_ATTEMPTS => {
                return Err(SpecError::new("retries", format!("must be at most {}, got {r}", MAX_ATTEMPTS - 1)));
            }
            Some(r) => Some(r + 1),
        };
        let timeout_ms = match &self.timeout {
            None => None,
            Some(t) => Some(parse_duration("timeout", t)?.as_millis() as u64),
        };
        Ok(JobRequest {
            capsule: self.capsule,
            version: self.version,
            tasks,
            max_attempts,
            timeout_ms,
            delivery: self.delivery.unwrap_or_default(),
        })
    }
}

/// How many of a job's tasks are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounts {
    pub queued: u32,
    pub assigned: u32,
    pub running: u32,
    pub retrying: u32,
    pub completed: u32,
    pub failed: u32,
    pub cancelled: u32,
}

impl TaskCounts {
    pub fn count<'a>(tasks: impl IntoIterator<Item = &'a Task>) -> TaskCounts {
        let mut counts = TaskCounts::default();
        for task in tasks {
            let slot = match task.state {
                TaskState::Queued => &mut counts.queued,
                TaskState::Assigned => &mut counts.assigned,
                TaskState::Running => &mut counts.running,
                TaskState::Retrying => &mut counts.retrying,
                TaskState::Completed => &mut counts.completed,
                TaskState::Failed => &mut counts.failed,
                TaskState::Cancelled => &mut counts.cancelled,
            };
            *slot += 1;
        }
        counts
    }

    /// Tasks in a terminal state.
    pub fn finished(&self) -> u32 {
        self.completed + self.failed + self.cancelled
    }
}

/// A job with its task counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: JobId,
    /// `batch`, or `service` for the job that holds a service's replicas.
    pub kind: WorkKind,
    /// The capsule name for batch jobs, the service name for services.
    pub name: String,
    pub capsule: String,
    pub version: u32,
    pub state: JobState,
    /// How many tasks the job has.
    pub tasks: u32,
    pub counts: TaskCounts,
    pub max_attempts: u32,
    pub timeout_ms: Option<u64>,
    pub delivery: Delivery,
    /// What each task reserves on its node.
    pub resources: Resources,
    /// The node that accepted the submission.
    pub origin: NodeId,
    pub created_at: Millis,
    pub finished_at: Option<Millis>,
    /// From creation to finish; `None` while the job runs.
    pub duration_ms: Option<u64>,
}

impl JobInfo {
    pub fn new<'a>(job: &Job, tasks: impl IntoIterator<Item = &'a Task>) -> JobInfo {
        JobInfo {
            id: job.id,
            kind: job.kind,
            name: job.name.clone(),
            capsule: job.capsule.clone(),
            version: job.version,
            state: job.state,
            tasks: job.task_count,
            counts: TaskCounts::count(tasks),
            max_attempts: job.max_attempts,
            timeout_ms: job.timeout_ms,
            delivery: job.delivery,
            resources: job.resources,
            origin: job.origin,
            created_at: job.created_at,
            finished_at: job.finished_at,
            duration_ms: job.finished_at.map(|f| f.saturating_sub(job.created_at)),
        }
    }

    pub fn get(state: &LedgerState, id: JobId) -> Result<JobInfo, ApiError> {
        let job = state.job(id).ok_or_else(|| job_not_found(id))?;
        Ok(JobInfo::new(job, state.job_tasks(id)))
    }

    /// Batch jobs, newest first, at most `limit`.
    pub fn list(state: &LedgerState, limit: usize) -> Vec<JobInfo> {
        state
            .jobs()
            .rev()
            .filter(|j| j.kind == WorkKind::Batch)
            .take(limit)
            .map(|j| JobInfo::new(j, state.job_tasks(j.id)))
            .collect()
    }
}

pub(crate) fn job_not_found(id: JobId) -> ApiError {
    ApiError::not_found(format!("job {id} not found"))
}

/// One task's part of a job's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOutput {
    pub task: falak_core::job::TaskId,
    pub state: TaskState,
    pub exit_code: Option<i32>,
    /// The tail of the task's stdout kept in the ledger (the last 4 KiB).
    pub output: String,
    pub error: Option<String>,
}

impl TaskOutput {
    pub fn of(task: &TaskInfo) -> TaskOutput {
        TaskOutput {
            task: task.id,
            state: task.state,
            exit_code: task.exit_code,
            output: task.stdout_tail.clone(),
            error: task.error.clone(),
        }
    }
}

/// Join task outputs in task order, ending each with a newline so tasks never share a line.
pub fn result_text(tasks: &[TaskInfo]) -> String {
    let mut text = String::new();
    for task in tasks {
        text.push_str(&task.stdout_tail);
        if !task.stdout_tail.is_empty() && !task.stdout_tail.ends_with('\n') {
            text.push('\n');
        }
    }
    text
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    limit: Option<usize>,
}

/// Jobs listed when no `limit` is given, and the most ever listed at once.
pub const DEFAULT_LIST_LIMIT: usize = 100;
pub const MAX_LIST_LIMIT: usize = 10_000;

/// How a job result is rendered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResultQuery {
    #[serde(default)]
    format: ResultFormat,
}

pub(crate) async fn submit(
    State(ctx): State<Ctx>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<JobInfo>), ApiError> {
    let idempotency = crate::routes::idempotency_key(&headers)?;
    let submission: JobSubmission = body.parse()?;
    let request = submission.into_request()?;
    let job = ctx.ask(|reply| Action::SubmitJob { request, idempotency, reply }).await?;
    Ok((StatusCode::CREATED, Json(job)))
}

pub(crate) async fn list(
    State(ctx): State<Ctx>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Vec<JobInfo>>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(ApiError::invalid(format!("limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}")));
    }
    ctx.ask(|reply| Action::ListJobs { limit, reply }).await.map(Json)
}

pub(crate) async fn show(State(ctx): State<Ctx>, ApiPath(id): ApiPath<String>) -> Result<Json<JobInfo>, ApiError> {
    let job = parse_id(&id)?;
    ctx.ask(|reply| Action::GetJob { job, reply }).await.map(Json)
}

pub(crate) async fn tasks(
    State(ctx): State<Ctx>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Vec<TaskInfo>>, ApiError> {
    let job = parse_id(&id)?;
    ctx.ask(|reply| Action::JobTasks { job, reply }).await.map(Json)
}

pub(crate) async fn cancel(State(ctx): State<Ctx>, ApiPath(id): ApiPath<String>) -> Result<Json<JobInfo>, ApiError> {
    let job = parse_id(&id)?;
    ctx.ask(|reply| Action::CancelJob { job, reply }).await.map(Json)
}

pub(crate) async fn result(
    State(ctx): State<Ctx>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ResultQuery>,
) -> Result<Response, ApiError> {
    let job = parse_id(&id)?;
    let tasks = ctx.ask(|reply| Action::JobTasks { job, reply }).await?;
    Ok(match query.format {
        ResultFormat::Text => {
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], result_text(&tasks)).into_response()
        }
        ResultFormat::Json => Json(tasks.iter().map(TaskOutput::of).collect::<Vec<_>>()).into_response(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submission(json: serde_json::Value) -> Result<JobRequest, String> {
        let s: JobSubmission = falak_core::spec::from_json_value(json).map_err(|e| e.to_string())?;
        s.into_request().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_to_one_task_and_capsule_policies() {
        let r = submission(serde_json::json!({ "capsule": "hello" })).unwrap();
        assert_eq!(r.tasks, TaskInputs::Count(1));
        assert_eq!(r.max_attempts, None);
        assert_eq!(r.timeout_ms, None);
        assert_eq!(r.delivery, Delivery::AtLeastOnce);
    }

    #[test]
    fn retries_are_extra_attempts() {
        let r = submission(serde_json::json!({ "capsule": "hello", "retries": 2, "timeout": "30s" })).unwrap();
        assert_eq!(r.max_attempts, Some(3));
        assert_eq!(r.timeout_ms, Some(30_000));
    }

    #[test]
    fn errors_name_the_field() {
        let both = submission(serde_json::json!({ "capsule": "a", "tasks": 2, "inputs": ["x"] })).unwrap_err();
        assert_eq!(both, "field `tasks`: give either `tasks` or `inputs`, not both");
        let unknown = submission(serde_json::json!({ "capsule": "a", "colour": 1 })).unwrap_err();
        assert!(unknown.contains("unknown field `colour`"), "{unknown}");
        let zero = submission(serde_json::json!({ "capsule": "a", "tasks": 0 })).unwrap_err();
        assert!(zero.starts_with("field `tasks`"), "{zero}");
        let nul = submission(serde_json::json!({ "capsule": "a", "inputs": ["ok", "b\u{0}"] })).unwrap_err();
        assert_eq!(nul, "field `inputs[1]`: contains a NUL byte");
        let timeout = submission(serde_json::json!({ "capsule": "a", "timeout": "soon" })).unwrap_err();
        assert!(timeout.starts_with("field `timeout`"), "{timeout}");
    }
}
