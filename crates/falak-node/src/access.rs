//! The node's side of API access: the authenticator the API asks, kept in step with committed
//! token records, and the bootstrap credentials (admin token, deployer key) `falak up`
//! provisions.
//!
//! A mesh's first admin token is made by `falak up` / `falak mesh init` before any ledger
//! exists: its record (hash only) is in `bootstrap.json`. Every provisioned node accepts it
//! from there at once; the node that forms the ledger also commits it, so nodes that join later
//! accept it too and it can be revoked like any other (a committed record always wins over the
//! file's copy).

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use falak_api::auth::{DEFAULT_RATE_LIMIT, TableAuthenticator, TokenTable};
use falak_api::{Authenticator, Principal};
use falak_core::access::{HopCredential, Role, Token, TokenId, TokenRecord, TokenRefused};
use falak_core::ledger::{Command, LedgerEvent, State};
use falak_core::signing::DeployerRecord;
use falak_core::{Millis, NodeId};
use falak_ledger::{Committed, Ledger};
use tokio::sync::watch;

use crate::clock::now_millis;

/// A new token from the operating system's randomness.
pub fn random_token() -> Token {
    Token { id: TokenId(rand::random()), secret: rand::random() }
}

/// The authenticator the node's API uses: committed tokens, and the credential other nodes of
/// the mesh forward invocations with.
pub struct NodeAuthenticator {
    tokens: TableAuthenticator<fn() -> Millis>,
    /// The nodes the transport admits: a hop credential (signed by the sending node's key)
    /// counts only from one of them, so a revoked node cannot forward invocations.
    admitted: Arc<RwLock<BTreeSet<NodeId>>>,
    /// This node: a hop credential is good only at the node it was made for.
    me: NodeId,
}

impl Authenticator for NodeAuthenticator {
    fn authenticate(&self, token: &Token) -> Result<Principal, TokenRefused> {
        self.tokens.authenticate(token)
    }

    fn authenticate_hop(&self, credential: &str) -> Option<Principal> {
        let admitted =
            |node: &NodeId| self.admitted.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(node);
        let hop = HopCredential::verify(credential, &self.me, now_millis(), admitted)?;
        let mut id = [0u8; 8];
        id.copy_from_slice(&hop.node.as_bytes()[..8]);
        Some(Principal { token: TokenId(id), role: Role::Invoke, rate_limit: None, hop: true })
    }
}

/// The table for `state` plus the bootstrap tokens the ledger does not hold yet.
fn table(state: &State, bootstrap: &[TokenRecord]) -> TokenTable {
    let mut table = TokenTable::new(state.tokens().cloned(), Some(DEFAULT_RATE_LIMIT));
    for record in bootstrap {
        table.insert_missing(record.clone());
    }
    table
}

/// An authenticator over the ledger's current tokens and `bootstrap`, and a task that keeps it
/// current until `stop` turns true.
pub fn start(
    ledger: &Ledger,
    bootstrap: Vec<TokenRecord>,
    me: NodeId,
    admitted: Arc<RwLock<BTreeSet<NodeId>>>,
    mut stop: watch::Receiver<bool>,
) -> Arc<NodeAuthenticator> {
    // Subscribe before reading the state, so no commit falls between the two.
    let mut committed = ledger.subscribe();
    let tokens = TableAuthenticator::new(table(&ledger.state(), &bootstrap), now_millis as fn() -> Millis);
    let auth = Arc::new(NodeAuthenticator { tokens, admitted, me });
    let (ledger, kept) = (ledger.clone(), auth.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                c = committed.recv() => {
                    use tokio::sync::broadcast::error::RecvError;
                    let changed = match c {
                        Ok(c) => concerns_tokens(&c),
                        Err(RecvError::Lagged(_)) => true,
                        Err(RecvError::Closed) => break,
                    };
                    if changed {
                        kept.tokens.replace(table(&ledger.state(), &bootstrap));
                    }
                }
            }
        }
    });
    auth
}

fn concerns_tokens(committed: &Committed) -> bool {
    match committed {
        Committed::SnapshotInstalled { .. } => true,
        Committed::Entry { applied, .. } => applied
            .events
            .iter()
            .any(|e| matches!(e, LedgerEvent::TokenCreated { .. } | LedgerEvent::TokenRevoked { .. })),
    }
}

/// Commit the bootstrap tokens and deployer keys (the node that formed the ledger does this),
/// retrying while the ledger has no leader yet. A token or key already committed — or revoked —
/// is left as it is.
pub fn commit_bootstrap(ledger: Ledger, tokens: Vec<TokenRecord>, deployers: Vec<DeployerRecord>) {
    let commands: Vec<(String, Command)> = deployers
        .into_iter()
        .map(|record| (format!("deployer {}", record.id.short()), Command::TrustDeployer { record, now: now_millis() }))
        .chain(
            tokens
                .into_iter()
                .map(|record| (format!("token {}", record.id), Command::CreateToken { record, now: now_millis() })),
        )
        .collect();
    if commands.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for (what, command) in commands {
            for attempt in 0..120 {
                let committed = {
                    let state = ledger.state();
                    match &command {
                        Command::CreateToken { record, .. } => state.token(&record.id).is_some(),
                        Command::TrustDeployer { record, .. } => state.deployer(&record.id).is_some(),
                        _ => false,
                    }
                };
                if committed {
                    break;
                }
                match ledger.write(command.clone()).await {
                    Ok(_) => break,
                    Err(e) if attempt == 119 => {
                        tracing::warn!(%what, error = %e, "could not commit a bootstrap credential")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        }
    });
}
