//! `/healthz`, `/readyz` and `/metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use falak_core::NodeId;
use serde::{Deserialize, Serialize};

use crate::action::Action;
use crate::error::ApiError;
use crate::routes::Ctx;

/// The content type of Prometheus' text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a node can serve the API fully.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// Joined the ledger and a leader is known.
    pub ready: bool,
    /// Why the node is not ready (`None` when it is).
    pub reason: Option<String>,
    /// The ledger leader, when known.
    pub leader: Option<NodeId>,
    /// The highest ledger term this node has seen: of two nodes naming different leaders, the
    /// one with the higher term is current.
    #[serde(default)]
    pub term: u64,
    /// The last ledger index applied to this node's state.
    #[serde(default)]
    pub applied: Option<u64>,
}

/// Every API answer carries the answering node's view of the ledger in these headers (unset
/// parts are left out): the term, the leader's node id and the applied index, as in
/// [`Readiness`].
pub const TERM_HEADER: &str = "falak-ledger-term";
pub const LEADER_HEADER: &str = "falak-ledger-leader";
pub const APPLIED_HEADER: &str = "falak-ledger-applied";

/// Always `ok`: the process serves HTTP. Asks nothing of the node, so it answers even when the
/// main loop is stuck.
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// `200` with the readiness when ready, `503 unavailable` naming the reason otherwise.
pub(crate) async fn readyz(State(ctx): State<Ctx>) -> Result<Json<Readiness>, ApiError> {
    let readiness = ctx.ask(|reply| Action::Ready { reply }).await?;
    if readiness.ready {
        Ok(Json(readiness))
    } else {
        let reason = readiness.reason.unwrap_or_else(|| "the node is not ready".to_owned());
        Err(ApiError::unavailable(reason))
    }
}

pub(crate) async fn metrics(State(ctx): State<Ctx>) -> Result<impl IntoResponse, ApiError> {
    let text = ctx.ask(|reply| Action::Metrics { reply }).await?;
    Ok(([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text))
}
