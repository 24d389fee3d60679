//! `/api/v1/workloads`: seed 003's workload shape, an alias over services and jobs.
//!
//! A workload's id is the id of the job that holds it (`j12`); a service can also be named by
//! its name. Creating a workload creates a service from a capsule; resources and placement
//! come from the capsule, so a request that sets them is refused rather than silently ignored.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use falak_core::Millis;
use falak_core::job::{Job, JobId, JobState, ServiceRequest, TaskState, WorkKind};
use falak_core::ledger::State as LedgerState;
use falak_core::placement::Strategy;
use falak_core::resources::format_bytes;
use falak_core::spec::{SpecError, validate_name};
use serde::{Deserialize, Serialize};

use crate::action::Action;
use crate::error::ApiError;
use crate::job::{DEFAULT_LIST_LIMIT, job_not_found};
use crate::routes::{ApiPath, Body, Ctx};
use crate::service::{ServiceSubmission, service_not_found};

/// The only namespace there is.
pub const NAMESPACE: &str = "default";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    Service,
    Job,
}

/// How a request names a workload: a job id (`j12`), or a service name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadRef {
    Job(JobId),
    Service(String),
}

impl WorkloadRef {
    /// Job ids win over service names, so a service named like a job id (`j1`) is reached
    /// through its job id.
    pub fn parse(text: &str) -> Result<WorkloadRef, ApiError> {
        if let Ok(job) = text.parse() {
            return Ok(WorkloadRef::Job(job));
        }
        validate_name("id", text).map_err(|_| {
            ApiError::invalid(format!("{text:?} is not a workload id: use a job id like `j12` or a service name"))
        })?;
        Ok(WorkloadRef::Service(text.to_owned()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadResources {
    /// Millicores, as `100m`.
    pub cpu: String,
    /// Bytes, as `32Mi`.
    pub memory: String,
    pub gpus: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadPlacement {
    pub strategy: Strategy,
    /// Labels a node must carry.
    pub labels: BTreeMap<String, String>,
}

/// A service or a job in seed 003's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadInfo {
    /// The job id holding the workload (`j12`).
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub kind: WorkloadKind,
    /// `capsule:version`.
    pub image: String,
    pub capsule: String,
    pub version: u32,
    pub command: Vec<String>,
    pub resources: WorkloadResources,
    pub placement: WorkloadPlacement,
    /// Services: `running` (all replicas), `degraded` (some), `pending` (none), `removed`.
    /// Jobs: `running`, `completed`, `failed`, `cancelled`.
    pub status: String,
    /// Replicas of a service, tasks of a job.
    pub replicas: u32,
    /// Tasks running now.
    pub running: u32,
    pub created_at: Millis,
}

impl WorkloadInfo {
    pub fn new(state: &LedgerState, job: &Job) -> WorkloadInfo {
        let spec = state.capsule(&job.capsule, Some(job.version)).map(|c| &c.spec);
        let running = state.job_tasks(job.id).filter(|t| t.state == TaskState::Running).count() as u32;
        let kind = match job.kind {
            WorkKind::Service => WorkloadKind::Service,
            WorkKind::Batch => WorkloadKind::Job,
        };
        let status = match (kind, job.state) {
            (WorkloadKind::Service, JobState::Running) if running >= job.task_count => "running",
            (WorkloadKind::Service, JobState::Running) if running == 0 => "pending",
            (WorkloadKind::Service, JobState::Running) => "degraded",
            (WorkloadKind::Service, _) => "removed",
            (WorkloadKind::Job, JobState::Running) => "running",
            (WorkloadKind::Job, JobState::Completed) => "completed",
            (WorkloadKind::Job, JobState::Failed) => "failed",
            (WorkloadKind::Job, JobState::Cancelled) => "cancelled",
        };
        WorkloadInfo {
            id: job.id.to_string(),
            name: job.name.clone(),
            namespace: NAMESPACE.to_owned(),
            kind,
            image: format!("{}:{}", job.capsule, job.version),
            capsule: job.capsule.clone(),
            version: job.version,
            command: spec.map(|s| s.command.clone()).unwrap_or_default(),
            resources: WorkloadResources {
                cpu: format!("{}m", job.resources.cpu_millis),
                memory: format_bytes(job.resources.memory_bytes),
                gpus: job.resources.gpus,
            },
            placement: WorkloadPlacement {
                strategy: spec.map(|s| s.placement.strategy).unwrap_or_default(),
                labels: spec.map(|s| s.placement.labels.clone()).unwrap_or_default(),
            },
            status: status.to_owned(),
            replicas: job.task_count,
            running,
            created_at: job.created_at,
        }
    }

    /// Services by name, then the newest batch jobs.
    pub fn list(state: &LedgerState) -> Vec<WorkloadInfo> {
        let services = state.services();
        let jobs = state.jobs().rev().filter(|j| j.kind == WorkKind::Batch).take(DEFAULT_LIST_LIMIT);
        services.chain(jobs).map(|job| WorkloadInfo::new(state, job)).collect()
    }

    pub fn get(state: &LedgerState, workload: &WorkloadRef) -> Result<WorkloadInfo, ApiError> {
        let job = match workload {
            WorkloadRef::Job(id) => state.job(*id).ok_or_else(|| job_not_found(*id))?,
            WorkloadRef::Service(name) => state.service(name).ok_or_else(|| service_not_found(name))?,
        };
        Ok(WorkloadInfo::new(state, job))
    }
}

/// The body of `POST /api/v1/workloads`: a service from a capsule.
///
/// `capsule` (or `image`, read as `capsule`, `capsule:VERSION` or `capsule:latest`) names the
/// capsule; `replicas` defaults to 1; `namespace` may only be `default`; `kind` may only be
/// `service`. `resources` and `placement` are refused: they belong to the capsule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadRequest {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<WorkloadKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capsule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<serde_json::Value>,
}

impl WorkloadRequest {
    pub fn into_request(self) -> Result<ServiceRequest, SpecError> {
        if let Some(ns) = self.namespace.as_deref().filter(|ns| *ns != NAMESPACE) {
            return Err(SpecError::new("namespace", format!("{ns:?} does not exist; the only namespace is `default`")));
        }
        if self.kind == Some(WorkloadKind::Job) {
            return Err(SpecError::new("kind", "workloads created here are services; submit jobs to /api/v1/jobs"));
        }
        if self.resources.is_some() {
            return Err(SpecError::new("resources", "resources come from the capsule; set them in its spec"));
        }
        if self.placement.is_some() {
            return Err(SpecError::new("placement", "placement comes from the capsule; set it in its spec"));
        }
        let (capsule, version) = match (self.capsule, self.image) {
            (Some(_), Some(_)) => return Err(SpecError::new("image", "give either `capsule` or `image`, not both")),
            (None, None) => return Err(SpecError::new("capsule", "name the capsule to run (`capsule` or `image`)")),
            (Some(capsule), None) => (capsule, self.version),
            (None, Some(image)) => match image.split_once(':') {
                None => (image, self.version),
                Some((name, "latest")) => (name.to_owned(), self.version),
                Some((name, tag)) => {
                    let tagged: u32 = tag.parse().map_err(|_| {
                        SpecError::new(
                            "image",
                            format!("tag {tag:?} is not a capsule version; use `NAME:VERSION` or `NAME:latest`"),
                        )
                    })?;
                    if self.version.is_some_and(|v| v != tagged) {
                        return Err(SpecError::new("version", "differs from the version in `image`"));
                    }
                    (name.to_owned(), Some(tagged))
                }
            },
        };
        ServiceSubmission { name: self.name, capsule, version, replicas: self.replicas.unwrap_or(1) }.into_request()
    }
}

pub(crate) async fn list(State(ctx): State<Ctx>) -> Result<Json<Vec<WorkloadInfo>>, ApiError> {
    ctx.ask(|reply| Action::ListWorkloads { reply }).await.map(Json)
}

pub(crate) async fn create(
    State(ctx): State<Ctx>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<WorkloadInfo>), ApiError> {
    let idempotency = crate::routes::idempotency_key(&headers)?;
    let request: WorkloadRequest = body.parse()?;
    let request = request.into_request()?;
    let service = ctx.ask(|reply| Action::ApplyService { request, idempotency, reply }).await?;
    let workload = WorkloadRef::Job(service.job);
    let info = ctx.ask(|reply| Action::GetWorkload { workload, reply }).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

pub(crate) async fn show(State(ctx): State<Ctx>, ApiPath(id): ApiPath<String>) -> Result<Json<WorkloadInfo>, ApiError> {
    let workload = WorkloadRef::parse(&id)?;
    ctx.ask(|reply| Action::GetWorkload { workload, reply }).await.map(Json)
}

/// Remove a service, or cancel a running job. Answers with the workload's final state.
pub(crate) async fn remove(
    State(ctx): State<Ctx>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WorkloadInfo>, ApiError> {
    let workload = WorkloadRef::parse(&id)?;
    let mut info = ctx.ask(|reply| Action::GetWorkload { workload, reply }).await?;
    match info.kind {
        WorkloadKind::Service => {
            let name = info.name.clone();
            let service = ctx.ask(|reply| Action::RemoveService { name, reply }).await?;
            info.status = "removed".to_owned();
            info.running = service.running;
        }
        WorkloadKind::Job => {
            let job: JobId = info.id.parse().map_err(|_| ApiError::internal("workload id is not a job id"))?;
            let job = ctx.ask(|reply| Action::CancelJob { job, reply }).await?;
            info.status = job.state.name().to_ascii_lowercase();
            info.running = job.counts.running;
        }
    }
    Ok(Json(info))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> Result<ServiceRequest, String> {
        let r: WorkloadRequest = falak_core::spec::from_json_value(json).map_err(|e| e.to_string())?;
        r.into_request().map_err(|e| e.to_string())
    }

    #[test]
    fn image_names_a_capsule_and_version() {
        let r = request(serde_json::json!({ "name": "web", "image": "hello:2", "replicas": 3 })).unwrap();
        assert_eq!((r.capsule.as_str(), r.version, r.replicas), ("hello", Some(2), 3));
        let r = request(serde_json::json!({ "name": "web", "image": "hello:latest" })).unwrap();
        assert_eq!((r.capsule.as_str(), r.version, r.replicas), ("hello", None, 1));
    }

    #[test]
    fn refuses_what_belongs_to_the_capsule() {
        let e = request(serde_json::json!({ "name": "w", "capsule": "c", "resources": { "cpu": "1" } })).unwrap_err();
        assert!(e.starts_with("field `resources`"), "{e}");
        let e = request(serde_json::json!({ "name": "w", "capsule": "c", "namespace": "prod" })).unwrap_err();
        assert!(e.starts_with("field `namespace`"), "{e}");
        let e = request(serde_json::json!({ "name": "w", "image": "nginx:1.25" })).unwrap_err();
        assert!(e.starts_with("field `image`"), "{e}");
    }

    #[test]
    fn ids_prefer_jobs() {
        assert_eq!(WorkloadRef::parse("j3").unwrap(), WorkloadRef::Job(JobId(3)));
        assert_eq!(WorkloadRef::parse("web").unwrap(), WorkloadRef::Service("web".into()));
        assert!(WorkloadRef::parse("Not Valid").is_err());
    }
}
