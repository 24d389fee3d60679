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

/// The body of `POST /api/v1/services/{name}/update` (JSON or YAML).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceUpdateRequest {
    /// The capsule version to move to; the latest when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Replicas that may be down at once during the update; 1 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<u32>,
    /// Replicas that may run beyond the replica count during the update; 0 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<u32>,
    /// How long a new replica must run to count as healthy, e.g. `5s`; 2 s when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ready: Option<String>,
    /// How long the whole update may take before it is rolled back, e.g. `10m`; 5 minutes when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
}

impl ServiceUpdateRequest {
    /// Validate into the ledger's update of service `name`. Errors name the field.
    pub fn into_update(self, name: String) -> Result<falak_core::ledger::ServiceUpdate, SpecError> {
        use falak_core::ledger::{DEFAULT_DEADLINE_MS, DEFAULT_MIN_READY_MS};
        validate_name("name", &name)?;
        if self.version == Some(0) {
            return Err(SpecError::new("version", "versions start at 1"));
        }
        let (max_unavailable, max_surge) = (self.max_unavailable.unwrap_or(1), self.max_surge.unwrap_or(0));
        if max_unavailable == 0 && max_surge == 0 {
            return Err(SpecError::new(
                "max_unavailable",
                "max_unavailable and max_surge cannot both be 0: no replica could ever be replaced",
            ));
        }
        if max_surge > MAX_REPLICAS {
            return Err(SpecError::new("max_surge", format!("must be at most {MAX_REPLICAS}")));
        }
        let millis = |field: &str, text: &Option<String>, default: u64| -> Result<u64, SpecError> {
            match text {
                None => Ok(default),
                Some(t) => Ok(falak_core::capsule::parse_duration(field, t)?.as_millis() as u64),
            }
        };
        Ok(falak_core::ledger::ServiceUpdate {
            name,
            version: self.version,
            max_unavailable,
            max_surge,
            min_ready_ms: millis("min_ready", &self.min_ready, DEFAULT_MIN_READY_MS)?,
            deadline_ms: millis("deadline", &self.deadline, DEFAULT_DEADLINE_MS)?,
        })
    }
}

/// A service's rolling update, in progress or the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutInfo {
    pub from_version: u32,
    pub to_version: u32,
    /// `progressing`, `done` or `rolled_back`.
    pub state: String,
    /// Why it was rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub max_unavailable: u32,
    pub max_surge: u32,
    pub started_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Millis>,
}

impl RolloutInfo {
    fn new(r: &falak_core::ledger::Rollout) -> RolloutInfo {
        use falak_core::ledger::RolloutState as S;
        let (state, reason, ended_at) = match &r.state {
            S::Progressing => ("progressing", None, None),
            S::Done { at } => ("done", None, Some(*at)),
            S::RolledBack { at, reason } => ("rolled_back", Some(reason.clone()), Some(*at)),
        };
        RolloutInfo {
            from_version: r.from_version,
            to_version: r.to_version,
            state: state.into(),
            reason,
            max_unavailable: r.max_unavailable,
            max_surge: r.max_surge,
            started_at: r.started_at,
            ended_at,
        }
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
    /// The replicas; during an update, those of both versions.
    pub tasks: Vec<TaskInfo>,
    /// The service's update in progress, or its last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutInfo>,
}

impl ServiceInfo {
    /// The service held by `job` (also after removal, when the job stays as `CANCELLED`).
    pub fn new(state: &LedgerState, job: &Job) -> ServiceInfo {
        let rollout = state.rollout(&job.name).filter(|r| r.from == job.id || r.to == job.id);
        // While it moves, the replicas of the version it moves to are the service's too.
        let moving = rollout.filter(|r| r.state == falak_core::ledger::RolloutState::Progressing).map(|r| r.to);
        let tasks: Vec<TaskInfo> = state
            .job_tasks(job.id)
            .chain(moving.into_iter().flat_map(|to| state.job_tasks(to)))
            .map(|t| TaskInfo::new(t, state))
            .collect();
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
            rollout: rollout.map(RolloutInfo::new),
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

pub(crate) async fn update(
    State(ctx): State<Ctx>,
    ApiPath(name): ApiPath<String>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ServiceInfo>), ApiError> {
    let idempotency = crate::routes::idempotency_key(&headers)?;
    let request: ServiceUpdateRequest = body.parse()?;
    let update = request.into_update(name)?;
    let service = ctx.ask(|reply| Action::UpdateService { update, idempotency, reply }).await?;
    Ok((StatusCode::ACCEPTED, Json(service)))
}

pub(crate) async fn remove(
    State(ctx): State<Ctx>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ServiceInfo>, ApiError> {
    validate_name("name", &name)?;
    ctx.ask(|reply| Action::RemoveService { name, reply }).await.map(Json)
}
