//! `POST /api/v1/join`: a new node asks an existing one for its certificate and admission.
//!
//! The joiner holds a join token (mesh secret, a node's API URL and membership address). It
//! proves it holds the secret by a keyed hash of its record ([`join_proof`]); the secret itself
//! never crosses the wire. The answering node checks the proof, issues the joiner a certificate
//! from the mesh CA for its node id, admits the joiner's record in the ledger, and answers with
//! the certificate, the CA and the nodes to contact.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use falak_core::NodeId;
use falak_core::node::NodeRecord;
use serde::{Deserialize, Serialize};

use crate::action::Action;
use crate::error::ApiError;
use crate::routes::{Body, Ctx};

/// The body of `POST /api/v1/join`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The joiner's record: its node id (public key), name, addresses, labels and capacity.
    pub record: NodeRecord,
    /// `join_proof(secret, &record)`, hex.
    pub proof: String,
}

/// A member the joiner should know about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinPeer {
    pub id: NodeId,
    pub name: String,
    pub transport_addr: String,
    pub gossip_addr: String,
}

/// The answer to a join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResponse {
    pub mesh: String,
    /// The joiner's certificate (PEM), issued by the mesh CA for `record.id`.
    pub cert_pem: String,
    /// The mesh CA certificate (PEM).
    pub ca_cert_pem: String,
    /// Admitted nodes, for transport admission and membership seeds.
    pub peers: Vec<JoinPeer>,
}

/// The proof that a joiner holds the mesh secret: BLAKE3 keyed by a key derived from the
/// secret, over the whole record (its JSON), so a captured proof admits nothing but that exact
/// record. Hex.
pub fn join_proof(secret: &[u8; 32], record: &NodeRecord) -> String {
    let key = blake3::derive_key("falak join v1", secret);
    let bytes = serde_json::to_vec(record).expect("a node record serializes");
    blake3::keyed_hash(&key, &bytes).to_hex().to_string()
}

pub(crate) async fn join(State(ctx): State<Ctx>, body: Body) -> Result<(StatusCode, Json<JoinResponse>), ApiError> {
    let request: JoinRequest = body.parse()?;
    falak_core::spec::validate_name("record.name", &request.record.name)?;
    let response = ctx.ask(|reply| Action::Join { request, reply }).await?;
    Ok((StatusCode::CREATED, Json(response)))
}
