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
//!
//! `container-function-cold-start`: a `runtime: container` function instance of an image with
//! the fixture server (`fixtures/serve.rs`) serving on its socket.
//! - **Floor:** `runc run` of the `config.json` the function host wrote for an instance, on a
//!   plain copy of the root filesystem: from spawning `runc` until a request on the socket is
//!   answered (the socket tried every 50 µs).
//!   Each start, on both sides, waits 100 ms after the last container went (the kernel tears a
//!   network namespace down after its processes are gone).
//! - **Measured:** `falak_function::spawn` (the instance's cgroup, socket dir, bundle and
//!   overlay, `runc run`, the first connection) and then the same request.

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
    let row = added_over_runc(NAME, "node", "the node", n, &node, &floor);
    let _ = std::fs::remove_dir_all(&dir);
    let function = function_cold_start(ctx, &runtime).await?;
    Ok(vec![row, function])
}

/// How long each timed container start waits after the last container went.
const SETTLE: Duration = Duration::from_millis(100);

/// `container-function-cold-start` (see the module's docs).
async fn function_cold_start(ctx: &Ctx, runtime: &ContainerRuntime) -> Result<Row> {
    const NAME: &str = "container-function-cold-start";
    let n = ctx.pick(100, 20);
    println!("\n== containers: {n} cold starts of a container function serving on its socket, beside bare `runc run`");
    let dir = ctx.root.join("container-functions");
    let rootfs = busybox_rootfs(&dir.join("image-rootfs"))?;
    let server = crate::registry::serve_binary()?;
    std::fs::write(rootfs.join("bin/serve"), server)?;
    std::fs::set_permissions(rootfs.join("bin/serve"), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let host = tokio::task::spawn_blocking(|| falak_function::HostSandbox::detect(Some("falak-bench-fn"))).await?;
    let container = falak_function::ContainerHost {
        runtime: runtime.clone(),
        image: ContainerTask {
            rootfs: rootfs.clone(),
            cwd: "/".into(),
            user: RunAs { uid: 0, gid: 0 },
            mounts: Vec::new(),
        },
        args: vec!["/bin/serve".into(), "socket".into()],
        env: Default::default(),
        network: falak_function::Network::None,
    };
    let spec = falak_function::HostSpec {
        function: "cold".into(),
        deployment: "cold@1".into(),
        runtime: falak_core::function::Runtime::Container,
        handler: None,
        command: Vec::new(),
        env: Default::default(),
        bundle_dir: rootfs.clone(),
        work_dir: dir.join("w"),
        log_path: dir.join("instances.log"),
        python: "python3".into(),
        limits: falak_function::CgroupLimits { memory_bytes: Some(64 << 20), cpu_millis: None, max_pids: Some(256) },
        sandbox: falak_function::WorkloadSandbox::from_host(&host),
        container: Some(container),
    };
    let prepared =
        falak_function::prepare(spec, &dir.join("venvs")).await.context("preparing the container function")?;

    // One instance first: its bundle's config is the floor's (its socket dir made again for each run).
    let first = falak_function::spawn(&prepared, n as u64).await.context("starting the first instance")?;
    let answer = request(&prepared.container_socket_dir(n as u64).join("http.sock"))?;
    if !answer.contains("hello from falak") {
        bail!("the first instance answered {answer:?}");
    }
    let floor_bundle = dir.join("floor-bundle");
    std::fs::create_dir_all(&floor_bundle)?;
    std::fs::copy(dir.join(format!("w/containers/i{n}/bundle/config.json")), floor_bundle.join("config.json"))?;
    busybox_rootfs(&floor_bundle.join("rootfs"))?;
    std::fs::copy(rootfs.join("bin/serve"), floor_bundle.join("rootfs/bin/serve"))?;
    first.stop(Duration::from_secs(2)).await;
    let floor_socket_dir = prepared.container_socket_dir(n as u64);

    let mut floor = Samples::new();
    let mut measured = Samples::new();
    for i in 0..n {
        // Floor: bare runc run of the same config, until the socket answers.
        std::fs::create_dir_all(&floor_socket_dir)?;
        let socket = floor_socket_dir.join("http.sock");
        let _ = std::fs::remove_file(&socket);
        // The kernel tears the last container's network namespace down after it is gone; each
        // start waits for that to settle, so neither side pays for the other's.
        tokio::time::sleep(SETTLE).await;
        let t0 = Instant::now();
        let mut child = Command::new(&runtime.program)
            .arg("--root")
            .arg(dir.join("floor-state"))
            .args(["run", "--bundle"])
            .arg(&floor_bundle)
            .arg(format!("floor-{i}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning runc")?;
        let seen = tokio::task::spawn_blocking(move || answered(&socket)).await??;
        floor.push(seen.duration_since(t0));
        // The server is its pid namespace's init and ignores SIGTERM: the runtime kills it.
        let killed = Command::new(&runtime.program)
            .arg("--root")
            .arg(dir.join("floor-state"))
            .args(["kill", &format!("floor-{i}"), "KILL"])
            .status()?;
        if !killed.success() {
            bail!("runc kill floor-{i} failed: {killed}");
        }
        tokio::task::spawn_blocking(move || child.wait()).await??;
        let _ = std::fs::remove_dir_all(&floor_socket_dir);

        // The function host.
        tokio::time::sleep(SETTLE).await;
        let t0 = Instant::now();
        let instance =
            falak_function::spawn(&prepared, i as u64).await.with_context(|| format!("starting instance {i}"))?;
        let socket = prepared.container_socket_dir(i as u64).join("http.sock");
        let seen = tokio::task::spawn_blocking(move || answered(&socket)).await??;
        measured.push(seen.duration_since(t0));
        // The server ignores SIGTERM (it is its namespace's init): no grace to wait out.
        instance.stop(Duration::from_millis(50)).await;
    }
    let row = added_over_runc(NAME, "function host", "the function host", n, &measured, &floor);
    if let Some(cgroups) = &host.cgroups {
        let _ = cgroups.remove_scope();
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(row)
}

/// Print and make the row of a measure against bare `runc run` of the same config: what `who`
/// (`label` in the line printed) adds at p50, against [`TARGET_ADDED`].
fn added_over_runc(name: &str, label: &str, who: &str, n: usize, measured: &Samples, floor: &Samples) -> Row {
    let added = measured.p50() - floor.p50();
    println!(
        "  {label}: p50 {}, p99 {}; bare runc run: p50 {}, p99 {}; added at p50: {}",
        fmt_secs(measured.p50()),
        fmt_secs(measured.p99()),
        fmt_secs(floor.p50()),
        fmt_secs(floor.p99()),
        fmt_secs(added)
    );
    Row {
        name: name.into(),
        measured: format!("p50 {}, p99 {} (n={n})", fmt_secs(measured.p50()), fmt_secs(measured.p99())),
        floor: format!("bare runc run p50 {}, p99 {}", fmt_secs(floor.p50()), fmt_secs(floor.p99())),
        ratio: format!("+{} at p50 ({:.2}×)", fmt_secs(added), measured.p50() / floor.p50()),
        target: "≤ 5 ms added at p50".into(),
        verdict: Verdict::of(added <= TARGET_ADDED),
        reason: format!("{who} adds {} at p50 to the runtime's own run", fmt_secs(added)),
        data: serde_json::json!({ "node_secs": measured.json(), "floor_secs": floor.json(), "added_p50_secs": added }),
    }
}

/// One `GET /` on the Unix socket at `path`: the answer's text.
fn request(path: &Path) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n")?;
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// When a request on the socket at `path` is first answered (tried every 50 µs, for at most 10 s).
fn answered(path: &Path) -> Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if request(path).is_ok_and(|a| a.starts_with("HTTP/1.1 200")) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("no answer on {} within 10 s", path.display());
        }
        std::thread::sleep(Duration::from_micros(50));
    }
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
