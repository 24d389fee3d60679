//! The benchmarks of DESIGN.md §6 that a loopback mesh of real processes can measure. Each
//! starts its own mesh, prints what it measures as it goes, and returns its summary rows.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use falak_api::job::{JobInfo, JobSubmission};
use falak_api::{Client, EventItem};
use falak_core::job::{JobId, JobState, TaskState};
use falak_core::placement::Health;
use falak_node::config::FailureDetection;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::mesh::{Mesh, MeshOptions, kill_groups, vm_rss};
use crate::report::{Row, Verdict};
use crate::stats::{Samples, fmt_mib, fmt_rate, fmt_ratio, fmt_secs};

/// What every benchmark needs.
pub struct Ctx {
    /// The `falak` binary to run nodes with.
    pub falak: PathBuf,
    /// Fewer samples, for a smoke run.
    pub quick: bool,
    /// Where meshes are provisioned (one subdirectory each).
    pub root: PathBuf,
    /// The membership preset every node runs with; the daemon's default when `None`.
    pub failure_detection: Option<FailureDetection>,
    /// Tasks in the throughput job instead of 5,000 (1,000 with `quick`).
    pub noop_tasks: Option<u32>,
    /// Mesh sizes of the `heal` benchmark (3 and 5 when empty).
    pub heal_sizes: Vec<usize>,
}

/// Nominal membership timings of the presets in crates/falak-membership/src/config.rs
/// (`MembershipConfig::lan()` for `fast`, `pause_tolerant()`): a dead node is suspected within a
/// probe period and declared OFFLINE `suspect_to_offline` later. Quoted as the anchor of the
/// detection benchmarks; update them with that file.
const PROBE_PERIOD: f64 = 0.100;
const GOSSIP_INTERVAL: f64 = 0.050;

fn suspect_to_offline(preset: Option<FailureDetection>) -> f64 {
    match preset.unwrap_or_default() {
        FailureDetection::Fast => 1.200,
        FailureDetection::PauseTolerant => 1.700,
    }
}

fn preset_name(preset: Option<FailureDetection>) -> &'static str {
    match preset.unwrap_or_default() {
        FailureDetection::Fast => "fast",
        FailureDetection::PauseTolerant => "pause-tolerant",
    }
}

/// A benchmark: its name, the names of the rows it reports, the target text of each.
pub struct Bench {
    pub name: &'static str,
    pub rows: &'static [(&'static str, &'static str)],
}

pub const BENCHES: &[Bench] = &[
    Bench { name: "idle-rss", rows: &[("idle-rss", "≤ 30 MiB per node")] },
    Bench { name: "submit-to-running", rows: &[("submit-to-running", "p50 ≤ 5 ms, p99 ≤ 20 ms")] },
    Bench {
        name: "claims-per-second",
        rows: &[("claims-per-second", "≥ 5,000/s"), ("noop-tasks-per-second", "≥ 2,000/s")],
    },
    Bench { name: "kill-to-offline", rows: &[("kill-to-offline", "p50 ≤ 1.5 s, p99 ≤ 3 s")] },
    Bench { name: "pause-false-positives", rows: &[("pause-false-positives", "0 under 1.5 s pauses")] },
    Bench { name: "kill-to-rerun", rows: &[("kill-to-rerun", "p50 ≤ 2.5 s")] },
    Bench { name: "leader-failover", rows: &[("leader-failover", "p50 ≤ 500 ms")] },
    Bench { name: "heal", rows: &[("heal-to-healthy", "p99 ≤ 3 s"), ("heal-reruns", "0 tasks")] },
    Bench {
        name: "functions",
        rows: &[
            ("fn-snapshot-start", "p50 ≤ 10 ms"),
            ("fn-snapshot-vs-cold", "≥ 30× faster than cold"),
            ("gateway-overhead-one-cpu", "≤ 150 µs added p50"),
            ("gateway-overhead-two-cpus", "≤ 150 µs added p50"),
            ("fn-requests-per-second", "≥ 20,000/s per node"),
        ],
    },
    Bench { name: "images", rows: &[("image-registry-bytes", "≈ 1× the image for 3 nodes")] },
    Bench {
        name: "containers",
        rows: &[
            ("container-start-overhead", "≤ 5 ms added at p50"),
            ("container-function-cold-start", "≤ 5 ms added at p50"),
        ],
    },
    Bench { name: "prefetch", rows: &[("apply-to-prefetched", "≤ one peer pull + 1 s")] },
];

/// Run benchmark `name`; a failure becomes an ERROR row per row it would have reported.
pub async fn run(ctx: &Ctx, bench: &Bench) -> Vec<Row> {
    let result = match bench.name {
        "idle-rss" => idle_rss(ctx).await,
        "submit-to-running" => submit_to_running(ctx).await,
        "claims-per-second" => claims_per_second(ctx).await,
        "kill-to-offline" => kill_to_offline(ctx).await,
        "pause-false-positives" => pause_false_positives(ctx).await,
        "kill-to-rerun" => kill_to_rerun(ctx).await,
        "leader-failover" => leader_failover(ctx).await,
        "heal" => crate::heal::heal(ctx).await,
        "functions" => crate::functions::functions(ctx).await,
        "images" => crate::images::images(ctx).await,
        "containers" => crate::containers::containers(ctx).await,
        "prefetch" => crate::prefetch::prefetch(ctx).await,
        other => Err(anyhow!("unknown benchmark {other}")),
    };
    match result {
        Ok(rows) => rows,
        Err(e) => bench.rows.iter().map(|(name, target)| Row::error(name, target, &e)).collect(),
    }
}

impl Ctx {
    pub(crate) fn pick(&self, full: usize, quick: usize) -> usize {
        if self.quick { quick } else { full }
    }

    /// A fresh mesh of `nodes` nodes, ready and every node HEALTHY everywhere.
    pub(crate) async fn mesh(&self, bench: &str, nodes: usize) -> Result<Mesh> {
        self.mesh_with(bench, MeshOptions::new(nodes)).await
    }

    /// [`Ctx::mesh`] with `options` (this run's membership preset applied).
    pub(crate) async fn mesh_with(&self, bench: &str, options: MeshOptions) -> Result<Mesh> {
        let started = Instant::now();
        let nodes = options.nodes;
        let options = MeshOptions { failure_detection: self.failure_detection, ..options };
        let mut mesh = Mesh::start(&self.falak, &self.root.join(bench), &options)
            .with_context(|| format!("{bench}: starting a {nodes}-node mesh"))?;
        mesh.wait_ready(Duration::from_secs(60)).await.with_context(|| format!("{bench}: waiting for the mesh"))?;
        mesh.wait_all_healthy(Duration::from_secs(60))
            .await
            .with_context(|| format!("{bench}: waiting for every node HEALTHY"))?;
        println!("  {nodes}-node mesh ready in {}", fmt_secs(started.elapsed().as_secs_f64()));
        Ok(mesh)
    }
}

/// `fut`, or an error naming `what` when it takes longer than `limit`.
pub(crate) async fn within<T>(
    limit: Duration,
    what: impl Into<String>,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result,
        Err(_) => Err(anyhow!("{}: timed out after {limit:?}", what.into())),
    }
}

/// Nanoseconds since the Unix epoch (the clock `date +%s%N` prints).
fn wall_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128)
}

pub(crate) fn sleep_ms(ms: u64) -> tokio::time::Sleep {
    tokio::time::sleep(Duration::from_millis(ms))
}

fn submission(capsule: &str, tasks: u32) -> JobSubmission {
    JobSubmission { capsule: capsule.into(), tasks: Some(tasks), ..JobSubmission::default() }
}

// ---------------------------------------------------------------------------------------------
// Floors measured in the same run.

/// fork/exec of `/bin/sh -c 'date +%s%N'`: from just before the spawn to the printed timestamp.
fn exec_stamp_floor(n: usize) -> Result<Samples> {
    let mut samples = Samples::new();
    for _ in 0..n {
        let t0 = wall_ns();
        let out = std::process::Command::new("/bin/sh").args(["-c", "date +%s%N"]).output()?;
        let printed: i128 = String::from_utf8_lossy(&out.stdout).trim().parse().context("date +%s%N output")?;
        samples.push_secs((printed - t0) as f64 / 1e9);
    }
    Ok(samples)
}

/// Sequential fork/exec/wait of `/bin/true` per second, for about `budget`.
fn exec_true_rate(budget: Duration) -> Result<(f64, usize)> {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < budget {
        let status = std::process::Command::new("/bin/true").status()?;
        if !status.success() {
            bail!("/bin/true failed: {status}");
        }
        n += 1;
    }
    Ok((n as f64 / start.elapsed().as_secs_f64(), n))
}

/// Round trips of `GET /healthz` over a kept-alive loopback connection.
async fn http_floor(clients: &[Client], n: usize) -> Result<Samples> {
    let mut samples = Samples::new();
    for client in clients {
        client.health().await?; // connect
    }
    for i in 0..n {
        let client = &clients[i % clients.len()];
        let t0 = Instant::now();
        client.health().await.context("GET /healthz")?;
        samples.push(t0.elapsed());
    }
    Ok(samples)
}

pub(crate) fn latency_text(s: &Samples) -> String {
    format!("p50 {}, p99 {} (n={})", fmt_secs(s.p50()), fmt_secs(s.p99()), s.len())
}

// ---------------------------------------------------------------------------------------------
// 6. idle-rss

async fn idle_rss(ctx: &Ctx) -> Result<Vec<Row>> {
    const NAME: &str = "idle-rss";
    const LIMIT: u64 = 30 << 20;
    println!("\n== {NAME}: VmRSS of each node after 5 s idle (3-node mesh)");
    let mesh = ctx.mesh(NAME, 3).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss = mesh.rss().with_context(|| format!("{NAME}: reading /proc/PID/status"))?;
    for (name, bytes) in &rss {
        println!("  {name}: {}", fmt_mib(*bytes));
    }
    let max = rss.iter().map(|(_, b)| *b).max().context("no node running")?;
    // Floor: the smallest process this machine runs (`sleep`), and this harness (tokio + HTTP client).
    let mut sleeper = std::process::Command::new("/bin/sleep").arg("5").spawn()?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sleep_rss = vm_rss(sleeper.id() as i32);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let sleep_rss = sleep_rss?;
    let own = vm_rss(std::process::id() as i32)?;
    println!("  floor: /bin/sleep {}; this harness (tokio + reqwest) {}", fmt_mib(sleep_rss), fmt_mib(own));
    let pass = max <= LIMIT;
    Ok(vec![Row {
        name: NAME.into(),
        measured: format!(
            "max {} ({})",
            fmt_mib(max),
            rss.iter().map(|(_, b)| fmt_mib(*b)).collect::<Vec<_>>().join(", ")
        ),
        floor: format!("sleep {}, harness {}", fmt_mib(sleep_rss), fmt_mib(own)),
        ratio: format!("{} harness", fmt_ratio(max as f64, own as f64)),
        target: "≤ 30 MiB per node".into(),
        verdict: Verdict::of(pass),
        reason: format!("largest node VmRSS {} {} 30 MiB", fmt_mib(max), if pass { "≤" } else { ">" }),
        data: serde_json::json!({
            "rss_bytes": rss.iter().map(|(n, b)| serde_json::json!({ "node": n, "bytes": b })).collect::<Vec<_>>(),
            "max_bytes": max,
            "floor_sleep_bytes": sleep_rss,
            "harness_bytes": own,
        }),
    }])
}

// ---------------------------------------------------------------------------------------------
// 1. submit-to-running

const STAMP: &str = r#"name: stamp
kind: process
command: ["/bin/sh", "-c", "date +%s%N"]
resources: { cpu: 100m, memory: 16Mi }
placement: { max_attempts: 1 }
"#;

async fn submit_to_running(ctx: &Ctx) -> Result<Vec<Row>> {
    const NAME: &str = "submit-to-running";
    let n = ctx.pick(200, 30);
    let warmup = ctx.pick(5, 2);
    println!("\n== {NAME}: {n} sequential 1-task jobs of `sh -c 'date +%s%N'` (3-node mesh, {warmup} warm-up)");
    let mesh = ctx.mesh(NAME, 3).await?;
    let clients: Vec<Client> = mesh.nodes.iter().map(|n| n.client.clone()).collect();
    clients[0].apply_capsule_text(STAMP).await.with_context(|| format!("{NAME}: applying the capsule"))?;
    let leader = mesh.leader(Duration::from_secs(10)).await?;

    let exec = tokio::task::spawn_blocking(move || exec_stamp_floor(n)).await??;
    let http = http_floor(&clients, n).await.with_context(|| format!("{NAME}: HTTP floor"))?;
    println!("  floor: fork/exec sh+date {}", latency_text(&exec));
    println!("  floor: GET /healthz round trip {}", latency_text(&http));

    let mut all = Samples::new();
    let mut via_leader = Samples::new();
    let mut via_follower = Samples::new();
    let mut ack = Samples::new();
    let mut same_node = 0;
    for i in 0..warmup + n {
        let via = i % clients.len();
        let client = &clients[via];
        let t0 = wall_ns();
        let m0 = Instant::now();
        let job = client
            .submit_job(&submission("stamp", 1))
            .await
            .with_context(|| format!("{NAME}: submitting job {i} via {}", mesh.nodes[via].name))?;
        let acked = m0.elapsed();
        let task = within(Duration::from_secs(30), format!("{NAME}: waiting for job {} to complete", job.id), async {
            loop {
                let tasks = client.job_tasks(job.id).await?;
                let task = tasks.into_iter().next().context("a job without tasks")?;
                match task.state {
                    TaskState::Completed => return Ok(task),
                    TaskState::Failed | TaskState::Cancelled => {
                        bail!("task {} ended {:?}: {:?} {}", task.id, task.state, task.error, task.stderr_tail)
                    }
                    _ => sleep_ms(5).await,
                }
            }
        })
        .await?;
        let printed: i128 = task
            .stdout_tail
            .trim()
            .parse()
            .with_context(|| format!("{NAME}: task {} printed {:?}", task.id, task.stdout_tail))?;
        if i < warmup {
            continue;
        }
        let latency = (printed - t0) as f64 / 1e9;
        all.push_secs(latency);
        ack.push(acked);
        if via == leader {
            via_leader.push_secs(latency);
        } else {
            via_follower.push_secs(latency);
        }
        if task.node.as_ref().is_some_and(|r| r.id == mesh.nodes[via].id) {
            same_node += 1;
        }
    }
    let floor = exec.p50() + http.p50();
    println!("  submit → task running: {}", latency_text(&all));
    println!("    submitted via the leader: {}", latency_text(&via_leader));
    println!("    submitted via a follower: {}", latency_text(&via_follower));
    println!("    POST /api/v1/jobs acknowledged: {}", latency_text(&ack));
    println!("    task ran on the node that took the submission: {same_node} of {n}");
    println!(
        "  ratio to floor (exec p50 + http p50 = {}): p50 {}, p99 {}",
        fmt_secs(floor),
        fmt_ratio(all.p50(), floor),
        fmt_ratio(all.p99(), floor)
    );
    let pass = all.p50() <= 0.005 && all.p99() <= 0.020;
    Ok(vec![Row {
        name: NAME.into(),
        measured: latency_text(&all),
        floor: format!("exec {} + http {} = {}", fmt_secs(exec.p50()), fmt_secs(http.p50()), fmt_secs(floor)),
        ratio: format!("p50 {}, p99 {}", fmt_ratio(all.p50(), floor), fmt_ratio(all.p99(), floor)),
        target: "p50 ≤ 5 ms, p99 ≤ 20 ms".into(),
        verdict: Verdict::of(pass),
        reason: format!(
            "p50 {} {} 5 ms, p99 {} {} 20 ms",
            fmt_secs(all.p50()),
            if all.p50() <= 0.005 { "≤" } else { ">" },
            fmt_secs(all.p99()),
            if all.p99() <= 0.020 { "≤" } else { ">" }
        ),
        data: serde_json::json!({
            "latency": all.json(),
            "via_leader": via_leader.json(),
            "via_follower": via_follower.json(),
            "submit_ack": ack.json(),
            "floor_exec": exec.json(),
            "floor_http": http.json(),
            "ran_on_submitting_node": same_node,
        }),
    }])
}

// ---------------------------------------------------------------------------------------------
// 2. claims-per-second and noop-tasks-per-second

const NOOP: &str = r#"name: noop
kind: process
command: ["/bin/true"]
resources: { cpu: 1m, memory: 1Mi }
"#;

/// Sum of the samples of a Prometheus metric family (`name` or `name{...}`) in `text`.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Task state changes (`at_ms`, task, state) from a node's event stream, collected in the background.
struct TaskEvents {
    seen: Arc<std::sync::Mutex<Vec<(u64, String, String)>>>,
    lagged: Arc<std::sync::atomic::AtomicU64>,
    handle: tokio::task::JoinHandle<()>,
}

impl TaskEvents {
    async fn follow(client: &Client) -> Result<TaskEvents> {
        let stream = client.events(true, None).await?;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let lagged = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (s, l) = (seen.clone(), lagged.clone());
        let handle = tokio::spawn(async move {
            let mut stream = Box::pin(stream);
            while let Some(item) = stream.next().await {
                match item {
                    Ok(EventItem::Event(e)) if e.kind == "task_state" => {
                        let task = e.data["task"].as_str().unwrap_or_default().to_owned();
                        let state = e.data["state"].as_str().unwrap_or_default().to_owned();
                        s.lock().unwrap_or_else(|p| p.into_inner()).push((e.at_ms, task, state));
                    }
                    Ok(EventItem::Lagged { missed }) => {
                        l.fetch_add(missed, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        l.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        });
        Ok(TaskEvents { seen, lagged, handle })
    }

    /// Per task of `job`: the first time it left QUEUED/RETRYING and the time it COMPLETED, as
    /// milliseconds since the Unix epoch on the publishing node; `None` when events were lost.
    fn of_job(self, job: JobId, tasks: u32) -> Option<(Vec<u64>, Vec<u64>)> {
        self.handle.abort();
        if self.lagged.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let prefix = format!("{job}-");
        let mut claimed: BTreeMap<String, u64> = BTreeMap::new();
        let mut completed: BTreeMap<String, u64> = BTreeMap::new();
        for (at, task, state) in self.seen.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if !task.starts_with(&prefix) {
                continue;
            }
            if state != "QUEUED" && state != "RETRYING" {
                claimed.entry(task.clone()).or_insert(*at);
            }
            if state == "COMPLETED" {
                completed.insert(task.clone(), *at);
            }
        }
        (claimed.len() == tasks as usize).then(|| (claimed.into_values().collect(), completed.into_values().collect()))
    }
}

/// A node process larger than this ends the throughput benchmark early.
const RSS_GUARD: u64 = 3 << 30;

async fn claims_per_second(ctx: &Ctx) -> Result<Vec<Row>> {
    const NAME: &str = "claims-per-second";
    let n = ctx.noop_tasks.unwrap_or(ctx.pick(5000, 1000) as u32);
    println!("\n== {NAME} / noop-tasks-per-second: one job of {n} `/bin/true` tasks, cpu 1m, memory 1Mi (3-node mesh)");
    let mesh = ctx.mesh(NAME, 3).await?;
    let client = mesh.nodes[0].client.clone();
    client.apply_capsule_text(NOOP).await.with_context(|| format!("{NAME}: applying the capsule"))?;
    let budget = if ctx.quick { Duration::from_millis(300) } else { Duration::from_secs(1) };
    let (floor, forks) = tokio::task::spawn_blocking(move || exec_true_rate(budget)).await??;
    println!("  floor: sequential fork/exec/wait of /bin/true from the harness: {} ({forks} runs)", fmt_rate(floor));
    let events =
        TaskEvents::follow(&mesh.nodes[1].client).await.with_context(|| format!("{NAME}: following events"))?;

    let submit_ms = (wall_ns() / 1_000_000) as u64;
    let t0 = Instant::now();
    let job = client.submit_job(&submission("noop", n)).await.with_context(|| format!("{NAME}: submitting"))?;
    let acked = t0.elapsed();
    println!("  POST /api/v1/jobs ({n} tasks) acknowledged in {}", fmt_secs(acked.as_secs_f64()));
    // Poll the job's counts every 20 ms; the time is taken when the answer arrives.
    let (mut claimed_at, mut finished_at, mut half_at) = (None, None, None);
    let mut last: Option<JobInfo> = None;
    // Stop early, with what was reached, when nothing finishes for a while or a node's memory
    // runs away (a claim storm can take GiBs; the machine is shared).
    let limit = Duration::from_secs(if ctx.quick { 120 } else { 300 });
    let stall = Duration::from_secs(if ctx.quick { 30 } else { 60 });
    let (mut progress_at, mut finished_before, mut last_rss_check) = (Instant::now(), 0, Instant::now());
    let mut stopped: Option<String> = None;
    while t0.elapsed() < limit {
        if let Ok(info) = client.job(job.id).await {
            let elapsed = t0.elapsed();
            let c = info.counts;
            let claimed = n - c.queued - c.retrying;
            if half_at.is_none() && claimed >= n / 2 {
                half_at = Some(elapsed);
            }
            if claimed_at.is_none() && claimed == n {
                claimed_at = Some(elapsed);
            }
            let done = c.finished() == n;
            if c.finished() > finished_before {
                finished_before = c.finished();
                progress_at = Instant::now();
            }
            last = Some(info);
            if done {
                finished_at = Some(elapsed);
                break;
            }
        }
        if progress_at.elapsed() > stall {
            stopped = Some(format!("no task finished for {}", fmt_secs(stall.as_secs_f64())));
            break;
        }
        if last_rss_check.elapsed() > Duration::from_secs(1) {
            last_rss_check = Instant::now();
            if let Some((node, bytes)) = mesh.rss()?.into_iter().max_by_key(|(_, b)| *b)
                && bytes > RSS_GUARD
            {
                stopped = Some(format!("{node} reached VmRSS {} (guard {})", fmt_mib(bytes), fmt_mib(RSS_GUARD)));
                break;
            }
        }
        sleep_ms(20).await;
    }
    if let Some(why) = &stopped {
        println!("  stopped waiting after {}: {why}", fmt_secs(t0.elapsed().as_secs_f64()));
    }
    let info = last.context("no answer to GET /api/v1/jobs/ID")?;
    let c = info.counts;
    let by_events = events.of_job(job.id, n);
    let tasks = client.job_tasks(job.id).await?;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for t in &tasks {
        *per_node.entry(t.node.as_ref().map_or("-".to_owned(), |r| r.name.clone())).or_default() += 1;
    }
    let retried = tasks.iter().filter(|t| t.attempt > 1).count();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks.iter().filter_map(|t| t.error.as_ref()) {
        *errors.entry(t.clone()).or_default() += 1;
    }
    let mut metrics = serde_json::Map::new();
    let mut counters = Vec::new();
    for node in &mesh.nodes {
        let text = node.client.metrics().await.unwrap_or_default();
        let m = serde_json::json!({
            "claims_proposed": metric(&text, "falak_claims_proposed_total"),
            "claims_rejected": metric(&text, "falak_claims_rejected_total"),
            "elections_won": metric(&text, "falak_elections_won_total"),
            "ledger_writes_failed": metric(&text, "falak_ledger_writes_failed_total"),
            "tasks_started": metric(&text, "falak_tasks_started_total"),
        });
        counters.push(format!(
            "{}: {} claims proposed, {} rejected, {} ledger writes failed, {} tasks started",
            node.name, m["claims_proposed"], m["claims_rejected"], m["ledger_writes_failed"], m["tasks_started"]
        ));
        metrics.insert(node.name.clone(), m);
    }
    let rss = mesh.rss()?;

    // Claim and completion times: from the committed events' timestamps when the stream lost
    // nothing, otherwise from polling.
    let (claim_time, done_time, source) = match &by_events {
        Some((claims, completions)) => {
            let claim = claims.iter().max().map(|m| m.saturating_sub(submit_ms) as f64 / 1e3);
            let done = (completions.len() == n as usize)
                .then(|| completions.iter().max().map(|m| m.saturating_sub(submit_ms) as f64 / 1e3))
                .flatten();
            (claim, done, "committed event timestamps")
        }
        None => (claimed_at.map(|d| d.as_secs_f64()), finished_at.map(|d| d.as_secs_f64()), "polling every 20 ms"),
    };
    let claimed_now = n - c.queued - c.retrying;
    println!(
        "  by polling: half claimed after {}, all claimed after {}, all finished after {}",
        half_at.map_or("never".into(), |d| fmt_secs(d.as_secs_f64())),
        claimed_at.map_or("never".into(), |d| fmt_secs(d.as_secs_f64())),
        finished_at.map_or("never".into(), |d| fmt_secs(d.as_secs_f64()))
    );
    if by_events.is_none() {
        println!("  the event stream lost events; using the polled times");
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let claims = claim_time.map_or(f64::from(claimed_now) / elapsed, |t| f64::from(n) / t);
    let done = done_time.map_or(f64::from(c.completed) / elapsed, |t| f64::from(c.completed) / t);
    println!(
        "  all {n} claimed after {} → {} ({source})",
        claim_time.map_or(format!("never (only {claimed_now} within {})", fmt_secs(elapsed)), fmt_secs),
        fmt_rate(claims)
    );
    println!(
        "  all finished after {} → {} completed ({} completed, {} failed, {} still open)",
        done_time.map_or(format!("never (within {})", fmt_secs(elapsed)), fmt_secs),
        fmt_rate(done),
        c.completed,
        c.failed,
        n - c.finished()
    );
    println!("  tasks per node: {per_node:?}; tasks needing more than one attempt: {retried}; errors: {errors:?}");
    for line in &counters {
        println!("  {line}");
    }
    println!(
        "  node VmRSS after the job: {}",
        rss.iter().map(|(n, b)| format!("{n} {}", fmt_mib(*b))).collect::<Vec<_>>().join(", ")
    );
    let claims_pass = claim_time.is_some() && claims >= 5000.0;
    let done_pass = done_time.is_some() && done >= 2000.0 && c.completed == n;
    let data = serde_json::json!({
        "tasks": n,
        "source": source,
        "stopped_early": stopped,
        "submit_ack_s": acked.as_secs_f64(),
        "all_claimed_s": claim_time,
        "all_finished_s": done_time,
        "polled_half_claimed_s": half_at.map(|d| d.as_secs_f64()),
        "polled_all_claimed_s": claimed_at.map(|d| d.as_secs_f64()),
        "polled_all_finished_s": finished_at.map(|d| d.as_secs_f64()),
        "claims_per_s": claims,
        "completed_per_s": done,
        "completed": c.completed,
        "failed": c.failed,
        "per_node": per_node,
        "retried": retried,
        "errors": errors,
        "metrics": metrics,
        "floor_exec_true_per_s": floor,
        "rss_after_bytes": rss.iter().map(|(_, b)| *b).collect::<Vec<_>>(),
    });
    let mut extra = if retried > 0 { format!("; {retried} tasks needed a second attempt") } else { String::new() };
    if let Some(why) = &stopped {
        extra.push_str(&format!("; stopped early: {why}"));
    }
    Ok(vec![
        Row {
            name: "claims-per-second".into(),
            measured: match claim_time {
                Some(t) => format!("{} ({n} in {})", fmt_rate(claims), fmt_secs(t)),
                None => format!("{} ({claimed_now} of {n} in {})", fmt_rate(claims), fmt_secs(elapsed)),
            },
            floor: format!("exec /bin/true {}", fmt_rate(floor)),
            ratio: fmt_ratio(claims, floor),
            target: "≥ 5,000/s".into(),
            verdict: Verdict::of(claims_pass),
            reason: format!("{} claims/s {} 5,000/s{extra}", fmt_rate(claims), if claims_pass { "≥" } else { "<" }),
            data: data.clone(),
        },
        Row {
            name: "noop-tasks-per-second".into(),
            measured: match done_time {
                Some(t) => format!("{} ({} in {})", fmt_rate(done), c.completed, fmt_secs(t)),
                None => format!("{} ({} of {n} in {})", fmt_rate(done), c.completed, fmt_secs(elapsed)),
            },
            floor: format!("exec /bin/true {}", fmt_rate(floor)),
            ratio: fmt_ratio(done, floor),
            target: "≥ 2,000/s".into(),
            verdict: Verdict::of(done_pass),
            reason: format!(
                "{} completed/s {} 2,000/s ({} of {n} completed, {} failed{extra})",
                fmt_rate(done),
                if done >= 2000.0 { "≥" } else { "<" },
                c.completed,
                c.failed
            ),
            data,
        },
    ])
}

// ---------------------------------------------------------------------------------------------
// 3. kill-to-offline and pause-false-positives

/// Poll `client`'s node list every 10 ms until it reports `victim` OFFLINE; the time since `t0`.
async fn seen_offline(client: Client, victim: falak_core::NodeId, t0: Instant) -> Result<Duration> {
    loop {
        if let Ok(list) = client.nodes().await
            && list.iter().any(|n| n.id == victim && n.state == Health::Offline)
        {
            return Ok(t0.elapsed());
        }
        sleep_ms(10).await;
    }
}

/// The non-leader running nodes, for picking a victim in rotation.
async fn non_leaders(mesh: &Mesh, bench: &str) -> Result<(usize, Vec<usize>)> {
    let leader = mesh.leader(Duration::from_secs(20)).await.with_context(|| format!("{bench}: finding the leader"))?;
    Ok((leader, mesh.running_except(&[leader])))
}

async fn restart(mesh: &mut Mesh, i: usize, bench: &str) -> Result<Duration> {
    let t0 = Instant::now();
    mesh.spawn(i).with_context(|| format!("{bench}: restarting {}", mesh.nodes[i].name))?;
    mesh.wait_ready(Duration::from_secs(60))
        .await
        .with_context(|| format!("{bench}: waiting for the restarted {} to be ready", mesh.nodes[i].name))?;
    mesh.wait_all_healthy(Duration::from_secs(60)).await.with_context(|| {
        format!("{bench}: waiting for the restarted {} to be HEALTHY everywhere", mesh.nodes[i].name)
    })?;
    Ok(t0.elapsed())
}

async fn kill_to_offline(ctx: &Ctx) -> Result<Vec<Row>> {
    const NAME: &str = "kill-to-offline";
    let trials = ctx.pick(10, 3);
    println!(
        "\n== {NAME}: kill -9 a non-leader, until all 3 survivors report it OFFLINE ({trials} trials, 4-node mesh, failure detection {})",
        preset_name(ctx.failure_detection)
    );
    let mut mesh = ctx.mesh(NAME, 4).await?;
    let observe = {
        let mut s = Samples::new();
        for i in 0..50 {
            let t0 = Instant::now();
            mesh.nodes[i % 4].client.nodes().await.with_context(|| format!("{NAME}: GET /api/v1/nodes"))?;
            s.push(t0.elapsed());
        }
        s
    };
    println!("  observation cost: GET /api/v1/nodes {}", latency_text(&observe));
    let (mut last, mut first) = (Samples::new(), Samples::new());
    for trial in 0..trials {
        let (_, candidates) = non_leaders(&mesh, NAME).await?;
        let victim = candidates[trial % candidates.len()];
        let victim_id = mesh.nodes[victim].id;
        let survivors = mesh.running_except(&[victim]);
        let clients: Vec<Client> = survivors.iter().map(|&s| mesh.nodes[s].client.clone()).collect();
        let t0 = Instant::now();
        mesh.kill9(victim).with_context(|| format!("{NAME}: kill -9 {}", mesh.nodes[victim].name))?;
        let seen = within(
            Duration::from_secs(30),
            format!("{NAME}: trial {trial}: waiting for every survivor to report {} OFFLINE", mesh.nodes[victim].name),
            futures_util::future::try_join_all(clients.into_iter().map(|c| seen_offline(c, victim_id, t0))),
        )
        .await?;
        let worst = seen.iter().max().copied().unwrap_or_default();
        let best = seen.iter().min().copied().unwrap_or_default();
        last.push(worst);
        first.push(best);
        let back = restart(&mut mesh, victim, NAME).await?;
        println!(
            "  trial {trial}: {} OFFLINE on the first survivor after {}, on all after {} (restart → HEALTHY everywhere {})",
            mesh.nodes[victim].name,
            fmt_secs(best.as_secs_f64()),
            fmt_secs(worst.as_secs_f64()),
            fmt_secs(back.as_secs_f64())
        );
    }
    let nominal = PROBE_PERIOD + suspect_to_offline(ctx.failure_detection);
    println!("  kill → OFFLINE on every survivor: {}", latency_text(&last));
    println!("  kill → OFFLINE on the first survivor: {}", latency_text(&first));
    println!(
        "  ratio to the configured detection bound (probe period {} + suspect→offline {} = {}): p50 {}",
        fmt_secs(PROBE_PERIOD),
        fmt_secs(suspect_to_offline(ctx.failure_detection)),
        fmt_secs(nominal),
        fmt_ratio(last.p50(), nominal)
    );
    let pass = last.p50() <= 1.5 && last.p99() <= 3.0;
    Ok(vec![Row {
        name: NAME.into(),
        measured: latency_text(&last),
        floor: format!("config bound {} (+ poll {})", fmt_secs(nominal), fmt_secs(observe.p50())),
        ratio: format!("p50 {}, p99 {}", fmt_ratio(last.p50(), nominal), fmt_ratio(last.p99(), nominal)),
        target: "p50 ≤ 1.5 s, p99 ≤ 3 s".into(),
        verdict: Verdict::of(pass),
        reason: format!(
            "p50 {} {} 1.5 s, p99 {} {} 3 s (first survivor p50 {})",
            fmt_secs(last.p50()),
            if last.p50() <= 1.5 { "≤" } else { ">" },
            fmt_secs(last.p99()),
            if last.p99() <= 3.0 { "≤" } else { ">" },
            fmt_secs(first.p50())
        ),
        data: serde_json::json!({
            "last_survivor": last.json(),
            "first_survivor": first.json(),
            "observe_nodes": observe.json(),
            "config_bound_s": nominal,
        }),
    }])
}

/// What one survivor saw of a paused node.
#[derive(Debug, Default, Clone, Copy)]
struct Sighting {
    offline: Option<Duration>,
    suspect: Option<Duration>,
}

async fn watch(client: Client, victim: falak_core::NodeId, t0: Instant, stop: Arc<AtomicBool>) -> Sighting {
    let mut seen = Sighting::default();
    // Bounded, so a trial that fails before setting `stop` leaves nothing polling behind.
    while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(30) {
        if let Ok(list) = client.nodes().await
            && let Some(n) = list.iter().find(|n| n.id == victim)
        {
            match n.state {
                Health::Offline => {
                    seen.offline.get_or_insert(t0.elapsed());
                }
                Health::Suspect => {
                    seen.suspect.get_or_insert(t0.elapsed());
                }
                Health::Healthy => {}
            }
        }
        sleep_ms(10).await;
    }
    seen
}

async fn pause_false_positives(ctx: &Ctx) -> Result<Vec<Row>> {
    const NAME: &str = "pause-false-positives";
    const PAUSE: Duration = Duration::from_millis(1500);
    let trials = ctx.pick(5, 2);
    println!(
        "\n== {NAME}: SIGSTOP a non-leader for 1.5 s, then SIGCONT; survivors reporting it OFFLINE ({trials} trials, 4-node mesh, failure detection {})",
        preset_name(ctx.failure_detection)
    );
    let mesh = ctx.mesh(NAME, 4).await?;
    let mut false_positives = 0;
    let mut trials_with_fp = 0;
    let mut observations = 0;
    let mut suspected = 0;
    let mut paused = Samples::new();
    let mut details = Vec::new();
    for trial in 0..trials {
        let (_, candidates) = non_leaders(&mesh, NAME).await?;
        let victim = candidates[trial % candidates.len()];
        let victim_id = mesh.nodes[victim].id;
        let survivors = mesh.running_except(&[victim]);
        let stop = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        mesh.signal(victim, libc::SIGSTOP).with_context(|| format!("{NAME}: SIGSTOP"))?;
        let watchers: Vec<_> = survivors
            .iter()
            .map(|&s| tokio::spawn(watch(mesh.nodes[s].client.clone(), victim_id, t0, stop.clone())))
            .collect();
        tokio::time::sleep_until((t0 + PAUSE).into()).await;
        mesh.signal(victim, libc::SIGCONT).with_context(|| format!("{NAME}: SIGCONT"))?;
        let pause = t0.elapsed();
        paused.push(pause);
        // An OFFLINE verdict reached just before the resume can surface a little after it.
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        let mut sightings = Vec::new();
        for w in watchers {
            sightings.push(w.await?);
        }
        let fp = sightings.iter().filter(|s| s.offline.is_some()).count();
        let sus = sightings.iter().filter(|s| s.suspect.is_some()).count();
        false_positives += fp;
        trials_with_fp += usize::from(fp > 0);
        observations += sightings.len();
        suspected += sus;
        let offline_at: Vec<String> =
            sightings.iter().filter_map(|s| s.offline).map(|d| fmt_secs(d.as_secs_f64())).collect();
        println!(
            "  trial {trial}: {} paused {}; {fp} of {} survivors reported it OFFLINE{}; {sus} saw SUSPECT",
            mesh.nodes[victim].name,
            fmt_secs(pause.as_secs_f64()),
            sightings.len(),
            if offline_at.is_empty() { String::new() } else { format!(" (after {})", offline_at.join(", ")) },
        );
        details.push(serde_json::json!({
            "victim": mesh.nodes[victim].name,
            "pause_s": pause.as_secs_f64(),
            "offline_after_s": sightings.iter().map(|s| s.offline.map(|d| d.as_secs_f64())).collect::<Vec<_>>(),
            "suspect_after_s": sightings.iter().map(|s| s.suspect.map(|d| d.as_secs_f64())).collect::<Vec<_>>(),
        }));
        let recovered = Instant::now();
        mesh.wait_all_healthy(Duration::from_secs(60))
            .await
            .with_context(|| format!("{NAME}: trial {trial}: waiting for {} HEALTHY again", mesh.nodes[victim].name))?;
        if fp > 0 {
            println!("    HEALTHY everywhere again {} after the check", fmt_secs(recovered.elapsed().as_secs_f64()));
        }
    }
    let tolerated = PROBE_PERIOD + suspect_to_offline(ctx.failure_detection) - GOSSIP_INTERVAL;
    println!(
        "  false positives: {false_positives} of {observations} survivor observations, in {trials_with_fp} of {trials} trials; nominal tolerated pause of the daemon's membership config: {}",
        fmt_secs(tolerated)
    );
    let pass = false_positives == 0;
    Ok(vec![Row {
        name: NAME.into(),
        measured: format!("{false_positives} of {observations} ({trials_with_fp}/{trials} trials)"),
        floor: format!("config tolerates {}", fmt_secs(tolerated)),
        ratio: format!("pause {}", fmt_ratio(paused.p50(), tolerated)),
        target: "0 under 1.5 s pauses".into(),
        verdict: Verdict::of(pass),
        reason: format!(
            "{false_positives} survivor observations of OFFLINE during {trials} pauses of {} ({suspected} saw SUSPECT)",
            fmt_secs(paused.p50())
        ),
        data: serde_json::json!({
            "false_positives": false_positives,
            "observations": observations,
            "trials": trials,
            "trials_with_false_positive": trials_with_fp,
            "suspect_observations": suspected,
            "pause": paused.json(),
            "tolerated_pause_s": tolerated,
            "details": details,
        }),
    }])
}

// ---------------------------------------------------------------------------------------------
// 4. kill-to-rerun

const SLEEPER: &str = r#"name: sleeper
kind: process
command: ["/bin/sleep", "60"]
resources: { cpu: 100m, memory: 16Mi }
placement: { strategy: balanced, max_attempts: 10 }
"#;

async fn kill_to_rerun(ctx: &Ctx) -> Result<Vec<Row>> {
    const NAME: &str = "kill-to-rerun";
    const TASKS: u32 = 16;
    let trials = ctx.pick(5, 2);
    println!(
        "\n== {NAME}: {TASKS} `sleep 60` tasks submitted via a follower; kill -9 the busiest non-leader; until its tasks run elsewhere ({trials} trials, 4-node mesh)"
    );
    let mut mesh = ctx.mesh(NAME, 4).await?;
    mesh.nodes[0].client.apply_capsule_text(SLEEPER).await.with_context(|| format!("{NAME}: applying the capsule"))?;
    let (mut rerun, mut detect, mut released) = (Samples::new(), Samples::new(), Samples::new());
    let mut moved_tasks = 0;
    for trial in 0..trials {
        // Submit through a follower: placement favours the submitting node, so it becomes the
        // busiest, and killing it does not also kill the ledger leader (leader-failover does that).
        let (leader, followers) = non_leaders(&mesh, NAME).await?;
        let submit_via = mesh.nodes[followers[trial % followers.len()]].client.clone();
        let job =
            submit_via.submit_job(&submission("sleeper", TASKS)).await.with_context(|| format!("{NAME}: submit"))?;
        let tasks = within(
            Duration::from_secs(60),
            format!("{NAME}: trial {trial}: waiting for {TASKS} tasks RUNNING"),
            async {
                loop {
                    let tasks = submit_via.job_tasks(job.id).await?;
                    if tasks.iter().all(|t| t.state == TaskState::Running) {
                        return Ok(tasks);
                    }
                    sleep_ms(20).await;
                }
            },
        )
        .await?;
        let mut per_node: BTreeMap<usize, BTreeSet<u32>> = BTreeMap::new();
        for t in &tasks {
            let node = t.node.as_ref().and_then(|r| mesh.index_of(r.id)).context("a running task without a node")?;
            per_node.entry(node).or_default().insert(t.index);
        }
        let (&victim, victim_tasks) = per_node
            .iter()
            .filter(|(i, _)| **i != leader)
            .max_by_key(|(_, t)| t.len())
            .context("no non-leader node runs a task")?;
        let victim_tasks = victim_tasks.clone();
        let victim_id = mesh.nodes[victim].id;
        let spread: Vec<String> =
            per_node.iter().map(|(i, t)| format!("{} {}", mesh.nodes[*i].name, t.len())).collect();
        let groups = mesh.task_groups(victim);
        let observer = mesh.client_except(&[victim])?.clone();
        let t0 = Instant::now();
        mesh.kill9(victim).with_context(|| format!("{NAME}: kill -9"))?;
        let (mut offline_at, mut released_at) = (None, None);
        let outcome = within(
            Duration::from_secs(60),
            format!(
                "{NAME}: trial {trial}: waiting for {}'s {} tasks to run elsewhere",
                mesh.nodes[victim].name,
                victim_tasks.len()
            ),
            async {
                loop {
                    if offline_at.is_none()
                        && let Ok(list) = observer.nodes().await
                        && list.iter().any(|n| n.id == victim_id && n.state == Health::Offline)
                    {
                        offline_at = Some(t0.elapsed());
                    }
                    let tasks = observer.job_tasks(job.id).await?;
                    let mine: Vec<_> = tasks.iter().filter(|t| victim_tasks.contains(&t.index)).collect();
                    if released_at.is_none() && mine.iter().any(|t| t.attempt >= 2 || t.state != TaskState::Running) {
                        released_at = Some(t0.elapsed());
                    }
                    let moved = mine.iter().all(|t| {
                        t.state == TaskState::Running
                            && t.attempt >= 2
                            && t.node.as_ref().is_some_and(|r| r.id != victim_id)
                    });
                    if moved {
                        return Ok(t0.elapsed());
                    }
                    sleep_ms(10).await;
                }
            },
        )
        .await;
        kill_groups(&groups);
        let took = outcome?;
        rerun.push(took);
        moved_tasks += victim_tasks.len();
        if let Some(d) = offline_at {
            detect.push(d);
        }
        if let Some(d) = released_at {
            released.push(d);
        }
        println!(
            "  trial {trial}: spread [{}] (leader {}); killed {} ({} tasks): first task re-elected after {}, OFFLINE seen after {}, all running elsewhere after {}",
            spread.join(", "),
            mesh.nodes[leader].name,
            mesh.nodes[victim].name,
            victim_tasks.len(),
            released_at.map_or("?".into(), |d| fmt_secs(d.as_secs_f64())),
            offline_at.map_or("(not before)".into(), |d| fmt_secs(d.as_secs_f64())),
            fmt_secs(took.as_secs_f64()),
        );
        observer.cancel_job(job.id).await.with_context(|| format!("{NAME}: cancelling {}", job.id))?;
        within(Duration::from_secs(30), format!("{NAME}: waiting for {} to end", job.id), async {
            loop {
                if observer.job(job.id).await?.state != JobState::Running {
                    return Ok(());
                }
                sleep_ms(50).await;
            }
        })
        .await?;
        restart(&mut mesh, victim, NAME).await?;
    }
    println!("  kill → all its tasks RUNNING elsewhere: {}", latency_text(&rerun));
    println!("  kill → first of its tasks re-elected: {}", latency_text(&released));
    println!("  floor: kill → OFFLINE on the observing survivor, same trials: {}", latency_text(&detect));
    let pass = rerun.p50() <= 2.5;
    Ok(vec![Row {
        name: NAME.into(),
        measured: latency_text(&rerun),
        floor: format!("detection p50 {}", fmt_secs(detect.p50())),
        ratio: format!("p50 {}", fmt_ratio(rerun.p50(), detect.p50())),
        target: "p50 ≤ 2.5 s".into(),
        verdict: Verdict::of(pass),
        reason: format!(
            "p50 {} {} 2.5 s ({moved_tasks} tasks moved in {trials} trials)",
            fmt_secs(rerun.p50()),
            if pass { "≤" } else { ">" }
        ),
        data: serde_json::json!({
            "rerun": rerun.json(),
            "first_released": released.json(),
            "detection": detect.json(),
            "tasks_moved": moved_tasks,
        }),
    }])
}

// ---------------------------------------------------------------------------------------------
// 5. leader-failover

fn probe(name: &str) -> String {
    format!("name: {name}\nkind: process\ncommand: [\"/bin/true\"]\n")
}

async fn leader_failover(ctx: &Ctx) -> Result<Vec<Row>> {
    const NAME: &str = "leader-failover";
    let trials = ctx.pick(10, 3);
    println!("\n== {NAME}: kill -9 the leader; until a survivor acknowledges a write ({trials} trials, 3-node mesh)");
    let mut mesh = ctx.mesh(NAME, 3).await?;
    let (leader, followers) = non_leaders(&mesh, NAME).await?;
    let mut steady = Samples::new();
    for k in 0..ctx.pick(30, 10) {
        let client = &mesh.nodes[followers[k % followers.len()]].client;
        let t0 = Instant::now();
        client
            .apply_capsule_text(&probe(&format!("warm-{k}")))
            .await
            .with_context(|| format!("{NAME}: steady write"))?;
        steady.push(t0.elapsed());
    }
    let mut via_leader = Samples::new();
    for k in 0..ctx.pick(30, 10) {
        let t0 = Instant::now();
        mesh.nodes[leader].client.apply_capsule_text(&probe(&format!("warm-l-{k}"))).await?;
        via_leader.push(t0.elapsed());
    }
    println!("  floor: a write (apply capsule) through a follower, steady state: {}", latency_text(&steady));
    println!("         through the leader: {}", latency_text(&via_leader));
    let mut failover = Samples::new();
    let mut election = Samples::new();
    let mut attempts_total = 0;
    for trial in 0..trials {
        let (leader, survivors) = non_leaders(&mesh, NAME).await?;
        let writer = mesh.nodes[survivors[trial % survivors.len()]].client.clone();
        let t0 = Instant::now();
        mesh.kill9(leader).with_context(|| format!("{NAME}: kill -9 the leader"))?;
        // Keep a write in flight every 10 ms (at most 64 outstanding); the first acknowledged one
        // ends the trial. Nothing is cancelled early, so a slow success is never missed. Meanwhile
        // watch the writer's readiness for the new leader.
        let mut inflight = FuturesUnordered::new();
        let mut k = 0;
        let mut elected: Option<Duration> = None;
        let mut watcher = {
            let writer = writer.clone();
            let killed = mesh.nodes[leader].id;
            tokio::spawn(async move {
                // Bounded, so a trial that fails early leaves nothing polling behind.
                while t0.elapsed() < Duration::from_secs(30) {
                    if let Ok(r) = writer.ready().await
                        && r.leader.is_some_and(|l| l != killed)
                    {
                        return Some(t0.elapsed());
                    }
                    sleep_ms(5).await;
                }
                None
            })
        };
        let (acked, started) =
            within(Duration::from_secs(30), format!("{NAME}: trial {trial}: waiting for a write to commit"), async {
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                loop {
                    tokio::select! {
                        _ = tick.tick(), if inflight.len() < 64 => {
                            let c = writer.clone();
                            let name = format!("probe-{trial}-{k}");
                            k += 1;
                            let started = t0.elapsed();
                            inflight.push(async move { (c.apply_capsule_text(&probe(&name)).await, started) });
                        }
                        Some((result, started)) = inflight.next() => {
                            if result.is_ok() {
                                return Ok((t0.elapsed(), started));
                            }
                        }
                    }
                }
            })
            .await?;
        drop(inflight);
        if let Ok(Ok(Some(d))) = tokio::time::timeout(Duration::from_secs(10), &mut watcher).await {
            elected = Some(d);
        }
        watcher.abort();
        attempts_total += k;
        failover.push(acked);
        if let Some(d) = elected {
            election.push(d);
        }
        let new_leader = mesh.leader(Duration::from_secs(10)).await?;
        let back = restart(&mut mesh, leader, NAME).await?;
        mesh.wait_ready(Duration::from_secs(30)).await?;
        println!(
            "  trial {trial}: killed leader {}; writer knows a new leader after {}; first write acknowledged after {} (sent at {}, {k} attempts); new leader {}; restart → HEALTHY {}",
            mesh.nodes[leader].name,
            elected.map_or("?".into(), |d| fmt_secs(d.as_secs_f64())),
            fmt_secs(acked.as_secs_f64()),
            fmt_secs(started.as_secs_f64()),
            mesh.nodes[new_leader].name,
            fmt_secs(back.as_secs_f64())
        );
    }
    println!("  kill leader → first acknowledged write: {}", latency_text(&failover));
    println!("  kill leader → the writer knows the new leader: {}", latency_text(&election));
    let pass = failover.p50() <= 0.5;
    Ok(vec![Row {
        name: NAME.into(),
        measured: latency_text(&failover),
        floor: format!("write p50 {}", fmt_secs(steady.p50())),
        ratio: format!("p50 {}", fmt_ratio(failover.p50(), steady.p50())),
        target: "p50 ≤ 500 ms".into(),
        verdict: Verdict::of(pass),
        reason: format!("p50 {} {} 500 ms", fmt_secs(failover.p50()), if pass { "≤" } else { ">" }),
        data: serde_json::json!({
            "failover": failover.json(),
            "steady_write_via_follower": steady.json(),
            "steady_write_via_leader": via_leader.json(),
            "new_leader_known": election.json(),
            "write_attempts": attempts_total,
        }),
    }])
}
