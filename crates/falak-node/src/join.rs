//! Joining a mesh with a join token.
//!
//! An admin makes a join token (`falak node admit`, [`JoinAuthority::join_token`]): a join
//! ticket committed in the ledger (hash only, a number of uses, an expiry) plus the API URL of a
//! node holding the mesh CA key and the CA to trust it by. The joiner ([`join`]) creates its
//! key and sends its record and the ticket over HTTPS. The answering node
//! ([`JoinAuthority::admit`]) checks the ticket against its replica (so strangers cause no
//! ledger write), issues the joiner's certificate, and commits `JoinNode`, which uses one of the
//! ticket's uses on every replica and admits the record, opening the transport to it on every
//! node; the ledger leader then adds it as a learner. Only then does the joiner receive its
//! certificate, the mesh secret and the nodes to contact.

use std::path::Path;
use std::time::SystemTime;

use falak_api::ApiError;
use falak_api::join::{JoinPeer, JoinRequest, JoinResponse, ticket_text};
use falak_core::Millis;
use falak_core::access::{TicketRefused, Token};
use falak_core::ledger::State;
use falak_transport::MeshCa;

use crate::config::NodeConfig;
use crate::mesh_files::{self, Bootstrap, BootstrapMember, JoinToken, MeshFilesError};

/// What a node needs to admit joiners: the mesh secret and the CA.
pub struct JoinAuthority {
    pub mesh: String,
    pub secret: [u8; 32],
    pub ca: MeshCa,
}

impl JoinAuthority {
    /// The authority of a node whose data dir holds `ca.key`; `None` when it does not.
    pub fn load(dir: &Path, mesh: &str, secret: [u8; 32]) -> Result<Option<JoinAuthority>, MeshFilesError> {
        let key_path = dir.join("ca.key");
        if !key_path.exists() {
            return Ok(None);
        }
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| MeshFilesError::Io {
                action: "read",
                path: path.into(),
                source,
            })
        };
        let key = crate::mesh_files::read_private(&key_path)?;
        let ca = MeshCa::from_pem(&read(&dir.join("ca.crt"))?, &key)
            .map_err(|e| MeshFilesError::Invalid { path: key_path.clone(), reason: e.to_string() })?;
        Ok(Some(JoinAuthority { mesh: mesh.to_owned(), secret, ca }))
    }

    /// The join token for `ticket`, naming this node (`api_url`, `gossip_seed`) as the one to
    /// join through.
    pub fn join_token(&self, api_url: &str, gossip_seed: &str, ticket: &Token) -> JoinToken {
        JoinToken {
            mesh: self.mesh.clone(),
            api_url: api_url.to_owned(),
            gossip_seed: gossip_seed.to_owned(),
            ticket: ticket_text(ticket),
            ca_cert: self.ca.cert_pem(),
        }
    }

    /// Check a join request's ticket against `state` at `now_ms` and issue the joiner's
    /// certificate. The caller commits `JoinNode` (which checks the ticket again, atomically)
    /// before it answers.
    pub fn admit(
        &self,
        request: &JoinRequest,
        ticket: &Token,
        state: &State,
        now: SystemTime,
        now_ms: Millis,
    ) -> Result<JoinResponse, ApiError> {
        let forbidden = |message: String| ApiError::new(falak_api::ErrorCode::Forbidden, message);
        if !request.signed_by_the_node(&ticket.id) {
            return Err(forbidden(
                "the join request is not signed by the key of the node it names; join with `falak node --join`".into(),
            ));
        }
        let record = state.join_ticket(&ticket.id).ok_or_else(|| forbidden(TicketRefused::Unknown.to_string()))?;
        record.check(&ticket.hash(), &request.record.id, now_ms).map_err(|e| forbidden(e.to_string()))?;
        // The names the joiner's certificate needs for its API: the same rule its daemon checks
        // at start (`daemon::api_hosts`).
        let addr = reqwest::Url::parse(&request.record.api_url)
            .ok()
            .and_then(|u| u.socket_addrs(|| None).ok())
            .and_then(|addrs| addrs.into_iter().next());
        let Some(addr) = addr else {
            return Err(ApiError::invalid(format!(
                "record.api_url {:?} is not an https://IP:PORT address",
                request.record.api_url
            )));
        };
        let hosts = crate::daemon::api_hosts(addr);
        let cert = self
            .ca
            .issue_for_hosts(request.record.id, &request.record.name, &hosts, now)
            .map_err(|e| ApiError::invalid(format!("cannot issue a certificate: {e}")))?;
        let peers = state
            .nodes()
            .map(|n| JoinPeer {
                id: n.record.id,
                name: n.record.name.clone(),
                transport_addr: n.record.transport_addr.clone(),
                gossip_addr: n.record.gossip_addr.clone(),
            })
            .collect();
        Ok(JoinResponse {
            mesh: self.mesh.clone(),
            cert_pem: cert.to_pem(),
            ca_cert_pem: self.ca.cert_pem(),
            secret: hex::encode(self.secret),
            peers,
        })
    }
}

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Token(#[from] mesh_files::JoinTokenError),
    #[error(transparent)]
    Files(#[from] MeshFilesError),
    #[error("{flag} {addr}: a joining node announces its addresses, so give each a concrete IP and port")]
    Address { flag: &'static str, addr: std::net::SocketAddr },
    #[error("the node at {url} refused the join: {reason}")]
    Refused { url: String, reason: String },
}

/// Join the mesh named by `token` unless the data dir already belongs to a mesh: get a
/// certificate and the admitted nodes from the token's node and write the mesh files.
pub async fn join(config: &NodeConfig, token: &str) -> Result<(), JoinError> {
    let dir = &config.data_dir;
    if dir.join("node.crt").exists() {
        tracing::info!(dir = %dir.display(), "data dir already belongs to a mesh; --join ignored");
        return Ok(());
    }
    let token = JoinToken::decode(token)?;
    for (flag, addr) in [
        ("--api-addr", config.api_addr),
        ("--transport-addr", config.transport_addr),
        ("--gossip-addr", config.gossip_addr),
    ] {
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(JoinError::Address { flag, addr });
        }
    }
    let key = mesh_files::load_or_create_key(dir)?;
    let record = config.record(key.id(), format!("https://{}", config.api_addr));
    let mut request = JoinRequest { record, ticket: token.ticket.clone(), signature: String::new() };
    let ticket = request.ticket().map_err(|e| mesh_files::JoinTokenError::new(e.message))?;
    request.signature = hex::encode(key.sign(&falak_api::join::join_message(&ticket.id, &request.record)));
    let refused = |reason: String| JoinError::Refused { url: token.api_url.clone(), reason };
    let client = falak_api::Client::new(&token.api_url)
        .and_then(|c| c.with_ca(&token.ca_cert))
        .map_err(|e| refused(e.to_string()))?;
    let response = client.join(&request).await.map_err(|e| refused(e.to_string()))?;
    let mut secret = [0u8; 32];
    hex::decode_to_slice(response.secret.trim(), &mut secret)
        .map_err(|e| refused(format!("its answer carries a malformed mesh secret: {e}")))?;
    let peers: Vec<BootstrapMember> = response
        .peers
        .iter()
        .map(|p| BootstrapMember {
            id: p.id,
            name: p.name.clone(),
            transport_addr: p.transport_addr.clone(),
            gossip_addr: p.gossip_addr.clone(),
        })
        .collect();
    // No bootstrap voters: a joiner never initializes a ledger of its own.
    let contacts = Bootstrap {
        mesh: response.mesh.clone(),
        voters: Vec::new(),
        members: peers,
        tokens: Vec::new(),
        deployers: Vec::new(),
    };
    mesh_files::write_joined(dir, &response.cert_pem, &response.ca_cert_pem, &secret, &contacts)?;
    tracing::info!(mesh = %response.mesh, node = %key.id(), "joined; certificate issued");
    Ok(())
}
