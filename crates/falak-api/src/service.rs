//! `/api/v1/services`: capsules kept running as N replicas.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use falak_core::Millis;
use falak_core::job::{Job, JobId, JobState, MAX_REPLICAS, ServiceRequest, TaskState};
use falak_core::ledger::State as LedgerState;
use falak_core::spec::{SpecError, validate_name};
use serde::{Deserialize, Serialize};

use crate::action::Action;
use crate::error::ApiError;
use crate::routes::{ApiPath, Body, Ctx};
use crate::task::TaskInfo;

/// The body of `POST /api/v1/services` (JSON or YAML).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSubmission {
    pub name: String,
    pub capsule: String,
    /// A capsule version; the latest when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// How many replicas to keep running; 1 when absent. Applying again with another number
    /// scales the service.
    #[serde(default = "one")]
    pub replicas: u32,
}

fn one() -> u32 {
    1
}

impl ServiceSubmission {
    /// Validate into the ledger's request. Errors name the field.
    pub fn into_request(self) -> Result<ServiceRequest, SpecError> {
        validate_name("name", &self.name)?;
        validate_name("capsule", &self.capsule)?;
        if self.version == Some(0) {
            return Err(SpecError::new("version", "versions start at 1"));
        }
        if self.replicas > MAX_REPLICAS {
            return Err(SpecError::new("replicas", format!("must be at most {MAX_REPLICAS}, got {}", self.replicas)));
        }
        Ok(ServiceRequest { name: self.name, capsule: self.capsule, version: self.version, replicas: self.replicas })
    }
}

/// A service and its replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub name: String,
    /// The job that holds the replicas (also the service's workload id).
    pub job: JobId,
    pub capsule: String,
    pub version: u32,
    /// Replicas wanted.
    pub replicas: u32,
    /// Replicas running now.
    pub running: u32,
    /// `RUNNING` while the service exists; `CANCELLED` once removed.
    pub state: JobState,
    pub created_at: Millis,
    pub tasks: Vec<TaskInfo>,
}

impl ServiceInfo {
    /// The service held by `job` (also after removal, when the job stays as `CANCELLED`).
    pub fn new(state: &LedgerState, job: &Job) -> ServiceInfo {
        let tasks: Vec<TaskInfo> = state.job_tasks(job.id).map(|t| TaskInfo::new(t, state)).collect();
        ServiceInfo {
            name: job.name.clone(),
            job: job.id,
            capsule: job.capsule.clone(),
            version: job.version,
            replicas: job.task_count,
            running: tasks.iter().filter(|t| t.state == TaskState::Running).count() as u32,
            state: job.state,
            created_at: job.created_at,
            tasks,
        }
    }

    pub fn get(state: &LedgerState, name: &str) -> Result<ServiceInfo, ApiError> {
        state.service(name).map(|job| ServiceInfo::new(state, job)).ok_or_else(|| service_not_found(name))
    }

    /// Every service, by name.
    pub fn list(state: &LedgerState) -> Vec<ServiceInfo> {
        state.services().map(|job| ServiceInfo::new(state, job)).collect()
    }
}

pub(crate) fn service_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("service {name} not found"))
}

pub(crate) async fn list(State(ctx): State<Ctx>) -> Result<Json<Vec<ServiceInfo>>, ApiError> {
    ctx.ask(|reply| Action::ListServices { reply }).await.map(Json)
}

pub(crate) async fn apply(
    State(ctx): State<Ctx>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ServiceInfo>), ApiError> {
    let idempotency = crate::routes::idempotency_key(&headers)?;
    let submission: ServiceSubmission = body.parse()?;
    let request = submission.into_request()?;
    let service = ctx.ask(|reply| Action::ApplyService { request, idempotency, reply }).await?;
    Ok((StatusCode::CREATED, Json(service)))
}

pub(crate) async fn show(
    State(ctx): State<Ctx>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ServiceInfo>, ApiError> {
    validate_name("name", &name)?;
    ctx.ask(|reply| Action::GetService { name, reply }).await.map(Json)
}

pub(crate) async fn remove(
    State(ctx): State<Ctx>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ServiceInfo>, ApiError> {
    validate_name("name", &name)?;
    ctx.ask(|reply| Action::RemoveService { name, reply }).await.map(Json)
}
