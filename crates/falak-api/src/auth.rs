//! Who may call which route: the authorization table, bearer-token checks and per-token rate
//! limits.
//!
//! Every route the API serves has one row in [`AUTHORIZATION`]; building the router panics on a
//! route without a row, and a test fails on a row without a route, so the table is the whole
//! truth. Only `/healthz` is open. `POST /api/v1/join` carries its own credential (the ticket
//! of a join token) in its body.
//!
//! A request's token is checked by the node's [`Authenticator`] (committed token records and
//! the node's clock); the answer is `401 unauthorized` for a missing, malformed, unknown,
//! expired or revoked token, `403 forbidden` for a valid token whose role the route does not
//! allow, and `429 too_many_requests` with `Retry-After` when the token is over its rate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use falak_core::Millis;
use falak_core::access::{Role, Token, TokenId, TokenRecord, TokenRefused};
use tokio::time::Instant;

use crate::error::{ApiError, ErrorCode};

/// How a route is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credentials: `/healthz` only.
    Open,
    /// The request body carries the ticket of a join token (`POST /api/v1/join`), which the
    /// node checks against the ledger.
    JoinTicket,
    /// A bearer token with one of these roles.
    Roles(&'static [Role]),
}

/// One row of the authorization table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
}

/// Every role: reading the mesh's health and metrics.
const ANY: Access = Access::Roles(&[Role::Admin, Role::Deploy, Role::Invoke, Role::Read]);
/// Reading state, logs and events.
const READ: Access = Access::Roles(&[Role::Admin, Role::Deploy, Role::Read]);
/// Changing workloads: capsules, jobs, services, functions, artifacts.
const DEPLOY: Access = Access::Roles(&[Role::Admin, Role::Deploy]);
/// Calling functions and reading the invocations' results.
const INVOKE: Access = Access::Roles(&[Role::Admin, Role::Deploy, Role::Invoke]);
/// Credentials and membership.
const ADMIN: Access = Access::Roles(&[Role::Admin]);

const fn grant(method: &'static str, path: &'static str, access: Access) -> Grant {
    Grant { method, path, access }
}

/// The authorization table: every route, the roles it allows. `ANY` method rows are the
/// function gateway, which passes every method through.
pub const AUTHORIZATION: &[Grant] = &[
    grant("GET", "/healthz", Access::Open),
    grant("GET", "/readyz", ANY),
    grant("GET", "/metrics", READ),
    grant("GET", "/api/v1/openapi.json", ANY),
    grant("GET", "/api/v1/nodes", READ),
    grant("DELETE", "/api/v1/nodes/{node}", ADMIN),
    grant("POST", "/api/v1/join", Access::JoinTicket),
    grant("POST", "/api/v1/join-tokens", ADMIN),
    grant("GET", "/api/v1/join-tokens", ADMIN),
    grant("DELETE", "/api/v1/join-tokens/{id}", ADMIN),
    grant("POST", "/api/v1/capsules", DEPLOY),
    grant("GET", "/api/v1/capsules", READ),
    grant("GET", "/api/v1/capsules/{name}", READ),
    grant("POST", "/api/v1/capsules/{name}/rollback", DEPLOY),
    grant("POST", "/api/v1/jobs", DEPLOY),
    grant("GET", "/api/v1/jobs", READ),
    grant("GET", "/api/v1/jobs/{id}", READ),
    grant("GET", "/api/v1/jobs/{id}/tasks", READ),
    grant("POST", "/api/v1/jobs/{id}/cancel", DEPLOY),
    grant("GET", "/api/v1/jobs/{id}/result", READ),
    grant("GET", "/api/v1/tasks/{id}", READ),
    grant("GET", "/api/v1/tasks/{id}/logs", READ),
    grant("GET", "/api/v1/tasks/{id}/decision", READ),
    grant("GET", "/api/v1/services", READ),
    grant("POST", "/api/v1/services", DEPLOY),
    grant("GET", "/api/v1/services/{name}", READ),
    grant("DELETE", "/api/v1/services/{name}", DEPLOY),
    grant("POST", "/api/v1/services/{name}/update", DEPLOY),
    grant("GET", "/api/v1/workloads", READ),
    grant("POST", "/api/v1/workloads", DEPLOY),
    grant("GET", "/api/v1/workloads/{id}", READ),
    grant("DELETE", "/api/v1/workloads/{id}", DEPLOY),
    grant("POST", "/api/v1/artifacts", DEPLOY),
    grant("GET", "/api/v1/images", READ),
    grant("POST", "/api/v1/images/pull", DEPLOY),
    grant("POST", "/api/v1/images/import", DEPLOY),
    grant("GET", "/api/v1/images/{image}", READ),
    grant("DELETE", "/api/v1/images/{image}", DEPLOY),
    grant("GET", "/api/v1/functions", READ),
    grant("POST", "/api/v1/functions", DEPLOY),
    grant("POST", "/api/v1/functions/{name}/rollback", DEPLOY),
    grant("GET", "/api/v1/functions/{name}", READ),
    grant("DELETE", "/api/v1/functions/{name}", DEPLOY),
    grant("GET", "/api/v1/functions/{name}/instances", READ),
    grant("GET", "/api/v1/functions/{name}/logs", READ),
    grant("POST", "/api/v1/functions/{name}/invocations", INVOKE),
    grant("GET", "/api/v1/functions/{name}/invocations/{id}", INVOKE),
    grant("GET", "/api/v1/events", READ),
    grant("POST", "/api/v1/tokens", ADMIN),
    grant("GET", "/api/v1/tokens", ADMIN),
    grant("DELETE", "/api/v1/tokens/{id}", ADMIN),
    grant("GET", "/api/v1/deployers", READ),
    grant("POST", "/api/v1/deployers", ADMIN),
    grant("DELETE", "/api/v1/deployers/{id}", ADMIN),
    grant("ANY", "/fn/{name}", INVOKE),
    grant("ANY", "/fn/{name}/", INVOKE),
    grant("ANY", "/fn/{name}/{*path}", INVOKE),
];

/// The table's row for a route; `None` means the route must not be served.
pub fn access_for(method: &str, path: &str) -> Option<Access> {
    AUTHORIZATION.iter().find(|g| g.method == method && g.path == path).map(|g| g.access)
}

/// The caller a valid token identifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub token: TokenId,
    pub role: Role,
    /// Requests per second this token may make on one node; `None` means unlimited.
    pub rate_limit: Option<u32>,
    /// Another node of the mesh, forwarding an invocation (`falak-hop-auth`), not a token.
    pub hop: bool,
}

/// Checks bearer tokens; the node implements it over committed token records and its clock.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(&self, token: &Token) -> Result<Principal, TokenRefused>;

    /// Check a [`HOP_HEADER_AUTH`] credential from another node of the mesh; a genuine one
    /// may invoke functions. The default knows no mesh and refuses.
    fn authenticate_hop(&self, _credential: &str) -> Option<Principal> {
        None
    }
}

/// The header a node's invoke proxy and asynchronous invocations authenticate with
/// (`falak_core::access::HopCredential`), instead of a caller's token.
pub const HOP_HEADER_AUTH: &str = "falak-hop-auth";

/// Token records as an authenticator checks them, with the node's default rate limit.
#[derive(Debug, Clone, Default)]
pub struct TokenTable {
    records: HashMap<TokenId, TokenRecord>,
    /// Requests per second for tokens that set none; `None`: unlimited.
    pub default_rate_limit: Option<u32>,
}

/// The rate limit a node applies to tokens that set none: 1,000 requests per second (bursts of
/// 2,000) per token — far above a person or a CI job, a brake on a runaway loop.
pub const DEFAULT_RATE_LIMIT: u32 = 1_000;

impl TokenTable {
    pub fn new(records: impl IntoIterator<Item = TokenRecord>, default_rate_limit: Option<u32>) -> TokenTable {
        TokenTable { records: records.into_iter().map(|r| (r.id, r)).collect(), default_rate_limit }
    }

    /// Add `record` unless a record with its id is present (the ledger's record wins).
    pub fn insert_missing(&mut self, record: TokenRecord) {
        self.records.entry(record.id).or_insert(record);
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The caller `token` identifies at `now`.
    pub fn check(&self, token: &Token, now: Millis) -> Result<Principal, TokenRefused> {
        let record = self.records.get(&token.id).ok_or(TokenRefused::Unknown)?;
        let role = record.check(token, now)?;
        let rate_limit = match record.rate_limit {
            Some(0) => None,
            Some(rate) => Some(rate),
            None => self.default_rate_limit,
        };
        Ok(Principal { token: token.id, role, rate_limit, hop: false })
    }
}

/// An [`Authenticator`] over a [`TokenTable`] the node keeps current, with a clock.
pub struct TableAuthenticator<C> {
    table: std::sync::RwLock<TokenTable>,
    clock: C,
}

impl<C: Fn() -> Millis + Send + Sync + 'static> TableAuthenticator<C> {
    pub fn new(table: TokenTable, clock: C) -> Self {
        TableAuthenticator { table: std::sync::RwLock::new(table), clock }
    }

    /// Replace the table (after a commit that changed tokens).
    pub fn replace(&self, table: TokenTable) {
        *self.table.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = table;
    }
}

impl<C: Fn() -> Millis + Send + Sync + 'static> Authenticator for TableAuthenticator<C> {
    fn authenticate(&self, token: &Token) -> Result<Principal, TokenRefused> {
        let now = (self.clock)();
        self.table.read().unwrap_or_else(|poisoned| poisoned.into_inner()).check(token, now)
    }
}

/// An authenticator that knows one never-expiring, unlimited token with `role`, and that token:
/// for tests of the API against fake nodes.
pub fn one_token_for_tests(role: Role) -> (Arc<dyn Authenticator>, String) {
    let token = Token::from_random([0x5a; 40]);
    let record = TokenRecord::new(&token, "test", role, 0, None, Some(0));
    let auth = TableAuthenticator::new(TokenTable::new([record], None), || 0);
    (Arc::new(auth), token.encode())
}

/// Per-token token buckets: `rate` requests per second, bursts of twice that. Counted per node.
#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    buckets: Mutex<HashMap<TokenId, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// Take one request from `token`'s bucket at `now`; `Err(wait)` when it is empty.
    fn take(&self, token: TokenId, rate: u32, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(rate.max(1));
        let burst = rate * 2.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let bucket = buckets.entry(token).or_insert(Bucket { tokens: burst, at: now });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

/// What the authorization layer of one route holds.
#[derive(Clone)]
pub(crate) struct Guard {
    pub(crate) access: Access,
    pub(crate) authenticator: Arc<dyn Authenticator>,
    pub(crate) limiter: Arc<RateLimiter>,
}

/// The bearer token of a request, if it has an `Authorization: Bearer` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<Result<Token, ApiError>> {
    let value = headers.get(header::AUTHORIZATION)?;
    let text = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    Some(match text {
        Some(text) => text.parse::<Token>().map_err(|e| ApiError::new(ErrorCode::Unauthorized, e.to_string())),
        None => Err(ApiError::new(
            ErrorCode::Unauthorized,
            "the Authorization header is not `Bearer <token>`; pass --token or set FALAK_TOKEN",
        )),
    })
}

fn unauthorized(error: ApiError) -> Response {
    let mut response = error.into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"falak\""));
    response
}

/// The middleware in front of every route: check the token, its role and its rate.
pub(crate) async fn guard(State(guard): State<Guard>, mut request: Request, next: Next) -> Response {
    let roles = match guard.access {
        Access::Open | Access::JoinTicket => return next.run(request).await,
        Access::Roles(roles) => roles,
    };
    if roles.contains(&Role::Invoke)
        && let Some(credential) = request.headers().get(HOP_HEADER_AUTH).and_then(|v| v.to_str().ok())
    {
        return match guard.authenticator.authenticate_hop(credential) {
            Some(principal) => {
                request.extensions_mut().insert(principal);
                next.run(request).await
            }
            None => unauthorized(ApiError::new(
                ErrorCode::Unauthorized,
                "the falak-hop-auth credential is not from a node of this mesh, or is stale (check the nodes' clocks)",
            )),
        };
    }
    let token = match bearer(request.headers()) {
        Some(Ok(token)) => token,
        Some(Err(error)) => return unauthorized(error),
        None => {
            return unauthorized(ApiError::new(
                ErrorCode::Unauthorized,
                "this route needs a bearer token; pass --token or set FALAK_TOKEN (`falak up` writes an admin token to .falak/credentials/admin.token)",
            ));
        }
    };
    let principal = match guard.authenticator.authenticate(&token) {
        Ok(principal) => principal,
        Err(refused) => return unauthorized(ApiError::new(ErrorCode::Unauthorized, refused.to_string())),
    };
    if !roles.contains(&principal.role) {
        let allowed: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        return ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "token {} has role {}; {} {} needs one of: {}",
                principal.token,
                principal.role,
                request.method(),
                request.uri().path(),
                allowed.join(", ")
            ),
        )
        .into_response();
    }
    if let Some(rate) = principal.rate_limit
        && let Err(wait) = guard.limiter.take(principal.token, rate, Instant::now())
    {
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut response = ApiError::too_many_requests(format!(
            "token {} is over its rate limit of {rate} requests per second; retry in {seconds}s",
            principal.token
        ))
        .into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        return response;
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let limiter = RateLimiter::default();
        let id = TokenId([1; 8]);
        let start = Instant::now();
        for _ in 0..20 {
            assert!(limiter.take(id, 10, start).is_ok());
        }
        let wait = limiter.take(id, 10, start).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(limiter.take(id, 10, start + Duration::from_millis(100)).is_ok());
        assert!(limiter.take(TokenId([2; 8]), 10, start).is_ok(), "another token has its own bucket");
    }

    #[test]
    fn only_healthz_is_open() {
        let open: Vec<_> = AUTHORIZATION.iter().filter(|g| g.access == Access::Open).map(|g| g.path).collect();
        assert_eq!(open, ["/healthz"]);
    }
}
