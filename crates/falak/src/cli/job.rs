//! `falak job submit | list | status | wait | logs | cancel | result`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use falak_api::job::{JobInfo, JobSubmission};
use falak_api::task::{LogStream, TaskInfo};
use falak_core::job::{Delivery, JobId, JobState, TaskId, TaskState};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Context;
use super::capsule::read_document;
use super::output::{Table, duration, or_dash, print_json, print_raw, short, timestamp};

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job: run a capsule as N tasks, or one task per input line.
    Submit(SubmitArgs),
    /// List jobs, newest first.
    List {
        /// At most this many jobs.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show a job and its tasks.
    Status {
        #[arg(value_parser = parse_job_id)]
        job: JobId,
    },
    /// Wait for a job to finish, then print its result; fails if the job failed or was cancelled.
    Wait {
        #[arg(value_parser = parse_job_id)]
        job: JobId,
    },
    /// Print a task's output, from the node that ran it.
    Logs {
        #[arg(value_parser = parse_task_id)]
        task: TaskId,
        /// Print stderr instead of stdout.
        #[arg(long)]
        stderr: bool,
        /// At most this many trailing bytes.
        #[arg(long)]
        max_bytes: Option<usize>,
    },
    /// Cancel a running job.
    Cancel {
        #[arg(value_parser = parse_job_id)]
        job: JobId,
    },
    /// Print a job's outputs in task order.
    Result {
        #[arg(value_parser = parse_job_id)]
        job: JobId,
        /// `text`: stdout of every task concatenated; `json`: each task's state, exit code, output.
        #[arg(long, value_enum, default_value_t = ResultFormat::Text)]
        format: ResultFormat,
    },
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The capsule to run.
    pub capsule: String,
    /// A capsule version (default: the latest).
    #[arg(long)]
    pub version: Option<u32>,
    /// How many tasks (default 1).
    #[arg(long, conflicts_with = "inputs")]
    pub tasks: Option<u32>,
    /// A file with one input per line, one task each; `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    pub inputs: Option<PathBuf>,
    /// Extra attempts per task after a failure (default: the capsule's policy).
    #[arg(long)]
    pub retries: Option<u32>,
    /// Per-task timeout, e.g. `30s`, `5m` (default: the capsule's).
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// What a task does when its node loses the lease.
    #[arg(long, value_enum)]
    pub delivery: Option<DeliveryArg>,
    /// Wait for the job to finish and print its result.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeliveryArg {
    AtLeastOnce,
    AtMostOnce,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResultFormat {
    Text,
    Json,
}

/// A job id as users type it: `j12`, or just `12`.
pub fn parse_job_id(text: &str) -> Result<JobId, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map(JobId).map_err(|e| format!("{text:?} is not a job id: {e}"));
    }
    text.parse().map_err(|e: falak_core::job::ParseIdError| e.to_string())
}

/// A task id: `j12-t3`.
pub fn parse_task_id(text: &str) -> Result<TaskId, String> {
    text.trim().parse().map_err(|e: falak_core::job::ParseIdError| e.to_string())
}

pub async fn run(ctx: &Context, command: JobCommand) -> anyhow::Result<()> {
    match command {
        JobCommand::Submit(args) => submit(ctx, args).await,
        JobCommand::List { limit } => {
            let jobs = ctx.client.jobs(limit).await?;
            if ctx.json() {
                return print_json(&jobs);
            }
            print!("{}", render_list(&jobs));
            Ok(())
        }
        JobCommand::Status { job } => {
            let (info, tasks) = tokio::try_join!(ctx.client.job(job), ctx.client.job_tasks(job))?;
            if ctx.json() {
                return print_json(&serde_json::json!({ "job": info, "tasks": tasks }));
            }
            print!("{}", render_status(&info, &tasks));
            Ok(())
        }
        JobCommand::Wait { job } => wait_and_print(ctx, job).await,
        JobCommand::Logs { task, stderr, max_bytes } => {
            let stream = if stderr { LogStream::Stderr } else { LogStream::Stdout };
            print_raw(&ctx.client.task_logs(task, stream, max_bytes).await?)
        }
        JobCommand::Cancel { job } => {
            let info = ctx.client.cancel_job(job).await?;
            if ctx.json() {
                return print_json(&info);
            }
            println!("cancelled job {}: {} unfinished tasks cancelled", info.id, info.counts.cancelled);
            Ok(())
        }
        JobCommand::Result { job, format } => {
            if format == ResultFormat::Json || ctx.json() {
                print_json(&ctx.client.job_result(job).await?)
            } else {
                print_raw(&ctx.client.job_result_text(job).await?)
            }
        }
    }
}

async fn submit(ctx: &Context, args: SubmitArgs) -> anyhow::Result<()> {
    let inputs = match &args.inputs {
        None => None,
        Some(path) => Some(input_lines(&read_document(path)?)?),
    };
    let submission = JobSubmission {
        capsule: args.capsule,
        version: args.version,
        tasks: args.tasks,
        inputs,
        retries: args.retries,
        timeout: args.timeout,
        delivery: args.delivery.map(|d| match d {
            DeliveryArg::AtLeastOnce => Delivery::AtLeastOnce,
            DeliveryArg::AtMostOnce => Delivery::AtMostOnce,
        }),
    };
    let job = ctx.write_once("submitting the job", async |client| client.submit_job(&submission).await).await?;
    if args.wait {
        if !ctx.json() {
            eprintln!("submitted job {}: {} tasks of {} v{}", job.id, job.tasks, job.capsule, job.version);
        }
        return wait_and_print(ctx, job.id).await;
    }
    if ctx.json() {
        return print_json(&job);
    }
    println!("submitted job {}: {} tasks of {} v{}", job.id, job.tasks, job.capsule, job.version);
    println!("follow it with `falak job wait {}`", job.id);
    Ok(())
}

/// One input per line; a trailing empty line (the file's final newline) is not an input.
pub fn input_lines(text: &str) -> anyhow::Result<Vec<String>> {
    let mut lines: Vec<String> = text.lines().map(|l| l.strip_suffix('\r').unwrap_or(l).to_owned()).collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    if lines.is_empty() {
        anyhow::bail!("the inputs file has no lines; each line becomes one task");
    }
    Ok(lines)
}

/// How often `wait` asks for the job's state.
const POLL: Duration = Duration::from_millis(250);
/// Without a terminal, a progress line at most every this many polls (when something changed).
const PLAIN_EVERY: u32 = 8;

/// Wait for the job, print its result, and fail unless it completed.
async fn wait_and_print(ctx: &Context, job: JobId) -> anyhow::Result<()> {
    let info = wait(ctx, job).await?;
    let tasks = ctx.client.job_tasks(job).await?;
    if ctx.json() {
        let results: Vec<_> = tasks.iter().map(falak_api::job::TaskOutput::of).collect();
        print_json(&serde_json::json!({ "job": info, "results": results }))?;
    } else {
        print_raw(&falak_api::job::result_text(&tasks))?;
        for task in tasks.iter().filter(|t| t.state == TaskState::Failed) {
            eprintln!("{}", failed_line(task));
        }
    }
    match info.state {
        JobState::Completed => Ok(()),
        JobState::Failed => anyhow::bail!(
            "job {} FAILED: {} of {} tasks failed (see `falak job status {}`)",
            info.id,
            info.counts.failed,
            info.tasks,
            info.id
        ),
        JobState::Cancelled => anyhow::bail!("job {} was CANCELLED", info.id),
        JobState::Running => anyhow::bail!("job {} is still running", info.id),
    }
}

fn failed_line(task: &TaskInfo) -> String {
    let node = task.node.as_ref().map_or("-", |n| n.name.as_str());
    let cause = match (&task.error, task.exit_code) {
        (Some(error), _) => error.clone(),
        (None, Some(code)) => format!("exit code {code}"),
        (None, None) => "no result".to_owned(),
    };
    format!("task {} failed on {node} after {} attempts: {}", task.id, task.attempt, short(&cause, 200))
}

/// Poll until the job leaves RUNNING, showing progress on stderr.
async fn wait(ctx: &Context, job: JobId) -> anyhow::Result<JobInfo> {
    let first = ctx.client.job(job).await?;
    let mut progress = Progress::new(&first, !ctx.json());
    let mut info = first;
    loop {
        progress.update(&info);
        if info.state != JobState::Running {
            progress.finish(&info);
            return Ok(info);
        }
        tokio::time::sleep(POLL).await;
        info = ctx.client.job(job).await?;
    }
}

/// A progress bar on a terminal, plain periodic lines otherwise, nothing for JSON output.
enum Progress {
    Bar(ProgressBar),
    Lines { last: String, polls: u32 },
    Quiet,
}

impl Progress {
    fn new(job: &JobInfo, visible: bool) -> Progress {
        if !visible {
            return Progress::Quiet;
        }
        if !std::io::stderr().is_terminal() {
            return Progress::Lines { last: String::new(), polls: 0 };
        }
        let bar = ProgressBar::with_draw_target(Some(u64::from(job.tasks)), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(job.id.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress::Bar(bar)
    }

    fn update(&mut self, job: &JobInfo) {
        match self {
            Progress::Bar(bar) => {
                bar.set_length(u64::from(job.tasks));
                bar.set_position(u64::from(job.counts.finished()));
                bar.set_message(counts_text(job));
            }
            Progress::Lines { last, polls } => {
                *polls += 1;
                let line = format!(
                    "{} {}: {}/{} finished, {}",
                    job.id,
                    job.state.name(),
                    job.counts.finished(),
                    job.tasks,
                    counts_text(job)
                );
                if *line != *last && (*polls >= PLAIN_EVERY || last.is_empty()) {
                    eprintln!("{line}");
                    *last = line;
                    *polls = 0;
                }
            }
            Progress::Quiet => {}
        }
    }

    fn finish(&mut self, job: &JobInfo) {
        match self {
            Progress::Bar(bar) => bar.finish_and_clear(),
            Progress::Lines { .. } => {}
            Progress::Quiet => return,
        }
        eprintln!(
            "job {} {} in {}: {}",
            job.id,
            job.state.name(),
            or_dash(job.duration_ms.map(duration)),
            counts_text(job)
        );
    }
}

/// `3 completed, 1 running, 2 queued`: the non-zero counts.
fn counts_text(job: &JobInfo) -> String {
    let c = &job.counts;
    let parts: Vec<String> = [
        (c.completed, "completed"),
        (c.failed, "failed"),
        (c.cancelled, "cancelled"),
        (c.running, "running"),
        (c.assigned, "assigned"),
        (c.retrying, "retrying"),
        (c.queued, "queued"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    if parts.is_empty() { "no tasks".to_owned() } else { parts.join(", ") }
}

pub fn render_list(jobs: &[JobInfo]) -> String {
    if jobs.is_empty() {
        return "no jobs; submit one with `falak job submit CAPSULE`\n".to_owned();
    }
    let mut table = Table::new(&["ID", "CAPSULE", "STATE", "TASKS", "COMPLETED", "FAILED", "CREATED", "DURATION"]);
    for j in jobs {
        table.row(vec![
            j.id.to_string(),
            format!("{}:{}", j.capsule, j.version),
            j.state.name().to_owned(),
            j.tasks.to_string(),
            j.counts.completed.to_string(),
            j.counts.failed.to_string(),
            timestamp(j.created_at),
            or_dash(j.duration_ms.map(duration)),
        ]);
    }
    table.render()
}

pub fn render_status(job: &JobInfo, tasks: &[TaskInfo]) -> String {
    let mut out = format!(
        "job {}  {}  capsule {}:{}  {} tasks ({})\n",
        job.id,
        job.state.name(),
        job.capsule,
        job.version,
        job.tasks,
        counts_text(job)
    );
    out.push_str(&format!(
        "created {}  finished {}  duration {}  max attempts {}  timeout {}\n\n",
        timestamp(job.created_at),
        or_dash(job.finished_at.map(timestamp)),
        or_dash(job.duration_ms.map(duration)),
        job.max_attempts,
        or_dash(job.timeout_ms.map(duration)),
    ));
    let mut table = Table::new(&["TASK", "STATE", "ATTEMPT", "NODE", "EXIT", "DURATION", "INPUT", "ERROR"]);
    for t in tasks {
        table.row(vec![
            t.id.to_string(),
            t.state.name().to_owned(),
            t.attempt.to_string(),
            or_dash(t.node.as_ref().map(|n| n.name.clone())),
            or_dash(t.exit_code),
            or_dash(t.duration_ms.map(duration)),
            or_dash(t.input.as_deref().map(|i| short(i, 24))),
            or_dash(t.error.as_deref().map(|e| short(e, 60))),
        ]);
    }
    out.push_str(&table.render());
    out
}

#[cfg(test)]
mod tests {
    use falak_api::job::TaskCounts;
    use falak_api::node::NodeRef;
    use falak_core::NodeId;
    use falak_core::job::WorkKind;
    use falak_core::resources::Resources;

    use super::*;

    fn job() -> JobInfo {
        JobInfo {
            id: JobId(3),
            kind: WorkKind::Batch,
            name: "hello".into(),
            capsule: "hello".into(),
            version: 1,
            state: JobState::Failed,
            tasks: 2,
            counts: TaskCounts { completed: 1, failed: 1, ..TaskCounts::default() },
            max_attempts: 2,
            timeout_ms: Some(30_000),
            delivery: Delivery::AtLeastOnce,
            resources: Resources::new(100, 32 << 20),
            origin: NodeId([1; 32]),
            created_at: 1_000,
            finished_at: Some(5_200),
            duration_ms: Some(4_200),
        }
    }

    fn task(index: u32, state: TaskState, exit: i32, error: Option<&str>) -> TaskInfo {
        TaskInfo {
            id: TaskId { job: JobId(3), index },
            job: JobId(3),
            index,
            input: None,
            state,
            attempt: 2,
            node: Some(NodeRef { id: NodeId([1; 32]), name: "node-1".into() }),
            exit_code: Some(exit),
            error: error.map(str::to_owned),
            duration_ms: Some(12),
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            updated_at: 5_000,
        }
    }

    #[test]
    fn status_shows_the_job_then_its_tasks() {
        let tasks =
            [task(0, TaskState::Completed, 0, None), task(1, TaskState::Failed, 2, Some("timed out after 30s"))];
        expect_test::expect![[r#"
            job j3  FAILED  capsule hello:1  2 tasks (1 completed, 1 failed)
            created 1970-01-01T00:00:01Z  finished 1970-01-01T00:00:05Z  duration 4.2s  max attempts 2  timeout 30s

            TASK   STATE      ATTEMPT  NODE    EXIT  DURATION  INPUT  ERROR
            j3-t0  COMPLETED  2        node-1  0     12ms      -      -
            j3-t1  FAILED     2        node-1  2     12ms      -      timed out after 30s
        "#]]
        .assert_eq(&render_status(&job(), &tasks));
        assert_eq!(failed_line(&tasks[1]), "task j3-t1 failed on node-1 after 2 attempts: timed out after 30s");
    }

    #[test]
    fn inputs_are_lines_without_the_final_newline() {
        assert_eq!(input_lines("a\r\nb\n\nc\n\n").unwrap(), ["a", "b", "", "c"]);
        assert!(input_lines("\n\n").is_err());
    }

    #[test]
    fn job_ids_accept_bare_numbers() {
        assert_eq!(parse_job_id("j12"), Ok(JobId(12)));
        assert_eq!(parse_job_id("12"), Ok(JobId(12)));
        assert!(parse_job_id("job12").unwrap_err().contains("ids look like `j12`"));
        assert_eq!(parse_task_id("j1-t2"), Ok(TaskId { job: JobId(1), index: 2 }));
    }
}
