//! Functions in the ledger: deployments, instance slots and asynchronous invocations.
//!
//! **Invariant:** a function never holds more instance slots than its `max_instances`; a node
//! claims a slot (and the claim commits) before an instance serves, and gives it back when the
//! instance stops. An OFFLINE node's slots are released and its pending invocations move to
//! another node, chosen deterministically (the lowest admitted node id that is not offline).

use super::{LedgerEvent, Outcome, RejectCode, Rejection, State};
use crate::function::{
    FunctionEntry, FunctionSpec, FunctionVersion, InstanceSlot, Invocation, InvocationId, InvocationState,
    MAX_ASYNC_BODY_BYTES, MAX_ASYNC_RESULT_BYTES, MAX_FUNCTION_HISTORY, MAX_INVOCATION_ATTEMPTS, StoredRequest,
    StoredResponse,
};
use crate::{Millis, NodeId};

/// Finished invocations kept for reading their results; older ones are dropped first.
pub const INVOCATION_RETENTION: usize = 10_000;

fn reject(code: RejectCode, message: impl Into<String>) -> Outcome {
    Outcome::Rejected(Rejection { code, message: message.into() })
}

impl State {
    pub(super) fn deploy_function(
        &mut self,
        spec: &FunctionSpec,
        signature: Option<&crate::signing::SpecSignature>,
        now: Millis,
        ev: &mut Vec<LedgerEvent>,
    ) -> Outcome {
        if let Err(refused) = self.check_signature(crate::signing::SpecKind::Function, &spec.signed_form(), signature) {
            return reject(RejectCode::Forbidden, refused.to_string());
        }
        if !crate::secret::all_sealed(&spec.secrets) {
            return reject(
                RejectCode::Invalid,
                "a function's secrets must be sealed by the node before they are committed; nothing was stored",
            );
        }
        let current = self.data.functions.get(&spec.name);
        let same_content = |stored: &FunctionSpec| {
            let mut a = stored.clone();
            a.version = spec.version;
            a == *spec
        };
        if let Some(entry) = current {
            if spec.version == 0 && same_content(&entry.spec) || spec.version == entry.spec.version {
                if same_content(&entry.spec) {
                    let version = entry.spec.version;
                    // Signed again (by a new key, after the old one was revoked): keep the newer
                    // signature, verified above, and tell the nodes, which may have refused it.
                    if entry.signature.as_ref() != signature {
                        if let Some(entry) = self.data.functions.get_mut(&spec.name) {
                            entry.signature = signature.cloned();
                        }
                        ev.push(LedgerEvent::FunctionDeployed { name: spec.name.clone(), version });
                    }
                    return Outcome::FunctionDeployed { name: spec.name.clone(), version, unchanged: true };
                }
                return reject(
                    RejectCode::Conflict,
                    format!(
                        "function {} version {} already exists with different content; deploy it as a new version",
                        spec.name, spec.version
                    ),
                );
            }
            if spec.version != 0 && spec.version < entry.spec.version {
                return reject(
                    RejectCode::Conflict,
                    format!(
                        "function {} is already at version {}; a new version must be higher than {}",
                        spec.name, entry.spec.version, spec.version
                    ),
                );
            }
        }
        let version = match (spec.version, current) {
            (0, Some(entry)) => entry.spec.version + 1,
            (0, None) => 1,
            (v, _) => v,
        };
        let mut stored = spec.clone();
        stored.version = version;
        let instances = current.map(|e| e.instances.clone()).unwrap_or_default();
        // The version it replaces joins the history (the oldest beyond the bound go).
        let mut history = current.map(|e| e.history.clone()).unwrap_or_default();
        if let Some(previous) = current {
            history.retain(|h| h.spec.version != previous.spec.version);
            history.push(FunctionVersion {
                spec: previous.spec.clone(),
                deployed_at: previous.deployed_at,
                signature: previous.signature.clone(),
            });
            let excess = history.len().saturating_sub(MAX_FUNCTION_HISTORY);
            history.drain(..excess);
        }
        let entry = FunctionEntry { spec: stored, deployed_at: now, instances, signature: signature.cloned(), history };
        self.data.functions.insert(spec.name.clone(), entry);
        ev.push(LedgerEvent::FunctionDeployed { name: spec.name.clone(), version });
        Outcome::FunctionDeployed { name: spec.name.clone(), version, unchanged: false }
    }

    /// Deploy an earlier version's spec and signature again, as a new version (the version
    /// before the current one when `to` is absent).
    pub(super) fn rollback_function(
        &mut self,
        name: &str,
        to: Option<u32>,
        now: Millis,
        ev: &mut Vec<LedgerEvent>,
    ) -> Outcome {
        let Some(entry) = self.data.functions.get(name) else {
            return reject(RejectCode::NotFound, format!("no function named {name}"));
        };
        let target = match to {
            Some(v) => entry.history.iter().find(|h| h.spec.version == v),
            None => entry.history.last(),
        };
        let Some(target) = target.cloned() else {
            let kept: Vec<String> = entry.history.iter().map(|h| h.spec.version.to_string()).collect();
            return reject(
                RejectCode::NotFound,
                match to {
                    Some(v) if v == entry.spec.version => format!("function {name} is at version {v} already"),
                    Some(v) => format!(
                        "function {name} keeps no version {v}; it keeps {}",
                        if kept.is_empty() { "no earlier version".to_owned() } else { kept.join(", ") }
                    ),
                    None => format!("function {name} has no earlier version to roll back to"),
                },
            );
        };
        let mut spec = target.spec;
        spec.version = 0;
        self.deploy_function(&spec, target.signature.as_ref(), now, ev)
    }

    pub(super) fn remove_function(&mut self, name: &str, ev: &mut Vec<LedgerEvent>) -> Outcome {
        if self.data.functions.remove(name).is_none() {
            return reject(RejectCode::NotFound, format!("no function named {name}"));
        }
        ev.push(LedgerEvent::FunctionRemoved { name: name.to_owned() });
        Outcome::FunctionRemoved { name: name.to_owned() }
    }

    pub(super) fn claim_instance(
        &mut self,
        function: &str,
        version: u32,
        node: NodeId,
        instance: u64,
        now: Millis,
        ev: &mut Vec<LedgerEvent>,
    ) -> Outcome {
        let node_entry = match self.data.nodes.get(&node) {
            Some(n) if !n.offline => n,
            Some(_) => return reject(RejectCode::NoFit, format!("node {} is OFFLINE", node.short())),
            None => return reject(RejectCode::NoFit, format!("node {} is not admitted", node.short())),
        };
        let labels_ok = |labels: &std::collections::BTreeMap<String, String>| {
            labels.iter().all(|(k, v)| node_entry.record.labels.get(k) == Some(v))
        };
        let Some(entry) = self.data.functions.get_mut(function) else {
            return reject(RejectCode::NotFound, format!("no function named {function}"));
        };
        if entry.spec.version != version {
            return reject(
                RejectCode::Stale,
                format!(
                    "function {function} version {version} is retired; the current version is {}",
                    entry.spec.version
                ),
            );
        }
        if !labels_ok(&entry.spec.labels) {
            return reject(
                RejectCode::NoFit,
                format!("node {} lacks the labels function {function} needs", node.short()),
            );
        }
        if entry.instances.iter().any(|s| s.node == node && s.instance == instance) {
            return Outcome::InstanceClaimed { function: function.to_owned(), instance };
        }
        let max = entry.spec.scaling.max_instances;
        let skip = self.data.planted_bug == super::PlantedBug::SkipInstanceLimit;
        if entry.instances.len() as u64 >= u64::from(max) && !skip {
            return reject(RejectCode::NoFit, format!("function {function} is at its max_instances ({max})"));
        }
        entry.instances.push(InstanceSlot { node, instance, version, since: now });
        ev.push(LedgerEvent::InstanceClaimed { function: function.to_owned(), version, node, instance });
        Outcome::InstanceClaimed { function: function.to_owned(), instance }
    }

    pub(super) fn release_instances(
        &mut self,
        node: NodeId,
        function: &str,
        instances: &[u64],
        all: bool,
        before: Option<Millis>,
        ev: &mut Vec<LedgerEvent>,
    ) -> Outcome {
        let mut released = 0;
        for (name, entry) in self.data.functions.iter_mut() {
            if !function.is_empty() && name != function {
                continue;
            }
            entry.instances.retain(|s| {
                let listed = instances.contains(&s.instance);
                let gone = s.node == node && (listed || all && before.is_none_or(|t| s.since < t));
                if gone {
                    released += 1;
                    ev.push(LedgerEvent::InstanceReleased { function: name.clone(), node, instance: s.instance });
                }
                !gone
            });
        }
        Outcome::InstancesReleased { released }
    }

    /// A node went OFFLINE: its instance slots are free again and its pending invocations move.
    pub(super) fn node_lost_functions(&mut self, node: NodeId, ev: &mut Vec<LedgerEvent>) {
        self.release_instances(node, "", &[], true, None, ev);
        let heir = self.data.nodes.iter().find(|(id, n)| **id != node && !n.offline).map(|(id, _)| *id);
        if let Some(heir) = heir {
            for invocation in self.data.invocations.values_mut() {
                if invocation.owner == node && invocation.state == InvocationState::Pending {
                    invocation.owner = heir;
                }
            }
        }
    }

    pub(super) fn submit_invocation(
        &mut self,
        function: &str,
        request: &StoredRequest,
        callback: &Option<String>,
        max_attempts: u32,
        owner: NodeId,
        now: Millis,
    ) -> Outcome {
        if !self.data.functions.contains_key(function) {
            return reject(RejectCode::NotFound, format!("no function named {function}"));
        }
        if request.body.len() > MAX_ASYNC_BODY_BYTES {
            return reject(
                RejectCode::Invalid,
                format!(
                    "an asynchronous invocation body is at most {MAX_ASYNC_BODY_BYTES} bytes, got {}; invoke synchronously through /fn/{function} for larger bodies",
                    request.body.len()
                ),
            );
        }
        if max_attempts == 0 || max_attempts > MAX_INVOCATION_ATTEMPTS {
            return reject(
                RejectCode::Invalid,
                format!("max_attempts must be between 1 and {MAX_INVOCATION_ATTEMPTS}, got {max_attempts}"),
            );
        }
        if !self.data.nodes.contains_key(&owner) {
            return reject(RejectCode::NoFit, format!("node {} is not admitted", owner.short()));
        }
        self.data.next_invocation += 1;
        let id = self.data.next_invocation;
        self.data.invocations.insert(
            id,
            Invocation {
                id,
                function: function.to_owned(),
                request: request.clone(),
                callback: callback.clone(),
                max_attempts,
                owner,
                state: InvocationState::Pending,
                attempts: 0,
                submitted_at: now,
                finished_at: None,
                response: None,
                error: None,
            },
        );
        Outcome::InvocationSubmitted { id }
    }

    #[allow(clippy::too_many_arguments, reason = "one argument per field of the command")]
    pub(super) fn finish_invocation(
        &mut self,
        id: InvocationId,
        node: NodeId,
        attempts: u32,
        response: &Option<StoredResponse>,
        error: &Option<String>,
        now: Millis,
        ev: &mut Vec<LedgerEvent>,
    ) -> Outcome {
        let Some(invocation) = self.data.invocations.get_mut(&id) else {
            return reject(RejectCode::NotFound, format!("no invocation {id}"));
        };
        if invocation.state != InvocationState::Pending {
            return reject(RejectCode::Stale, format!("invocation {id} already finished"));
        }
        if invocation.owner != node {
            return reject(
                RejectCode::Stale,
                format!(
                    "invocation {id} moved to node {}; node {} no longer runs it",
                    invocation.owner.short(),
                    node.short()
                ),
            );
        }
        let mut response = response.clone();
        if let Some(r) = &mut response
            && r.body.len() > MAX_ASYNC_RESULT_BYTES
        {
            r.body.truncate(MAX_ASYNC_RESULT_BYTES);
            r.truncated = true;
        }
        // A 4xx is the function's (or the gateway's) refusal: the invocation failed.
        let ok = error.is_none() && response.as_ref().is_some_and(|r| r.status < 400);
        invocation.state = if ok { InvocationState::Succeeded } else { InvocationState::Failed };
        invocation.attempts = attempts;
        invocation.response = response;
        invocation.error = error.clone();
        invocation.finished_at = Some(now);
        let state = invocation.state;
        ev.push(LedgerEvent::InvocationFinished { id, function: invocation.function.clone(), state });
        self.prune_invocations();
        Outcome::InvocationFinished { id, state }
    }

    fn prune_invocations(&mut self) {
        let finished = self.data.invocations.values().filter(|i| i.state != InvocationState::Pending).count();
        if finished <= INVOCATION_RETENTION {
            return;
        }
        let excess = finished - INVOCATION_RETENTION;
        let old: Vec<InvocationId> = self
            .data
            .invocations
            .values()
            .filter(|i| i.state != InvocationState::Pending)
            .take(excess)
            .map(|i| i.id)
            .collect();
        for id in old {
            self.data.invocations.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::function::{FunctionDocument, Runtime};
    use crate::ledger::Command;
    use crate::node::NodeRecord;
    use crate::resources::Resources;

    fn node(n: u8) -> NodeId {
        NodeId([n; 32])
    }

    fn state_with_nodes() -> State {
        let mut state = State::default();
        state.apply(&crate::signing::deployer_for_tests().1);
        for n in 1..=3 {
            let record = NodeRecord {
                id: node(n),
                name: format!("n{n}"),
                labels: BTreeMap::new(),
                capacity: Resources::new(2000, 4 << 30),
                cost_per_hour: 0.0,
                transport_addr: String::new(),
                gossip_addr: String::new(),
                api_url: String::new(),
                namespaces: None,
            };
            state.apply(&Command::AdmitNode { record, now: 1 });
        }
        state
    }

    fn spec(max: u32) -> FunctionSpec {
        let mut doc = FunctionDocument::parse(&format!(
            "name: greet\nkind: function\nruntime: python\nhandler: main.handle\nscaling: {{ max_instances: {max} }}"
        ))
        .unwrap();
        doc.artifact = Some(crate::ArtifactId([9; 32]));
        doc.validate(0).unwrap()
    }

    fn claim(state: &mut State, n: u8, instance: u64, version: u32) -> Outcome {
        state
            .apply(&Command::ClaimInstance { function: "greet".into(), version, node: node(n), instance, now: 5 })
            .outcome
    }

    #[test]
    fn a_functions_secrets_are_committed_only_sealed_and_signed_by_name() {
        use crate::secret::{SecretKey, SecretValue};
        let mut state = state_with_nodes();
        let key = crate::signing::deployer_for_tests().0;
        let mut plain = spec(2);
        plain.secrets.insert("TOKEN".into(), SecretValue::Plain("hunter2".into()));
        let out = state.apply(&Command::signed_function(plain.clone(), &key, 2)).outcome;
        assert_eq!(out.rejection().map(|r| r.code), Some(RejectCode::Invalid), "{out:?}");
        // Sealed by the node after the CLI signed the plain spec: the signature still holds.
        let Command::DeployFunction { signature, .. } = Command::signed_function(plain.clone(), &key, 3) else {
            unreachable!()
        };
        let mut sealed = plain;
        SecretKey::from_mesh_secret(&[3; 32]).seal_all(&sealed.secrets_owner(), &mut sealed.secrets, || [1; 24]);
        let out = state.apply(&Command::DeployFunction { spec: sealed, signature, now: 3 }).outcome;
        assert!(matches!(out, Outcome::FunctionDeployed { .. }), "{out:?}");
        assert!(!serde_json::to_string(&state.data).unwrap().contains("hunter2"));
    }

    #[test]
    fn deploy_assigns_versions_and_is_idempotent() {
        let mut state = state_with_nodes();
        let out = state.apply(&Command::signed_function(spec(4), &crate::signing::deployer_for_tests().0, 2)).outcome;
        assert_eq!(out, Outcome::FunctionDeployed { name: "greet".into(), version: 1, unchanged: false });
        let out = state.apply(&Command::signed_function(spec(4), &crate::signing::deployer_for_tests().0, 3)).outcome;
        assert_eq!(out, Outcome::FunctionDeployed { name: "greet".into(), version: 1, unchanged: true });
        let out = state.apply(&Command::signed_function(spec(5), &crate::signing::deployer_for_tests().0, 4)).outcome;
        assert_eq!(out, Outcome::FunctionDeployed { name: "greet".into(), version: 2, unchanged: false });
        assert_eq!(state.function("greet").unwrap().spec.runtime, Runtime::Python);
    }

    #[test]
    fn instance_slots_never_exceed_max_instances() {
        let mut state = state_with_nodes();
        state.apply(&Command::signed_function(spec(2), &crate::signing::deployer_for_tests().0, 2));
        assert!(matches!(claim(&mut state, 1, 1, 1), Outcome::InstanceClaimed { .. }));
        assert!(matches!(claim(&mut state, 2, 1, 1), Outcome::InstanceClaimed { .. }));
        // The same claim again is idempotent; a third instance is refused.
        assert!(matches!(claim(&mut state, 2, 1, 1), Outcome::InstanceClaimed { .. }));
        let third = claim(&mut state, 3, 1, 1);
        assert_eq!(third.rejection().unwrap().message, "function greet is at its max_instances (2)");
        // A retired version cannot claim.
        assert_eq!(claim(&mut state, 3, 2, 7).rejection().unwrap().code, RejectCode::Stale);
        // Releasing frees the slot.
        state.apply(&Command::ReleaseInstances {
            node: node(1),
            function: "greet".into(),
            instances: vec![1],
            all: false,
            now: 6,
        });
        assert!(matches!(claim(&mut state, 3, 1, 1), Outcome::InstanceClaimed { .. }));
        assert_eq!(state.function("greet").unwrap().instances.len(), 2);
        // A restarted node's "release all" takes only slots claimed before it (claims above
        // were made at t=5), never those of instances it started meanwhile.
        let release_all = |now| Command::ReleaseInstances {
            node: node(3),
            function: String::new(),
            instances: vec![],
            all: true,
            now,
        };
        assert_eq!(state.apply(&release_all(5)).outcome, Outcome::InstancesReleased { released: 0 });
        assert_eq!(state.apply(&release_all(6)).outcome, Outcome::InstancesReleased { released: 1 });
        assert_eq!(state.function("greet").unwrap().instances.len(), 1);
    }

    #[test]
    fn an_offline_node_loses_its_slots_and_its_invocations_move() {
        let mut state = state_with_nodes();
        state.apply(&Command::signed_function(spec(1), &crate::signing::deployer_for_tests().0, 2));
        assert!(matches!(claim(&mut state, 2, 1, 1), Outcome::InstanceClaimed { .. }));
        let request = StoredRequest {
            method: "POST".into(),
            path: "/".into(),
            query: String::new(),
            headers: vec![],
            body: b"hi".to_vec(),
        };
        let out = state
            .apply(&Command::SubmitInvocation {
                function: "greet".into(),
                request,
                callback: None,
                max_attempts: 3,
                owner: node(2),
                now: 3,
            })
            .outcome;
        let Outcome::InvocationSubmitted { id } = out else { panic!("{out:?}") };
        state.apply(&Command::SetNodeOffline { node: node(2), offline: true, term: 0, now: 4 });
        assert!(state.function("greet").unwrap().instances.is_empty());
        assert_eq!(state.invocation(id).unwrap().owner, node(1));
        // Node 2 can no longer report it; node 1 can.
        let finish = |n: u8| Command::FinishInvocation {
            id,
            node: node(n),
            attempts: 1,
            response: Some(StoredResponse { status: 200, headers: vec![], body: b"ok".to_vec(), truncated: false }),
            error: None,
            now: 9,
        };
        assert_eq!(state.apply(&finish(2)).outcome.rejection().unwrap().code, RejectCode::Stale);
        assert_eq!(
            state.apply(&finish(1)).outcome,
            Outcome::InvocationFinished { id, state: InvocationState::Succeeded }
        );
        assert_eq!(state.apply(&finish(1)).outcome.rejection().unwrap().code, RejectCode::Stale);
        // The state round-trips through JSON (the ledger's codec).
        let json = serde_json::to_string(&state).unwrap();
        let back: State = serde_json::from_str(&json).unwrap();
        assert_eq!(back.invocation(id).unwrap().response.as_ref().unwrap().body, b"ok");
    }

    #[test]
    fn oversize_async_bodies_are_refused() {
        let mut state = state_with_nodes();
        state.apply(&Command::signed_function(spec(1), &crate::signing::deployer_for_tests().0, 2));
        let request = StoredRequest {
            method: "POST".into(),
            path: "/".into(),
            query: String::new(),
            headers: vec![],
            body: vec![0; MAX_ASYNC_BODY_BYTES + 1],
        };
        let out = state.apply(&Command::SubmitInvocation {
            function: "greet".into(),
            request,
            callback: None,
            max_attempts: 1,
            owner: node(1),
            now: 3,
        });
        assert_eq!(out.outcome.rejection().unwrap().code, RejectCode::Invalid);
        assert!(state.invocations().next().is_none());
    }
}
