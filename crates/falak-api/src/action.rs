//! The closed set of things the API asks of its node.
//!
//! **Boundary:** this enum is the only way the API reaches the node. Each variant carries its
//! typed input and a [`Reply`] channel; the node's main loop receives the action, does the work
//! (reads committed state, writes to the ledger, asks a peer) and sends exactly one answer. A
//! dropped reply becomes `503 unavailable` for the client.
//!
//! Most answers can be built from committed state with the constructors beside each type
//! (`JobInfo::get`, `TaskInfo::of_job`, `DecisionInfo::get`, ...), so the node's handler for a
//! read is usually one line.

use falak_core::access::TokenId;
use falak_core::capsule::CapsuleSpec;
use falak_core::job::{JobId, JobRequest, ServiceRequest, TaskId};
use falak_core::ledger::IdempotencyKey;
use falak_core::signing::{DeployerId, SpecSignature};
use tokio::sync::oneshot;

use crate::capsule::{CapsuleApplied, CapsuleInfo, CapsuleSummary};
use crate::deployer::{DeployerInfo, TrustDeployer};
use crate::error::ApiError;
use crate::event::{EventStart, EventSubscription};
use crate::function::FunctionAction;
use crate::health::Readiness;
use crate::job::JobInfo;
use crate::join::{CreateJoinToken, CreatedJoinToken, JoinRequest, JoinResponse, JoinTokenInfo, RevokedNodeInfo};
use crate::node::NodeInfo;
use crate::service::ServiceInfo;
use crate::task::{DecisionInfo, LogStream, TaskInfo};
use crate::token::{CreateToken, CreatedToken, TokenInfo};
use crate::workload::{WorkloadInfo, WorkloadRef};

/// Where the node sends its answer to one action.
pub type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

/// A request from the API to its node.
#[derive(Debug)]
pub enum Action {
    /// Whether the node has joined the ledger and knows a leader. Answer `Ok` with
    /// `ready: false` and a reason rather than an error when it is not ready.
    Ready { reply: Reply<Readiness> },
    /// Prometheus text exposition of the node's metrics.
    Metrics { reply: Reply<String> },
    /// Every admitted node with its health and gossip state (`NodeInfo::new`).
    ListNodes { reply: Reply<Vec<NodeInfo>> },
    /// Write a validated capsule spec to the ledger; answer once committed.
    /// `signature` is the deployer's, over `spec.signed_form()`; the node checks it.
    /// `idempotency`, on this and the other creating writes: the client's `Idempotency-Key`;
    /// the node writes the command keyed, so a retry with the key takes effect once.
    ApplyCapsule {
        spec: CapsuleSpec,
        signature: Option<SpecSignature>,
        idempotency: Option<IdempotencyKey>,
        reply: Reply<CapsuleApplied>,
    },
    /// Write `RollbackCapsule`: an earlier version's spec and signature as the latest.
    RollbackCapsule { name: String, version: Option<u32>, reply: Reply<CapsuleApplied> },
    /// `CapsuleSummary::list`.
    ListCapsules { reply: Reply<Vec<CapsuleSummary>> },
    /// `CapsuleInfo::get`.
    GetCapsule { name: String, reply: Reply<CapsuleInfo> },
    /// Write the job to the ledger; answer with `JobInfo::get` once committed.
    SubmitJob { request: JobRequest, idempotency: Option<IdempotencyKey>, reply: Reply<JobInfo> },
    /// `JobInfo::list`: batch jobs, newest first, at most `limit`.
    ListJobs { limit: usize, reply: Reply<Vec<JobInfo>> },
    /// `JobInfo::get`.
    GetJob { job: JobId, reply: Reply<JobInfo> },
    /// `TaskInfo::of_job`.
    JobTasks { job: JobId, reply: Reply<Vec<TaskInfo>> },
    /// Write `CancelJob`; answer with `JobInfo::get` once committed.
    CancelJob { job: JobId, reply: Reply<JobInfo> },
    /// `TaskInfo::get`.
    GetTask { task: TaskId, reply: Reply<TaskInfo> },
    /// The last `max_bytes` of a task's output, fetched from the node that ran its latest
    /// attempt (`not_found` when the task never ran).
    TaskLogs { task: TaskId, stream: LogStream, max_bytes: usize, reply: Reply<String> },
    /// `DecisionInfo::get`: the recorded decision, or for an open task what placement
    /// computes now.
    TaskDecision { task: TaskId, reply: Reply<DecisionInfo> },
    /// `ServiceInfo::list`.
    ListServices { reply: Reply<Vec<ServiceInfo>> },
    /// Write the service (create or scale); answer with `ServiceInfo::get` once committed.
    ApplyService { request: ServiceRequest, idempotency: Option<IdempotencyKey>, reply: Reply<ServiceInfo> },
    /// `ServiceInfo::get`.
    GetService { name: String, reply: Reply<ServiceInfo> },
    /// Write `RemoveService`; answer with the service's final state (`ServiceInfo::new` over
    /// its job, which the ledger keeps as `CANCELLED`).
    RemoveService { name: String, reply: Reply<ServiceInfo> },
    /// Write `UpdateService` (a rolling update); answer with the service as it starts moving.
    UpdateService {
        update: falak_core::ledger::ServiceUpdate,
        idempotency: Option<IdempotencyKey>,
        reply: Reply<ServiceInfo>,
    },
    /// `WorkloadInfo::list`.
    ListWorkloads { reply: Reply<Vec<WorkloadInfo>> },
    /// `WorkloadInfo::get`.
    GetWorkload { workload: WorkloadRef, reply: Reply<WorkloadInfo> },
    /// The event history from `start`, then (with `follow`) every new event as it happens.
    Subscribe { start: EventStart, follow: bool, reply: Reply<EventSubscription> },
    /// A new node asks to join: check its ticket, commit `JoinNode`, issue its certificate.
    Join { request: JoinRequest, reply: Reply<JoinResponse> },
    /// Make a join ticket, commit its record (hash only), answer with the whole join token once.
    CreateJoinToken { request: CreateJoinToken, reply: Reply<CreatedJoinToken> },
    /// `JoinTokenInfo::new` for every join token the ledger keeps.
    ListJoinTokens { reply: Reply<Vec<JoinTokenInfo>> },
    /// Write `RevokeJoinTicket`; answer once committed.
    RevokeJoinToken { id: TokenId, reply: Reply<JoinTokenInfo> },
    /// Write `RevokeNode` for the node with this id or name; answer once committed.
    RevokeNode { node: String, reply: Reply<RevokedNodeInfo> },
    /// Deploy, list, show, remove functions; their instances, logs and asynchronous invocations.
    Function(FunctionAction),
    /// Pull, import, list, inspect and remove this node's images.
    Image(crate::image::ImageAction),
    /// Make a token, commit its record (hash only) and answer with the whole token once.
    CreateToken { request: CreateToken, reply: Reply<CreatedToken> },
    /// `TokenInfo::new` for every token.
    ListTokens { reply: Reply<Vec<TokenInfo>> },
    /// Write `RevokeToken`; answer with the token's record once committed.
    RevokeToken { id: TokenId, reply: Reply<TokenInfo> },
    /// `DeployerInfo::new` for every deployer key.
    ListDeployers { reply: Reply<Vec<DeployerInfo>> },
    /// Write `TrustDeployer`; answer once committed.
    TrustDeployer { request: TrustDeployer, reply: Reply<DeployerInfo> },
    /// Write `RevokeDeployer`; answer once committed.
    RevokeDeployer { id: DeployerId, reply: Reply<DeployerInfo> },
}

impl Action {
    /// The action's name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Ready { .. } => "ready",
            Action::Metrics { .. } => "metrics",
            Action::ListNodes { .. } => "list_nodes",
            Action::ApplyCapsule { .. } => "apply_capsule",
            Action::RollbackCapsule { .. } => "rollback_capsule",
            Action::ListCapsules { .. } => "list_capsules",
            Action::GetCapsule { .. } => "get_capsule",
            Action::SubmitJob { .. } => "submit_job",
            Action::ListJobs { .. } => "list_jobs",
            Action::GetJob { .. } => "get_job",
            Action::JobTasks { .. } => "job_tasks",
            Action::CancelJob { .. } => "cancel_job",
            Action::GetTask { .. } => "get_task",
            Action::TaskLogs { .. } => "task_logs",
            Action::TaskDecision { .. } => "task_decision",
            Action::ListServices { .. } => "list_services",
            Action::ApplyService { .. } => "apply_service",
            Action::GetService { .. } => "get_service",
            Action::RemoveService { .. } => "remove_service",
            Action::UpdateService { .. } => "update_service",
            Action::ListWorkloads { .. } => "list_workloads",
            Action::GetWorkload { .. } => "get_workload",
            Action::Subscribe { .. } => "subscribe",
            Action::Join { .. } => "join",
            Action::CreateJoinToken { .. } => "create_join_token",
            Action::ListJoinTokens { .. } => "list_join_tokens",
            Action::RevokeJoinToken { .. } => "revoke_join_token",
            Action::RevokeNode { .. } => "revoke_node",
            Action::Function(f) => f.name(),
            Action::Image(i) => i.name(),
            Action::CreateToken { .. } => "create_token",
            Action::ListTokens { .. } => "list_tokens",
            Action::RevokeToken { .. } => "revoke_token",
            Action::ListDeployers { .. } => "list_deployers",
            Action::TrustDeployer { .. } => "trust_deployer",
            Action::RevokeDeployer { .. } => "revoke_deployer",
        }
    }

    /// Answer the action with an error, whatever it asked (e.g. the node is not ready to
    /// serve it). A client that went away is not an error.
    pub fn fail(self, error: ApiError) {
        fn send<T>(reply: Reply<T>, error: ApiError) {
            let _ = reply.send(Err(error));
        }
        match self {
            Action::Ready { reply } => send(reply, error),
            Action::Metrics { reply } => send(reply, error),
            Action::ListNodes { reply } => send(reply, error),
            Action::ApplyCapsule { reply, .. } => send(reply, error),
            Action::RollbackCapsule { reply, .. } => send(reply, error),
            Action::ListCapsules { reply } => send(reply, error),
            Action::GetCapsule { reply, .. } => send(reply, error),
            Action::SubmitJob { reply, .. } => send(reply, error),
            Action::ListJobs { reply, .. } => send(reply, error),
            Action::GetJob { reply, .. } => send(reply, error),
            Action::JobTasks { reply, .. } => send(reply, error),
            Action::CancelJob { reply, .. } => send(reply, error),
            Action::GetTask { reply, .. } => send(reply, error),
            Action::TaskLogs { reply, .. } => send(reply, error),
            Action::TaskDecision { reply, .. } => send(reply, error),
            Action::ListServices { reply } => send(reply, error),
            Action::ApplyService { reply, .. } => send(reply, error),
            Action::GetService { reply, .. } => send(reply, error),
            Action::RemoveService { reply, .. } => send(reply, error),
            Action::UpdateService { reply, .. } => send(reply, error),
            Action::ListWorkloads { reply } => send(reply, error),
            Action::GetWorkload { reply, .. } => send(reply, error),
            Action::Subscribe { reply, .. } => send(reply, error),
            Action::Join { reply, .. } => send(reply, error),
            Action::CreateJoinToken { reply, .. } => send(reply, error),
            Action::ListJoinTokens { reply } => send(reply, error),
            Action::RevokeJoinToken { reply, .. } => send(reply, error),
            Action::RevokeNode { reply, .. } => send(reply, error),
            Action::Function(f) => f.fail(error),
            Action::Image(i) => i.fail(error),
            Action::CreateToken { reply, .. } => send(reply, error),
            Action::ListTokens { reply } => send(reply, error),
            Action::RevokeToken { reply, .. } => send(reply, error),
            Action::ListDeployers { reply } => send(reply, error),
            Action::TrustDeployer { reply, .. } => send(reply, error),
            Action::RevokeDeployer { reply, .. } => send(reply, error),
        }
    }

    /// Whether the action changes ledger state (and so needs a reachable leader).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Action::ApplyCapsule { .. }
                | Action::RollbackCapsule { .. }
                | Action::SubmitJob { .. }
                | Action::CancelJob { .. }
                | Action::ApplyService { .. }
                | Action::RemoveService { .. }
                | Action::UpdateService { .. }
                | Action::Join { .. }
                | Action::CreateJoinToken { .. }
                | Action::RevokeJoinToken { .. }
                | Action::RevokeNode { .. }
                | Action::CreateToken { .. }
                | Action::RevokeToken { .. }
                | Action::TrustDeployer { .. }
                | Action::RevokeDeployer { .. }
        ) || matches!(self, Action::Function(f) if f.is_write())
    }
}
