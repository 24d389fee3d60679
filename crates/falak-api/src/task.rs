//! `/api/v1/tasks/{id}`: one task, its logs and its decision record.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use falak_core::job::{JobId, Task, TaskId, TaskState};
use falak_core::ledger::State as LedgerState;
use falak_core::placement::{CandidateScore, Decision, Ranking, Strategy};
use falak_core::{Millis, NodeId};
use serde::{Deserialize, Serialize};

use crate::action::Action;
use crate::error::ApiError;
use crate::job::job_not_found;
use crate::node::NodeRef;
use crate::routes::{ApiPath, ApiQuery, Ctx, parse_id};

/// One task of a job (or one replica of a service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub id: TaskId,
    pub job: JobId,
    pub index: u32,
    pub input: Option<String>,
    pub state: TaskState,
    /// The current attempt, from 1.
    pub attempt: u32,
    /// The node holding the current claim, or the one that ran the latest attempt.
    pub node: Option<NodeRef>,
    pub exit_code: Option<i32>,
    /// Why the latest attempt did not end normally (timeout, lease lost, start failure).
    pub error: Option<String>,
    pub duration_ms: Option<u64>,
    /// The last 4 KiB of the latest finished attempt's output, as kept in the ledger.
    pub stdout_tail: String,
    pub stderr_tail: String,
    pub updated_at: Millis,
}

impl TaskInfo {
    pub fn new(task: &Task, state: &LedgerState) -> TaskInfo {
        let node = task.claim.as_ref().map(|c| c.node).or(task.result.as_ref().map(|r| r.node));
        let report = task.result.as_ref().map(|r| &r.report);
        TaskInfo {
            id: task.id,
            job: task.id.job,
            index: task.id.index,
            input: task.input.clone(),
            state: task.state,
            attempt: task.attempt,
            node: node.map(|id| NodeRef::lookup(state, id)),
            exit_code: report.and_then(|r| r.exit_code),
            error: latest_error(task),
            duration_ms: report.map(|r| r.duration_ms),
            stdout_tail: report.map(|r| r.stdout_tail.clone()).unwrap_or_default(),
            stderr_tail: report.map(|r| r.stderr_tail.clone()).unwrap_or_default(),
            updated_at: task.updated_at,
        }
    }

    pub fn get(state: &LedgerState, id: TaskId) -> Result<TaskInfo, ApiError> {
        state.task(id).map(|t| TaskInfo::new(t, state)).ok_or_else(|| task_not_found(id))
    }

    /// The tasks of one job in index order.
    pub fn of_job(state: &LedgerState, job: JobId) -> Result<Vec<TaskInfo>, ApiError> {
        if state.job(job).is_none() {
            return Err(job_not_found(job));
        }
        Ok(state.job_tasks(job).map(|t| TaskInfo::new(t, state)).collect())
    }
}

/// The error of the attempt that ended the task, or else why the previous attempt ended (lease
/// lost, exit code, cancelled), which is what a retrying or cancelled task shows. Errors of
/// earlier attempts never stick to a task that later completed.
fn latest_error(task: &Task) -> Option<String> {
    match &task.result {
        Some(result)
            if result.attempt == task.attempt && matches!(task.state, TaskState::Completed | TaskState::Failed) =>
        {
            result.report.error.clone()
        }
        _ => task.last_error.clone(),
    }
}

fn task_not_found(id: TaskId) -> ApiError {
    ApiError::not_found(format!("task {id} not found"))
}

/// Which output stream of a task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    #[default]
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn name(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// Bytes of log returned when `max_bytes` is not given.
pub const DEFAULT_LOG_BYTES: usize = 1 << 20;
/// The largest `max_bytes` a request may ask for (it must fit one node-to-node message).
pub const MAX_LOG_BYTES: usize = 8 << 20;

/// A task's decision record, or what placement computes now for a task not yet elected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionInfo {
    pub task: TaskId,
    pub attempt: u32,
    pub state: TaskState,
    pub strategy: Strategy,
    /// The node that won the election; `None` when none has (`live` is then true).
    pub winner: Option<NodeRef>,
    /// No election was won for the current attempt: this is what placement computes now on the
    /// answering node.
    pub live: bool,
    pub decided_at: Option<Millis>,
    /// One sentence: who won and how, or why nobody has.
    pub summary: String,
    /// Every candidate: fitting ones best first, then the ones that do not fit.
    pub candidates: Vec<CandidateInfo>,
}

/// One node's standing in an election.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateInfo {
    pub node: NodeId,
    pub name: String,
    pub fits: bool,
    /// Why the node cannot take the task, when it does not fit.
    pub reason: Option<String>,
    pub gravity: f64,
    pub terms: Vec<TermInfo>,
    /// Whether this candidate won (or, live, ranks first).
    pub winner: bool,
    /// Why this candidate lost, in words; `None` for the winner.
    pub why_not: Option<String>,
}

/// One gravity term: `contribution = value × weight`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TermInfo {
    pub name: String,
    pub value: f64,
    pub weight: f64,
    pub contribution: f64,
}

impl DecisionInfo {
    /// Explain a task: for an open task (QUEUED or RETRYING) what placement computes now, via
    /// `live` (the node returns the strategy and ranking for this task, or `None` when it
    /// cannot compute one); otherwise the recorded decision of the won election.
    pub fn get(
        state: &LedgerState,
        id: TaskId,
        live: impl FnOnce(&Task) -> Option<(Strategy, Ranking)>,
    ) -> Result<DecisionInfo, ApiError> {
        let task = state.task(id).ok_or_else(|| task_not_found(id))?;
        if task.state.is_open()
            && let Some((strategy, ranking)) = live(task)
        {
            return Ok(DecisionInfo::live(task, strategy, &ranking));
        }
        match &task.decision {
            Some(decision) => Ok(DecisionInfo::recorded(task, decision)),
            None => Err(ApiError::not_found(format!(
                "task {id} has no decision record: it was never elected (it is {})",
                task.state.name()
            ))),
        }
    }

    /// The record of a won election, with why each other candidate lost.
    pub fn recorded(task: &Task, decision: &Decision) -> DecisionInfo {
        let winner = decision.candidates.iter().find(|c| c.node == decision.winner);
        let candidates = explain(&decision.candidates, winner, true);
        let winner_name = winner.map_or_else(|| decision.winner.short(), |w| w.name.clone());
        let summary = match winner {
            Some(w) => format!(
                "{winner_name} won attempt {} with gravity {:.3} among {} candidates ({} fit){}",
                decision.attempt,
                w.gravity,
                decision.candidates.len(),
                decision.candidates.iter().filter(|c| c.no_fit.is_none()).count(),
                if decision.winner_rank > 0 {
                    format!(
                        "; it ranked #{} in its own view and claimed after higher ranks did not",
                        decision.winner_rank + 1
                    )
                } else {
                    String::new()
                }
            ),
            None => format!("{winner_name} won attempt {}", decision.attempt),
        };
        DecisionInfo {
            task: task.id,
            attempt: decision.attempt,
            state: task.state,
            strategy: decision.strategy,
            winner: Some(NodeRef { id: decision.winner, name: winner_name }),
            live: false,
            decided_at: Some(decision.decided_at),
            summary,
            candidates,
        }
    }

    /// What placement computes now for a task no election has been won for.
    pub fn live(task: &Task, strategy: Strategy, ranking: &Ranking) -> DecisionInfo {
        let best = ranking.candidates[..ranking.fitting].first();
        let candidates = explain(&ranking.candidates, best, false);
        let summary = match best {
            Some(b) => format!(
                "not elected yet (attempt {}); {} ranks first with gravity {:.3} and should claim it",
                task.attempt, b.name, b.gravity
            ),
            None if ranking.candidates.is_empty() => "no node is known to place this task on".to_owned(),
            None => format!(
                "no node fits this task now: none of {} candidates can take it; see each reason",
                ranking.candidates.len()
            ),
        };
        DecisionInfo {
            task: task.id,
            attempt: task.attempt,
            state: task.state,
            strategy,
            winner: None,
            live: true,
            decided_at: None,
            summary,
            candidates,
        }
    }
}

/// Candidates with their terms and, for each loser, why it lost to `winner`.
fn explain(candidates: &[CandidateScore], winner: Option<&CandidateScore>, recorded: bool) -> Vec<CandidateInfo> {
    candidates
        .iter()
        .map(|c| {
            let is_winner = winner.is_some_and(|w| w.node == c.node);
            CandidateInfo {
                node: c.node,
                name: c.name.clone(),
                fits: c.no_fit.is_none(),
                reason: c.no_fit.as_ref().map(|r| r.to_string()),
                gravity: c.gravity,
                terms: c
                    .terms
                    .iter()
                    .map(|t| TermInfo {
                        name: t.name.clone(),
                        value: t.value,
                        weight: t.weight,
                        contribution: round6(t.value * t.weight),
                    })
                    .collect(),
                winner: is_winner,
                why_not: if is_winner { None } else { Some(why_not(c, winner, recorded)) },
            }
        })
        .collect()
}

/// Why `loser` did not win against `winner`, in one line.
fn why_not(loser: &CandidateScore, winner: Option<&CandidateScore>, recorded: bool) -> String {
    if let Some(reason) = &loser.no_fit {
        return format!("does not fit: {reason}");
    }
    let Some(winner) = winner else {
        return "no winner to compare with".to_owned();
    };
    let gap = winner.gravity - loser.gravity;
    if gap.abs() < 1e-9 {
        return format!(
            "tied with {} at gravity {:.3}; the deterministic tie-breaker favoured {}",
            winner.name, winner.gravity, winner.name
        );
    }
    if gap < 0.0 {
        return if recorded {
            format!(
                "ranked above {} (gravity {:.3} vs {:.3}) but {} claimed first: this node had not claimed within its stagger",
                winner.name, loser.gravity, winner.gravity, winner.name
            )
        } else {
            format!("gravity {:.3} is above the best fitting candidate's", loser.gravity)
        };
    }
    // The terms where the loser fell furthest behind, largest first.
    let mut deficits: Vec<(&str, f64)> = loser
        .terms
        .iter()
        .filter_map(|t| {
            let theirs = winner.terms.iter().find(|w| w.name == t.name)?;
            let delta = t.value * t.weight - theirs.value * theirs.weight;
            (delta < -1e-9).then_some((t.name.as_str(), delta))
        })
        .collect();
    deficits.sort_by(|a, b| a.1.total_cmp(&b.1));
    let behind: Vec<String> = deficits.iter().take(3).map(|(name, d)| format!("{name} {d:+.3}")).collect();
    let detail = if behind.is_empty() { String::new() } else { format!(": lower {}", behind.join(", ")) };
    format!("gravity {:.3} vs {:.3} for {} ({:+.3}){detail}", loser.gravity, winner.gravity, winner.name, -gap)
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogsQuery {
    #[serde(default)]
    stream: LogStream,
    max_bytes: Option<usize>,
}

pub(crate) async fn show(State(ctx): State<Ctx>, ApiPath(id): ApiPath<String>) -> Result<Json<TaskInfo>, ApiError> {
    let task = parse_id(&id)?;
    ctx.ask(|reply| Action::GetTask { task, reply }).await.map(Json)
}

pub(crate) async fn logs(
    State(ctx): State<Ctx>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let task = parse_id(&id)?;
    let max_bytes = query.max_bytes.unwrap_or(DEFAULT_LOG_BYTES);
    if max_bytes == 0 || max_bytes > MAX_LOG_BYTES {
        return Err(ApiError::invalid(format!("max_bytes must be between 1 and {MAX_LOG_BYTES}, got {max_bytes}")));
    }
    let stream = query.stream;
    let text = ctx.ask(|reply| Action::TaskLogs { task, stream, max_bytes, reply }).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text))
}

pub(crate) async fn decision(
    State(ctx): State<Ctx>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DecisionInfo>, ApiError> {
    let task = parse_id(&id)?;
    ctx.ask(|reply| Action::TaskDecision { task, reply }).await.map(Json)
}
