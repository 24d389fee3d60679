//! `falak up --demo`: a job across the nodes and a function invoked through each of them.

use super::*;

pub(super) const DEMO_CAPSULE: &str = r#"name: hello
kind: process
command: ["/bin/sh", "-c", "echo task $FALAK_TASK_INDEX of $FALAK_TASK_COUNT"]
resources: { cpu: 100m, memory: 32Mi }
placement: { strategy: balanced, labels: {}, max_attempts: 3 }
"#;
pub(super) const DEMO_TASKS: u32 = 12;
pub(super) const DEMO_TIMEOUT: Duration = Duration::from_secs(60);
pub(super) const DEMO_POLL: Duration = Duration::from_millis(200);

/// Apply the `hello` capsule, run it as 12 tasks, print the result and where tasks ran.
pub(super) async fn run_demo(client: &Client) -> anyhow::Result<()> {
    match client.apply_capsule_text(DEMO_CAPSULE).await {
        Ok(applied) if applied.unchanged => {
            println!("demo: capsule {} version {} is already applied", applied.name, applied.version);
        }
        Ok(applied) => println!("demo: applied capsule {} version {}", applied.name, applied.version),
        Err(error) if error.code() == Some(ErrorCode::Conflict) => {
            println!("demo: capsule hello already exists ({error})");
        }
        Err(error) => return Err(error).context("cannot apply capsule hello"),
    }
    let submission = JobSubmission { capsule: "hello".to_owned(), tasks: Some(DEMO_TASKS), ..JobSubmission::default() };
    let job = client.submit_job(&submission).await.context("cannot submit the demo job")?;
    println!("demo: submitted job {}: {} tasks of {} v{}", job.id, job.tasks, job.capsule, job.version);
    let info = match tokio::time::timeout(DEMO_TIMEOUT, poll_job(client, job.id)).await {
        Ok(info) => info?,
        Err(_) => {
            bail!("job {} did not finish within {}s; see `falak job status {}`", job.id, DEMO_TIMEOUT.as_secs(), job.id)
        }
    };
    let tasks = client.job_tasks(job.id).await.with_context(|| format!("cannot list the tasks of job {}", job.id))?;
    let result =
        client.job_result_text(job.id).await.with_context(|| format!("cannot fetch the result of job {}", job.id))?;
    println!("demo: job {} {} in {}; its result:", info.id, info.state.name(), or_dash(info.duration_ms.map(duration)));
    print!("{result}");
    if !result.is_empty() && !result.ends_with('\n') {
        println!();
    }
    println!("demo: tasks per node: {}", tasks_per_node(&tasks));
    if info.state != JobState::Completed {
        bail!("demo job {} ended {}; see `falak job status {}`", info.id, info.state.name(), info.id);
    }
    Ok(())
}

pub(super) const DEMO_FUNCTION: &str = r#"name: greet
kind: function
runtime: python
handler: main.handle
scaling: { min_instances: 0, max_instances: 8, concurrency: 4, idle_timeout: 60s }
"#;

pub(super) const DEMO_HANDLER: &str = r#"import time
time.sleep(0.3)  # stands for imports that take 300 ms; the zygote pays it once

def handle(request):
    who = request.body.decode() or "world"
    return {"hello": who}
"#;

/// Deploy the `greet` Python function and invoke it through each node: the first start forks
/// from the snapshot, the rest are warm or served by a peer's instance.
pub(super) async fn run_function_demo(clients: &[Client], root: &Path) -> anyhow::Result<()> {
    let client = &clients[0];
    let dir = root.join("demo-greet");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::write(dir.join("main.py"), DEMO_HANDLER).context("cannot write the demo function")?;
    let bundle = falak_artifact::bundle::pack(&dir).context("cannot bundle the demo function")?;
    let stored = client.store_artifact(bundle).await.context("cannot upload the demo function's bundle")?;
    let mut document = falak_core::function::FunctionDocument::parse(DEMO_FUNCTION).context("the demo function")?;
    document.artifact = Some(stored.id);
    let deployed = client.deploy_function(&document).await.context("cannot deploy function greet")?;
    println!(
        "demo: deployed function greet version {} (prepared on {} in {} ms)",
        deployed.version, deployed.prepare.node, deployed.prepare.millis
    );
    // Give the observers a moment to warm their snapshots.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (i, node) in clients.iter().enumerate().chain(clients.iter().enumerate()) {
        let response = node
            .invoke("greet", reqwest::Method::POST, "/", &[], format!("node-{}", i + 1).into_bytes())
            .await
            .context("cannot invoke greet")?;
        let status = response.status();
        let start = response
            .headers()
            .get(falak_api::function::START_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let body = response.text().await.unwrap_or_default();
        println!("demo: POST {}/fn/greet -> {} {}  [{start}]", node.base_url(), status.as_u16(), body.trim());
        if !status.is_success() {
            bail!("function greet answered {status}: {body}");
        }
    }
    let falak = crate::cli::self_command();
    println!(
        "demo: try `{falak} fn invoke greet --data you`, `{falak} fn list`, `{falak} fn instances greet` (or curl with --cacert credentials/ca.crt and the admin token: see README)"
    );
    Ok(())
}

pub(super) async fn poll_job(client: &Client, job: JobId) -> anyhow::Result<falak_api::job::JobInfo> {
    loop {
        let info = client.job(job).await.with_context(|| format!("cannot read job {job}"))?;
        if info.state != JobState::Running {
            return Ok(info);
        }
        tokio::time::sleep(DEMO_POLL).await;
    }
}

/// `node-1 4, node-2 4, node-3 4`: how many tasks each node ran, by node name.
pub(super) fn tasks_per_node(tasks: &[TaskInfo]) -> String {
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for task in tasks {
        *counts.entry(task.node.as_ref().map_or("(none)", |n| n.name.as_str())).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(name, n)| format!("{name} {n}")).collect();
    if parts.is_empty() { "no tasks".to_owned() } else { parts.join(", ") }
}
