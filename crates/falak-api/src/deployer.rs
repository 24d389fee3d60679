//! `/api/v1/deployers`: the deployer keys the mesh trusts to sign capsules and functions.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use falak_core::Millis;
use falak_core::signing::{DeployerId, DeployerRecord, MAX_DEPLOYER_NAME};
use serde::{Deserialize, Serialize};

use crate::action::Action;
use crate::error::ApiError;
use crate::routes::{ApiPath, Body, Ctx, parse_id};

/// The body of `POST /api/v1/deployers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustDeployer {
    /// Whose key it is, e.g. `ci`.
    pub name: String,
    /// The Ed25519 public key, 64 hex characters (`falak deployer key` prints it).
    pub public_key: DeployerId,
}

impl TrustDeployer {
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.name.trim().is_empty() || self.name.len() > MAX_DEPLOYER_NAME || self.name.chars().any(char::is_control)
        {
            return Err(ApiError::invalid(format!("name: must be 1 to {MAX_DEPLOYER_NAME} printable characters")));
        }
        Ok(())
    }
}

/// A trusted (or revoked) deployer key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployerInfo {
    pub id: DeployerId,
    pub name: String,
    pub added_at: Millis,
    pub revoked_at: Option<Millis>,
}

impl DeployerInfo {
    pub fn new(record: &DeployerRecord) -> DeployerInfo {
        DeployerInfo {
            id: record.id,
            name: record.name.clone(),
            added_at: record.added_at,
            revoked_at: record.revoked_at,
        }
    }
}

pub(crate) async fn trust(State(ctx): State<Ctx>, body: Body) -> Result<(StatusCode, Json<DeployerInfo>), ApiError> {
    let request: TrustDeployer = body.parse()?;
    request.validate()?;
    let info = ctx.ask(|reply| Action::TrustDeployer { request, reply }).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

pub(crate) async fn list(State(ctx): State<Ctx>) -> Result<Json<Vec<DeployerInfo>>, ApiError> {
    ctx.ask(|reply| Action::ListDeployers { reply }).await.map(Json)
}

pub(crate) async fn revoke(
    State(ctx): State<Ctx>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DeployerInfo>, ApiError> {
    let id: DeployerId = parse_id(&id)?;
    ctx.ask(|reply| Action::RevokeDeployer { id, reply }).await.map(Json)
}
