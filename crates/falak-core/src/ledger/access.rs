//! Credentials in the ledger: API tokens (created with their hash only, revoked for good), the
//! deployer keys trusted to sign specs, join tickets, and revoked nodes.
//!
//! **Invariant:** a revoked token stays revoked: creating a token whose id exists changes
//! nothing, so replaying a bootstrap token after its revocation cannot bring it back.
//!
//! **Invariant:** a revoked node is in `revoked_nodes` and never again in `nodes`: no command
//! admits its key again, so every node's transport keeps refusing it.

use super::state::RevokedNode;
use super::{LedgerEvent, Outcome, RejectCode, Rejection, State};
use crate::Millis;
use crate::NodeId;
use crate::access::{
    JoinTicketRecord, MAX_JOIN_TICKETS, MAX_TICKET_USES, MAX_TOKEN_NAME, MAX_TOKENS, TokenHash, TokenId, TokenRecord,
};
use crate::node::NodeRecord;
use crate::signing::{
    DeployerId, DeployerRecord, MAX_DEPLOYER_NAME, MAX_DEPLOYERS, SignatureRefused, SpecKind, SpecSignature,
};

fn reject(code: RejectCode, message: impl Into<String>) -> Outcome {
    Outcome::Rejected(Rejection { code, message: message.into() })
}

impl State {
    pub fn token(&self, id: &TokenId) -> Option<&TokenRecord> {
        self.data.tokens.get(id)
    }

    pub fn tokens(&self) -> impl Iterator<Item = &TokenRecord> {
        self.data.tokens.values()
    }

    pub(super) fn create_token(&mut self, record: &TokenRecord, ev: &mut Vec<LedgerEvent>) -> Outcome {
        if let Some(existing) = self.data.tokens.get(&record.id) {
            if existing.hash == record.hash {
                return Outcome::TokenCreated { id: record.id, unchanged: true };
            }
            return reject(RejectCode::Conflict, format!("token id {} is taken; create the token again", record.id));
        }
        if record.name.is_empty() || record.name.len() > MAX_TOKEN_NAME || record.name.chars().any(char::is_control) {
            return reject(
                RejectCode::Invalid,
                format!("a token name must be 1 to {MAX_TOKEN_NAME} printable characters"),
            );
        }
        if record.revoked_at.is_some() {
            return reject(RejectCode::Invalid, "a new token cannot be revoked already");
        }
        if self.data.tokens.len() >= MAX_TOKENS {
            return reject(
                RejectCode::Invalid,
                format!("the mesh holds {MAX_TOKENS} tokens, the most it keeps; revoke unused ones first"),
            );
        }
        self.data.tokens.insert(record.id, record.clone());
        ev.push(LedgerEvent::TokenCreated { id: record.id, name: record.name.clone(), role: record.role });
        Outcome::TokenCreated { id: record.id, unchanged: false }
    }

    pub fn deployer(&self, id: &DeployerId) -> Option<&DeployerRecord> {
        self.data.deployers.get(id)
    }

    pub fn deployers(&self) -> impl Iterator<Item = &DeployerRecord> {
        self.data.deployers.values()
    }

    /// Whether `signature` is a trusted, unrevoked deployer's signature of `signed`.
    pub fn check_signature<T: serde::Serialize>(
        &self,
        kind: SpecKind,
        signed: &T,
        signature: Option<&SpecSignature>,
    ) -> Result<(), SignatureRefused> {
        crate::signing::check(kind, signed, signature, |id| self.data.deployers.get(id))
    }

    pub(super) fn trust_deployer(&mut self, record: &DeployerRecord, ev: &mut Vec<LedgerEvent>) -> Outcome {
        if self.data.deployers.contains_key(&record.id) {
            return Outcome::DeployerTrusted { id: record.id, unchanged: true };
        }
        if record.name.is_empty() || record.name.len() > MAX_DEPLOYER_NAME || record.name.chars().any(char::is_control)
        {
            return reject(
                RejectCode::Invalid,
                format!("a deployer name must be 1 to {MAX_DEPLOYER_NAME} printable characters"),
            );
        }
        if record.revoked_at.is_some() {
            return reject(RejectCode::Invalid, "a new deployer key cannot be revoked already");
        }
        if self.data.deployers.len() >= MAX_DEPLOYERS {
            return reject(
                RejectCode::Invalid,
                format!("the mesh trusts {MAX_DEPLOYERS} deployer keys, the most it keeps"),
            );
        }
        self.data.deployers.insert(record.id, record.clone());
        ev.push(LedgerEvent::DeployerTrusted { id: record.id, name: record.name.clone() });
        Outcome::DeployerTrusted { id: record.id, unchanged: false }
    }

    pub(super) fn revoke_deployer(&mut self, id: DeployerId, now: Millis, ev: &mut Vec<LedgerEvent>) -> Outcome {
        let Some(record) = self.data.deployers.get_mut(&id) else {
            return reject(RejectCode::NotFound, format!("no deployer key {id}; `falak deployer list` shows them"));
        };
        if record.revoked_at.is_none() {
            record.revoked_at = Some(now);
            ev.push(LedgerEvent::DeployerRevoked { id, name: record.name.clone() });
        }
        Outcome::DeployerRevoked { id }
    }

    pub(super) fn revoke_token(&mut self, id: TokenId, now: Millis, ev: &mut Vec<LedgerEvent>) -> Outcome {
        let Some(record) = self.data.tokens.get_mut(&id) else {
            return reject(RejectCode::NotFound, format!("no token {id}; `falak token list` shows the tokens"));
        };
        if record.revoked_at.is_none() {
            record.revoked_at = Some(now);
            ev.push(LedgerEvent::TokenRevoked { id, name: record.name.clone() });
        }
        Outcome::TokenRevoked { id }
    }
}

impl State {
    pub fn join_ticket(&self, id: &TokenId) -> Option<&JoinTicketRecord> {
        self.data.join_tickets.get(id)
    }

    pub fn join_tickets(&self) -> impl Iterator<Item = &JoinTicketRecord> {
        self.data.join_tickets.values()
    }

    pub fn revoked_node(&self, id: &NodeId) -> Option<&RevokedNode> {
        self.data.revoked_nodes.get(id)
    }

    pub fn revoked_nodes(&self) -> impl Iterator<Item = (&NodeId, &RevokedNode)> {
        self.data.revoked_nodes.iter()
    }

    pub(super) fn create_join_ticket(
        &mut self,
        record: &JoinTicketRecord,
        now: Millis,
        ev: &mut Vec<LedgerEvent>,
    ) -> Outcome {
        if let Some(existing) = self.data.join_tickets.get(&record.id) {
            if existing.hash == record.hash {
                return Outcome::JoinTicketCreated { id: record.id };
            }
            return reject(RejectCode::Conflict, format!("join ticket id {} is taken; admit again", record.id));
        }
        if record.uses == 0 || record.uses > MAX_TICKET_USES {
            return reject(RejectCode::Invalid, format!("a join token admits 1 to {MAX_TICKET_USES} nodes"));
        }
        if record.expires_at <= now || !record.joined.is_empty() || record.revoked_at.is_some() {
            return reject(RejectCode::Invalid, "a new join token must be unused, unrevoked and expire in the future");
        }
        self.data.join_tickets.retain(|_, t| t.expires_at > now);
        if self.data.join_tickets.len() >= MAX_JOIN_TICKETS {
            return reject(
                RejectCode::Invalid,
                format!("the mesh holds {MAX_JOIN_TICKETS} unexpired join tokens, the most it keeps; let some expire"),
            );
        }
        self.data.join_tickets.insert(record.id, record.clone());
        ev.push(LedgerEvent::JoinTicketCreated { id: record.id, uses: record.uses, expires_at: record.expires_at });
        Outcome::JoinTicketCreated { id: record.id }
    }

    pub(super) fn revoke_join_ticket(&mut self, id: TokenId, now: Millis, ev: &mut Vec<LedgerEvent>) -> Outcome {
        let Some(ticket) = self.data.join_tickets.get_mut(&id) else {
            return reject(
                RejectCode::NotFound,
                format!("no join token {id} (expired ones are forgotten); `falak node tokens` lists them"),
            );
        };
        if ticket.revoked_at.is_none() {
            ticket.revoked_at = Some(now);
            ev.push(LedgerEvent::JoinTicketRevoked { id });
        }
        Outcome::JoinTicketRevoked { id }
    }

    pub(super) fn join_node(
        &mut self,
        ticket: TokenId,
        hash: &TokenHash,
        record: &NodeRecord,
        now: Millis,
        ev: &mut Vec<LedgerEvent>,
    ) -> Outcome {
        let Some(entry) = self.data.join_tickets.get(&ticket) else {
            return reject(RejectCode::Forbidden, crate::access::TicketRefused::Unknown.to_string());
        };
        // The proposer's `now` (the node holding the CA key, which checked the ticket at that
        // same moment), not the ledger's clock: one node with a clock far ahead must not expire
        // every ticket of the mesh.
        if let Err(refused) = entry.check(hash, &record.id, now) {
            return reject(RejectCode::Forbidden, refused.to_string());
        }
        let repeat = entry.joined.contains(&record.id);
        if !repeat && self.data.nodes.contains_key(&record.id) {
            return reject(
                RejectCode::Conflict,
                format!("node {} is already a member of this mesh", record.id.short()),
            );
        }
        if let Some(other) = self.data.nodes.values().find(|n| n.record.name == record.name && n.record.id != record.id)
        {
            return reject(
                RejectCode::Conflict,
                format!("node name {} is taken by node {}; choose another name", record.name, other.record.id.short()),
            );
        }
        let outcome = self.admit_node(record, now, ev);
        if matches!(outcome, Outcome::NodeAdmitted { .. }) && !repeat {
            self.data.join_tickets.get_mut(&ticket).expect("checked above").joined.push(record.id);
        }
        outcome
    }

    pub(super) fn revoke_node(&mut self, node: NodeId, now: Millis, ev: &mut Vec<LedgerEvent>) -> Outcome {
        if self.data.revoked_nodes.contains_key(&node) {
            return Outcome::NodeRevoked { node };
        }
        if !self.data.nodes.contains_key(&node) {
            return reject(RejectCode::NotFound, format!("no node {node}; `falak nodes` lists the members"));
        }
        if self.data.nodes.len() == 1 {
            return reject(RejectCode::Invalid, "this is the mesh's last node; revoking it would leave no mesh");
        }
        // OFFLINE first: its claims are lost (their tasks fail over) and its instance slots freed.
        // A node already OFFLINE went through that; its functions are handed over again anyway,
        // since an OFFLINE node may have had no heir for its invocations then.
        self.set_node_offline(node, true, 0, now, ev);
        self.node_lost_functions(node, ev);
        let entry = self.data.nodes.remove(&node).expect("checked above");
        let name = entry.record.name;
        self.data.revoked_nodes.insert(node, RevokedNode { name: name.clone(), revoked_at: now });
        ev.push(LedgerEvent::NodeRevoked { node, name });
        Outcome::NodeRevoked { node }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{Role, Token};
    use crate::ledger::Command;

    fn record(seed: u8) -> (Token, TokenRecord) {
        let token = Token::from_random([seed; 40]);
        let record = TokenRecord {
            id: token.id,
            name: format!("t{seed}"),
            role: Role::Read,
            hash: token.hash(),
            created_at: 1,
            expires_at: None,
            rate_limit: None,
            revoked_at: None,
        };
        (token, record)
    }

    #[test]
    fn a_revoked_token_is_not_brought_back_by_creating_it_again() {
        let mut state = State::default();
        let (token, rec) = record(1);
        let created = state.apply(&Command::CreateToken { record: rec.clone(), now: 1 });
        assert_eq!(created.outcome, Outcome::TokenCreated { id: token.id, unchanged: false });
        let revoked = state.apply(&Command::RevokeToken { id: token.id, now: 5 });
        assert_eq!(revoked.outcome, Outcome::TokenRevoked { id: token.id });
        assert_eq!(revoked.events, vec![LedgerEvent::TokenRevoked { id: token.id, name: "t1".into() }]);
        let again = state.apply(&Command::CreateToken { record: rec, now: 6 });
        assert_eq!(again.outcome, Outcome::TokenCreated { id: token.id, unchanged: true });
        assert_eq!(state.token(&token.id).unwrap().revoked_at, Some(5));
        assert!(state.token(&token.id).unwrap().check(&token, 7).is_err());
    }

    #[test]
    fn only_specs_signed_by_a_trusted_unrevoked_key_are_committed() {
        use crate::capsule::CapsuleDocument;
        use crate::signing::{DeployerKey, deployer_for_tests};
        let mut state = State::default();
        let (key, trust) = deployer_for_tests();
        state.apply(&trust);
        let spec = CapsuleDocument::parse("name: c\nkind: process\ncommand: [/bin/true]\n").unwrap();
        let refused = |state: &mut State, command: Command, says: &str| {
            let applied = state.apply(&command);
            let rejection = applied.outcome.rejection().cloned().expect("refused");
            assert_eq!(rejection.code, RejectCode::Forbidden);
            assert!(rejection.message.contains(says), "{}", rejection.message);
            assert!(applied.events.is_empty());
        };
        refused(&mut state, Command::ApplyCapsule { spec: spec.clone(), signature: None, now: 1 }, "not signed");
        let stranger = DeployerKey::from_seed([1; 32]);
        refused(&mut state, Command::signed_capsule(spec.clone(), &stranger, 1), "does not trust");
        let Command::ApplyCapsule { signature, .. } = Command::signed_capsule(spec.clone(), &key, 1) else {
            unreachable!()
        };
        let mut tampered = spec.clone();
        tampered.command = vec!["/bin/false".into()];
        refused(&mut state, Command::ApplyCapsule { spec: tampered, signature, now: 1 }, "changed after it was signed");
        assert!(state.capsule_versions("c").is_none(), "nothing was committed");
        let applied = state.apply(&Command::signed_capsule(spec.clone(), &key, 2));
        assert!(applied.outcome.rejection().is_none(), "{:?}", applied.outcome);
        state.apply(&Command::RevokeDeployer { id: key.id(), now: 3 });
        let mut v2 = spec.clone();
        v2.command = vec!["/bin/echo".into()];
        refused(&mut state, Command::signed_capsule(v2, &key, 4), "was revoked");
        // The same spec signed again by a newly trusted key takes the new signature.
        let rotated = DeployerKey::from_seed([2; 32]);
        let record =
            crate::signing::DeployerRecord { id: rotated.id(), name: "new".into(), added_at: 5, revoked_at: None };
        state.apply(&Command::TrustDeployer { record, now: 5 });
        let again = state.apply(&Command::signed_capsule(spec, &rotated, 6));
        assert!(matches!(again.outcome, Outcome::CapsuleApplied { unchanged: true, .. }), "{:?}", again.outcome);
        let stored = &state.capsule_versions("c").unwrap()[0];
        assert_eq!(stored.signature.as_ref().map(|s| s.key), Some(rotated.id()));
        // Trusting a revoked key again changes nothing.
        state.apply(&trust);
        assert!(state.deployer(&key.id()).unwrap().revoked_at.is_some());
    }

    #[test]
    fn a_plain_secret_never_reaches_the_ledger() {
        use crate::capsule::CapsuleDocument;
        use crate::secret::{SecretKey, SecretValue};
        use crate::signing::deployer_for_tests;
        let mut state = State::default();
        let (key, trust) = deployer_for_tests();
        state.apply(&trust);
        let text = "name: c\nkind: process\ncommand: [/bin/true]\nsecrets: { TOKEN: hunter2 }\n";
        let plain = CapsuleDocument::parse(text).unwrap();
        let applied = state.apply(&Command::signed_capsule(plain.clone(), &key, 1));
        assert_eq!(applied.outcome.rejection().map(|r| r.code), Some(RejectCode::Invalid));
        assert!(state.capsule_versions("c").is_none());
        // Sealed by the node after the CLI signed the plain spec: the signature still holds.
        let Command::ApplyCapsule { signature, .. } = Command::signed_capsule(plain.clone(), &key, 1) else {
            unreachable!()
        };
        let mut sealed = plain;
        let sealer = SecretKey::from_mesh_secret(&[3; 32]);
        sealed.secrets.insert("TOKEN".into(), SecretValue::Sealed(sealer.seal("c", "TOKEN", "hunter2", [1; 24])));
        let applied = state.apply(&Command::ApplyCapsule { spec: sealed, signature, now: 2 });
        assert!(applied.outcome.rejection().is_none(), "{:?}", applied.outcome);
        let json = serde_json::to_string(&state.data).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
    }

    #[test]
    fn bad_tokens_are_rejected_and_change_nothing() {
        let mut state = State::default();
        let (_, rec) = record(2);
        state.apply(&Command::CreateToken { record: rec.clone(), now: 1 });
        let before = state.clone();
        let (_, other) = record(3);
        let cases = [
            TokenRecord { hash: other.hash, ..rec.clone() },
            TokenRecord { name: String::new(), ..other.clone() },
            TokenRecord { name: "x".repeat(65), ..other.clone() },
            TokenRecord { revoked_at: Some(1), ..other },
        ];
        for case in cases {
            let applied = state.apply(&Command::CreateToken { record: case.clone(), now: 2 });
            assert!(applied.outcome.rejection().is_some(), "{case:?} accepted");
            assert!(applied.events.is_empty());
        }
        let unknown = state.apply(&Command::RevokeToken { id: TokenId([9; 8]), now: 3 });
        assert_eq!(unknown.outcome.rejection().unwrap().code, RejectCode::NotFound);
        assert_eq!(state.data.tokens, before.data.tokens);
    }

    fn node_record(n: u8, name: &str) -> NodeRecord {
        NodeRecord {
            id: NodeId([n; 32]),
            name: name.into(),
            labels: Default::default(),
            capacity: crate::resources::Resources::new(1000, 1 << 30),
            cost_per_hour: 0.0,
            transport_addr: String::new(),
            gossip_addr: String::new(),
            api_url: String::new(),
            namespaces: None,
        }
    }

    fn join(state: &mut State, ticket: &Token, n: u8, name: &str, now: Millis) -> Outcome {
        let command = Command::JoinNode { ticket: ticket.id, hash: ticket.hash(), record: node_record(n, name), now };
        state.apply(&command).outcome
    }

    fn refused(outcome: Outcome, code: RejectCode, says: &str) {
        let rejection = outcome.rejection().cloned().unwrap_or_else(|| panic!("not refused: {outcome:?}"));
        assert_eq!(rejection.code, code, "{}", rejection.message);
        assert!(rejection.message.contains(says), "{}", rejection.message);
    }

    #[test]
    fn a_join_ticket_admits_as_many_nodes_as_it_allows_until_it_expires() {
        let mut state = State::default();
        let ticket = Token::from_random([3; 40]);
        let created =
            state.apply(&Command::CreateJoinTicket { record: JoinTicketRecord::new(&ticket, 10, 1_000, 2), now: 10 });
        assert_eq!(created.outcome, Outcome::JoinTicketCreated { id: ticket.id });
        // A wrong secret, an unknown id.
        let forged = Token { id: ticket.id, secret: [9; 32] };
        refused(join(&mut state, &forged, 1, "a", 20), RejectCode::Forbidden, "not known");
        refused(join(&mut state, &Token::from_random([4; 40]), 1, "a", 20), RejectCode::Forbidden, "not known");
        assert_eq!(state.nodes().count(), 0);
        // Two uses; a lost answer repeated costs nothing; a taken name is refused.
        assert_eq!(join(&mut state, &ticket, 1, "a", 20), Outcome::NodeAdmitted { node: NodeId([1; 32]) });
        assert_eq!(join(&mut state, &ticket, 1, "a", 21), Outcome::NodeAdmitted { node: NodeId([1; 32]) });
        refused(join(&mut state, &ticket, 2, "a", 22), RejectCode::Conflict, "name a is taken");
        assert_eq!(join(&mut state, &ticket, 2, "b", 23), Outcome::NodeAdmitted { node: NodeId([2; 32]) });
        refused(join(&mut state, &ticket, 3, "c", 24), RejectCode::Forbidden, "already used by 2 node(s)");
        assert_eq!(state.join_ticket(&ticket.id).unwrap().joined, vec![NodeId([1; 32]), NodeId([2; 32])]);
        // Expiry.
        let short = Token::from_random([5; 40]);
        state.apply(&Command::CreateJoinTicket { record: JoinTicketRecord::new(&short, 30, 100, 5), now: 30 });
        refused(join(&mut state, &short, 3, "c", 100), RejectCode::Forbidden, "expired");
        // A ticket cannot take over a member admitted another way.
        let member = node_record(7, "m");
        state.apply(&Command::AdmitNode { record: member, now: 40 });
        let other = Token::from_random([6; 40]);
        state.apply(&Command::CreateJoinTicket { record: JoinTicketRecord::new(&other, 40, 1_000, 5), now: 40 });
        refused(join(&mut state, &other, 7, "m2", 41), RejectCode::Conflict, "already a member");
        // Bad tickets are refused; expired ones are dropped when a new one comes.
        let bad = Token::from_random([8; 40]);
        for (record, says) in [
            (JoinTicketRecord::new(&bad, 200, 1_000, 0), "1 to 1000"),
            (JoinTicketRecord::new(&bad, 200, 200, 1), "expire in the future"),
        ] {
            refused(state.apply(&Command::CreateJoinTicket { record, now: 200 }).outcome, RejectCode::Invalid, says);
        }
        state.apply(&Command::CreateJoinTicket { record: JoinTicketRecord::new(&bad, 200, 1_000, 1), now: 200 });
        assert!(state.join_ticket(&short.id).is_none(), "the expired ticket is dropped");
        assert!(state.join_ticket(&ticket.id).is_some());
        // A revoked ticket admits no one.
        let revoked = state.apply(&Command::RevokeJoinTicket { id: bad.id, now: 201 });
        assert_eq!(revoked.events, vec![LedgerEvent::JoinTicketRevoked { id: bad.id }]);
        refused(join(&mut state, &bad, 8, "h", 202), RejectCode::Forbidden, "was revoked");
        refused(
            state.apply(&Command::RevokeJoinTicket { id: short.id, now: 203 }).outcome,
            RejectCode::NotFound,
            "no join token",
        );
    }

    #[test]
    fn a_revoked_node_leaves_the_mesh_for_good() {
        let mut state = State::default();
        state.apply(&Command::AdmitNode { record: node_record(1, "a"), now: 1 });
        state.apply(&Command::AdmitNode { record: node_record(2, "b"), now: 1 });
        let revoked = state.apply(&Command::RevokeNode { node: NodeId([2; 32]), now: 5 });
        assert_eq!(revoked.outcome, Outcome::NodeRevoked { node: NodeId([2; 32]) });
        assert_eq!(
            revoked.events,
            vec![
                LedgerEvent::NodeOffline { node: NodeId([2; 32]), term: 0 },
                LedgerEvent::NodeRevoked { node: NodeId([2; 32]), name: "b".into() }
            ]
        );
        assert!(state.node(&NodeId([2; 32])).is_none());
        assert_eq!(state.revoked_node(&NodeId([2; 32])).unwrap().revoked_at, 5);
        // Again: nothing changes. An unknown node: not found.
        let again = state.apply(&Command::RevokeNode { node: NodeId([2; 32]), now: 6 });
        assert_eq!((again.outcome, again.events), (Outcome::NodeRevoked { node: NodeId([2; 32]) }, vec![]));
        refused(
            state.apply(&Command::RevokeNode { node: NodeId([9; 32]), now: 6 }).outcome,
            RejectCode::NotFound,
            "no node",
        );
        // Its key is never admitted again, neither by itself nor through a join ticket.
        refused(
            state.apply(&Command::AdmitNode { record: node_record(2, "b"), now: 7 }).outcome,
            RejectCode::Forbidden,
            "was revoked",
        );
        let ticket = Token::from_random([3; 40]);
        state.apply(&Command::CreateJoinTicket { record: JoinTicketRecord::new(&ticket, 7, 1_000, 1), now: 7 });
        refused(join(&mut state, &ticket, 2, "b", 8), RejectCode::Forbidden, "was revoked");
        assert!(state.join_ticket(&ticket.id).unwrap().joined.is_empty(), "no use spent");
        assert_eq!(state.nodes().count(), 1);
    }
}
