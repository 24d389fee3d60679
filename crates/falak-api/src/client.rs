//! The typed client: one method per route, answers as the API's own types, failures as a
//! [`ClientError`] carrying the API's code and message.

mod sse;

use std::time::Duration;

use falak_core::access::TokenId;
use falak_core::capsule::CapsuleDocument;
use falak_core::function::FunctionDocument;
use falak_core::job::{JobId, TaskId};
use falak_core::ledger::{EventId, IDEMPOTENCY_KEY_HEADER, IdempotencyKey};
use falak_core::signing::{DeployerId, DeployerKey, SIGNATURE_HEADER, SpecKind};
use futures_util::{Stream, StreamExt};
use reqwest::{Method, RequestBuilder, Response, header};
use serde::de::DeserializeOwned;

use crate::capsule::{CapsuleApplied, CapsuleInfo, CapsuleSummary};
use crate::deployer::{DeployerInfo, TrustDeployer};
use crate::error::{ErrorBody, ErrorCode};
use crate::event::{EventItem, EventRecord, GAP, LAGGED};
use crate::function::{ArtifactStored, FunctionDeployed, FunctionInfo, InstanceInfo, InvocationInfo};
use crate::health::Readiness;
use crate::image::{ImageDetails, ImageImported, ImageInfo, ImagePulled, ImageRemoved, PullImage};
use crate::job::{JobInfo, JobSubmission, TaskOutput};
use crate::node::NodeInfo;
use crate::service::{ServiceInfo, ServiceSubmission};
use crate::task::{DecisionInfo, LogStream, TaskInfo};
use crate::token::{CreateToken, CreatedToken, TokenInfo};
use crate::workload::{WorkloadInfo, WorkloadRequest};

/// How long a read may take: it is answered from the node's own replica at once, so a node that
/// has not answered by then is paused, overloaded or cut off. Ask another node.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a ledger write may take: a live node answers within about 5 s (3 s to find a leader
/// and commit, 2 s to apply it here) or says why not (`503`).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// Requests that gather from other nodes, move large bodies, build a function's dependencies
/// (deploy) or wait for a function (invoke). Event streams have no limit.
pub const LONG_TIMEOUT: Duration = Duration::from_secs(60);
/// Pulls and imports move whole images: up to half an hour.
pub const IMAGE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request did not produce the typed answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered at the URL (connection refused, unknown host, connect timeout).
    #[error("cannot reach falak at {url}: is a node running? (`falak up`)")]
    Unreachable { url: String, cause: reqwest::Error },
    /// The API answered with an error.
    #[error("{message}")]
    Api { status: u16, code: ErrorCode, message: String },
    /// The connection failed after it was made.
    #[error("request to {url} failed: {cause}")]
    Request { url: String, cause: reqwest::Error },
    /// No answer within the request's timeout: the node may be paused, overloaded or cut off.
    /// A write may still take effect.
    #[error("no answer from {url} in time: the node may be paused, overloaded or cut off; ask another node (--api)")]
    TimedOut { url: String },
    /// The answer was not what the API promises.
    #[error("unexpected answer from {url}: {message}")]
    Decode { url: String, message: String },
    #[error("{0:?} is not an API URL; use e.g. https://127.0.0.1:7070")]
    InvalidUrl(String),
    /// The CA certificate to trust is not a PEM certificate.
    #[error("the mesh CA certificate is not valid: {0}")]
    BadCa(String),
    /// Something on this machine the request needed (a file to upload).
    #[error("{0}")]
    Local(String),
}

impl ClientError {
    /// The API's error code, when the API answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether another node (or the same one a little later) may succeed where this failed:
    /// nothing answered, no answer in time, the connection broke, or the node said it cannot
    /// answer now (`503`, `429`). For a write, only with an idempotency key is a retry safe:
    /// the first attempt may still take effect.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } | ClientError::TimedOut { .. } | ClientError::Request { .. } => true,
            ClientError::Api { code, .. } => matches!(code, ErrorCode::Unavailable | ErrorCode::TooManyRequests),
            ClientError::Decode { .. } | ClientError::InvalidUrl(_) | ClientError::BadCa(_) | ClientError::Local(_) => {
                false
            }
        }
    }
}

/// A client for one node's API.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    /// Signs capsules and functions before they are sent.
    deployer: Option<std::sync::Arc<DeployerKey>>,
    /// Sent as `Idempotency-Key` with the writes that create something.
    idempotency: Option<IdempotencyKey>,
}

/// An HTTP client that trusts `ca_pem` (the mesh CA) and nothing else for HTTPS; with `None`,
/// plain HTTP only (an `https://` URL then fails the handshake, naming the missing CA).
pub fn http_client(ca_pem: Option<&str>) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT).tls_built_in_root_certs(false);
    if let Some(pem) = ca_pem {
        let certs =
            reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| ClientError::BadCa(e.to_string()))?;
        if certs.is_empty() {
            return Err(ClientError::BadCa("it holds no PEM certificate; give the mesh's ca.crt".into()));
        }
        for ca in certs {
            builder = builder.add_root_certificate(ca);
        }
    }
    builder.build().map_err(|e| ClientError::BadCa(e.to_string()))
}

impl Client {
    /// A client for the API at `base_url` (`https://127.0.0.1:7070`); see [`Client::with_ca`].
    pub fn new(base_url: &str) -> Result<Client, ClientError> {
        let base = base_url.trim().trim_end_matches('/').to_owned();
        let valid = reqwest::Url::parse(&base)
            .is_ok_and(|u| (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some());
        if !valid {
            return Err(ClientError::InvalidUrl(base_url.to_owned()));
        }
        Ok(Client { http: http_client(None)?, base, token: None, deployer: None, idempotency: None })
    }

    /// Sign capsules and functions with `key` (a deployer key the mesh trusts).
    pub fn with_deployer(mut self, key: Option<std::sync::Arc<DeployerKey>>) -> Client {
        self.deployer = key;
        self
    }

    /// Send `key` as the `Idempotency-Key` of the writes that create something (submit, apply,
    /// deploy, asynchronous invoke): retried with the same key, through any node, such a write
    /// takes effect once.
    pub fn with_idempotency_key(mut self, key: Option<IdempotencyKey>) -> Client {
        self.idempotency = key;
        self
    }

    /// The idempotency key this client sends, if any.
    pub fn idempotency_key(&self) -> Option<&IdempotencyKey> {
        self.idempotency.as_ref()
    }

    /// Trust `ca_pem`, the mesh CA certificate (`ca.crt`), for the node's HTTPS.
    pub fn with_ca(mut self, ca_pem: &str) -> Result<Client, ClientError> {
        self.http = http_client(Some(ca_pem))?;
        Ok(self)
    }

    /// Send `token` as a bearer token with every request.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    /// The HTTP client underneath (it trusts the mesh CA), for requests the typed methods do
    /// not make.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The bearer token this client sends, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    // Health.

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<String, ClientError> {
        self.text(self.get("/healthz")).await
    }

    /// `GET /readyz`; a node that is not ready answers `unavailable` with the reason.
    pub async fn ready(&self) -> Result<Readiness, ClientError> {
        self.json(self.get("/readyz")).await
    }

    /// `GET /metrics`: Prometheus text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        self.text(self.get("/metrics")).await
    }

    /// `GET /api/v1/openapi.json`.
    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.json(self.get("/api/v1/openapi.json")).await
    }

    // Tokens.

    /// Create an API token; the answer holds the only copy of it.
    pub async fn create_token(&self, request: &CreateToken) -> Result<CreatedToken, ClientError> {
        self.json(self.request(Method::POST, "/api/v1/tokens").json(request)).await
    }

    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, ClientError> {
        self.json(self.get("/api/v1/tokens")).await
    }

    pub async fn revoke_token(&self, id: TokenId) -> Result<TokenInfo, ClientError> {
        self.json(self.request(Method::DELETE, &format!("/api/v1/tokens/{id}"))).await
    }

    // Deployer keys.

    pub async fn deployers(&self) -> Result<Vec<DeployerInfo>, ClientError> {
        self.json(self.get("/api/v1/deployers")).await
    }

    pub async fn trust_deployer(&self, request: &TrustDeployer) -> Result<DeployerInfo, ClientError> {
        self.json(self.request(Method::POST, "/api/v1/deployers").json(request)).await
    }

    pub async fn revoke_deployer(&self, id: DeployerId) -> Result<DeployerInfo, ClientError> {
        self.json(self.request(Method::DELETE, &format!("/api/v1/deployers/{id}"))).await
    }

    // Nodes and capsules.

    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ClientError> {
        self.json(self.get("/api/v1/nodes")).await
    }

    /// Apply a capsule document given as a value.
    pub async fn apply_capsule(&self, document: &CapsuleDocument) -> Result<CapsuleApplied, ClientError> {
        let signed = document.clone().validate().ok().map(|spec| spec.signed_form());
        let request = self.keyed(self.request(Method::POST, "/api/v1/capsules").json(document));
        self.json(self.sign(request, SpecKind::Capsule, signed.as_ref())).await
    }

    /// Apply a capsule document as written (YAML or JSON text); errors name the field.
    pub async fn apply_capsule_text(&self, text: &str) -> Result<CapsuleApplied, ClientError> {
        let signed = CapsuleDocument::parse(text).ok().map(|spec| spec.signed_form());
        let request = self.keyed(self.yaml(Method::POST, "/api/v1/capsules", text));
        self.json(self.sign(request, SpecKind::Capsule, signed.as_ref())).await
    }

    /// `POST /api/v1/functions/{name}/rollback`: an earlier version (the one before the
    /// current when `None`) deployed again, as a new version.
    pub async fn rollback_function(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<crate::function::FunctionInfo, ClientError> {
        let body = crate::capsule::RollbackRequest { version };
        let path = format!("/api/v1/functions/{}/rollback", segment(name));
        self.json(self.request(Method::POST, &path).json(&body)).await
    }

    /// `POST /api/v1/capsules/{name}/rollback`: version `version` (the one before the latest
    /// when `None`) becomes the latest again, as a new version.
    pub async fn rollback_capsule(&self, name: &str, version: Option<u32>) -> Result<CapsuleApplied, ClientError> {
        let body = crate::capsule::RollbackRequest { version };
        let path = format!("/api/v1/capsules/{}/rollback", segment(name));
        self.json(self.request(Method::POST, &path).json(&body)).await
    }

    // Images (of the node this client talks to).

    pub async fn pull_image(&self, reference: &str) -> Result<ImagePulled, ClientError> {
        let body = PullImage { reference: reference.to_owned() };
        self.json(self.request(Method::POST, "/api/v1/images/pull").json(&body).timeout(IMAGE_TIMEOUT)).await
    }

    /// Stream the archive at `path` to the node.
    pub async fn import_image(
        &self,
        path: &std::path::Path,
        name: Option<&str>,
    ) -> Result<Vec<ImageImported>, ClientError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| ClientError::Local(format!("cannot read {}: {e}", path.display())))?;
        let length = file.metadata().await.map(|m| m.len()).ok();
        let stream = tokio_util::io::ReaderStream::new(file);
        let mut request = self
            .request(Method::POST, "/api/v1/images/import")
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(stream))
            .timeout(IMAGE_TIMEOUT);
        if let Some(length) = length {
            request = request.header(header::CONTENT_LENGTH, length);
        }
        if let Some(name) = name {
            request = request.query(&[("name", name)]);
        }
        self.json(request).await
    }

    pub async fn images(&self) -> Result<Vec<ImageInfo>, ClientError> {
        self.json(self.get("/api/v1/images")).await
    }

    pub async fn image(&self, image: &str) -> Result<ImageDetails, ClientError> {
        self.json(self.get(&format!("/api/v1/images/{}", segment(image)))).await
    }

    pub async fn remove_image(&self, image: &str) -> Result<ImageRemoved, ClientError> {
        self.json(self.request(Method::DELETE, &format!("/api/v1/images/{}", segment(image)))).await
    }

    pub async fn capsules(&self) -> Result<Vec<CapsuleSummary>, ClientError> {
        self.json(self.get("/api/v1/capsules")).await
    }

    pub async fn capsule(&self, name: &str) -> Result<CapsuleInfo, ClientError> {
        self.json(self.get(&format!("/api/v1/capsules/{}", segment(name)))).await
    }

    // Jobs and tasks.

    pub async fn submit_job(&self, submission: &JobSubmission) -> Result<JobInfo, ClientError> {
        self.json(self.keyed(self.request(Method::POST, "/api/v1/jobs").json(submission))).await
    }

    /// Jobs, newest first; the server's default limit when `limit` is `None`.
    pub async fn jobs(&self, limit: Option<usize>) -> Result<Vec<JobInfo>, ClientError> {
        let mut request = self.get("/api/v1/jobs");
        if let Some(limit) = limit {
            request = request.query(&[("limit", limit)]);
        }
        self.json(request).await
    }

    pub async fn job(&self, job: JobId) -> Result<JobInfo, ClientError> {
        self.json(self.get(&format!("/api/v1/jobs/{job}"))).await
    }

    pub async fn job_tasks(&self, job: JobId) -> Result<Vec<TaskInfo>, ClientError> {
        self.json(self.get(&format!("/api/v1/jobs/{job}/tasks"))).await
    }

    pub async fn cancel_job(&self, job: JobId) -> Result<JobInfo, ClientError> {
        self.json(self.request(Method::POST, &format!("/api/v1/jobs/{job}/cancel"))).await
    }

    /// The job's stdout tails concatenated in task order.
    pub async fn job_result_text(&self, job: JobId) -> Result<String, ClientError> {
        self.text(self.get(&format!("/api/v1/jobs/{job}/result")).query(&[("format", "text")])).await
    }

    /// Each task's outcome and output, in task order.
    pub async fn job_result(&self, job: JobId) -> Result<Vec<TaskOutput>, ClientError> {
        self.json(self.get(&format!("/api/v1/jobs/{job}/result")).query(&[("format", "json")])).await
    }

    pub async fn task(&self, task: TaskId) -> Result<TaskInfo, ClientError> {
        self.json(self.get(&format!("/api/v1/tasks/{task}"))).await
    }

    /// A task's output, fetched by the node from whichever node ran it.
    pub async fn task_logs(
        &self,
        task: TaskId,
        stream: LogStream,
        max_bytes: Option<usize>,
    ) -> Result<String, ClientError> {
        let mut request =
            self.get(&format!("/api/v1/tasks/{task}/logs")).timeout(LONG_TIMEOUT).query(&[("stream", stream.name())]);
        if let Some(max) = max_bytes {
            request = request.query(&[("max_bytes", max)]);
        }
        self.text(request).await
    }

    /// The decision record, or what placement computes now for a task not yet elected.
    pub async fn decision(&self, task: TaskId) -> Result<DecisionInfo, ClientError> {
        self.json(self.get(&format!("/api/v1/tasks/{task}/decision"))).await
    }

    // Services and workloads.

    pub async fn services(&self) -> Result<Vec<ServiceInfo>, ClientError> {
        self.json(self.get("/api/v1/services")).await
    }

    /// `POST /api/v1/services/{name}/update`: a rolling update to another capsule version.
    pub async fn update_service(
        &self,
        name: &str,
        update: &crate::service::ServiceUpdateRequest,
    ) -> Result<ServiceInfo, ClientError> {
        let path = format!("/api/v1/services/{}/update", segment(name));
        self.json(self.keyed(self.request(Method::POST, &path).json(update))).await
    }

    pub async fn apply_service(&self, submission: &ServiceSubmission) -> Result<ServiceInfo, ClientError> {
        self.json(self.keyed(self.request(Method::POST, "/api/v1/services").json(submission))).await
    }

    /// Apply a service document as written (YAML or JSON text).
    pub async fn apply_service_text(&self, text: &str) -> Result<ServiceInfo, ClientError> {
        self.json(self.keyed(self.yaml(Method::POST, "/api/v1/services", text))).await
    }

    pub async fn service(&self, name: &str) -> Result<ServiceInfo, ClientError> {
        self.json(self.get(&format!("/api/v1/services/{}", segment(name)))).await
    }

    pub async fn remove_service(&self, name: &str) -> Result<ServiceInfo, ClientError> {
        self.json(self.request(Method::DELETE, &format!("/api/v1/services/{}", segment(name)))).await
    }

    pub async fn workloads(&self) -> Result<Vec<WorkloadInfo>, ClientError> {
        self.json(self.get("/api/v1/workloads")).await
    }

    /// A workload by job id (`j12`) or service name.
    pub async fn workload(&self, id: &str) -> Result<WorkloadInfo, ClientError> {
        self.json(self.get(&format!("/api/v1/workloads/{}", segment(id)))).await
    }

    pub async fn create_workload(&self, request: &WorkloadRequest) -> Result<WorkloadInfo, ClientError> {
        self.json(self.keyed(self.request(Method::POST, "/api/v1/workloads").json(request))).await
    }

    pub async fn delete_workload(&self, id: &str) -> Result<WorkloadInfo, ClientError> {
        self.json(self.request(Method::DELETE, &format!("/api/v1/workloads/{}", segment(id)))).await
    }

    // Joining.

    /// Ask this node to admit a new node (see [`crate::join`]).
    pub async fn join(&self, request: &crate::join::JoinRequest) -> Result<crate::join::JoinResponse, ClientError> {
        self.json(self.request(Method::POST, "/api/v1/join").json(request)).await
    }

    /// Make a join token (admin).
    pub async fn create_join_token(
        &self,
        request: &crate::join::CreateJoinToken,
    ) -> Result<crate::join::CreatedJoinToken, ClientError> {
        self.json(self.request(Method::POST, "/api/v1/join-tokens").json(request)).await
    }

    /// The join tokens the ledger keeps (admin).
    pub async fn join_tokens(&self) -> Result<Vec<crate::join::JoinTokenInfo>, ClientError> {
        self.json(self.get("/api/v1/join-tokens")).await
    }

    /// Revoke a join token (admin).
    pub async fn revoke_join_token(&self, id: TokenId) -> Result<crate::join::JoinTokenInfo, ClientError> {
        self.json(self.request(Method::DELETE, &format!("/api/v1/join-tokens/{id}"))).await
    }

    /// Revoke a node, named by id or name (admin).
    pub async fn revoke_node(&self, node: &str) -> Result<crate::join::RevokedNodeInfo, ClientError> {
        self.json(self.request(Method::DELETE, &format!("/api/v1/nodes/{}", segment(node)))).await
    }

    // Events.

    /// The event stream: the ledger events after `since` (the last 10,000 when `None`), then
    /// (with `follow`) every new one until the connection ends. `since` goes as
    /// `Last-Event-ID`, as a browser resuming an event stream sends it: the last id seen, on
    /// this node or any other.
    pub async fn events(
        &self,
        follow: bool,
        since: Option<EventId>,
    ) -> Result<impl Stream<Item = Result<EventItem, ClientError>> + Send + 'static + use<>, ClientError> {
        let url = format!("{}/api/v1/events", self.base);
        let mut request = self.http.get(&url).query(&[("follow", follow)]);
        if let Some(since) = since {
            request = request.header("last-event-id", since.to_string());
        }
        let response = self.send(self.authorize(request), &url).await?;
        let bytes = response.bytes_stream();
        let messages = sse::messages(bytes);
        Ok(messages.map(move |message| match message {
            Err(cause) => Err(ClientError::Request { url: url.clone(), cause }),
            Ok(message) if message.event == LAGGED => {
                let missed = serde_json::from_str::<serde_json::Value>(&message.data)
                    .ok()
                    .and_then(|v| v["missed"].as_u64())
                    .unwrap_or(0);
                Ok(EventItem::Lagged { missed })
            }
            Ok(message) if message.event == GAP => {
                let resumes_at = serde_json::from_str::<serde_json::Value>(&message.data)
                    .ok()
                    .and_then(|v| v["resumes_at"].as_u64())
                    .unwrap_or(0);
                Ok(EventItem::Gap { resumes_at })
            }
            Ok(message) => serde_json::from_str::<EventRecord>(&message.data)
                .map(EventItem::Event)
                .map_err(|e| ClientError::Decode { url: url.clone(), message: format!("event is not a record: {e}") }),
        }))
    }

    // Plumbing.

    // Functions.

    /// `POST /api/v1/artifacts`: store a bundle on the node; returns its content id.
    pub async fn store_artifact(&self, bundle: Vec<u8>) -> Result<ArtifactStored, ClientError> {
        let request = self
            .request(Method::POST, "/api/v1/artifacts")
            .timeout(LONG_TIMEOUT)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(bundle);
        self.json(request).await
    }

    /// `POST /api/v1/functions`: deploy a function whose `artifact` is stored.
    pub async fn deploy_function(&self, document: &FunctionDocument) -> Result<FunctionDeployed, ClientError> {
        let signed = document.clone().validate(0).ok().map(|spec| spec.signed_form());
        let request = self.keyed(self.request(Method::POST, "/api/v1/functions").json(document)).timeout(LONG_TIMEOUT);
        self.json(self.sign(request, SpecKind::Function, signed.as_ref())).await
    }

    pub async fn functions(&self) -> Result<Vec<FunctionInfo>, ClientError> {
        self.json(self.get("/api/v1/functions")).await
    }

    pub async fn function(&self, name: &str) -> Result<FunctionInfo, ClientError> {
        self.json(self.get(&format!("/api/v1/functions/{}", segment(name)))).await
    }

    pub async fn remove_function(&self, name: &str) -> Result<FunctionInfo, ClientError> {
        self.json(self.request(Method::DELETE, &format!("/api/v1/functions/{}", segment(name)))).await
    }

    pub async fn function_instances(&self, name: &str) -> Result<Vec<InstanceInfo>, ClientError> {
        self.json(self.get(&format!("/api/v1/functions/{}/instances", segment(name))).timeout(LONG_TIMEOUT)).await
    }

    pub async fn function_logs(&self, name: &str, max_bytes: Option<usize>) -> Result<String, ClientError> {
        let mut request = self.get(&format!("/api/v1/functions/{}/logs", segment(name))).timeout(LONG_TIMEOUT);
        if let Some(max) = max_bytes {
            request = request.query(&[("max_bytes", max)]);
        }
        self.text(request).await
    }

    /// `POST /api/v1/functions/{name}/invocations`: invoke asynchronously.
    pub async fn invoke_async(
        &self,
        name: &str,
        body: Vec<u8>,
        callback: Option<&str>,
        max_attempts: Option<u32>,
    ) -> Result<InvocationInfo, ClientError> {
        let mut request =
            self.keyed(self.request(Method::POST, &format!("/api/v1/functions/{}/invocations", segment(name))));
        if let Some(url) = callback {
            request = request.query(&[("callback", url)]);
        }
        if let Some(n) = max_attempts {
            request = request.query(&[("max_attempts", n)]);
        }
        self.json(request.body(body)).await
    }

    pub async fn invocation(&self, name: &str, id: u64) -> Result<InvocationInfo, ClientError> {
        self.json(self.get(&format!("/api/v1/functions/{}/invocations/{id}", segment(name)))).await
    }

    /// Invoke `name` through the gateway: `method /fn/{name}{path}` with `body`. Any status is
    /// an answer (the function's own); only failing to get one is an error.
    pub async fn invoke(
        &self,
        name: &str,
        method: Method,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<Response, ClientError> {
        let path = if path.starts_with('/') { path.to_owned() } else { format!("/{path}") };
        let url = format!("{}/fn/{}{path}", self.base, segment(name));
        let mut request = self.authorize(self.http.request(method, &url).timeout(LONG_TIMEOUT)).body(body);
        for (k, v) in headers {
            request = request.header(k.as_str(), v.as_str());
        }
        request.send().await.map_err(|cause| {
            if cause.is_connect() {
                ClientError::Unreachable { url: self.base.clone(), cause }
            } else {
                ClientError::Request { url, cause }
            }
        })
    }

    fn get(&self, path: &str) -> RequestBuilder {
        self.request(Method::GET, path)
    }

    /// A request with the timeout of its kind: [`READ_TIMEOUT`] for `GET`, [`WRITE_TIMEOUT`]
    /// otherwise (callers lengthen it where the route takes longer).
    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let timeout = if method == Method::GET { READ_TIMEOUT } else { WRITE_TIMEOUT };
        self.authorize(self.http.request(method, format!("{}{path}", self.base)).timeout(timeout))
    }

    /// Add this client's idempotency key, if it has one.
    fn keyed(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.idempotency {
            Some(key) => request.header(IDEMPOTENCY_KEY_HEADER, key.as_str()),
            None => request,
        }
    }

    /// Add the deployer's signature of `spec` (the validated, unversioned spec) when this
    /// client has a deployer key. A document that does not validate here goes unsigned: the
    /// node answers with what is wrong with it.
    fn sign<T: serde::Serialize>(&self, request: RequestBuilder, kind: SpecKind, spec: Option<&T>) -> RequestBuilder {
        match (&self.deployer, spec) {
            (Some(key), Some(spec)) => request.header(SIGNATURE_HEADER, key.sign(kind, spec).encode()),
            _ => request,
        }
    }

    fn yaml(&self, method: Method, path: &str, text: &str) -> RequestBuilder {
        self.request(method, path).header(header::CONTENT_TYPE, "application/yaml").body(text.to_owned())
    }

    fn authorize(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, ClientError> {
        let url = self.url_of(&request);
        let response = self.send(request, &url).await?;
        let bytes = response.bytes().await.map_err(|cause| ClientError::Request { url: url.clone(), cause })?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode { url, message: e.to_string() })
    }

    async fn text(&self, request: RequestBuilder) -> Result<String, ClientError> {
        let url = self.url_of(&request);
        let response = self.send(request, &url).await?;
        response.text().await.map_err(|cause| ClientError::Request { url, cause })
    }

    /// The URL a builder will request, for error messages.
    fn url_of(&self, request: &RequestBuilder) -> String {
        request.try_clone().and_then(|r| r.build().ok()).map_or_else(|| self.base.clone(), |r| r.url().to_string())
    }

    /// Send a request; an error status becomes [`ClientError::Api`].
    async fn send(&self, request: RequestBuilder, url: &str) -> Result<Response, ClientError> {
        let response = request.send().await.map_err(|cause| {
            if cause.is_connect() {
                ClientError::Unreachable { url: self.base.clone(), cause }
            } else if cause.is_timeout() {
                ClientError::TimedOut { url: self.base.clone() }
            } else {
                ClientError::Request { url: url.to_owned(), cause }
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => {
                ClientError::Api { status: status.as_u16(), code: body.error.code, message: body.error.message }
            }
            Err(_) => ClientError::Api {
                status: status.as_u16(),
                code: ErrorCode::from_status(status.as_u16()),
                message: format!("HTTP {status} from {url}: {}", text.trim()),
            },
        })
    }
}

/// Percent-encode one path segment so user input cannot change the path.
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("web-1"), "web-1");
        assert_eq!(segment("../x y"), "..%2Fx%20y");
    }

    #[test]
    fn urls_are_checked() {
        assert!(Client::new("http://127.0.0.1:7070/").is_ok());
        assert_eq!(Client::new("http://127.0.0.1:7070/").unwrap().base_url(), "http://127.0.0.1:7070");
        assert!(matches!(Client::new("127.0.0.1:7070"), Err(ClientError::InvalidUrl(_))));
        assert!(Client::new("https://x:1").is_ok());
        assert!(matches!(Client::new("ftp://x"), Err(ClientError::InvalidUrl(_))));
        assert!(matches!(Client::new("http://x").unwrap().with_ca("not pem"), Err(ClientError::BadCa(_))));
    }
}
