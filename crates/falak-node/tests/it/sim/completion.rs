//! Invariant: every acknowledged job reaches a terminal state after healing.

use falak_core::job::{JobId, JobState};
use falak_core::ledger::State;

pub fn check(state: &State, acknowledged: &[JobId], violations: &mut Vec<String>) {
    for job in acknowledged {
        match state.job(*job) {
            None => violations.push(format!("acknowledged job {job} is missing from committed state")),
            Some(j) if j.state == JobState::Running => {
                let open: Vec<String> = state
                    .job_tasks(*job)
                    .filter(|t| !t.state.is_terminal())
                    .map(|t| format!("{}={}", t.id, t.state.name()))
                    .collect();
                violations.push(format!("acknowledged job {job} still RUNNING after healing: {}", open.join(" ")));
            }
            Some(_) => {}
        }
    }
}

/// Whether every acknowledged job is terminal.
pub fn all_terminal(state: &State, acknowledged: &[JobId]) -> bool {
    acknowledged.iter().all(|j| state.job(*j).is_some_and(|j| j.state != JobState::Running))
}
