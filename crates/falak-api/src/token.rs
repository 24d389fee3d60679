//! `/api/v1/tokens`: create, list and revoke API tokens (admin only).
//!
//! The node makes the token (random id and secret), commits its record with the secret's hash
//! only, and answers with the whole token once: it is never shown again, and no list, event or
//! log carries it.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use falak_core::Millis;
use falak_core::access::{MAX_TOKEN_NAME, Role, TokenId, TokenRecord};
use serde::{Deserialize, Serialize};

use crate::action::Action;
use crate::error::ApiError;
use crate::routes::{ApiPath, Body, Ctx, parse_id};

/// The longest `ttl_seconds`: ten years.
pub const MAX_TOKEN_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// The body of `POST /api/v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// What the token is for, e.g. `ci-deployer`.
    pub name: String,
    pub role: Role,
    /// Refused this many seconds after creation; absent: no expiry.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// Requests per second on each node (bursts of twice that); absent: the node's default;
    /// `0`: unlimited.
    #[serde(default)]
    pub rate_limit: Option<u32>,
}

impl CreateToken {
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.name.trim().is_empty() || self.name.len() > MAX_TOKEN_NAME || self.name.chars().any(char::is_control) {
            return Err(ApiError::invalid(format!("name: must be 1 to {MAX_TOKEN_NAME} printable characters")));
        }
        check_ttl(self.ttl_seconds, MAX_TOKEN_TTL_SECONDS, "ten years")
    }
}

/// A request's `ttl_seconds`: absent, or 1 to `max` (`max_words` says it for people).
pub(crate) fn check_ttl(ttl_seconds: Option<u64>, max: u64, max_words: &str) -> Result<(), ApiError> {
    match ttl_seconds {
        Some(0) => Err(ApiError::invalid("ttl_seconds: must be at least 1")),
        Some(t) if t > max => Err(ApiError::invalid(format!("ttl_seconds: at most {max} ({max_words})"))),
        _ => Ok(()),
    }
}

/// A token as lists show it: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: TokenId,
    pub name: String,
    pub role: Role,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
    /// Requests per second per node; `None`: the node's default; `0`: unlimited.
    pub rate_limit: Option<u32>,
    pub revoked_at: Option<Millis>,
    /// `active`, `expired` or `revoked`, at the answering node's clock.
    pub state: String,
}

impl TokenInfo {
    pub fn new(record: &TokenRecord, now: Millis) -> TokenInfo {
        let state = if record.revoked_at.is_some() {
            "revoked"
        } else if record.expires_at.is_some_and(|at| now >= at) {
            "expired"
        } else {
            "active"
        };
        TokenInfo {
            id: record.id,
            name: record.name.clone(),
            role: record.role,
            created_at: record.created_at,
            expires_at: record.expires_at,
            rate_limit: record.rate_limit,
            revoked_at: record.revoked_at,
            state: state.to_owned(),
        }
    }
}

/// The answer to creating a token: the only time its secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    /// The bearer token, `falak-token-v1.<id>.<secret>`. Store it now: it is not kept.
    pub token: String,
    pub info: TokenInfo,
}

pub(crate) async fn create(State(ctx): State<Ctx>, body: Body) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let request: CreateToken = body.parse()?;
    request.validate()?;
    let created = ctx.ask(|reply| Action::CreateToken { request, reply }).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub(crate) async fn list(State(ctx): State<Ctx>) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    ctx.ask(|reply| Action::ListTokens { reply }).await.map(Json)
}

pub(crate) async fn revoke(State(ctx): State<Ctx>, ApiPath(id): ApiPath<String>) -> Result<Json<TokenInfo>, ApiError> {
    let id: TokenId = parse_id(&id)?;
    ctx.ask(|reply| Action::RevokeToken { id, reply }).await.map(Json)
}
