//! Who may make a command (issue 12, item 1; ADR 0023).
//!
//! The ledger leader stamps every command it appends with its origin, [`Command::Sent`]: the
//! node the transport authenticated as the sender of a forwarded write, or the leader itself
//! for its own. A node never writes a `Sent` (the leader refuses a command that carries one),
//! so the origin is never a field a node chose. Every replica checks the origin against the
//! command before it applies it ([`State::authorize`]):
//!
//! - a node claims, starts, renews, finishes and reports only as itself (`Claim`, `Started`
//!   (as the claim's holder), `RenewLeases`, `Finish`, `ClaimInstance`, `ReleaseInstances`,
//!   `FinishInvocation`), and names only itself as the origin of what it submits
//!   (`SubmitJob`, `ApplyService`, `UpdateService`);
//! - a node admits or updates only its own record (`AdmitNode`); others join with a ticket;
//! - leader duties (`SetNodeOffline`, `ExpireLeases`, `StepRollout`) come only from the leader
//!   that appended the entry.
//!
//! A refused command changes nothing and is answered `Forbidden`. Commands only an operator may
//! make (tokens, deployers, tickets, revocations, cancels, deletes) are not yet bound to an
//! operator's credential here; see ADR 0023.
//!
//! Entries appended before origins existed carry none and are applied as they were.

use crate::NodeId;
use crate::ledger::{Command, State};

impl State {
    /// Whether node `by` may make `command`; the reason, in words, when it may not.
    pub fn authorize(&self, by: NodeId, command: &Command) -> Result<(), String> {
        let only_as_itself = |what: &str, node: &NodeId| {
            if *node == by {
                Ok(())
            } else {
                Err(format!(
                    "node {} sent {what} in the name of node {}; a node may do this only as itself",
                    by.short(),
                    node.short()
                ))
            }
        };
        match command {
            Command::Batch(commands) => commands.iter().try_for_each(|c| self.authorize(by, c)),
            Command::Idempotent { command, .. } => self.authorize(by, command),
            Command::Sent { .. } => {
                Err(format!("node {} sent a command that names its own origin; the ledger stamps it", by.short()))
            }
            Command::AdmitNode { record, .. } if record.id != by => Err(format!(
                "node {} sent the record of node {} ({}); a node admits or updates only its own record, and new \
                 nodes join with a join token (`falak node admit`)",
                by.short(),
                record.id.short(),
                record.name
            )),
            Command::SetNodeOffline { .. } | Command::ExpireLeases { .. } | Command::StepRollout { .. } => {
                match self.entry_leader {
                    _ if self.data.planted_bug == crate::ledger::PlantedBug::SkipTermCheck => Ok(()),
                    Some(leader) if leader != by => Err(format!(
                        "node {} sent a leader duty, but node {} leads the term the entry was appended in; only the \
                         leader proposes node states, lease expiry and rollout steps",
                        by.short(),
                        leader.short()
                    )),
                    _ => Ok(()),
                }
            }
            Command::Claim { node, .. } => only_as_itself("a claim", node),
            Command::RenewLeases { node, .. } => only_as_itself("a lease renewal", node),
            Command::Finish { node, .. } => only_as_itself("a task's result", node),
            Command::ClaimInstance { node, .. } => only_as_itself("an instance claim", node),
            Command::ReleaseInstances { node, .. } => only_as_itself("an instance release", node),
            Command::FinishInvocation { node, .. } => only_as_itself("an invocation's result", node),
            Command::SubmitJob { origin, .. } => only_as_itself("a job submission", origin),
            Command::ApplyService { origin, .. } => only_as_itself("a service", origin),
            Command::UpdateService { origin, .. } => only_as_itself("a service update", origin),
            Command::Started { task, .. } => match self.data.tasks.get(task).and_then(|t| t.claim.as_ref()) {
                Some(claim) if claim.node != by => Err(format!(
                    "node {} said task {task} started, but node {} holds its claim; only the holder starts it",
                    by.short(),
                    claim.node.short()
                )),
                // No claim: the state machine answers that it is stale.
                _ => Ok(()),
            },
            Command::Noop { .. }
            | Command::AdmitNode { .. }
            | Command::ApplyCapsule { .. }
            | Command::CancelJob { .. }
            | Command::RemoveService { .. }
            | Command::RollbackCapsule { .. }
            | Command::RollbackFunction { .. }
            | Command::DeployFunction { .. }
            | Command::RemoveFunction { .. }
            | Command::SubmitInvocation { .. }
            | Command::CreateToken { .. }
            | Command::RevokeToken { .. }
            | Command::TrustDeployer { .. }
            | Command::RevokeDeployer { .. }
            | Command::CreateJoinTicket { .. }
            | Command::JoinNode { .. }
            | Command::RevokeJoinTicket { .. }
            | Command::RevokeNode { .. } => Ok(()),
        }
    }
}
