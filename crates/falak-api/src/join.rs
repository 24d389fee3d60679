//! Admission: `POST /api/v1/join-tokens` (admin) makes a join token, `GET` lists them and
//! `DELETE /api/v1/join-tokens/{id}` revokes one; `POST /api/v1/join` lets a new node in with
//! one; `DELETE /api/v1/nodes/{node}` revokes a node.
//!
//! A join token (made by the node, see `falak-node`'s `mesh_files::JoinToken`) names a node
//! that holds the mesh CA key, trusts the CA, and carries a **join ticket**: an id and a 256-bit
//! secret of which the ledger keeps only the hash, valid for a number of nodes until it expires.
//! The joiner sends its record and the ticket over HTTPS (it trusts only the mesh CA); the
//! answering node checks the ticket against its replica, commits `JoinNode` (which uses one of
//! the ticket's uses atomically, on every replica), and answers with the joiner's certificate,
//! the CA, the mesh secret and the nodes to contact. The mesh secret never travels in a token.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use falak_core::access::{JoinTicketRecord, MAX_TICKET_USES, TOKEN_PREFIX, Token, TokenId};
use falak_core::node::NodeRecord;
use falak_core::{Millis, NodeId};
use serde::{Deserialize, Serialize};

use crate::action::Action;
use crate::error::ApiError;
use crate::routes::{ApiPath, Body, Ctx};

/// The body of `POST /api/v1/join`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The joiner's record: its node id (public key), name, addresses, labels and capacity.
    pub record: NodeRecord,
    /// The join ticket from the join token: `<16 hex id>.<64 hex secret>`.
    pub ticket: String,
    /// The joiner's Ed25519 signature (hex) of [`join_message`] under its node key: proof that
    /// the sender holds the key the record names, so nobody else can join, or repeat a join,
    /// as that node.
    pub signature: String,
}

/// What a joiner signs: the ticket id and its whole record.
pub fn join_message(ticket: &TokenId, record: &NodeRecord) -> Vec<u8> {
    let mut message = b"falak join v2\0".to_vec();
    message.extend_from_slice(&ticket.0);
    message.extend_from_slice(&serde_json::to_vec(record).expect("a node record serializes"));
    message
}

impl JoinRequest {
    /// The ticket as a token (id and secret).
    pub fn ticket(&self) -> Result<Token, ApiError> {
        format!("{TOKEN_PREFIX}{}", self.ticket)
            .parse::<Token>()
            .map_err(|_| ApiError::invalid("ticket: not a join ticket (<16 hex>.<64 hex>); copy the whole join token"))
    }

    /// Whether `signature` is the record's node key's signature of the ticket id and record.
    pub fn signed_by_the_node(&self, ticket: &TokenId) -> bool {
        let mut signature = [0u8; 64];
        hex::decode_to_slice(self.signature.trim(), &mut signature).is_ok()
            && falak_core::access::node_signature_valid(
                &self.record.id,
                &join_message(ticket, &self.record),
                &signature,
            )
    }
}

/// The ticket text a join token carries for `token`.
pub fn ticket_text(token: &Token) -> String {
    token.encode().trim_start_matches(TOKEN_PREFIX).to_owned()
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
    /// The mesh secret (hex): seals membership packets and derives the hop and secrets keys.
    pub secret: String,
    /// Admitted nodes, for transport admission and membership seeds.
    pub peers: Vec<JoinPeer>,
}

/// The longest `ttl_seconds` of a join token: thirty days.
pub const MAX_JOIN_TTL_SECONDS: u64 = 30 * 24 * 3600;
/// How long a join token lasts when no `ttl_seconds` is given: one hour.
pub const DEFAULT_JOIN_TTL_SECONDS: u64 = 3600;

/// The body of `POST /api/v1/join-tokens`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJoinToken {
    /// Refused this many seconds after creation; absent: one hour.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// How many nodes it admits; absent: one.
    #[serde(default)]
    pub uses: Option<u32>,
}

impl CreateJoinToken {
    pub fn validate(&self) -> Result<(), ApiError> {
        crate::token::check_ttl(self.ttl_seconds, MAX_JOIN_TTL_SECONDS, "thirty days")?;
        match self.uses {
            Some(u) if u == 0 || u > MAX_TICKET_USES => {
                Err(ApiError::invalid(format!("uses: a join token admits 1 to {MAX_TICKET_USES} nodes")))
            }
            _ => Ok(()),
        }
    }
}

/// The answer to making a join token: the only time it is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedJoinToken {
    /// `falak-join-v2.…`: give it to `falak node --join`. Treat it like a password until it is
    /// used up or expires.
    pub join_token: String,
    /// The ticket's id, as events name it.
    pub id: TokenId,
    pub uses: u32,
    pub expires_at: Millis,
}

/// A join token as lists show it: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenInfo {
    pub id: TokenId,
    pub uses: u32,
    /// The nodes it admitted.
    pub joined: Vec<crate::node::NodeRef>,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub revoked_at: Option<Millis>,
    /// `active`, `used` (all its uses taken), `expired` or `revoked`, at the answering node's
    /// clock.
    pub state: String,
}

impl JoinTokenInfo {
    pub fn new(record: &JoinTicketRecord, state: &falak_core::ledger::State, now: Millis) -> JoinTokenInfo {
        let status = if record.revoked_at.is_some() {
            "revoked"
        } else if now >= record.expires_at {
            "expired"
        } else if record.joined.len() >= record.uses as usize {
            "used"
        } else {
            "active"
        };
        JoinTokenInfo {
            id: record.id,
            uses: record.uses,
            joined: record.joined.iter().map(|id| crate::node::NodeRef::lookup(state, *id)).collect(),
            created_at: record.created_at,
            expires_at: record.expires_at,
            revoked_at: record.revoked_at,
            state: status.to_owned(),
        }
    }
}

/// The answer to revoking a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedNodeInfo {
    pub id: NodeId,
    pub name: String,
    pub revoked_at: Millis,
}

pub(crate) async fn join(State(ctx): State<Ctx>, body: Body) -> Result<(StatusCode, Json<JoinResponse>), ApiError> {
    let request: JoinRequest = body.parse()?;
    falak_core::spec::validate_name("record.name", &request.record.name)?;
    request.ticket()?;
    let response = ctx.ask(|reply| Action::Join { request, reply }).await?;
    Ok((StatusCode::CREATED, Json(response)))
}

pub(crate) async fn create_token(
    State(ctx): State<Ctx>,
    body: Body,
) -> Result<(StatusCode, Json<CreatedJoinToken>), ApiError> {
    let request: CreateJoinToken = body.parse()?;
    request.validate()?;
    let created = ctx.ask(|reply| Action::CreateJoinToken { request, reply }).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub(crate) async fn list_tokens(State(ctx): State<Ctx>) -> Result<Json<Vec<JoinTokenInfo>>, ApiError> {
    ctx.ask(|reply| Action::ListJoinTokens { reply }).await.map(Json)
}

pub(crate) async fn revoke_token(
    State(ctx): State<Ctx>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JoinTokenInfo>, ApiError> {
    let id: TokenId = crate::routes::parse_id(&id)?;
    ctx.ask(|reply| Action::RevokeJoinToken { id, reply }).await.map(Json)
}

/// `node` is a node name, its id (64 hex) or an id prefix of at least 8 characters.
pub(crate) async fn revoke(
    State(ctx): State<Ctx>,
    ApiPath(node): ApiPath<String>,
) -> Result<Json<RevokedNodeInfo>, ApiError> {
    ctx.ask(|reply| Action::RevokeNode { node, reply }).await.map(Json)
}
