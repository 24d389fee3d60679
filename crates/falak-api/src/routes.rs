//! The route table, the router built from it, and the plumbing every handler shares: asking
//! the node through an [`Action`], reading bodies, queries and paths into [`ApiError`]s.
//!
//! **Boundary:** handlers never touch node internals; each one turns a request into typed input,
//! sends one action (or a few) and shapes the reply.
//!
//! The same table registers the routes and generates the OpenAPI document
//! ([`crate::openapi`]), so the two cannot drift.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request};
use axum::handler::Handler;
use axum::http::request::Parts;
use axum::http::{Method, Uri, header};
use axum::routing::{MethodFilter, MethodRouter, on};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use crate::action::{Action, Reply};
use crate::auth::{Authenticator, Guard, RateLimiter, access_for};
use crate::error::{ApiError, ErrorCode, body_rejection};
use crate::function::{Gateway, NoGateway};
use crate::{capsule, deployer, event, function, health, image, job, node, openapi, service, task, token, workload};

/// How the API behaves; the node builds it from its configuration.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The largest request body accepted, in bytes; larger bodies get `413 too_large`.
    pub body_limit: usize,
    /// How long a request may wait for the node to answer its action.
    pub action_timeout: Duration,
    /// How long a request may wait for room in a full action queue before `429`.
    pub queue_wait: Duration,
    /// How often an idle event stream sends a keep-alive comment.
    pub keep_alive: Duration,
}

/// The default body limit: 1 MiB, the same as the largest spec document.
pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            body_limit: DEFAULT_BODY_LIMIT,
            action_timeout: Duration::from_secs(30),
            queue_wait: Duration::from_secs(1),
            keep_alive: Duration::from_secs(15),
        }
    }
}

/// Build the API router. The node receives every [`Action`] on the other end of `actions` and
/// answers through the action's reply channel; `auth` checks bearer tokens.
pub fn router(actions: mpsc::Sender<Action>, config: ApiConfig, auth: Arc<dyn Authenticator>) -> Router {
    router_with_gateway(actions, config, Arc::new(NoGateway), auth)
}

/// Build the API router with the node's function gateway serving `/fn/{name}/...`.
///
/// # Panics
/// When a route has no row in [`crate::auth::AUTHORIZATION`]: no route is served unguarded.
pub fn router_with_gateway(
    actions: mpsc::Sender<Action>,
    config: ApiConfig,
    gateway: Arc<dyn Gateway>,
    auth: Arc<dyn Authenticator>,
) -> Router {
    let body_limit = config.body_limit;
    let ctx = Ctx { actions, config: Arc::new(config) };
    let limiter = Arc::new(RateLimiter::default());
    let guarded = |method: &str, path: &str, handler: MethodRouter<Ctx>| {
        let Some(access) = access_for(method, path) else {
            panic!("{method} {path} has no row in the authorization table (auth::AUTHORIZATION)")
        };
        let guard = Guard { access, authenticator: auth.clone(), limiter: limiter.clone() };
        handler.layer(axum::middleware::from_fn_with_state(guard, crate::auth::guard))
    };
    let mut router = Router::new();
    for route in table() {
        let mut handler = route.handler;
        if !route.info.idempotent && route.info.method == Method::POST {
            handler = handler.layer(axum::middleware::from_fn(refuse_idempotency_key));
        }
        router = router.route(route.info.path, guarded(route.info.method.as_str(), route.info.path, handler));
    }
    let to_gateway = move |request: Request| function::gateway(gateway.clone(), request);
    for path in GATEWAY_PATHS {
        router = router.route(path, guarded("ANY", path, axum::routing::any(to_gateway.clone())));
    }
    router
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(ctx)
}

/// The paths the function gateway serves, every method.
pub const GATEWAY_PATHS: [&str; 3] = ["/fn/{name}", "/fn/{name}/", "/fn/{name}/{*path}"];

/// What the OpenAPI document and tests know about one route.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    pub method: Method,
    /// The path in axum and OpenAPI syntax: `/api/v1/jobs/{id}`.
    pub path: &'static str,
    pub summary: &'static str,
    /// Query parameters: name and description.
    pub query: &'static [(&'static str, &'static str)],
    /// Request body content types accepted; empty when the route takes no body.
    pub body: &'static [&'static str],
    /// The status of a successful answer.
    pub status: u16,
    /// The content type of a successful answer.
    pub produces: &'static str,
    /// Whether the route takes an `Idempotency-Key` (the writes that create something); other
    /// `POST` routes refuse one rather than ignore it.
    pub idempotent: bool,
}

/// Every route the API serves, in table order.
pub fn routes() -> Vec<RouteInfo> {
    table().into_iter().map(|r| r.info).collect()
}

const JSON: &str = "application/json";
const TEXT: &str = "text/plain";
const SPEC_BODY: &[&str] = &["application/json", "application/yaml", "text/yaml"];

struct Route {
    info: RouteInfo,
    handler: MethodRouter<Ctx>,
}

impl Route {
    fn new<H, T>(method: Method, path: &'static str, summary: &'static str, handler: H) -> Route
    where
        H: Handler<T, Ctx>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("route table uses standard methods");
        let info =
            RouteInfo { method, path, summary, query: &[], body: &[], status: 200, produces: JSON, idempotent: false };
        Route { info, handler: on(filter, handler) }
    }

    fn query(mut self, query: &'static [(&'static str, &'static str)]) -> Route {
        self.info.query = query;
        self
    }

    fn body(mut self, body: &'static [&'static str]) -> Route {
        self.info.body = body;
        self
    }

    fn created(mut self) -> Route {
        self.info.status = 201;
        self
    }

    fn accepted(mut self) -> Route {
        self.info.status = 202;
        self
    }

    fn produces(mut self, content_type: &'static str) -> Route {
        self.info.produces = content_type;
        self
    }

    fn idempotent(mut self) -> Route {
        self.info.idempotent = true;
        self
    }
}

fn table() -> Vec<Route> {
    use Method as M;
    vec![
        Route::new(M::GET, "/healthz", "liveness: always `ok` while the process serves HTTP", health::healthz)
            .produces(TEXT),
        Route::new(M::GET, "/readyz", "readiness: joined the ledger and a leader is known", health::readyz),
        Route::new(M::GET, "/metrics", "Prometheus metrics", health::metrics).produces(health::METRICS_CONTENT_TYPE),
        Route::new(M::GET, "/api/v1/openapi.json", "this document", openapi::serve),
        Route::new(M::GET, "/api/v1/nodes", "nodes of the mesh", node::list),
        Route::new(M::DELETE, "/api/v1/nodes/{node}", "revoke a node (id or name) for good", crate::join::revoke),
        Route::new(M::POST, "/api/v1/join", "a new node joins with the ticket of a join token", crate::join::join)
            .body(&[JSON])
            .created(),
        Route::new(
            M::POST,
            "/api/v1/join-tokens",
            "make a join token; the answer is the only copy",
            crate::join::create_token,
        )
        .body(&[JSON])
        .created(),
        Route::new(M::GET, "/api/v1/join-tokens", "join tokens (never their secrets)", crate::join::list_tokens),
        Route::new(M::DELETE, "/api/v1/join-tokens/{id}", "revoke a join token", crate::join::revoke_token),
        Route::new(M::POST, "/api/v1/capsules", "apply a capsule document (YAML or JSON)", capsule::apply)
            .body(SPEC_BODY)
            .created()
            .idempotent(),
        Route::new(M::GET, "/api/v1/capsules", "capsules, latest version each", capsule::list),
        Route::new(M::GET, "/api/v1/capsules/{name}", "every version of one capsule", capsule::show),
        Route::new(
            M::POST,
            "/api/v1/capsules/{name}/rollback",
            "make an earlier version the latest again, as a new version",
            capsule::rollback,
        )
        .body(&[JSON]),
        Route::new(M::POST, "/api/v1/jobs", "submit a job", job::submit).body(SPEC_BODY).created().idempotent(),
        Route::new(M::GET, "/api/v1/jobs", "jobs, newest first", job::list)
            .query(&[("limit", "at most this many jobs (default 100)")]),
        Route::new(M::GET, "/api/v1/jobs/{id}", "one job with task counts", job::show),
        Route::new(M::GET, "/api/v1/jobs/{id}/tasks", "the tasks of one job", job::tasks),
        Route::new(M::POST, "/api/v1/jobs/{id}/cancel", "cancel a running job", job::cancel),
        Route::new(M::GET, "/api/v1/jobs/{id}/result", "task outputs in task order", job::result)
            .query(&[("format", "`text` (concatenated stdout) or `json` (per-task array)")]),
        Route::new(M::GET, "/api/v1/tasks/{id}", "one task", task::show),
        Route::new(M::GET, "/api/v1/tasks/{id}/logs", "a task's output, from the node that ran it", task::logs)
            .query(&[("stream", "`stdout` (default) or `stderr`"), ("max_bytes", "at most this many trailing bytes")])
            .produces(TEXT),
        Route::new(M::GET, "/api/v1/tasks/{id}/decision", "the task's decision record", task::decision),
        Route::new(M::GET, "/api/v1/services", "services", service::list),
        Route::new(M::POST, "/api/v1/services", "apply a service (create or scale)", service::apply)
            .body(SPEC_BODY)
            .created()
            .idempotent(),
        Route::new(M::GET, "/api/v1/services/{name}", "one service with its replicas", service::show),
        Route::new(M::DELETE, "/api/v1/services/{name}", "remove a service", service::remove),
        Route::new(
            M::POST,
            "/api/v1/services/{name}/update",
            "move a service to another capsule version, a few replicas at a time",
            service::update,
        )
        .body(SPEC_BODY)
        .accepted()
        .idempotent(),
        Route::new(M::GET, "/api/v1/workloads", "services and jobs in the workload shape", workload::list),
        Route::new(M::POST, "/api/v1/workloads", "create a service from a capsule", workload::create)
            .body(SPEC_BODY)
            .created()
            .idempotent(),
        Route::new(M::GET, "/api/v1/workloads/{id}", "one workload", workload::show),
        Route::new(M::DELETE, "/api/v1/workloads/{id}", "remove a service or cancel a job", workload::remove),
        Route::new(
            M::POST,
            "/api/v1/artifacts",
            "store a bundle (tar or tar.gz) by content id",
            function::store_artifact,
        )
        .body(&["application/octet-stream"])
        .created(),
        Route::new(M::GET, "/api/v1/images", "this node's images", image::list),
        Route::new(M::POST, "/api/v1/images/pull", "pull an image (blobs from peers first, else the registry)", image::pull)
            .body(SPEC_BODY),
        Route::new(M::POST, "/api/v1/images/import", "import an OCI layout tar or docker archive", image::import)
            .query(&[("name", "the name to give the image (one image only)")])
            .body(&["application/octet-stream"])
            .created(),
        Route::new(M::GET, "/api/v1/images/{image}", "one image: name, digest or digest prefix", image::inspect),
        Route::new(M::DELETE, "/api/v1/images/{image}", "remove a name, or every name of a digest", image::remove),
        Route::new(M::GET, "/api/v1/functions", "functions", function::list),
        Route::new(M::POST, "/api/v1/functions", "deploy a function (its bundle stored first)", function::deploy)
            .body(SPEC_BODY)
            .created()
            .idempotent(),
        Route::new(M::GET, "/api/v1/functions/{name}", "one function", function::show),
        Route::new(M::DELETE, "/api/v1/functions/{name}", "remove a function", function::remove),
        Route::new(
            M::POST,
            "/api/v1/functions/{name}/rollback",
            "deploy an earlier version again, as a new version",
            function::rollback,
        )
        .body(&[JSON]),
        Route::new(M::GET, "/api/v1/functions/{name}/instances", "its instances on every node", function::instances),
        Route::new(M::GET, "/api/v1/functions/{name}/logs", "its output on every node", function::logs)
            .query(&[("max_bytes", "at most this many trailing bytes per node")])
            .produces(TEXT),
        Route::new(M::POST, "/api/v1/functions/{name}/invocations", "invoke asynchronously", function::invoke_async)
            .query(&[
                ("path", "path after /fn/{name} (default /)"),
                ("callback", "URL the result is POSTed to"),
                ("max_attempts", "attempts before it fails (1-10, default 3)"),
            ])
            .body(&["*/*"])
            .accepted()
            .idempotent(),
        Route::new(
            M::GET,
            "/api/v1/functions/{name}/invocations/{id}",
            "an asynchronous invocation and its result",
            function::invocation,
        ),
        Route::new(M::GET, "/api/v1/events", "the event stream (server-sent events)", event::stream)
            .query(&[
                ("follow", "keep the stream open for new events (default true)"),
                (
                    "since",
                    "ledger events after this event id (`1234.2`, or `1234` for after entry 1234; `0` for the whole retained history); also `Last-Event-ID`. Without it: the last 10,000",
                ),
            ])
            .produces("text/event-stream"),
        Route::new(M::POST, "/api/v1/tokens", "create an API token; the answer is the only copy", token::create)
            .body(&[JSON])
            .created(),
        Route::new(M::GET, "/api/v1/tokens", "API tokens (never their secrets)", token::list),
        Route::new(M::DELETE, "/api/v1/tokens/{id}", "revoke an API token", token::revoke),
        Route::new(M::GET, "/api/v1/deployers", "deployer keys trusted to sign specs", deployer::list),
        Route::new(M::POST, "/api/v1/deployers", "trust a deployer key", deployer::trust).body(&[JSON]).created(),
        Route::new(M::DELETE, "/api/v1/deployers/{id}", "revoke a deployer key", deployer::revoke),
    ]
}

/// What every handler holds: the way to the node and the configuration.
#[derive(Clone)]
pub(crate) struct Ctx {
    actions: mpsc::Sender<Action>,
    pub(crate) config: Arc<ApiConfig>,
}

impl Ctx {
    /// Send one action to the node and wait for its answer.
    pub(crate) async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Action) -> Result<T, ApiError> {
        let (reply, answer) = oneshot::channel();
        let action = make(reply);
        let name = action.name();
        let permit = match tokio::time::timeout(self.config.queue_wait, self.actions.reserve()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(ApiError::unavailable("the node is shutting down")),
            Err(_) => {
                return Err(ApiError::too_many_requests("the node is busy (its action queue is full); retry shortly"));
            }
        };
        permit.send(action);
        match tokio::time::timeout(self.config.action_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ApiError::unavailable(format!("the node dropped the {name} request without answering"))),
            Err(_) => Err(ApiError::unavailable(format!(
                "the node did not answer {name} within {}s",
                self.config.action_timeout.as_secs_f64()
            ))),
        }
    }
}

/// A request body with its content type, read within the body limit.
pub(crate) struct Body {
    content_type: Option<String>,
    bytes: Bytes,
}

impl FromRequest<Ctx> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, ctx: &Ctx) -> Result<Self, ApiError> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty());
        let bytes = Bytes::from_request(req, ctx).await.map_err(|e| body_rejection(e, ctx.config.body_limit))?;
        Ok(Body { content_type, bytes })
    }
}

impl Body {
    /// Whether the body holds nothing but whitespace (an optional body left out).
    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.iter().all(u8::is_ascii_whitespace)
    }

    /// Parse the body as JSON (`application/json`) or YAML (`application/yaml`, `text/yaml`, or
    /// no content type). Errors name the field that is wrong.
    pub(crate) fn parse<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::invalid("request body is empty"));
        }
        match self.content_type.as_deref() {
            Some(t) if t == "application/json" || t.ends_with("+json") => {
                let value: serde_json::Value = serde_json::from_slice(&self.bytes)
                    .map_err(|e| ApiError::invalid(format!("request body is not valid JSON: {e}")))?;
                Ok(falak_core::spec::from_json_value(value)?)
            }
            None | Some("application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" | "text/plain") => {
                let text = std::str::from_utf8(&self.bytes)
                    .map_err(|_| ApiError::invalid("request body is not UTF-8 text"))?;
                Ok(falak_core::spec::from_yaml(text)?)
            }
            Some(other) => Err(ApiError::invalid(format!(
                "content-type {other} is not accepted; send application/json or application/yaml"
            ))),
        }
    }
}

/// A query string whose rejections become [`ApiError`]s.
pub(crate) struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Ok(ApiQuery(Query::<T>::from_request_parts(parts, state).await?.0))
    }
}

/// Path parameters whose rejections become [`ApiError`]s.
pub(crate) struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Ok(ApiPath(Path::<T>::from_request_parts(parts, state).await?.0))
    }
}

/// The spec signature a request carries in `falak-signature`, if any.
pub(crate) fn signature(
    headers: &axum::http::HeaderMap,
) -> Result<Option<falak_core::signing::SpecSignature>, ApiError> {
    let Some(value) = headers.get(falak_core::signing::SIGNATURE_HEADER) else { return Ok(None) };
    let text = value.to_str().map_err(|_| ApiError::invalid("falak-signature is not ASCII"))?;
    text.parse().map(Some).map_err(|e: String| ApiError::invalid(e))
}

/// The `Idempotency-Key` a request carries, if any.
pub(crate) fn idempotency_key(
    headers: &axum::http::HeaderMap,
) -> Result<Option<falak_core::ledger::IdempotencyKey>, ApiError> {
    let Some(value) = headers.get(falak_core::ledger::IDEMPOTENCY_KEY_HEADER) else { return Ok(None) };
    let text = value.to_str().map_err(|_| ApiError::invalid("Idempotency-Key is not visible ASCII"))?;
    text.parse().map(Some).map_err(|e: falak_core::ledger::InvalidIdempotencyKey| ApiError::invalid(e.to_string()))
}

/// `POST` routes that do not take an `Idempotency-Key` refuse one: silently ignoring it would
/// let a client believe its retry is safe. (`GET` and `DELETE` are idempotent already.)
async fn refuse_idempotency_key(request: Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    if request.headers().contains_key(falak_core::ledger::IDEMPOTENCY_KEY_HEADER) {
        let message = format!(
            "{} {} does not take an Idempotency-Key; only the writes that create something do (jobs, capsules, services, workloads, functions, asynchronous invocations)",
            request.method(),
            request.uri().path()
        );
        return ApiError::invalid(message).into_response();
    }
    next.run(request).await
}

/// Parse an id from a path segment into `invalid` with the id type's message.
pub(crate) fn parse_id<T: std::str::FromStr>(text: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e: T::Err| ApiError::invalid(e.to_string()))
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}; see /api/v1/openapi.json", uri.path()))
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed, format!("{method} is not allowed on {}", uri.path()))
}
