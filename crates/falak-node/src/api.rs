//! The node's answers to API actions, and the node RPC protocol that serves logs to peers.
//!
//! Reads are answered from this replica's committed state with `falak_api`'s constructors.
//! Writes go through the proposer; `Ledger::write` answers once the entry is committed and
//! applied here too, so the answer is built from state that includes the write.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use falak_api::capsule::{CapsuleApplied, CapsuleInfo, CapsuleSummary};
use falak_api::deployer::DeployerInfo;
use falak_api::health::Readiness;
use falak_api::job::JobInfo;
use falak_api::join::{CreatedJoinToken, JoinTokenInfo, RevokedNodeInfo};
use falak_api::node::{NodeInfo, NodeLive};
use falak_api::service::ServiceInfo;
use falak_api::task::{DecisionInfo, LogStream, TaskInfo};
use falak_api::token::{CreatedToken, TokenInfo};
use falak_api::workload::WorkloadInfo;
use falak_api::{Action, ApiError};
use falak_core::NodeId;
use falak_core::election::rank_task;
use falak_core::job::{TaskId, TaskState};
use falak_core::ledger::{Command, IdempotencyKey, Outcome, RequestFingerprint, State};
use falak_core::placement::Health;
use falak_exec::Stream;
use falak_ledger::WriteError;
use falak_transport::{Handler, Protocol, Transport};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::clock::now_millis;
use crate::main_loop::MainLoop;
use crate::metrics::gauge_family;
use crate::runner::Runner;

/// The node `text` names among `known` (id, name): a whole id, a name, or an id prefix of at
/// least 8 hex characters (what `falak nodes` shows) that only one node has.
fn resolve_node(text: &str, known: &[(NodeId, String)]) -> Option<NodeId> {
    if let Ok(id) = text.parse::<NodeId>() {
        return Some(id);
    }
    if let Some((id, _)) = known.iter().find(|(_, name)| name == text) {
        return Some(*id);
    }
    let prefix = text.to_ascii_lowercase();
    let mut matching = known.iter().filter(|(id, _)| prefix.len() >= 8 && id.to_string().starts_with(&prefix));
    match (matching.next(), matching.next()) {
        (Some((id, _)), None) => Some(*id),
        _ => None,
    }
}

/// Why a node without the mesh CA key cannot admit nodes.
fn no_ca_key() -> ApiError {
    ApiError::invalid(
        "this node does not hold the mesh CA key, so it cannot issue certificates to joiners; ask a node that holds `ca.key` (the nodes `falak up` started)",
    )
}

/// The largest log tail one request returns (the API refuses larger `max_bytes`).
pub const MAX_LOG_BYTES: usize = falak_api::task::MAX_LOG_BYTES;

/// A request of the node RPC protocol ([`Protocol::Rpc`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RpcRequest {
    /// The last `max_bytes` of one attempt's output on the receiving node.
    TaskLogs { task: TaskId, attempt: u32, stream: LogStream, max_bytes: usize },
    /// Functions: instances and logs on the receiving node.
    Function(crate::functions::rpc::FunctionRpc),
}

/// Every API answer says which view of the ledger it came from: the term, the leader and the
/// index applied here (`falak_api::health::TERM_HEADER` and its siblings). Of two answers naming
/// different leaders, the higher term is current.
pub async fn ledger_headers(
    axum::extract::State(ledger): axum::extract::State<falak_ledger::Ledger>,
    mut response: axum::response::Response,
) -> axum::response::Response {
    use axum::http::HeaderValue;
    use falak_api::health::{APPLIED_HEADER, LEADER_HEADER, TERM_HEADER};
    let status = ledger.status();
    let headers = response.headers_mut();
    headers.insert(TERM_HEADER, HeaderValue::from(status.term));
    if let Some(leader) = status.leader
        && let Ok(value) = HeaderValue::from_str(&leader.to_string())
    {
        headers.insert(LEADER_HEADER, value);
    }
    if let Some(applied) = status.applied {
        headers.insert(APPLIED_HEADER, HeaderValue::from(applied));
    }
    response
}

/// The node RPC handler: serves logs of attempts that ran here, and function requests.
pub fn rpc_handler(tasks_dir: PathBuf, functions: Arc<crate::functions::FunctionHost>) -> Arc<dyn Handler> {
    Arc::new(move |_from: NodeId, body: Bytes| -> BoxFuture<'static, Result<Bytes, String>> {
        let tasks_dir = tasks_dir.clone();
        let functions = functions.clone();
        async move {
            let request: RpcRequest = serde_json::from_slice(&body).map_err(|e| format!("bad rpc request: {e}"))?;
            match request {
                RpcRequest::TaskLogs { task, attempt, stream, max_bytes } => {
                    let text = read_local_log(tasks_dir, task, attempt, stream, max_bytes).await?;
                    Ok(Bytes::from(text))
                }
                RpcRequest::Function(request) => functions.answer_rpc(request).await,
            }
        }
        .boxed()
    })
}

async fn read_local_log(
    tasks_dir: PathBuf,
    task: TaskId,
    attempt: u32,
    stream: LogStream,
    max_bytes: usize,
) -> Result<String, String> {
    let workdir = Runner::workdir(&tasks_dir, task, attempt);
    let stream = match stream {
        LogStream::Stdout => Stream::Stdout,
        LogStream::Stderr => Stream::Stderr,
    };
    let max = max_bytes.min(MAX_LOG_BYTES);
    let data = tokio::task::spawn_blocking(move || log_tail(&workdir, stream, max))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&data).into_owned())
}

/// The last `max` bytes of a log, read in the executor's chunks.
fn log_tail(workdir: &std::path::Path, stream: Stream, max: usize) -> Result<Vec<u8>, falak_exec::ReadLogError> {
    let size = falak_exec::read_log(workdir, stream, Some(0), 0)?.size;
    let mut offset = size.saturating_sub(max as u64);
    let mut data = Vec::new();
    while data.len() < max {
        let chunk = falak_exec::read_log(workdir, stream, Some(offset), max - data.len())?;
        if chunk.data.is_empty() {
            break;
        }
        offset = chunk.next_offset;
        data.extend_from_slice(&chunk.data);
    }
    Ok(data)
}

/// A failed write as the API reports it. A write that may still commit says so, and how to
/// retry it safely: with the client's `key` when it sent one.
pub fn write_error(error: &WriteError, key: Option<&IdempotencyKey>) -> ApiError {
    match error {
        WriteError::TooLarge { .. } => ApiError::too_large(error.to_string()),
        WriteError::Encode(_) => ApiError::internal(error.to_string()),
        _ => match key {
            Some(key) => ApiError::unavailable(format!(
                "{error}; retry with the same Idempotency-Key ({key}), through any node: it takes effect once"
            )),
            None if matches!(error, WriteError::Timeout { .. }) => ApiError::unavailable(format!(
                "{error}; check whether it took effect before retrying, or send an Idempotency-Key so that a retry is safe"
            )),
            None => ApiError::unavailable(format!("{error}; retry shortly")),
        },
    }
}

/// `command` written under the client's idempotency key, when it sent one: the ledger applies
/// it once per key and answers a repeat (through any node) with the first outcome. `asked`
/// fingerprints what the client asked for, secret values left out.
pub(crate) fn keyed(command: Command, key: Option<&IdempotencyKey>, asked: RequestFingerprint) -> Command {
    match key {
        None => command,
        Some(key) => Command::Idempotent { key: key.clone(), request: asked, command: Box::new(command) },
    }
}

/// A committed outcome, or the rejection it carries.
fn accepted(result: Result<Outcome, Arc<WriteError>>, key: Option<&IdempotencyKey>) -> Result<Outcome, ApiError> {
    match result {
        Ok(Outcome::Rejected(rejection)) => Err(rejection.into()),
        Ok(outcome) => Ok(outcome),
        Err(error) => Err(write_error(&error, key)),
    }
}

impl MainLoop {
    pub(crate) fn handle_action(&mut self, action: Action) {
        match action {
            Action::Ready { reply } => {
                let _ = reply.send(Ok(self.readiness()));
            }
            Action::Metrics { reply } => {
                let _ = reply.send(Ok(self.render_metrics()));
            }
            Action::ListNodes { reply } => {
                let _ = reply.send(Ok(self.node_infos()));
            }
            Action::ApplyCapsule { spec, signature, idempotency, reply } => {
                let checked = self.ledger.state().check_signature(
                    falak_core::signing::SpecKind::Capsule,
                    &spec.signed_form(),
                    signature.as_ref(),
                );
                if let Err(refused) = checked {
                    let _ = reply.send(Err(ApiError::new(falak_api::ErrorCode::Forbidden, refused.to_string())));
                    return;
                }
                // The code must be here (uploaded to this node first), so no task of the capsule
                // can be elected before any node holds what it runs.
                if let Some(artifact) =
                    spec.artifacts().into_iter().find(|a| !self.runner.artifacts().store().contains(*a))
                {
                    let _ = reply.send(Err(ApiError::invalid(format!(
                        "bundle {artifact} is not stored on this node; upload it first with POST /api/v1/artifacts \
                         (falak capsule apply does)"
                    ))));
                    return;
                }
                // What was asked, secret values left out (as in the signed form).
                let asked = RequestFingerprint::of("apply_capsule", &spec.signed_form());
                // Secrets are sealed here, before anything is written: the ledger never sees them plain.
                let mut spec = spec;
                let owner = spec.name.clone();
                for (name, value) in spec.secrets.iter_mut() {
                    if let falak_core::secret::SecretValue::Plain(plain) = value {
                        *value = falak_core::secret::SecretValue::Sealed(self.secrets.seal(
                            &owner,
                            name,
                            plain,
                            rand::random(),
                        ));
                    }
                }
                let command = Command::ApplyCapsule { spec, signature, now: now_millis() };
                let command = keyed(command, idempotency.as_ref(), asked);
                self.write_keyed_then(command, idempotency, reply, |_, outcome| match outcome {
                    Outcome::CapsuleApplied { name, version, unchanged } => {
                        Ok(CapsuleApplied { name, version, unchanged })
                    }
                    other => Err(unexpected(&other)),
                });
            }
            Action::RollbackCapsule { name, version, reply } => {
                let command = Command::RollbackCapsule { name, version, now: now_millis() };
                self.write_then(command, reply, |_, outcome| match outcome {
                    Outcome::CapsuleApplied { name, version, unchanged } => {
                        Ok(CapsuleApplied { name, version, unchanged })
                    }
                    other => Err(unexpected(&other)),
                });
            }
            Action::ListCapsules { reply } => {
                let _ = reply.send(Ok(CapsuleSummary::list(&self.ledger.state())));
            }
            Action::GetCapsule { name, reply } => {
                let state = self.ledger.state();
                let held = self
                    .observed
                    .iter()
                    .filter(|(_, seen)| seen.health == Health::Healthy)
                    .filter_map(|(id, seen)| Some((*id, seen.gossip.as_ref()?.held.as_slice())));
                let _ = reply.send(CapsuleInfo::get(&state, &name).map(|info| info.with_holders(&state, held)));
            }
            Action::SubmitJob { request, idempotency, reply } => {
                if let Err(refused) = self.check_submission(&request.capsule, request.version, idempotency.as_ref()) {
                    let _ = reply.send(Err(refused));
                    return;
                }
                let asked = RequestFingerprint::of("submit_job", &request);
                let command = Command::SubmitJob { request, origin: self.id, now: now_millis() };
                let command = keyed(command, idempotency.as_ref(), asked);
                self.write_keyed_then(command, idempotency, reply, |state, outcome| match outcome {
                    Outcome::JobSubmitted { job, .. } => JobInfo::get(state, job),
                    other => Err(unexpected(&other)),
                });
            }
            Action::ListJobs { limit, reply } => {
                let _ = reply.send(Ok(JobInfo::list(&self.ledger.state(), limit)));
            }
            Action::GetJob { job, reply } => {
                let _ = reply.send(JobInfo::get(&self.ledger.state(), job));
            }
            Action::JobTasks { job, reply } => {
                let _ = reply.send(TaskInfo::of_job(&self.ledger.state(), job));
            }
            Action::CancelJob { job, reply } => {
                if let Err(e) = JobInfo::get(&self.ledger.state(), job) {
                    let _ = reply.send(Err(e));
                    return;
                }
                let command = Command::CancelJob { job, now: now_millis() };
                self.write_then(command, reply, move |state, _| JobInfo::get(state, job));
            }
            Action::GetTask { task, reply } => {
                let _ = reply.send(TaskInfo::get(&self.ledger.state(), task));
            }
            Action::TaskLogs { task, stream, max_bytes, reply } => self.task_logs(task, stream, max_bytes, reply),
            Action::TaskDecision { task, reply } => {
                let state = self.ledger.state();
                let result = DecisionInfo::get(&state, task, |t| rank_task(&state, &self.observed, self.id, t.id));
                let _ = reply.send(result);
            }
            Action::ListServices { reply } => {
                let _ = reply.send(Ok(ServiceInfo::list(&self.ledger.state())));
            }
            Action::ApplyService { request, idempotency, reply } => {
                if let Err(refused) = self.check_submission(&request.capsule, request.version, idempotency.as_ref()) {
                    let _ = reply.send(Err(refused));
                    return;
                }
                let name = request.name.clone();
                let asked = RequestFingerprint::of("apply_service", &request);
                let command = Command::ApplyService { request, origin: self.id, now: now_millis() };
                let command = keyed(command, idempotency.as_ref(), asked);
                self.write_keyed_then(command, idempotency, reply, move |state, _| ServiceInfo::get(state, &name));
            }
            Action::UpdateService { update, idempotency, reply } => {
                let name = update.name.clone();
                let asked = RequestFingerprint::of("update_service", &update);
                let command = Command::UpdateService { update, origin: self.id, now: now_millis() };
                let command = keyed(command, idempotency.as_ref(), asked);
                self.write_keyed_then(command, idempotency, reply, move |state, _| ServiceInfo::get(state, &name));
            }
            Action::GetService { name, reply } => {
                let _ = reply.send(ServiceInfo::get(&self.ledger.state(), &name));
            }
            Action::RemoveService { name, reply } => {
                let job = match ServiceInfo::get(&self.ledger.state(), &name) {
                    Ok(service) => service.job,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                };
                let command = Command::RemoveService { name: name.clone(), now: now_millis() };
                self.write_then(command, reply, move |state, _| match state.job(job) {
                    Some(job) => Ok(ServiceInfo::new(state, job)),
                    None => Err(ApiError::not_found(format!("service {name} is gone"))),
                });
            }
            Action::ListWorkloads { reply } => {
                let _ = reply.send(Ok(WorkloadInfo::list(&self.ledger.state())));
            }
            Action::GetWorkload { workload, reply } => {
                let _ = reply.send(WorkloadInfo::get(&self.ledger.state(), &workload));
            }
            Action::Join { request, reply } => {
                let Some(authority) = self.authority.clone() else {
                    let _ = reply.send(Err(no_ca_key()));
                    return;
                };
                let ticket = match request.ticket() {
                    Ok(ticket) => ticket,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                };
                let now = now_millis();
                let checked = authority.admit(&request, &ticket, &self.ledger.state(), crate::clock::system_now(), now);
                let response = match checked {
                    Ok(response) => response,
                    Err(e) => {
                        tracing::info!(node = %request.record.id.short(), name = %request.record.name, error = %e.message, "join refused");
                        let _ = reply.send(Err(e));
                        return;
                    }
                };
                tracing::info!(node = %request.record.id, name = %request.record.name, ticket = %ticket.id, "admitting a joiner");
                let command = Command::JoinNode { ticket: ticket.id, hash: ticket.hash(), record: request.record, now };
                self.write_then(command, reply, move |_, _| Ok(response));
            }
            Action::CreateJoinToken { request, reply } => {
                let Some(authority) = self.authority.clone() else {
                    let _ = reply.send(Err(no_ca_key()));
                    return;
                };
                let ticket = crate::access::random_token();
                let now = now_millis();
                let ttl = request.ttl_seconds.unwrap_or(falak_api::join::DEFAULT_JOIN_TTL_SECONDS);
                let expires_at = now.saturating_add(ttl.saturating_mul(1000));
                let uses = request.uses.unwrap_or(1);
                let record = falak_core::access::JoinTicketRecord::new(&ticket, now, expires_at, uses);
                let token = authority.join_token(&self.record.api_url, &self.record.gossip_addr, &ticket).encode();
                tracing::info!(ticket = %ticket.id, uses, ttl_seconds = ttl, "creating a join token");
                let command = Command::CreateJoinTicket { record, now };
                self.write_then(command, reply, move |_, _| {
                    Ok(CreatedJoinToken { join_token: token, id: ticket.id, uses, expires_at })
                });
            }
            Action::ListJoinTokens { reply } => {
                let (state, now) = (self.ledger.state(), now_millis());
                let _ = reply.send(Ok(state.join_tickets().map(|t| JoinTokenInfo::new(t, &state, now)).collect()));
            }
            Action::RevokeJoinToken { id, reply } => {
                let command = Command::RevokeJoinTicket { id, now: now_millis() };
                self.write_then(command, reply, move |state, _| match state.join_ticket(&id) {
                    Some(record) => Ok(JoinTokenInfo::new(record, state, now_millis())),
                    None => Err(ApiError::not_found(format!("no join token {id}"))),
                });
            }
            Action::RevokeNode { node, reply } => {
                let id = {
                    let state = self.ledger.state();
                    let known: Vec<(NodeId, String)> = state
                        .nodes()
                        .map(|n| (n.record.id, n.record.name.clone()))
                        .chain(state.revoked_nodes().map(|(id, r)| (*id, r.name.clone())))
                        .collect();
                    resolve_node(&node, &known)
                };
                let Some(id) = id else {
                    let _ = reply.send(Err(ApiError::not_found(format!(
                        "no node {node}; `falak nodes` lists the members by name and id"
                    ))));
                    return;
                };
                tracing::warn!(node = %id, "revoking a node");
                let command = Command::RevokeNode { node: id, now: now_millis() };
                self.write_then(command, reply, move |state, _| match state.revoked_node(&id) {
                    Some(r) => Ok(RevokedNodeInfo { id, name: r.name.clone(), revoked_at: r.revoked_at }),
                    None => Err(ApiError::internal("the revocation was committed but is not in the ledger")),
                });
            }
            Action::Subscribe { start, follow, reply } => {
                let _ = reply.send(Ok(crate::event_feed::subscribe(&self.ledger, &self.events, start, follow)));
            }
            Action::Function(action) => self.functions.handle(action),
            Action::Image(action) => self.images.handle(action),
            Action::CreateToken { request, reply } => {
                let token = crate::access::random_token();
                let now = now_millis();
                let expires_at = request.ttl_seconds.map(|ttl| now.saturating_add(ttl.saturating_mul(1000)));
                let record = falak_core::access::TokenRecord::new(
                    &token,
                    request.name.trim(),
                    request.role,
                    now,
                    expires_at,
                    request.rate_limit,
                );
                tracing::info!(token = %token.id, name = %record.name, role = %record.role, "creating an API token");
                let command = Command::CreateToken { record, now };
                self.write_then(command, reply, move |state, _| match state.token(&token.id) {
                    Some(record) => Ok(CreatedToken { token: token.encode(), info: TokenInfo::new(record, now) }),
                    None => Err(ApiError::internal("the token was committed but is not in the ledger")),
                });
            }
            Action::ListTokens { reply } => {
                let now = now_millis();
                let _ = reply.send(Ok(self.ledger.state().tokens().map(|r| TokenInfo::new(r, now)).collect()));
            }
            Action::ListDeployers { reply } => {
                let _ = reply.send(Ok(self.ledger.state().deployers().map(DeployerInfo::new).collect()));
            }
            Action::TrustDeployer { request, reply } => {
                let id = request.public_key;
                let record = falak_core::signing::DeployerRecord {
                    id,
                    name: request.name.trim().to_owned(),
                    added_at: now_millis(),
                    revoked_at: None,
                };
                tracing::info!(deployer = %id.short(), name = %record.name, "trusting a deployer key");
                let command = Command::TrustDeployer { record, now: now_millis() };
                self.write_then(command, reply, move |state, _| match state.deployer(&id) {
                    Some(record) => Ok(DeployerInfo::new(record)),
                    None => Err(ApiError::internal("the deployer key was committed but is not in the ledger")),
                });
            }
            Action::RevokeDeployer { id, reply } => {
                let command = Command::RevokeDeployer { id, now: now_millis() };
                self.write_then(command, reply, move |state, _| match state.deployer(&id) {
                    Some(record) => Ok(DeployerInfo::new(record)),
                    None => Err(ApiError::not_found(format!("no deployer key {id}"))),
                });
            }
            Action::RevokeToken { id, reply } => {
                let command = Command::RevokeToken { id, now: now_millis() };
                self.write_then(command, reply, move |state, _| match state.token(&id) {
                    Some(record) => Ok(TokenInfo::new(record, now_millis())),
                    None => Err(ApiError::not_found(format!("no token {id}"))),
                });
            }
        }
    }

    /// Propose `command`; once committed (and applied here), answer with `answer` over the
    /// state that includes it.
    fn write_then<T: Send + 'static>(
        &mut self,
        command: Command,
        reply: falak_api::action::Reply<T>,
        answer: impl FnOnce(&State, Outcome) -> Result<T, ApiError> + Send + 'static,
    ) {
        self.write_keyed_then(command, None, reply, answer);
    }

    /// [`MainLoop::write_then`] for a write the client keyed (`command` is already wrapped):
    /// a failure that may still commit names the key to retry with.
    fn write_keyed_then<T: Send + 'static>(
        &mut self,
        command: Command,
        key: Option<IdempotencyKey>,
        reply: falak_api::action::Reply<T>,
        answer: impl FnOnce(&State, Outcome) -> Result<T, ApiError> + Send + 'static,
    ) {
        let ledger = self.ledger.clone();
        self.proposer.propose(
            command,
            Some(Box::new(move |result| {
                let answer = accepted(result, key.as_ref()).and_then(|outcome| answer(&ledger.state(), outcome));
                let _ = reply.send(answer);
            })),
        );
    }

    /// Refuse a job or service of capsule `name` that no node of the mesh can run as it asks
    /// (a network of its own where no node that is up can create namespaces), before anything
    /// is written: otherwise its tasks would only wait, every node saying why not. A retry of a
    /// keyed write the ledger already took is left to the ledger, which answers it as before.
    fn check_submission(&self, name: &str, version: Option<u32>, key: Option<&IdempotencyKey>) -> Result<(), ApiError> {
        let state = self.ledger.state();
        if key.is_some_and(|key| state.idempotent_outcome(key).is_some()) {
            return Ok(());
        }
        falak_core::election::check_submission(&state, &self.observed, self.id, name, version)
            .map_err(|refused| ApiError::conflict(refused.to_string()))
    }

    /// Whether this replica holds the credentials the mesh was provisioned with, so that what
    /// they authorize (signed specs above all) is accepted by every replica.
    fn bootstrap_committed(&self) -> bool {
        let state = self.ledger.state();
        let (tokens, deployers) = &self.bootstrap_credentials;
        tokens.iter().all(|t| state.token(t).is_some()) && deployers.iter().all(|d| state.deployer(d).is_some())
    }

    fn readiness(&self) -> Readiness {
        let status = self.ledger.status();
        let leader = status.leader;
        let reason = if self.ledger.state().revoked_node(&self.id).is_some() {
            Some("this node was revoked from the mesh; empty its data dir and join with a new join token".to_owned())
        } else if !self.self_admitted {
            Some("this node is not admitted to the ledger yet (waiting for a leader to commit it)".to_owned())
        } else if leader.is_none() {
            Some("no ledger leader is known (election in progress or no quorum)".to_owned())
        } else if !self.bootstrap_committed() {
            Some("the mesh's first admin token and deployer key are not committed yet".to_owned())
        } else {
            None
        };
        Readiness { ready: reason.is_none(), reason, leader, term: status.term, applied: status.applied }
    }

    fn node_infos(&self) -> Vec<NodeInfo> {
        let state = self.ledger.state();
        let leader = self.ledger.leader();
        let rtts: BTreeMap<NodeId, Duration> = self.transport.rtts().into_iter().collect();
        state
            .nodes()
            .map(|entry| {
                let id = entry.record.id;
                let seen = self.observed.get(&id);
                let health = if id == self.id {
                    Health::Healthy
                } else if entry.offline {
                    Health::Offline
                } else {
                    seen.map_or(Health::Healthy, |o| o.health)
                };
                let gossip =
                    if id == self.id { self.last_gossip_state.as_ref() } else { seen.and_then(|o| o.gossip.as_ref()) };
                let live = NodeLive {
                    health,
                    gossip,
                    voter: self.ledger_view.voters.contains(&id),
                    leader: leader == Some(id),
                    rtt_ms: rtts.get(&id).map(|d| d.as_secs_f64() * 1000.0),
                };
                NodeInfo::new(entry, &state, live)
            })
            .collect()
    }

    fn render_metrics(&self) -> String {
        let mut out = String::new();
        let state = self.ledger.state();
        let mut health: BTreeMap<&str, f64> = [("HEALTHY", 0.0), ("SUSPECT", 0.0), ("OFFLINE", 0.0)].into();
        for entry in state.nodes() {
            let h = if entry.record.id == self.id {
                Health::Healthy
            } else if entry.offline {
                Health::Offline
            } else {
                self.observed.get(&entry.record.id).map_or(Health::Healthy, |o| o.health)
            };
            *health.entry(h.name()).or_default() += 1.0;
        }
        gauge_family(&mut out, "falak_nodes", "Admitted nodes by state, as this node sees them.", "state", health);
        let mut tasks: BTreeMap<&str, f64> = TaskState::ALL.iter().map(|s| (s.name(), 0.0)).collect();
        for task in state.tasks() {
            *tasks.entry(task.state.name()).or_default() += 1.0;
        }
        gauge_family(&mut out, "falak_tasks", "Tasks in the ledger by state.", "state", tasks);
        let leader = if self.ledger.leader() == Some(self.id) { 1.0 } else { 0.0 };
        gauge_family(
            &mut out,
            "falak_ledger_leader",
            "1 when this node leads the ledger.",
            "node",
            [(self.config.name.as_str(), leader)],
        );
        self.metrics.render_counters(&mut out);
        let m = self.membership.handle().stats();
        crate::metrics::counter_family(
            &mut out,
            "falak_membership_packets_dropped_total",
            "Membership datagrams dropped unread, by why: bad_seal is another mesh's key, tampering or noise.",
            "reason",
            [
                ("bad_seal", m.dropped_bad_seal),
                ("oversized", m.dropped_oversized),
                ("truncated", m.dropped_truncated),
                ("unknown_format", m.dropped_unknown_format),
                ("malformed", m.dropped_malformed),
            ],
        );
        self.functions.render_metrics(&mut out);
        out
    }

    fn task_logs(
        &mut self,
        task: TaskId,
        stream: LogStream,
        max_bytes: usize,
        reply: falak_api::action::Reply<String>,
    ) {
        let (node, attempt) = {
            let state = self.ledger.state();
            let Some(t) = state.task(task) else {
                let _ = reply.send(Err(ApiError::not_found(format!(
                    "no task {task}; list a job's tasks with `falak job tasks JOB`"
                ))));
                return;
            };
            match (&t.claim, &t.result) {
                (Some(claim), _) if claim.attempt == t.attempt => (claim.node, claim.attempt),
                (_, Some(result)) => (result.node, result.attempt),
                _ => {
                    let _ = reply.send(Err(ApiError::not_found(format!(
                        "task {task} has not run yet (it is {})",
                        t.state.name()
                    ))));
                    return;
                }
            }
        };
        let tasks_dir = self.runner.tasks_dir().to_owned();
        let me = self.id;
        let transport = self.transport.dyn_transport();
        tokio::spawn(async move {
            let result = if node == me {
                read_local_log(tasks_dir, task, attempt, stream, max_bytes).await.map_err(ApiError::not_found)
            } else {
                remote_logs(&*transport, node, RpcRequest::TaskLogs { task, attempt, stream, max_bytes }).await
            };
            let _ = reply.send(result);
        });
    }
}

async fn remote_logs(transport: &dyn Transport, node: NodeId, request: RpcRequest) -> Result<String, ApiError> {
    let body = Bytes::from(serde_json::to_vec(&request).map_err(|e| ApiError::internal(e.to_string()))?);
    match transport.request(node, Protocol::Rpc, body).await {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(falak_transport::TransportError::Handler(reason)) => Err(ApiError::not_found(reason)),
        Err(e) => {
            Err(ApiError::unavailable(format!("the logs are on node {} and it cannot be reached: {e}", node.short())))
        }
    }
}

fn unexpected(outcome: &Outcome) -> ApiError {
    ApiError::internal(format!("unexpected ledger outcome {outcome:?}"))
}
