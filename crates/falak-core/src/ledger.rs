//! The ledger state machine: `apply(command) -> outcome`.
//!
//! Every replica applies the same committed commands in the same order and so reaches the same
//! state. **Invariant:** `apply` is deterministic: it reads no clock (time comes in commands as
//! `now`), no randomness and does no IO. Collections are ordered (`BTreeMap`) so that iteration
//! and serialization are identical on every replica.

mod access;
mod apply;
mod event;
mod functions;
mod idempotency;
mod origin;
mod rollout;
mod state;

use serde::{Deserialize, Serialize};

use crate::access::{JoinTicketRecord, TokenHash, TokenId, TokenRecord};
use crate::capsule::CapsuleSpec;
use crate::function::{FunctionSpec, InvocationId, InvocationState, StoredRequest, StoredResponse};
use crate::job::{JobId, JobRequest, JobState, ServiceRequest, TaskId, TaskReport, TaskState};
use crate::node::NodeRecord;
use crate::placement::Decision;
use crate::signing::{DeployerId, DeployerRecord, SpecSignature};
use crate::{Millis, NodeId};

pub use event::{EventId, ParseEventIdError};
pub use idempotency::{
    IDEMPOTENCY_KEY_HEADER, IDEMPOTENCY_RETENTION_MS, IdempotencyKey, InvalidIdempotencyKey, MAX_IDEMPOTENCY_KEYS,
    Remembered, RequestFingerprint,
};
pub use rollout::{
    CRASHES_TO_ROLL_BACK, DEFAULT_DEADLINE_MS, DEFAULT_MIN_READY_MS, Rollout, RolloutState, RolloutStep, ServiceUpdate,
    rollout_duties,
};
pub use state::{PlantedBug, State, StateData};

/// Format version of serialized [`State`] snapshots and [`Command`] entries.
pub const FORMAT: u32 = 1;

/// A change proposed to the ledger. Only committed commands are applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Does nothing; used to check that the ledger commits.
    Noop {
        now: Millis,
    },
    /// Several commands in one log entry, applied in order (how nodes batch claims and reports).
    Batch(Vec<Command>),
    /// Admit a node, or update its record when it restarts.
    AdmitNode {
        record: NodeRecord,
        now: Millis,
    },
    /// Membership saw the node OFFLINE (or back); proposed by the leader.
    ///
    /// `term` is the leadership term of the leader that proposed it. The state machine applies
    /// it only in an entry of that same term: a deposed leader's view of who is OFFLINE, retried
    /// and committed after a heal, is refused. 0 (entries written before terms were carried) is
    /// not checked.
    SetNodeOffline {
        node: NodeId,
        offline: bool,
        #[serde(default)]
        term: u64,
        now: Millis,
    },
    ApplyCapsule {
        spec: CapsuleSpec,
        /// A deployer's signature of `spec.signed_form()`; required.
        #[serde(default)]
        signature: Option<SpecSignature>,
        now: Millis,
    },
    SubmitJob {
        request: JobRequest,
        origin: NodeId,
        now: Millis,
    },
    CancelJob {
        job: JobId,
        now: Millis,
    },
    ApplyService {
        request: ServiceRequest,
        origin: NodeId,
        now: Millis,
    },
    RemoveService {
        name: String,
        now: Millis,
    },
    /// Make an earlier version of a capsule its latest again: the same spec and signature as a
    /// new version (the version before the latest when `version` is absent).
    RollbackCapsule {
        name: String,
        version: Option<u32>,
        now: Millis,
    },
    /// Deploy an earlier version of a function again, as a new version (the one before the
    /// current when `version` is absent).
    RollbackFunction {
        name: String,
        version: Option<u32>,
        now: Millis,
    },
    /// Move a service to another capsule version, a few replicas at a time (`rollout.rs`).
    UpdateService {
        update: ServiceUpdate,
        origin: NodeId,
        now: Millis,
    },
    /// The next step of a service's rollout, proposed by the ledger leader of `term` and
    /// decided again by the state machine.
    StepRollout {
        service: String,
        term: u64,
        now: Millis,
    },
    /// A node claims one attempt of a task.
    Claim {
        task: TaskId,
        attempt: u32,
        node: NodeId,
        lease_ms: u64,
        decision: Decision,
        now: Millis,
    },
    /// The claim holder started the task.
    Started {
        task: TaskId,
        fencing: u64,
        now: Millis,
    },
    /// A node renews the leases of the tasks it holds.
    RenewLeases {
        node: NodeId,
        leases: Vec<(TaskId, u64)>,
        lease_ms: u64,
        now: Millis,
    },
    /// The claim holder reports how an attempt ended.
    Finish {
        task: TaskId,
        /// The reporting node; it must hold the claim that `fencing` names.
        node: NodeId,
        fencing: u64,
        report: TaskReport,
        now: Millis,
    },
    /// Leases that ran out before `now` are lost; proposed periodically by the leader, and
    /// fenced by its `term` as [`Command::SetNodeOffline`] is.
    ExpireLeases {
        #[serde(default)]
        term: u64,
        now: Millis,
    },
    /// Deploy a function; `spec.version` 0 means the next version.
    DeployFunction {
        spec: FunctionSpec,
        /// A deployer's signature of `spec.signed_form()`; required.
        #[serde(default)]
        signature: Option<SpecSignature>,
        now: Millis,
    },
    RemoveFunction {
        name: String,
        now: Millis,
    },
    /// A node claims one slot of a function's `max_instances` before it starts an instance.
    ClaimInstance {
        function: String,
        version: u32,
        node: NodeId,
        instance: u64,
        now: Millis,
    },
    /// A node gives back instance slots: the listed ones, and with `all` every slot it claimed
    /// before `now` (a restarted node's stale slots, never those of instances it starts meanwhile).
    ReleaseInstances {
        node: NodeId,
        function: String,
        instances: Vec<u64>,
        all: bool,
        now: Millis,
    },
    /// Record an asynchronous invocation; `owner` runs it.
    SubmitInvocation {
        function: String,
        request: StoredRequest,
        callback: Option<String>,
        max_attempts: u32,
        owner: NodeId,
        now: Millis,
    },
    /// The owner reports how an asynchronous invocation ended.
    FinishInvocation {
        id: InvocationId,
        node: NodeId,
        attempts: u32,
        response: Option<StoredResponse>,
        error: Option<String>,
        now: Millis,
    },
    /// Record a new API token (its hash only). Creating an id that exists changes nothing.
    CreateToken {
        record: TokenRecord,
        now: Millis,
    },
    /// Revoke an API token for good.
    RevokeToken {
        id: TokenId,
        now: Millis,
    },
    /// Trust a deployer key to sign capsules and functions. Adding a known key changes nothing.
    TrustDeployer {
        record: DeployerRecord,
        now: Millis,
    },
    /// Stop trusting a deployer key, for good: specs it signed are no longer run.
    RevokeDeployer {
        id: DeployerId,
        now: Millis,
    },
    /// Record a join ticket (its hash only), for `falak node admit`.
    CreateJoinTicket {
        record: JoinTicketRecord,
        now: Millis,
    },
    /// Admit a new node through a join ticket, using one of its uses; refused when the ticket is
    /// unknown, expired or used up, or the node was revoked.
    JoinNode {
        ticket: TokenId,
        /// The hash of the ticket secret the joiner presented.
        hash: TokenHash,
        record: NodeRecord,
        now: Millis,
    },
    /// Revoke a join ticket: it admits no one from now on.
    RevokeJoinTicket {
        id: TokenId,
        now: Millis,
    },
    /// Revoke a node for good: it goes OFFLINE (its tasks fail over, its instance slots are
    /// freed), leaves the node list, and is never admitted again under its key.
    RevokeNode {
        node: NodeId,
        now: Millis,
    },
    /// Apply `command` at most once per `key`: the first time, as usual, remembering its
    /// outcome unless it was rejected; again with the same key and the same `request`, the
    /// remembered outcome without applying anything; with the same key and another request, a
    /// conflict. Keys are remembered for [`IDEMPOTENCY_RETENTION_MS`], at most
    /// [`MAX_IDEMPOTENCY_KEYS`] of them. How an API write retried after an unconfirmed answer
    /// (a timeout, a lost connection) takes effect once.
    Idempotent {
        key: IdempotencyKey,
        /// What the request asked for, so a key reused for another request is caught.
        request: RequestFingerprint,
        command: Box<Command>,
    },
    /// `command` as the ledger leader appended it, stamped with the node that sent it: the
    /// transport-authenticated sender of a forwarded write, or the leader for its own. Every
    /// replica checks that this node may make the command (`origin.rs`). Never written by a
    /// node: the leader refuses a command that carries one.
    Sent {
        by: NodeId,
        command: Box<Command>,
    },
}

impl Command {
    /// `ApplyCapsule` with `spec` signed by `key`.
    pub fn signed_capsule(spec: CapsuleSpec, key: &crate::signing::DeployerKey, now: Millis) -> Command {
        let signature = Some(key.sign(crate::signing::SpecKind::Capsule, &spec.signed_form()));
        Command::ApplyCapsule { spec, signature, now }
    }

    /// `DeployFunction` with `spec` signed by `key`.
    pub fn signed_function(spec: FunctionSpec, key: &crate::signing::DeployerKey, now: Millis) -> Command {
        let signature = Some(key.sign(crate::signing::SpecKind::Function, &spec.signed_form()));
        Command::DeployFunction { spec, signature, now }
    }
}

/// Why a command changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    NotFound,
    Conflict,
    Invalid,
    /// The command refers to an attempt, claim or fencing token that is no longer current.
    Stale,
    /// The node cannot take the task (capacity, labels, offline).
    NoFit,
    /// The command's credentials are not good enough: an unsigned spec, an untrusted or revoked
    /// deployer key, a signature that does not match.
    Forbidden,
}

/// A command refused by the state machine; state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub code: RejectCode,
    pub message: String,
}

/// What applying one command produced, returned to the writer once committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    NodeAdmitted { node: NodeId },
    CapsuleApplied { name: String, version: u32, unchanged: bool },
    JobSubmitted { job: JobId, tasks: u32 },
    JobCancelled { job: JobId, cancelled: u32 },
    ServiceApplied { name: String, job: JobId, replicas: u32 },
    ServiceRemoved { name: String },
    ServiceUpdating { name: String, job: JobId, version: u32 },
    RolloutStepped { service: String, step: String },
    Claimed { task: TaskId, attempt: u32, fencing: u64, lease_until: Millis },
    Started { task: TaskId },
    Renewed { renewed: u32, lost: Vec<TaskId> },
    Finished { task: TaskId, state: TaskState },
    Expired { tasks: Vec<TaskId> },
    FunctionDeployed { name: String, version: u32, unchanged: bool },
    FunctionRemoved { name: String },
    InstanceClaimed { function: String, instance: u64 },
    InstancesReleased { released: u32 },
    InvocationSubmitted { id: InvocationId },
    InvocationFinished { id: InvocationId, state: InvocationState },
    TokenCreated { id: TokenId, unchanged: bool },
    TokenRevoked { id: TokenId },
    DeployerTrusted { id: DeployerId, unchanged: bool },
    DeployerRevoked { id: DeployerId },
    JoinTicketCreated { id: TokenId },
    JoinTicketRevoked { id: TokenId },
    NodeRevoked { node: NodeId },
    Batch(Vec<Outcome>),
    Rejected(Rejection),
}

impl Outcome {
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Outcome::Rejected(r) => Some(r),
            _ => None,
        }
    }
}

/// Something that happened in committed state, for the event mesh and node reactions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LedgerEvent {
    NodeAdmitted {
        node: NodeId,
        name: String,
    },
    /// `term`: the leadership term of the leader that declared it (0 when revoked by an
    /// operator, or in entries written before terms were carried).
    NodeOffline {
        node: NodeId,
        #[serde(default)]
        term: u64,
    },
    NodeOnline {
        node: NodeId,
        #[serde(default)]
        term: u64,
    },
    CapsuleApplied {
        name: String,
        version: u32,
    },
    JobSubmitted {
        job: JobId,
        tasks: u32,
    },
    JobFinished {
        job: JobId,
        state: JobState,
    },
    TaskState {
        task: TaskId,
        state: TaskState,
        attempt: u32,
        node: Option<NodeId>,
    },
    ElectionWon {
        task: TaskId,
        attempt: u32,
        node: NodeId,
        fencing: u64,
    },
    ClaimRejected {
        task: TaskId,
        attempt: u32,
        node: NodeId,
        reason: String,
    },
    ResultRejected {
        task: TaskId,
        node: NodeId,
        fencing: u64,
        reason: String,
    },
    LeaseExpired {
        task: TaskId,
        attempt: u32,
        node: NodeId,
    },
    ServiceApplied {
        name: String,
        replicas: u32,
    },
    ServiceRemoved {
        name: String,
    },
    /// A rollout started.
    ServiceUpdating {
        name: String,
        from_version: u32,
        to_version: u32,
    },
    /// A rollout ended: every replica on `version`, the new one or (rolled back) the old one.
    ServiceUpdated {
        name: String,
        version: u32,
        rolled_back: Option<String>,
    },
    FunctionDeployed {
        name: String,
        version: u32,
    },
    FunctionRemoved {
        name: String,
    },
    InstanceClaimed {
        function: String,
        version: u32,
        node: NodeId,
        instance: u64,
    },
    InstanceReleased {
        function: String,
        node: NodeId,
        instance: u64,
    },
    InvocationFinished {
        id: InvocationId,
        function: String,
        state: InvocationState,
    },
    TokenCreated {
        id: TokenId,
        name: String,
        role: crate::access::Role,
    },
    TokenRevoked {
        id: TokenId,
        name: String,
    },
    DeployerTrusted {
        id: DeployerId,
        name: String,
    },
    DeployerRevoked {
        id: DeployerId,
        name: String,
    },
    JoinTicketCreated {
        id: TokenId,
        uses: u32,
        expires_at: Millis,
    },
    JoinTicketRevoked {
        id: TokenId,
    },
    NodeRevoked {
        node: NodeId,
        name: String,
    },
}

/// The result of applying one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub outcome: Outcome,
    pub events: Vec<LedgerEvent>,
}
