//! `State::apply`: one committed command in, an outcome and events out.

use super::state::PlantedBug;
use super::{Applied, Command, FORMAT, LedgerEvent, Outcome, RejectCode, Rejection, State};
use crate::capsule::{CapsuleVersion, Kind, NetworkMode};
use crate::job::{
    Claim, Job, JobId, JobRequest, JobState, LEDGER_TAIL_BYTES, MAX_INPUT_BYTES, MAX_REPLICAS, MAX_TASKS_PER_JOB,
    RESTART_HEALTHY_RUN_MS, ServiceRequest, Task, TaskId, TaskInputs, TaskReport, TaskResult, TaskState, WorkKind,
    restart_backoff_ms, tail,
};
use crate::node::{NodeEntry, NodeRecord};
use crate::placement::Decision;
use crate::{Millis, NodeId};

pub(super) fn reject(code: RejectCode, message: impl Into<String>) -> Outcome {
    Outcome::Rejected(Rejection { code, message: message.into() })
}

impl State {
    /// Apply one committed command in the ledger's current term (see [`State::apply_in_term`]).
    pub fn apply(&mut self, command: &Command) -> Applied {
        self.apply_in_term(self.data.term, command)
    }

    /// Apply one command committed in a log entry of leadership `term`. Terms never decrease
    /// along the log; commands fenced by term ([`Command::SetNodeOffline`],
    /// [`Command::ExpireLeases`]) are refused unless they were proposed in this same term.
    pub fn apply_in_term(&mut self, term: u64, command: &Command) -> Applied {
        self.data.term = self.data.term.max(term);
        let mut events = Vec::new();
        let outcome = self.apply_command(command, &mut events);
        Applied { outcome, events }
    }

    /// Apply one command committed in a log entry that `leader` appended in `term`: as
    /// [`State::apply_in_term`], with leader duties checked against `leader` (`origin.rs`).
    pub fn apply_entry(&mut self, term: u64, leader: Option<NodeId>, command: &Command) -> Applied {
        self.entry_leader = leader;
        let applied = self.apply_in_term(term, command);
        self.entry_leader = None;
        applied
    }

    /// The leadership term of the last entry applied (0 before any carried one).
    pub fn term(&self) -> u64 {
        self.data.term
    }

    pub(super) fn apply_command(&mut self, command: &Command, ev: &mut Vec<LedgerEvent>) -> Outcome {
        if let Command::Sent { by, command } = command {
            return match self.authorize(*by, command) {
                Ok(()) => self.apply_command(command, ev),
                Err(reason) => reject(RejectCode::Forbidden, reason),
            };
        }
        self.data.format = FORMAT;
        self.data.applied += 1;
        if let Some(now) = command_now(command) {
            self.data.clock = self.data.clock.max(now);
        }
        match command {
            Command::Noop { .. } => Outcome::Done,
            Command::Batch(commands) => Outcome::Batch(commands.iter().map(|c| self.apply_command(c, ev)).collect()),
            Command::AdmitNode { record, now } => self.admit_node(record, *now, ev),
            Command::SetNodeOffline { node, offline, term, now } => {
                if let Err(stale) = self.check_term("a node's state", *term) {
                    return stale;
                }
                self.set_node_offline(*node, *offline, *term, *now, ev)
            }
            Command::ApplyCapsule { spec, signature, now } => self.apply_capsule(spec, signature.as_ref(), *now, ev),
            Command::SubmitJob { request, origin, now } => self.submit_job(request, *origin, *now, ev),
            Command::CancelJob { job, now } => self.cancel_job(*job, *now, ev),
            Command::ApplyService { request, origin, now } => self.apply_service(request, *origin, *now, ev),
            Command::RemoveService { name, now } => self.remove_service(name, *now, ev),
            Command::RollbackFunction { name, version, now } => self.rollback_function(name, *version, *now, ev),
            Command::RollbackCapsule { name, version, now } => self.rollback_capsule(name, *version, *now, ev),
            Command::UpdateService { update, origin, now } => self.update_service(update, *origin, *now, ev),
            Command::StepRollout { service, term, now } => {
                if let Err(stale) = self.check_term("a rollout step", *term) {
                    return stale;
                }
                self.step_rollout(service, *now, ev)
            }
            Command::Claim { task, attempt, node, lease_ms, decision, now } => {
                self.claim(*task, *attempt, *node, *lease_ms, decision, *now, ev)
            }
            Command::Started { task, fencing, now } => self.started(*task, *fencing, *now, ev),
            Command::RenewLeases { node, leases, lease_ms, now } => self.renew(*node, leases, *lease_ms, *now),
            Command::Finish { task, node, fencing, report, now } => {
                self.finish(*task, *node, *fencing, report, *now, ev)
            }
            Command::ExpireLeases { term, now } => {
                if let Err(stale) = self.check_term("lease expiry", *term) {
                    return stale;
                }
                self.expire(*now, ev)
            }
            Command::DeployFunction { spec, signature, now } => {
                self.deploy_function(spec, signature.as_ref(), *now, ev)
            }
            Command::RemoveFunction { name, .. } => self.remove_function(name, ev),
            Command::ClaimInstance { function, version, node, instance, now } => {
                self.claim_instance(function, *version, *node, *instance, *now, ev)
            }
            Command::ReleaseInstances { node, function, instances, all, now } => {
                self.release_instances(*node, function, instances, *all, Some(*now), ev)
            }
            Command::SubmitInvocation { function, request, callback, max_attempts, owner, now } => {
                self.submit_invocation(function, request, callback, *max_attempts, *owner, *now)
            }
            Command::FinishInvocation { id, node, attempts, response, error, now } => {
                self.finish_invocation(*id, *node, *attempts, response, error, *now, ev)
            }
            Command::CreateToken { record, .. } => self.create_token(record, ev),
            Command::RevokeToken { id, now } => self.revoke_token(*id, *now, ev),
            Command::TrustDeployer { record, .. } => self.trust_deployer(record, ev),
            Command::RevokeDeployer { id, now } => self.revoke_deployer(*id, *now, ev),
            Command::CreateJoinTicket { record, now } => self.create_join_ticket(record, *now, ev),
            Command::JoinNode { ticket, hash, record, now } => self.join_node(*ticket, hash, record, *now, ev),
            Command::RevokeJoinTicket { id, now } => self.revoke_join_ticket(*id, *now, ev),
            Command::RevokeNode { node, now } => self.revoke_node(*node, *now, ev),
            Command::Idempotent { key, request, command } => self.apply_idempotent(key, *request, command, ev),
            Command::Sent { .. } => unreachable!("handled above"),
        }
    }

    /// A leader duty proposed in `term` applies only in an entry of that term: once another
    /// leader was elected, the proposer's view (who is OFFLINE, which leases ran out) is stale.
    /// Term 0 is an entry from before terms were carried.
    fn check_term(&self, what: &str, term: u64) -> Result<(), Outcome> {
        let current = self.data.term;
        if term == 0 || term == current || self.data.planted_bug == PlantedBug::SkipTermCheck {
            return Ok(());
        }
        Err(reject(
            RejectCode::Stale,
            format!(
                "{what} proposed by the ledger leader of term {term} reached the log in term {current}: that leader was deposed, so its view is stale; not applied"
            ),
        ))
    }

    pub(super) fn admit_node(&mut self, record: &NodeRecord, now: Millis, ev: &mut Vec<LedgerEvent>) -> Outcome {
        if let Some(revoked) = self.data.revoked_nodes.get(&record.id) {
            return reject(
                RejectCode::Forbidden,
                format!(
                    "node {} ({}) was revoked; it cannot rejoin under the same key: empty its data dir and join with a new join token",
                    revoked.name,
                    record.id.short()
                ),
            );
        }
        match self.data.nodes.get_mut(&record.id) {
            Some(entry) => entry.record = record.clone(),
            None => {
                self.data.nodes.insert(
                    record.id,
                    NodeEntry {
                        record: record.clone(),
                        admitted_at: now,
                        offline: false,
                        offline_since: None,
                        completed: 0,
                        failed: 0,
                    },
                );
                ev.push(LedgerEvent::NodeAdmitted { node: record.id, name: record.name.clone() });
            }
        }
        Outcome::NodeAdmitted { node: record.id }
    }

    /// Record a node OFFLINE (or back), as decided by the leader of `term` (0 for an operator's
    /// revocation).
    pub(super) fn set_node_offline(
        &mut self,
        node: NodeId,
        offline: bool,
        term: u64,
        now: Millis,
        ev: &mut Vec<LedgerEvent>,
    ) -> Outcome {
        let Some(entry) = self.data.nodes.get_mut(&node) else {
            return reject(RejectCode::NotFound, format!("node {node} is not admitted"));
        };
        if entry.offline == offline {
            return Outcome::Done;
        }
        if !offline && self.data.planted_bug == PlantedBug::RefuseNodeOnline {
            return Outcome::Done;
        }
        entry.offline = offline;
        entry.offline_since = offline.then_some(now);
        if offline {
            ev.push(LedgerEvent::NodeOffline { node, term });
            let held: Vec<TaskId> = self.claims.get(&node).map(|s| s.iter().copied().collect()).unwrap_or_default();
            let name = self.node_name(&node);
            for task in held {
                self.lose_claim(task, format!("node {name} went OFFLINE"), now, ev);
            }
            self.node_lost_functions(node, ev);
        } else {
            ev.push(LedgerEvent::NodeOnline { node, term });
        }
        Outcome::Done
    }

    fn apply_capsule(
        &mut self,
        spec: &crate::capsule::CapsuleSpec,
        signature: Option<&crate::signing::SpecSignature>,
        now: Millis,
        ev: &mut Vec<LedgerEvent>,
    ) -> Outcome {
        if let Err(refused) = self.check_signature(crate::signing::SpecKind::Capsule, &spec.signed_form(), signature) {
            return reject(RejectCode::Forbidden, refused.to_string());
        }
        if !spec.secrets_sealed() {
            return reject(
                RejectCode::Invalid,
                "a capsule's secrets must be sealed by the node before they are committed; nothing was stored",
            );
        }
        let versions = self.data.capsules.entry(spec.name.clone()).or_default();
        let same_content = |stored: &CapsuleVersion| {
            let mut a = stored.spec.clone();
            let mut b = spec.clone();
            a.version = None;
            b.version = None;
            a == b
        };
        let version = match spec.version {
            Some(v) => {
                if let Some(existing) = versions.iter_mut().find(|c| c.version == v) {
                    if same_content(existing) {
                        // Signed again (by a new key, after the old one was revoked): keep the
                        // newer signature, which was verified above.
                        existing.signature = signature.cloned();
                        return Outcome::CapsuleApplied { name: spec.name.clone(), version: v, unchanged: true };
                    }
                    return reject(
                        RejectCode::Conflict,
                        format!(
                            "capsule {} version {v} already exists with different content; versions are immutable, so apply it as a new version",
                            spec.name
                        ),
                    );
                }
                if let Some(latest) = versions.last().filter(|l| l.version > v) {
                    return reject(
                        RejectCode::Conflict,
                        format!(
                            "capsule {} is already at version {}; a new version must be higher than {v}",
                            spec.name, latest.version
                        ),
                    );
                }
                v
            }
            None => {
                if let Some(latest) = versions.last_mut().filter(|l| same_content(l)) {
                    latest.signature = signature.cloned();
                    return Outcome::CapsuleApplied {
                        name: spec.name.clone(),
                        version: latest.version,
                        unchanged: true,
                    };
                }
                versions.last().map_or(1, |l| l.version + 1)
            }
        };
        let mut stored = spec.clone();
        stored.version = Some(version);
        versions.push(CapsuleVersion { version, spec: stored, created_at: now, signature: signature.cloned() });
        ev.push(LedgerEvent::CapsuleApplied { name: spec.name.clone(), version });
        Outcome::CapsuleApplied { name: spec.name.clone(), version, unchanged: false }
    }

    fn rollback_capsule(&mut self, name: &str, to: Option<u32>, now: Millis, ev: &mut Vec<LedgerEvent>) -> Outcome {
        let Some(versions) = self.data.capsules.get(name) else {
            return reject(RejectCode::NotFound, format!("capsule {name} not found"));
        };
        let latest = versions.last().map_or(0, |l| l.version);
        let target = match to {
            Some(v) => versions.iter().find(|c| c.version == v),
            None => versions.iter().rev().nth(1),
        };
        let Some(target) = target.cloned() else {
            return reject(
                RejectCode::NotFound,
                match to {
                    Some(v) => format!("capsule {name} has no version {v}; `falak capsule show {name}` lists them"),
                    None => format!("capsule {name} has only version {latest}: there is nothing to roll back to"),
                },
            );
        };
        // The stored spec and its signature, as a new version: the signature covers the spec
        // without its version, so it verifies as long as its key is trusted.
        let mut spec = target.spec;
        spec.version = None;
        self.apply_capsule(&spec, target.signature.as_ref(), now, ev)
    }

    pub(super) fn resolve_capsule(&self, name: &str, version: Option<u32>) -> Result<&CapsuleVersion, Outcome> {
        if !self.data.capsules.contains_key(name) {
            return Err(reject(
                RejectCode::NotFound,
                format!("capsule {name} not found; apply it first with `falak capsule apply -f FILE`"),
            ));
        }
        self.capsule(name, version).ok_or_else(|| {
            reject(RejectCode::NotFound, format!("capsule {name} has no version {}", version.unwrap_or_default()))
        })
    }

    fn submit_job(&mut self, request: &JobRequest, origin: NodeId, now: Millis, ev: &mut Vec<LedgerEvent>) -> Outcome {
        let capsule = match self.resolve_capsule(&request.capsule, request.version) {
            Ok(c) => c.clone(),
            Err(o) => return o,
        };
        let inputs: Vec<Option<String>> = match &request.tasks {
            TaskInputs::Count(n) => {
                if *n == 0 || *n > MAX_TASKS_PER_JOB {
                    return reject(
                        RejectCode::Invalid,
                        format!("tasks must be between 1 and {MAX_TASKS_PER_JOB}, got {n}"),
                    );
                }
                vec![None; *n as usize]
            }
            TaskInputs::Inputs(lines) => {
                if lines.is_empty() || lines.len() > MAX_TASKS_PER_JOB as usize {
                    return reject(
                        RejectCode::Invalid,
                        format!("inputs must hold between 1 and {MAX_TASKS_PER_JOB} lines, got {}", lines.len()),
                    );
                }
                if let Some((i, _)) = lines.iter().enumerate().find(|(_, l)| l.len() > MAX_INPUT_BYTES) {
                    return reject(
                        RejectCode::Invalid,
                        format!("input line {} is longer than {MAX_INPUT_BYTES} bytes", i + 1),
                    );
                }
                lines.iter().cloned().map(Some).collect()
            }
        };
        let max_attempts = request.max_attempts.unwrap_or(capsule.spec.placement.max_attempts);
        if max_attempts == 0 || max_attempts > crate::capsule::MAX_ATTEMPTS {
            return reject(
                RejectCode::Invalid,
                format!("retries give {max_attempts} attempts; allowed is 1 to {}", crate::capsule::MAX_ATTEMPTS),
            );
        }
        let id = self.new_job(
            &capsule,
            WorkKind::Batch,
            capsule.spec.name.clone(),
            inputs.len() as u32,
            max_attempts,
            origin,
            now,
        );
        {
            let job = self.data.jobs.get_mut(&id).expect("job just inserted");
            job.timeout_ms = request.timeout_ms.or(capsule.spec.timeout_ms);
            job.delivery = request.delivery;
        }
        for (index, input) in inputs.into_iter().enumerate() {
            self.new_task(TaskId { job: id, index: index as u32 }, input, now);
        }
        let tasks = self.data.jobs[&id].task_count;
        ev.push(LedgerEvent::JobSubmitted { job: id, tasks });
        Outcome::JobSubmitted { job: id, tasks }
    }

    #[allow(clippy::too_many_arguments, reason = "a job's fields come from several sources")]
    pub(super) fn new_job(
        &mut self,
        capsule: &CapsuleVersion,
        kind: WorkKind,
        name: String,
        tasks: u32,
        max_attempts: u32,
        origin: NodeId,
        now: Millis,
    ) -> JobId {
        self.data.next_job += 1;
        let id = JobId(self.data.next_job);
        let job = Job {
            id,
            kind,
            name,
            capsule: capsule.spec.name.clone(),
            version: capsule.version,
            task_count: tasks,
            max_attempts,
            timeout_ms: capsule.spec.timeout_ms,
            delivery: Default::default(),
            resources: capsule.spec.resources,
            origin,
            state: JobState::Running,
            created_at: now,
            finished_at: None,
            completed: 0,
            failed: 0,
            cancelled: 0,
        };
        self.data.jobs.insert(id, job);
        id
    }

    pub(super) fn new_task(&mut self, id: TaskId, input: Option<String>, now: Millis) {
        let task = Task {
            id,
            input,
            state: TaskState::Queued,
            attempt: 1,
            claim: None,
            result: None,
            last_error: None,
            decision: None,
            updated_at: now,
            not_before: None,
            quick_exits: 0,
        };
        self.data.tasks.insert(id, task);
        self.open.insert(id);
    }

    fn cancel_job(&mut self, job: JobId, now: Millis, ev: &mut Vec<LedgerEvent>) -> Outcome {
        let Some(entry) = self.data.jobs.get(&job) else {
            return reject(RejectCode::NotFound, format!("job {job} not found"));
        };
        if entry.state != JobState::Running {
            return reject(RejectCode::Conflict, format!("job {job} is already {}", entry.state.name()));
        }
        let ids: Vec<TaskId> = self.job_tasks(job).filter(|t| !t.state.is_terminal()).map(|t| t.id).collect();
        for id in &ids {
            self.end_task(*id, TaskState::Cancelled, None, Some("cancelled".into()), now, ev);
        }
        self.finish_job(job, JobState::Cancelled, now, ev);
        Outcome::JobCancelled { job, cancelled: ids.len() as u32 }
    }

    fn apply_service(
        &mut self,
        request: &ServiceRequest,
        origin: NodeId,
        now: Millis,
        ev: &mut Vec<LedgerEvent>,
    ) -> Outcome {
        if let Err(e) = crate::spec::validate_name("name", &request.name) {
            return reject(RejectCode::Invalid, e.to_string());
        }
        if request.replicas > MAX_REPLICAS {
            return reject(
                RejectCode::Invalid,
                format!("replicas must be at most {MAX_REPLICAS}, got {}", request.replicas),
            );
        }
        let capsule = match self.resolve_capsule(&request.capsule, request.version) {
            Ok(c) => c.clone(),
            Err(o) => return o,
        };
        if !matches!(capsule.spec.kind, Kind::Process | Kind::Container) {
            return reject(RejectCode::Invalid, "services run process and container capsules");
        }
        if self.rollout(&request.name).is_some_and(|r| r.state == crate::ledger::RolloutState::Progressing) {
            return reject(
                RejectCode::Conflict,
                format!("service {} is being updated; scale it once the update has finished", request.name),
            );
        }
        let job = match self.data.services.get(&request.name).copied() {
            Some(job) => {
                let existing = &self.data.jobs[&job];
                if existing.capsule != capsule.spec.name || existing.version != capsule.version {
                    return reject(
                        RejectCode::Conflict,
                        format!(
                            "service {} runs capsule {} version {}; move it to another version with `falak service update {} --version N`, or to another capsule with `falak service rm {}` and apply again",
                            request.name, existing.capsule, existing.version, request.name, request.name
                        ),
                    );
                }
                job
            }
            None => {
                let job = self.new_job(&capsule, WorkKind::Service, request.name.clone(), 0, u32::MAX, origin, now);
                self.data.services.insert(request.name.clone(), job);
                job
            }
        };
        let current = self.data.jobs[&job].task_count;
        let wanted = request.replicas;
        for index in current..wanted {
            self.new_task(TaskId { job, index }, None, now);
        }
        for index in wanted..current {
            let id = TaskId { job, index };
            if self.data.tasks.get(&id).is_some_and(|t| !t.state.is_terminal()) {
                self.end_task(id, TaskState::Cancelled, None, Some("scaled down".into()), now, ev);
            }
            self.data.tasks.remove(&id);
        }
        let entry = self.data.jobs.get_mut(&job).expect("service job exists");
        entry.task_count = wanted;
        entry.cancelled = 0;
        ev.push(LedgerEvent::ServiceApplied { name: request.name.clone(), replicas: wanted });
        Outcome::ServiceApplied { name: request.name.clone(), job, replicas: wanted }
    }

    fn remove_service(&mut self, name: &str, now: Millis, ev: &mut Vec<LedgerEvent>) -> Outcome {
        let Some(job) = self.data.services.remove(name) else {
            return reject(RejectCode::NotFound, format!("service {name} not found"));
        };
        self.end_rollout_of_removed(name, now, ev);
        let ids: Vec<TaskId> = self.job_tasks(job).filter(|t| !t.state.is_terminal()).map(|t| t.id).collect();
        for id in ids {
            self.end_task(id, TaskState::Cancelled, None, Some("service removed".into()), now, ev);
        }
        self.finish_job(job, JobState::Cancelled, now, ev);
        ev.push(LedgerEvent::ServiceRemoved { name: name.to_owned() });
        Outcome::ServiceRemoved { name: name.to_owned() }
    }

    #[allow(clippy::too_many_arguments, reason = "mirrors the fields of Command::Claim")]
    fn claim(
        &mut self,
        id: TaskId,
        attempt: u32,
        node: NodeId,
        lease_ms: u64,
        decision: &Decision,
        now: Millis,
        ev: &mut Vec<LedgerEvent>,
    ) -> Outcome {
        let refuse = |ev: &mut Vec<LedgerEvent>, code: RejectCode, reason: String| {
            ev.push(LedgerEvent::ClaimRejected { task: id, attempt, node, reason: reason.clone() });
            reject(code, reason)
        };
        let Some(task) = self.data.tasks.get(&id) else {
            return refuse(ev, RejectCode::NotFound, format!("task {id} not found"));
        };
        let Some(job) = self.data.jobs.get(&id.job).cloned() else {
            return refuse(ev, RejectCode::NotFound, format!("job {} not found", id.job));
        };
        if job.state != JobState::Running {
            return refuse(ev, RejectCode::Stale, format!("job {} is {}", id.job, job.state.name()));
        }
        let attempt_open = task.state.is_open() && task.attempt == attempt && task.claim.is_none();
        let skip = self.data.planted_bug == PlantedBug::SkipAttemptCheck && !task.state.is_terminal();
        if !attempt_open && !skip {
            let why = match &task.claim {
                Some(c) => {
                    format!("attempt {} of task {id} is already claimed by node {}", c.attempt, self.node_name(&c.node))
                }
                None => format!(
                    "task {id} is {} at attempt {}, not open at attempt {attempt}",
                    task.state.name(),
                    task.attempt
                ),
            };
            return refuse(ev, RejectCode::Stale, why);
        }
        let Some(entry) = self.data.nodes.get(&node) else {
            return refuse(ev, RejectCode::NoFit, format!("node {node} is not admitted"));
        };
        if entry.offline {
            return refuse(ev, RejectCode::NoFit, format!("node {} is OFFLINE", entry.record.name));
        }
        let (labels, network) = self
            .capsule(&job.capsule, Some(job.version))
            .map(|c| (c.spec.placement.labels.clone(), c.spec.network))
            .unwrap_or_default();
        for (key, want) in &labels {
            if entry.record.labels.get(key) != Some(want) {
                return refuse(ev, RejectCode::NoFit, format!("node {} lacks label {key}={want}", entry.record.name));
            }
        }
        if network == NetworkMode::None && entry.record.namespaces.is_some_and(|n| !n.private_network()) {
            let msg = format!(
                "node {} cannot create namespaces, and capsule {} asks for a network of its own",
                entry.record.name, job.capsule
            );
            return refuse(ev, RejectCode::NoFit, msg);
        }
        let after = self.reserved(&node) + job.resources;
        if !after.fits_in(&entry.record.capacity) {
            let msg = format!(
                "node {} would be over capacity: {} reserved of {}",
                entry.record.name, after, entry.record.capacity
            );
            return refuse(ev, RejectCode::NoFit, msg);
        }
        // The claim is valid.
        if skip && let Some(old) = self.data.tasks.get(&id).and_then(|t| t.claim.clone()) {
            self.release(id, &old.node);
        }
        self.data.fencing += 1;
        let fencing = self.data.fencing;
        let lease_until = now.saturating_add(lease_ms);
        let resources = job.resources;
        let task = self.data.tasks.get_mut(&id).expect("task checked above");
        task.claim = Some(Claim { node, attempt, fencing, claimed_at: now, lease_until, started_at: None });
        task.state = TaskState::Assigned;
        task.attempt = attempt;
        task.decision = Some(decision.clone());
        task.updated_at = now;
        self.open.remove(&id);
        self.claims.entry(node).or_default().insert(id);
        let r = self.reserved.entry(node).or_default();
        *r = *r + resources;
        ev.push(LedgerEvent::ElectionWon { task: id, attempt, node, fencing });
        ev.push(LedgerEvent::TaskState { task: id, state: TaskState::Assigned, attempt, node: Some(node) });
        Outcome::Claimed { task: id, attempt, fencing, lease_until }
    }

    fn started(&mut self, id: TaskId, fencing: u64, now: Millis, ev: &mut Vec<LedgerEvent>) -> Outcome {
        let Some(task) = self.data.tasks.get_mut(&id) else {
            return reject(RejectCode::NotFound, format!("task {id} not found"));
        };
        match &mut task.claim {
            Some(claim) if claim.fencing == fencing => {
                if task.state == TaskState::Assigned {
                    claim.started_at = Some(now);
                    task.state = TaskState::Running;
                    task.updated_at = now;
                    ev.push(LedgerEvent::TaskState {
                        task: id,
                        state: TaskState::Running,
                        attempt: task.attempt,
                        node: Some(claim.node),
                    });
                }
                Outcome::Started { task: id }
            }
            _ => reject(RejectCode::Stale, format!("fencing token {fencing} is not current for task {id}")),
        }
    }

    fn renew(&mut self, node: NodeId, leases: &[(TaskId, u64)], lease_ms: u64, now: Millis) -> Outcome {
        let mut renewed = 0;
        let mut lost = Vec::new();
        for (id, fencing) in leases {
            match self.data.tasks.get_mut(id).and_then(|t| t.claim.as_mut()) {
                Some(claim) if claim.fencing == *fencing && claim.node == node => {
                    claim.lease_until = claim.lease_until.max(now.saturating_add(lease_ms));
                    renewed += 1;
                }
                _ => lost.push(*id),
            }
        }
        Outcome::Renewed { renewed, lost }
    }

    fn finish(
        &mut self,
        id: TaskId,
        node: NodeId,
        fencing: u64,
        report: &TaskReport,
        now: Millis,
        ev: &mut Vec<LedgerEvent>,
    ) -> Outcome {
        let Some(task) = self.data.tasks.get(&id) else {
            return reject(RejectCode::NotFound, format!("task {id} not found"));
        };
        let Some(claim) = task.claim.clone().filter(|c| c.fencing == fencing && c.node == node) else {
            self.data.rejected_results += 1;
            let reason = if task.claim.as_ref().is_some_and(|c| c.fencing == fencing) {
                format!("node {} does not hold the claim on task {id} that fencing token {fencing} names", node.short())
            } else {
                format!("fencing token {fencing} is stale for task {id} (attempt {} is current)", task.attempt)
            };
            ev.push(LedgerEvent::ResultRejected { task: id, node, fencing, reason: reason.clone() });
            return reject(RejectCode::Stale, reason);
        };
        let report = TaskReport {
            stdout_tail: tail(&report.stdout_tail, LEDGER_TAIL_BYTES),
            stderr_tail: tail(&report.stderr_tail, LEDGER_TAIL_BYTES),
            ..report.clone()
        };
        let succeeded = report.succeeded();
        let result = TaskResult { node: claim.node, attempt: claim.attempt, report, finished_at: now };
        if let Some(n) = self.data.nodes.get_mut(&claim.node) {
            if succeeded { n.completed += 1 } else { n.failed += 1 }
        }
        let job = &self.data.jobs[&id.job];
        let is_service = job.kind == WorkKind::Service;
        let state = if succeeded && job.kind == WorkKind::Batch {
            TaskState::Completed
        } else if job.kind == WorkKind::Service || claim.attempt < job.max_attempts {
            TaskState::Retrying
        } else {
            TaskState::Failed
        };
        if state == TaskState::Retrying {
            let error =
                result.report.error.clone().unwrap_or_else(|| format!("exited with {:?}", result.report.exit_code));
            self.release(id, &claim.node);
            let task = self.data.tasks.get_mut(&id).expect("task checked above");
            if is_service {
                // A replica that keeps exiting quickly is restarted ever more slowly.
                task.quick_exits = if result.report.duration_ms < RESTART_HEALTHY_RUN_MS {
                    task.quick_exits.saturating_add(1)
                } else {
                    0
                };
                let backoff = restart_backoff_ms(task.quick_exits);
                task.not_before = (backoff > 0).then_some(now + backoff);
            }
            task.result = Some(result);
            task.last_error = Some(error);
            self.retry(id, now, ev);
        } else {
            self.end_task(id, state, Some(result), None, now, ev);
        }
        Outcome::Finished { task: id, state }
    }

    fn expire(&mut self, now: Millis, ev: &mut Vec<LedgerEvent>) -> Outcome {
        let expired: Vec<(TaskId, NodeId, u32)> = self
            .claims
            .values()
            .flatten()
            .filter_map(|id| {
                let t = self.data.tasks.get(id)?;
                let c = t.claim.as_ref()?;
                (c.lease_until < now).then_some((*id, c.node, c.attempt))
            })
            .collect();
        for (id, node, attempt) in &expired {
            ev.push(LedgerEvent::LeaseExpired { task: *id, attempt: *attempt, node: *node });
            let name = self.node_name(node);
            self.lose_claim(*id, format!("lease expired on node {name}"), now, ev);
        }
        Outcome::Expired { tasks: expired.into_iter().map(|(id, _, _)| id).collect() }
    }

    /// The claim holder is gone: the attempt ends without a result.
    fn lose_claim(&mut self, id: TaskId, reason: String, now: Millis, ev: &mut Vec<LedgerEvent>) {
        let Some(claim) = self.data.tasks.get(&id).and_then(|t| t.claim.clone()) else { return };
        let job = &self.data.jobs[&id.job];
        if job.kind == WorkKind::Service || claim.attempt < job.max_attempts {
            self.release(id, &claim.node);
            if let Some(task) = self.data.tasks.get_mut(&id) {
                task.last_error = Some(reason);
            }
            self.retry(id, now, ev);
        } else {
            self.end_task(id, TaskState::Failed, None, Some(reason), now, ev);
        }
    }

    /// Open the next attempt of a task whose claim was already released.
    fn retry(&mut self, id: TaskId, now: Millis, ev: &mut Vec<LedgerEvent>) {
        let task = self.data.tasks.get_mut(&id).expect("retry of a known task");
        task.attempt += 1;
        task.state = TaskState::Retrying;
        task.updated_at = now;
        self.open.insert(id);
        ev.push(LedgerEvent::TaskState { task: id, state: TaskState::Retrying, attempt: task.attempt, node: None });
    }

    /// Drop the claim's reservation and index entries.
    fn release(&mut self, id: TaskId, node: &NodeId) {
        let resources = self.data.jobs.get(&id.job).map(|j| j.resources).unwrap_or_default();
        if let Some(set) = self.claims.get_mut(node) {
            set.remove(&id);
            if set.is_empty() {
                self.claims.remove(node);
            }
        }
        if let Some(r) = self.reserved.get_mut(node) {
            *r = *r - resources;
        }
        if let Some(task) = self.data.tasks.get_mut(&id) {
            task.claim = None;
        }
    }

    /// Move a task to a terminal state and settle its job.
    pub(super) fn end_task(
        &mut self,
        id: TaskId,
        state: TaskState,
        result: Option<TaskResult>,
        error: Option<String>,
        now: Millis,
        ev: &mut Vec<LedgerEvent>,
    ) {
        debug_assert!(state.is_terminal());
        if let Some(node) = self.data.tasks.get(&id).and_then(|t| t.claim.as_ref()).map(|c| c.node) {
            self.release(id, &node);
        }
        self.open.remove(&id);
        let Some(task) = self.data.tasks.get_mut(&id) else { return };
        task.state = state;
        task.updated_at = now;
        let node = result.as_ref().map(|r| r.node);
        if result.is_some() {
            task.result = result;
        }
        if error.is_some() {
            task.last_error = error;
        }
        let attempt = task.attempt;
        ev.push(LedgerEvent::TaskState { task: id, state, attempt, node });
        let job = self.data.jobs.get_mut(&id.job).expect("task's job exists");
        match state {
            TaskState::Completed => job.completed += 1,
            TaskState::Failed => job.failed += 1,
            _ => job.cancelled += 1,
        }
        if job.kind == WorkKind::Batch
            && job.state == JobState::Running
            && job.completed + job.failed + job.cancelled == job.task_count
        {
            let final_state = if job.failed > 0 {
                JobState::Failed
            } else if job.cancelled > 0 {
                JobState::Cancelled
            } else {
                JobState::Completed
            };
            self.finish_job(id.job, final_state, now, ev);
        }
    }

    pub(super) fn finish_job(&mut self, id: JobId, state: JobState, now: Millis, ev: &mut Vec<LedgerEvent>) {
        let job = self.data.jobs.get_mut(&id).expect("job exists");
        if job.state != JobState::Running {
            return;
        }
        job.state = state;
        job.finished_at = Some(now);
        ev.push(LedgerEvent::JobFinished { job: id, state });
    }

    fn node_name(&self, id: &NodeId) -> String {
        self.data.nodes.get(id).map_or_else(|| id.short(), |n| n.record.name.clone())
    }
}

fn command_now(command: &Command) -> Option<Millis> {
    match command {
        Command::Batch(_) | Command::Idempotent { .. } | Command::Sent { .. } => None,
        Command::Noop { now }
        | Command::AdmitNode { now, .. }
        | Command::SetNodeOffline { now, .. }
        | Command::ApplyCapsule { now, .. }
        | Command::SubmitJob { now, .. }
        | Command::CancelJob { now, .. }
        | Command::ApplyService { now, .. }
        | Command::RemoveService { now, .. }
        | Command::UpdateService { now, .. }
        | Command::RollbackCapsule { now, .. }
        | Command::RollbackFunction { now, .. }
        | Command::StepRollout { now, .. }
        | Command::Claim { now, .. }
        | Command::Started { now, .. }
        | Command::RenewLeases { now, .. }
        | Command::Finish { now, .. }
        | Command::ExpireLeases { now, .. }
        | Command::DeployFunction { now, .. }
        | Command::RemoveFunction { now, .. }
        | Command::ClaimInstance { now, .. }
        | Command::ReleaseInstances { now, .. }
        | Command::SubmitInvocation { now, .. }
        | Command::FinishInvocation { now, .. }
        | Command::CreateToken { now, .. }
        | Command::RevokeToken { now, .. }
        | Command::TrustDeployer { now, .. }
        | Command::RevokeDeployer { now, .. }
        | Command::CreateJoinTicket { now, .. }
        | Command::JoinNode { now, .. }
        | Command::RevokeJoinTicket { now, .. }
        | Command::RevokeNode { now, .. } => Some(*now),
    }
}
