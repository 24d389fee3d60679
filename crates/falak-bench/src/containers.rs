//! `containers`: what a node adds to starting a container over the OCI runtime's own `run` of
//! the same bundle, measured in the same run on the same root filesystem (Debian's static
//! busybox).
//!
//! - **Floor:** `runc run` of a bundle holding the `config.json` the node wrote for an attempt
//!   and a plain copy of the root filesystem: the time from spawning `runc` until the
//!   container's `echo` has written to its stdout file.
//! - **Measured:** the node's executor (`falak_exec::ProcessExecutor`, as the node configures
//!   it: the attempt's working directory, log files, cgroup, bundle and overlay, then `runc run`)
//!   from `Executor::start` until the same `echo` has written to the attempt's `stdout.log`.
//!
//! Both poll the file every 50 µs from a thread of their own. Teardown (cgroup removal, the
//! runtime's `delete`) happens after the output in both and is not timed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use falak_exec::{ContainerRuntime, ContainerTask, Executor, ProcessConfig, ProcessExecutor, RunAs, TaskSpec};

use crate::benches::Ctx;
use crate::registry::{BUSYBOX, BUSYBOX_APPLETS};
use crate::report::{Row, Verdict};
use crate::stats::{Samples, fmt_secs};

/// The most the node may add at p50.
const TARGET_ADDED: f64 = 0.005;

pub(crate) async fn containers(ctx: &Ctx) -> Result<Vec<Row>> {
    const NAME: &str = "container-start-overhead";
    let n = ctx.pick(200, 30);
    println!(
        "\n== containers: {n} starts of `echo` in a busybox container, the node's executor beside bare `runc run`"
    );
    let dir = ctx.root.join("containers");
    let rootfs = busybox_rootfs(&dir.join("image-rootfs"))?;
    let runtime = tokio::task::spawn_blocking({
        let state = dir.join("runc-state");
        move || ContainerRuntime::detect("runc", state)
    })
    .await??;
    println!("  runtime: {} ({}), overlay: {}", runtime.program.display(), runtime.version, runtime.overlay);
    let (config, _) = tokio::task::spawn_blocking(|| ProcessConfig::sandboxed("falak-bench")).await?;
    let executor = ProcessExecutor::new(ProcessConfig { containers: Some(runtime.clone()), ..config });
    let spec = |i: usize| {
        let mut spec =
            TaskSpec::new(format!("bench-t{i}"), 1, vec!["echo".into(), "x".into()], dir.join(format!("a{i}")));
        spec.container = Some(ContainerTask {
            rootfs: rootfs.clone(),
            cwd: "/".into(),
            user: RunAs { uid: 0, gid: 0 },
            mounts: Vec::new(),
        });
        spec
    };

    // One attempt first: its bundle's config is the floor's.
    let first = executor.start(spec(n)).await.context("starting the first container")?.wait().await;
    if first.code != Some(0) || first.stdout_tail != "x\n" {
        bail!("the first container did not print `x`: {first:?}");
    }
    let floor_bundle = dir.join("floor-bundle");
    std::fs::create_dir_all(&floor_bundle)?;
    std::fs::copy(dir.join(format!("a{n}/bundle/config.json")), floor_bundle.join("config.json"))?;
    busybox_rootfs(&floor_bundle.join("rootfs"))?;

    let mut floor = Samples::new();
    let mut node = Samples::new();
    for i in 0..n {
        // Floor: bare runc run of the same config.
        let out = dir.join(format!("floor-{i}.out"));
        let file = std::fs::File::create(&out)?;
        let t0 = Instant::now();
        let mut child = Command::new(&runtime.program)
            .arg("--root")
            .arg(dir.join("floor-state"))
            .args(["run", "--bundle"])
            .arg(&floor_bundle)
            .arg(format!("floor-{i}"))
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning runc")?;
        let seen = tokio::task::spawn_blocking(move || written(&out)).await??;
        floor.push(seen.duration_since(t0));
        let status = tokio::task::spawn_blocking(move || child.wait()).await??;
        if !status.success() {
            bail!("bare runc run {i} failed: {status}");
        }

        // The node's executor.
        let spec = spec(i);
        let stdout = spec.workdir.join("stdout.log");
        let t0 = Instant::now();
        let running = executor.start(spec).await.with_context(|| format!("starting container {i}"))?;
        let seen = tokio::task::spawn_blocking(move || written(&stdout)).await??;
        node.push(seen.duration_since(t0));
        let exit = running.wait().await;
        if exit.code != Some(0) {
            bail!("container {i} failed: {exit:?}");
        }
    }
    let added = node.p50() - floor.p50();
    println!(
        "  node: p50 {}, p99 {}; bare runc run: p50 {}, p99 {}; added at p50: {}",
        fmt_secs(node.p50()),
        fmt_secs(node.p99()),
        fmt_secs(floor.p50()),
        fmt_secs(floor.p99()),
        fmt_secs(added)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(vec![Row {
        name: NAME.into(),
        measured: format!("p50 {}, p99 {} (n={n})", fmt_secs(node.p50()), fmt_secs(node.p99())),
        floor: format!("bare runc run p50 {}, p99 {}", fmt_secs(floor.p50()), fmt_secs(floor.p99())),
        ratio: format!("+{} at p50 ({:.2}×)", fmt_secs(added), node.p50() / floor.p50()),
        target: "≤ 5 ms added at p50".into(),
        verdict: Verdict::of(added <= TARGET_ADDED),
        reason: format!("the node adds {} at p50 to the runtime's own run", fmt_secs(added)),
        data: serde_json::json!({ "node_secs": node.json(), "floor_secs": floor.json(), "added_p50_secs": added }),
    }])
}

/// When `path` first holds something (polled every 50 µs, for at most 10 s).
fn written(path: &Path) -> Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("nothing written to {} within 10 s", path.display());
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// A root filesystem at `dir`: busybox and a link to it per applet.
fn busybox_rootfs(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::copy(BUSYBOX, dir.join("bin/busybox"))
        .with_context(|| format!("copying {BUSYBOX} (Debian package busybox-static)"))?;
    for applet in BUSYBOX_APPLETS {
        let link = dir.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    Ok(dir.to_owned())
}
