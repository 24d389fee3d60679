//! `/api/v1/functions`, `/api/v1/artifacts` and the invoke gateway `/fn/{name}/...`.
//!
//! Managing functions goes through [`Action::Function`] like every other resource. Invoking
//! one does not: the gateway is the data plane, answered by the node's [`Gateway`] directly so
//! a warm request costs microseconds, not a trip through the node's main loop.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use falak_core::function::{
    FunctionDocument, FunctionEntry, FunctionSpec, Invocation, InvocationId, InvocationState, MAX_ASYNC_BODY_BYTES,
    Runtime, Scaling, SnapshotPolicy, StoredRequest,
};
use falak_core::spec::validate_name;
use falak_core::{ArtifactId, Millis};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::action::{Action, Reply};
use crate::error::{ApiError, ErrorBody};
use crate::routes::{ApiPath, ApiQuery, Body, Ctx};

/// The largest bundle `POST /api/v1/artifacts` accepts (the artifact store's bundle limit).
pub const MAX_UPLOAD_BYTES: usize = 64 << 20;
/// The largest request body the gateway passes to a function.
pub const MAX_INVOKE_BODY_BYTES: usize = 6 << 20;
/// The response header that labels how an invocation started and what each stage took.
pub const START_HEADER: &str = "falak-start";

/// The closed set of function-management requests the API makes of its node.
#[derive(Debug)]
pub enum FunctionAction {
    /// Store a bundle in this node's artifact store.
    StoreArtifact {
        bytes: Bytes,
        reply: Reply<ArtifactStored>,
    },
    /// Deploy a function whose bundle is already stored.
    Deploy {
        document: Box<FunctionDocument>,
        /// The deployer's signature of the validated spec, unversioned.
        signature: Option<falak_core::signing::SpecSignature>,
        idempotency: Option<falak_core::ledger::IdempotencyKey>,
        reply: Reply<FunctionDeployed>,
    },
    List {
        reply: Reply<Vec<FunctionInfo>>,
    },
    Get {
        name: String,
        reply: Reply<FunctionInfo>,
    },
    Remove {
        name: String,
        reply: Reply<FunctionInfo>,
    },
    /// Deploy an earlier version again, as a new version.
    Rollback {
        name: String,
        version: Option<u32>,
        reply: Reply<FunctionInfo>,
    },
    /// Every instance of the function on every node that answers.
    Instances {
        name: String,
        reply: Reply<Vec<InstanceInfo>>,
    },
    /// The tail of the function's output on every node that answers.
    Logs {
        name: String,
        max_bytes: usize,
        reply: Reply<String>,
    },
    /// Record an asynchronous invocation.
    Invoke {
        name: String,
        submission: Box<InvocationSubmission>,
        idempotency: Option<falak_core::ledger::IdempotencyKey>,
        reply: Reply<InvocationInfo>,
    },
    GetInvocation {
        name: String,
        id: InvocationId,
        reply: Reply<InvocationInfo>,
    },
}

impl FunctionAction {
    pub fn name(&self) -> &'static str {
        match self {
            FunctionAction::StoreArtifact { .. } => "store_artifact",
            FunctionAction::Deploy { .. } => "deploy_function",
            FunctionAction::List { .. } => "list_functions",
            FunctionAction::Get { .. } => "get_function",
            FunctionAction::Remove { .. } => "remove_function",
            FunctionAction::Rollback { .. } => "rollback_function",
            FunctionAction::Instances { .. } => "function_instances",
            FunctionAction::Logs { .. } => "function_logs",
            FunctionAction::Invoke { .. } => "invoke_async",
            FunctionAction::GetInvocation { .. } => "get_invocation",
        }
    }

    pub fn fail(self, error: ApiError) {
        fn send<T>(reply: Reply<T>, error: ApiError) {
            let _ = reply.send(Err(error));
        }
        match self {
            FunctionAction::StoreArtifact { reply, .. } => send(reply, error),
            FunctionAction::Deploy { reply, .. } => send(reply, error),
            FunctionAction::List { reply } => send(reply, error),
            FunctionAction::Get { reply, .. } => send(reply, error),
            FunctionAction::Remove { reply, .. } => send(reply, error),
            FunctionAction::Rollback { reply, .. } => send(reply, error),
            FunctionAction::Instances { reply, .. } => send(reply, error),
            FunctionAction::Logs { reply, .. } => send(reply, error),
            FunctionAction::Invoke { reply, .. } => send(reply, error),
            FunctionAction::GetInvocation { reply, .. } => send(reply, error),
        }
    }

    pub fn is_write(&self) -> bool {
        matches!(
            self,
            FunctionAction::StoreArtifact { .. }
                | FunctionAction::Deploy { .. }
                | FunctionAction::Remove { .. }
                | FunctionAction::Rollback { .. }
                | FunctionAction::Invoke { .. }
        )
    }
}

/// Serves `/fn/{name}/{path}`: the node's invoke gateway.
pub trait Gateway: Send + Sync + 'static {
    /// Invoke function `name` with `request`, whose URI path is already the part after
    /// `/fn/{name}` (at least `/`).
    fn invoke(&self, name: String, request: Request) -> BoxFuture<'static, Response>;
}

/// The gateway of a node that serves no functions.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoGateway;

impl Gateway for NoGateway {
    fn invoke(&self, name: String, _request: Request) -> BoxFuture<'static, Response> {
        Box::pin(async move {
            ApiError::unavailable(format!("this node has no function gateway; cannot invoke {name}")).into_response()
        })
    }
}

/// An error answer from the gateway, with `Retry-After` when the client should come back.
pub fn gateway_error(error: ApiError, retry_after_ms: Option<u64>) -> Response {
    let mut response = (error.status(), Json(ErrorBody { error })).into_response();
    if let Some(ms) = retry_after_ms {
        let secs = ms.div_ceil(1000).max(1);
        if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    response
}

/// The answer to `POST /api/v1/artifacts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactStored {
    pub id: ArtifactId,
    pub size: u64,
    /// The node already held it.
    pub existed: bool,
}

/// The answer to `POST /api/v1/functions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionDeployed {
    pub name: String,
    pub version: u32,
    /// The same content was already the current version; nothing changed.
    pub unchanged: bool,
    /// The bundle; a container function has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactId>,
    /// A container function's pinned image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// How preparing it on the receiving node went (bundle, dependencies, trial start).
    pub prepare: PrepareReport,
}

/// How preparing a deployment on one node went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareReport {
    pub node: String,
    pub millis: u64,
    /// Dependencies were installed into a virtualenv (or found cached).
    pub dependencies: bool,
    /// A zygote snapshot is ready on that node.
    pub snapshot: bool,
}

/// One function, as listed and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionInfo {
    pub name: String,
    pub version: u32,
    pub runtime: Runtime,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub command: Vec<String>,
    /// The bundle; a container function has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactId>,
    /// A container function's pinned image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub scaling: Scaling,
    pub timeout_ms: u64,
    pub snapshot: SnapshotPolicy,
    pub observers: u32,
    pub deployed_at: Millis,
    /// Instances the mesh runs now (their slots in the ledger).
    pub instances: u32,
    /// The gateway path.
    pub url_path: String,
    /// Earlier versions the ledger keeps, oldest first: `falak fn rollback` brings one back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_versions: Vec<u32>,
}

impl FunctionInfo {
    pub fn of(entry: &FunctionEntry) -> FunctionInfo {
        let FunctionSpec { name, version, runtime, handler, command, artifact, scaling, timeout_ms, snapshot, .. } =
            entry.spec.clone();
        FunctionInfo {
            url_path: format!("/fn/{name}"),
            name,
            version,
            runtime,
            handler,
            command,
            artifact,
            image: entry.spec.container.as_ref().map(|c| c.image.clone()),
            scaling,
            timeout_ms,
            snapshot,
            observers: entry.spec.observers,
            deployed_at: entry.deployed_at,
            instances: entry.instances.len() as u32,
            earlier_versions: entry.history.iter().map(|h| h.spec.version).collect(),
        }
    }
}

/// One instance on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub node: String,
    pub node_name: String,
    pub instance: u64,
    pub version: u32,
    /// `STARTING`, `IDLE`, `BUSY` or `STOPPING`.
    pub state: String,
    pub in_flight: u32,
    /// How it started: `cold` or `snapshot`.
    pub start: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Milliseconds since it entered its state.
    pub age_ms: u64,
}

/// The query of `POST /api/v1/functions/{name}/invocations`; the request body is passed to
/// the function as the body of a `POST` to `path`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvocationSubmission {
    /// Path after `/fn/{name}`; `/` when absent.
    #[serde(default)]
    pub path: Option<String>,
    /// A URL the result is POSTed to when known.
    #[serde(default)]
    pub callback: Option<String>,
    /// Attempts before the invocation fails (1 to 10; default 3).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    #[serde(skip)]
    pub content_type: Option<String>,
    #[serde(skip)]
    pub body: Bytes,
}

impl InvocationSubmission {
    /// The request to store, validated.
    pub fn stored_request(&self) -> Result<StoredRequest, ApiError> {
        let path = self.path.clone().unwrap_or_else(|| "/".to_owned());
        if !path.starts_with('/') || path.len() > 2048 {
            return Err(ApiError::invalid(format!("path {path:?} must start with '/' and be at most 2048 bytes")));
        }
        if let Some(url) = &self.callback {
            let ok = reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
            if !ok {
                return Err(ApiError::invalid(format!("callback {url:?} is not an http(s) URL")));
            }
        }
        let mut headers = Vec::new();
        if let Some(t) = &self.content_type {
            headers.push(("content-type".to_owned(), t.clone()));
        }
        Ok(StoredRequest { method: "POST".to_owned(), path, query: String::new(), headers, body: self.body.to_vec() })
    }
}

/// An asynchronous invocation and, once known, its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationInfo {
    pub id: InvocationId,
    pub function: String,
    pub state: InvocationState,
    pub attempts: u32,
    pub max_attempts: u32,
    pub submitted_at: Millis,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Millis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The response body as text (lossy UTF-8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The node running it.
    pub owner: String,
}

impl InvocationInfo {
    pub fn of(invocation: &Invocation) -> InvocationInfo {
        InvocationInfo {
            id: invocation.id,
            function: invocation.function.clone(),
            state: invocation.state,
            attempts: invocation.attempts,
            max_attempts: invocation.max_attempts,
            submitted_at: invocation.submitted_at,
            finished_at: invocation.finished_at,
            status: invocation.response.as_ref().map(|r| r.status),
            body: invocation.response.as_ref().map(|r| String::from_utf8_lossy(&r.body).into_owned()),
            truncated: invocation.response.as_ref().is_some_and(|r| r.truncated),
            error: invocation.error.clone(),
            owner: invocation.owner.to_string(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogsQuery {
    #[serde(default)]
    max_bytes: Option<usize>,
}

pub(crate) fn check_name(name: &str) -> Result<(), ApiError> {
    validate_name("name", name).map_err(|_| ApiError::not_found(format!("no function named {name:?}")))
}

/// A request body of up to [`MAX_UPLOAD_BYTES`].
pub(crate) struct Upload(Bytes);

impl FromRequest<Ctx> for Upload {
    type Rejection = ApiError;

    async fn from_request(req: Request, _ctx: &Ctx) -> Result<Self, ApiError> {
        if declared_length(req.headers()).is_some_and(|n| n > MAX_UPLOAD_BYTES as u64) {
            drain(req.into_body(), MAX_UPLOAD_BYTES).await;
            return Err(ApiError::too_large(format!("a bundle is at most {MAX_UPLOAD_BYTES} bytes")));
        }
        let body = req.into_body();
        match axum::body::to_bytes(body, MAX_UPLOAD_BYTES).await {
            Ok(bytes) => Ok(Upload(bytes)),
            Err(e) => {
                let too_large = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                    || e.to_string().contains("length limit");
                if too_large {
                    Err(ApiError::too_large(format!("a bundle is at most {MAX_UPLOAD_BYTES} bytes")))
                } else {
                    Err(ApiError::invalid(format!("request body: {e}")))
                }
            }
        }
    }
}

/// The request's `Content-Length`, when it declares one.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// Read and drop a body that is too large so the client, still sending, gets the error answer
/// instead of a reset connection. Bodies over four times `limit` are not read: the connection
/// closes instead.
pub async fn drain(body: axum::body::Body, limit: usize) {
    use http_body_util::BodyExt;
    let mut body = http_body_util::Limited::new(body, limit.saturating_mul(4));
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
}

pub(crate) async fn store_artifact(
    State(ctx): State<Ctx>,
    Upload(bytes): Upload,
) -> Result<(StatusCode, Json<ArtifactStored>), ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::invalid("request body is empty; send the bundle (a tar or tar.gz archive)"));
    }
    let stored = ctx.ask(|reply| Action::Function(FunctionAction::StoreArtifact { bytes, reply })).await?;
    Ok((StatusCode::CREATED, Json(stored)))
}

pub(crate) async fn deploy(
    State(ctx): State<Ctx>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<FunctionDeployed>), ApiError> {
    let signature = crate::routes::signature(&headers)?;
    let idempotency = crate::routes::idempotency_key(&headers)?;
    let document: FunctionDocument = body.parse()?;
    document.check()?;
    let document = Box::new(document);
    let deployed =
        ctx.ask(|reply| Action::Function(FunctionAction::Deploy { document, signature, idempotency, reply })).await?;
    Ok((StatusCode::CREATED, Json(deployed)))
}

pub(crate) async fn list(State(ctx): State<Ctx>) -> Result<Json<Vec<FunctionInfo>>, ApiError> {
    ctx.ask(|reply| Action::Function(FunctionAction::List { reply })).await.map(Json)
}

pub(crate) async fn show(
    State(ctx): State<Ctx>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<FunctionInfo>, ApiError> {
    check_name(&name)?;
    ctx.ask(|reply| Action::Function(FunctionAction::Get { name, reply })).await.map(Json)
}

pub(crate) async fn remove(
    State(ctx): State<Ctx>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<FunctionInfo>, ApiError> {
    check_name(&name)?;
    ctx.ask(|reply| Action::Function(FunctionAction::Remove { name, reply })).await.map(Json)
}

pub(crate) async fn rollback(
    State(ctx): State<Ctx>,
    ApiPath(name): ApiPath<String>,
    body: Body,
) -> Result<Json<FunctionInfo>, ApiError> {
    check_name(&name)?;
    let request: crate::capsule::RollbackRequest =
        if body.is_empty() { crate::capsule::RollbackRequest::default() } else { body.parse()? };
    let version = request.version;
    ctx.ask(|reply| Action::Function(FunctionAction::Rollback { name, version, reply })).await.map(Json)
}

pub(crate) async fn instances(
    State(ctx): State<Ctx>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Vec<InstanceInfo>>, ApiError> {
    check_name(&name)?;
    ctx.ask(|reply| Action::Function(FunctionAction::Instances { name, reply })).await.map(Json)
}

pub(crate) async fn logs(
    State(ctx): State<Ctx>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Result<String, ApiError> {
    check_name(&name)?;
    let max_bytes = query.max_bytes.unwrap_or(64 << 10).min(crate::task::MAX_LOG_BYTES);
    ctx.ask(|reply| Action::Function(FunctionAction::Logs { name, max_bytes, reply })).await
}

pub(crate) async fn invoke_async(
    State(ctx): State<Ctx>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(mut submission): ApiQuery<InvocationSubmission>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<InvocationInfo>), ApiError> {
    check_name(&name)?;
    if body.len() > MAX_ASYNC_BODY_BYTES {
        return Err(ApiError::too_large(format!(
            "an asynchronous invocation body is at most {MAX_ASYNC_BODY_BYTES} bytes; invoke /fn/{name} directly for larger ones"
        )));
    }
    submission.content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    submission.body = body;
    submission.stored_request()?;
    let idempotency = crate::routes::idempotency_key(&headers)?;
    let submission = Box::new(submission);
    let info =
        ctx.ask(|reply| Action::Function(FunctionAction::Invoke { name, submission, idempotency, reply })).await?;
    Ok((StatusCode::ACCEPTED, Json(info)))
}

pub(crate) async fn invocation(
    State(ctx): State<Ctx>,
    ApiPath((name, id)): ApiPath<(String, InvocationId)>,
) -> Result<Json<InvocationInfo>, ApiError> {
    check_name(&name)?;
    ctx.ask(|reply| Action::Function(FunctionAction::GetInvocation { name, id, reply })).await.map(Json)
}

/// `ANY /fn/{name}` and `/fn/{name}/{*path}`: hand the request to the gateway with its path
/// rewritten to the part after the function name.
pub(crate) async fn gateway(gateway: Arc<dyn Gateway>, mut request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let rest = path.strip_prefix("/fn/").unwrap_or("");
    let (name, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if let Err(e) = check_name(name) {
        return gateway_error(e, None);
    }
    let name = name.to_owned();
    let path_and_query = match request.uri().query() {
        Some(q) => format!("{tail}?{q}"),
        None => tail.to_owned(),
    };
    match path_and_query.parse() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(_) => return gateway_error(ApiError::invalid("the request path is not a valid URI"), None),
    }
    gateway.invoke(name, request).await
}
