//! `/api/v1/capsules`: apply, list and show capsules.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use falak_core::Millis;
use falak_core::capsule::{CapsuleDocument, CapsuleVersion, Kind};
use falak_core::ledger::State as LedgerState;
use falak_core::resources::Resources;
use falak_core::spec::validate_name;
use serde::{Deserialize, Serialize};

use crate::action::Action;
use crate::error::ApiError;
use crate::routes::{ApiPath, Body, Ctx};

/// The answer to applying a capsule document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsuleApplied {
    pub name: String,
    pub version: u32,
    /// The document matched the latest (or named) version, so nothing was written.
    pub unchanged: bool,
}

/// One capsule in a list: its latest version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapsuleSummary {
    pub name: String,
    pub kind: Kind,
    pub latest_version: u32,
    /// How many versions are stored.
    pub versions: u32,
    pub command: Vec<String>,
    pub resources: Resources,
    pub updated_at: Millis,
}

/// One capsule with every stored version, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapsuleInfo {
    pub name: String,
    pub versions: Vec<CapsuleVersion>,
    /// The latest version's code (bundle or image) and the nodes that hold it ready, as the
    /// answering node hears from gossip; absent for a capsule without code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<CodeHolders>,
}

/// Who holds a capsule's code: the orbit prefetch keeps it on the nodes most likely to run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeHolders {
    /// The short id gossip carries (`CapsuleSpec::code_id`).
    pub id: String,
    /// Names of the nodes that hold it, sorted.
    pub held_by: Vec<String>,
}

impl CapsuleSummary {
    /// Every capsule in committed state, by name.
    pub fn list(state: &LedgerState) -> Vec<CapsuleSummary> {
        state
            .capsules()
            .filter_map(|(name, versions)| {
                let latest = versions.last()?;
                Some(CapsuleSummary {
                    name: name.clone(),
                    kind: latest.spec.kind,
                    latest_version: latest.version,
                    versions: versions.len() as u32,
                    command: latest.spec.command.clone(),
                    resources: latest.spec.resources,
                    updated_at: latest.created_at,
                })
            })
            .collect()
    }
}

impl CapsuleInfo {
    /// Fill `code` with the nodes whose gossip (`held`, by node id) lists the latest version's
    /// code.
    pub fn with_holders<'a>(
        mut self,
        state: &LedgerState,
        held: impl IntoIterator<Item = (falak_core::NodeId, &'a [String])>,
    ) -> CapsuleInfo {
        let Some(id) = self.versions.last().and_then(|v| v.spec.code_id()) else { return self };
        let mut held_by: Vec<String> = held
            .into_iter()
            .filter(|(_, held)| held.contains(&id))
            .filter_map(|(node, _)| state.node(&node).map(|n| n.record.name.clone()))
            .collect();
        held_by.sort();
        held_by.dedup();
        self.code = Some(CodeHolders { id, held_by });
        self
    }

    pub fn get(state: &LedgerState, name: &str) -> Result<CapsuleInfo, ApiError> {
        match state.capsule_versions(name) {
            // Secret values never leave the ledger: shown as `redacted`.
            Some(versions) => Ok(CapsuleInfo {
                name: name.to_owned(),
                versions: versions.iter().map(|v| CapsuleVersion { spec: v.spec.redacted(), ..v.clone() }).collect(),
                code: None,
            }),
            None => Err(ApiError::not_found(format!("capsule {name} not found"))),
        }
    }
}

/// `201` with the new version, `200` when the document was already stored.
pub(crate) async fn apply(
    State(ctx): State<Ctx>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<CapsuleApplied>), ApiError> {
    let signature = crate::routes::signature(&headers)?;
    let idempotency = crate::routes::idempotency_key(&headers)?;
    let document: CapsuleDocument = body.parse()?;
    let spec = document.validate()?;
    let applied = ctx.ask(|reply| Action::ApplyCapsule { spec, signature, idempotency, reply }).await?;
    let status = if applied.unchanged { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(applied)))
}

/// The body of `POST /api/v1/capsules/{name}/rollback`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version to bring back; the one before the latest when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

pub(crate) async fn rollback(
    State(ctx): State<Ctx>,
    ApiPath(name): ApiPath<String>,
    body: Body,
) -> Result<(StatusCode, Json<CapsuleApplied>), ApiError> {
    validate_name("name", &name)?;
    let request: RollbackRequest = if body.is_empty() { RollbackRequest::default() } else { body.parse()? };
    let version = request.version;
    let applied = ctx.ask(|reply| Action::RollbackCapsule { name, version, reply }).await?;
    let status = if applied.unchanged { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(applied)))
}

pub(crate) async fn list(State(ctx): State<Ctx>) -> Result<Json<Vec<CapsuleSummary>>, ApiError> {
    ctx.ask(|reply| Action::ListCapsules { reply }).await.map(Json)
}

pub(crate) async fn show(
    State(ctx): State<Ctx>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<CapsuleInfo>, ApiError> {
    validate_name("name", &name)?;
    ctx.ask(|reply| Action::GetCapsule { name, reply }).await.map(Json)
}
