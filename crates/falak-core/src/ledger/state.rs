//! The replicated state and its derived indexes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::capsule::CapsuleVersion;
use crate::function::{FunctionEntry, Invocation, InvocationId};
use crate::job::{Job, JobId, Task, TaskId};
use crate::node::NodeEntry;
use crate::resources::Resources;
use crate::{Millis, NodeId};

/// A deliberately broken check, switched on only by tests that prove the invariant checkers
/// catch it. Carried in state so every replica (and every snapshot) agrees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlantedBug {
    #[default]
    None,
    /// Accept a claim even when the task attempt is already claimed.
    SkipAttemptCheck,
    /// Accept an instance slot claim even beyond the function's `max_instances`.
    SkipInstanceLimit,
    /// Apply a leader duty (OFFLINE marks, lease expiry) whatever term proposed it and whoever
    /// sent it: both fences of leader duties, the term and the sender (`origin.rs`).
    SkipTermCheck,
    /// Never mark a node back HEALTHY once it was OFFLINE.
    RefuseNodeOnline,
}

/// Everything the ledger stores; serialized whole into snapshots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateData {
    pub format: u32,
    /// Commands applied so far (sub-commands of a batch count once each).
    pub applied: u64,
    /// The latest `now` seen in any command: the ledger's notion of time.
    pub clock: Millis,
    /// The leadership term of the last entry applied: the term that fences leader duties.
    #[serde(default)]
    pub term: u64,
    pub nodes: BTreeMap<NodeId, NodeEntry>,
    /// Capsule versions by name, oldest first.
    pub capsules: BTreeMap<String, Vec<CapsuleVersion>>,
    pub jobs: BTreeMap<JobId, Job>,
    pub tasks: BTreeMap<TaskId, Task>,
    /// Service name to the job that holds its replicas.
    pub services: BTreeMap<String, JobId>,
    /// Each service's rollout in progress, or its last one (`rollout.rs`).
    #[serde(default)]
    pub rollouts: BTreeMap<String, super::Rollout>,
    pub next_job: u64,
    /// The last fencing token handed out; tokens strictly increase.
    pub fencing: u64,
    /// Results refused because their fencing token was stale.
    pub rejected_results: u64,
    /// Functions by name.
    #[serde(default)]
    pub functions: BTreeMap<String, FunctionEntry>,
    /// Asynchronous invocations by id; finished ones beyond the retention are dropped oldest first.
    #[serde(default)]
    pub invocations: BTreeMap<InvocationId, Invocation>,
    #[serde(default)]
    pub next_invocation: InvocationId,
    /// Deployer keys trusted to sign specs, revoked ones included.
    #[serde(default)]
    pub deployers: BTreeMap<crate::signing::DeployerId, crate::signing::DeployerRecord>,
    /// API tokens by id (hashes only), revoked ones included.
    #[serde(default)]
    pub tokens: BTreeMap<crate::access::TokenId, crate::access::TokenRecord>,
    /// Unexpired join tickets by id (hashes only); expired ones are dropped as new ones come.
    #[serde(default)]
    pub join_tickets: BTreeMap<crate::access::TokenId, crate::access::JoinTicketRecord>,
    /// Nodes revoked for good, with their name and when; they are no longer in `nodes`.
    #[serde(default)]
    pub revoked_nodes: BTreeMap<NodeId, RevokedNode>,
    /// Idempotency keys of recent keyed writes, with what they asked and got.
    #[serde(default)]
    pub idempotency: BTreeMap<super::IdempotencyKey, super::Remembered>,
    #[serde(default, skip_serializing_if = "is_none_bug")]
    pub planted_bug: PlantedBug,
}

/// A node revoked from the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedNode {
    pub name: String,
    pub revoked_at: Millis,
}

fn is_none_bug(b: &PlantedBug) -> bool {
    *b == PlantedBug::None
}

/// The replicated state: [`StateData`] plus indexes derived from it, rebuilt on load.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub(super) data: StateData,
    /// Tasks waiting for an election (QUEUED or RETRYING).
    pub(super) open: BTreeSet<TaskId>,
    /// Tasks with a current claim, by node.
    pub(super) claims: BTreeMap<NodeId, BTreeSet<TaskId>>,
    /// Resources reserved by current claims, by node.
    pub(super) reserved: BTreeMap<NodeId, Resources>,
    /// Remembered idempotency keys, oldest first.
    pub(super) keys_by_age: BTreeSet<(Millis, super::IdempotencyKey)>,
    /// The leader that appended the entry being applied, while one is (`State::apply_entry`):
    /// what leader duties are checked against (`origin.rs`).
    pub(super) entry_leader: Option<NodeId>,
}

impl State {
    /// A state with a planted bug, for tests of the invariant checkers only.
    pub fn with_planted_bug(bug: PlantedBug) -> State {
        let mut s = State::default();
        s.data.planted_bug = bug;
        s
    }

    pub fn from_data(data: StateData) -> State {
        let mut state = State { data, ..State::default() };
        state.rebuild_indexes();
        state
    }

    pub fn data(&self) -> &StateData {
        &self.data
    }

    fn rebuild_indexes(&mut self) {
        self.open.clear();
        self.claims.clear();
        self.reserved.clear();
        self.keys_by_age = self.data.idempotency.iter().map(|(key, r)| (r.at, key.clone())).collect();
        for (id, task) in &self.data.tasks {
            if task.state.is_open() && task.claim.is_none() {
                self.open.insert(*id);
            }
            if let Some(claim) = &task.claim {
                self.claims.entry(claim.node).or_default().insert(*id);
                let res = self.data.jobs.get(&id.job).map(|j| j.resources).unwrap_or_default();
                let entry = self.reserved.entry(claim.node).or_default();
                *entry = *entry + res;
            }
        }
    }

    /// Recompute the indexes and compare: a check for tests and the simulation.
    pub fn indexes_consistent(&self) -> bool {
        let mut fresh = self.clone();
        fresh.rebuild_indexes();
        fresh.open == self.open
            && fresh.keys_by_age == self.keys_by_age
            && fresh.claims.iter().filter(|(_, s)| !s.is_empty()).eq(self.claims.iter().filter(|(_, s)| !s.is_empty()))
            && fresh
                .reserved
                .iter()
                .filter(|(_, r)| **r != Resources::ZERO)
                .eq(self.reserved.iter().filter(|(_, r)| **r != Resources::ZERO))
    }

    pub fn clock(&self) -> Millis {
        self.data.clock
    }

    pub fn node(&self, id: &NodeId) -> Option<&NodeEntry> {
        self.data.nodes.get(id)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeEntry> {
        self.data.nodes.values()
    }

    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.data.jobs.get(&id)
    }

    pub fn jobs(&self) -> impl DoubleEndedIterator<Item = &Job> {
        self.data.jobs.values()
    }

    pub fn task(&self, id: TaskId) -> Option<&Task> {
        self.data.tasks.get(&id)
    }

    /// Every task, in id order.
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.data.tasks.values()
    }

    /// The tasks of one job, in index order.
    pub fn job_tasks(&self, job: JobId) -> impl Iterator<Item = &Task> {
        let start = TaskId { job, index: 0 };
        let end = TaskId { job, index: u32::MAX };
        self.data.tasks.range(start..=end).map(|(_, t)| t)
    }

    /// Tasks waiting for an election, in id order.
    pub fn open_tasks(&self) -> impl Iterator<Item = &Task> {
        self.open.iter().filter_map(|id| self.data.tasks.get(id))
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Tasks currently claimed by `node`.
    pub fn claims_of(&self, node: &NodeId) -> impl Iterator<Item = &Task> {
        self.claims.get(node).into_iter().flatten().filter_map(|id| self.data.tasks.get(id))
    }

    pub fn claim_count(&self, node: &NodeId) -> usize {
        self.claims.get(node).map_or(0, |s| s.len())
    }

    /// Resources reserved on `node` by current claims.
    pub fn reserved(&self, node: &NodeId) -> Resources {
        self.reserved.get(node).copied().unwrap_or_default()
    }

    pub fn capsule_versions(&self, name: &str) -> Option<&[CapsuleVersion]> {
        self.data.capsules.get(name).map(|v| v.as_slice())
    }

    pub fn capsules(&self) -> impl Iterator<Item = (&String, &Vec<CapsuleVersion>)> {
        self.data.capsules.iter()
    }

    /// A capsule version, or the latest when `version` is `None`.
    pub fn capsule(&self, name: &str, version: Option<u32>) -> Option<&CapsuleVersion> {
        let versions = self.data.capsules.get(name)?;
        match version {
            None => versions.last(),
            Some(v) => versions.iter().find(|c| c.version == v),
        }
    }

    pub fn service(&self, name: &str) -> Option<&Job> {
        self.data.services.get(name).and_then(|id| self.data.jobs.get(id))
    }

    pub fn services(&self) -> impl Iterator<Item = &Job> {
        self.data.services.values().filter_map(|id| self.data.jobs.get(id))
    }

    pub fn function(&self, name: &str) -> Option<&FunctionEntry> {
        self.data.functions.get(name)
    }

    pub fn functions(&self) -> impl Iterator<Item = &FunctionEntry> {
        self.data.functions.values()
    }

    pub fn invocation(&self, id: InvocationId) -> Option<&Invocation> {
        self.data.invocations.get(&id)
    }

    pub fn invocations(&self) -> impl DoubleEndedIterator<Item = &Invocation> {
        self.data.invocations.values()
    }

    pub fn rejected_results(&self) -> u64 {
        self.data.rejected_results
    }
}

impl Serialize for State {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.data.serialize(s)
    }
}

impl<'de> Deserialize<'de> for State {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(State::from_data(StateData::deserialize(d)?))
    }
}
