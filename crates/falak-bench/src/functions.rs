//! The `functions` benchmark group: starts of a Python function with 300 ms of imports (cold,
//! from a snapshot, warm, and seed 004's respawn design as the anchor), the gateway's warm
//! overhead over raw loopback HTTP to the same no-op server (both CPU placements), and
//! requests per second through one node's gateway. All on one 1-node mesh.
//!
//! The no-op server is this binary: `falak-bench serve-noop` answers `200 ok` to every request
//! on `$FALAK_SOCKET` (Unix) and `$PORT` (TCP), one thread, keep-alive. The gateway runs it as
//! an `http` function; the harness runs a second copy on a port as the raw floor.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use falak_api::Client;
use falak_core::function::FunctionDocument;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::benches::{Ctx, latency_text, sleep_ms, within};
use crate::mesh::Mesh;
use crate::report::{Row, Verdict};
use crate::stats::{Samples, fmt_rate, fmt_ratio, fmt_secs};

/// The function's module: 300 ms of "imports", then a trivial handler.
const MAIN_PY: &str = "import time\ntime.sleep(0.3)  # imports that take 300 ms\n\n\
                       def handle(request):\n    return \"ok\"\n";

/// Seed 004's instance design: a fresh interpreter per instance loads the user's module and
/// serves it with `http.server` on a port (`runtime_host.py`).
const SEED_HOST_PY: &str = r#"import http.server, importlib.util, os
spec = importlib.util.spec_from_file_location("user_function", os.environ["USER_FUNCTION_PATH"])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        result = module.handle(body)
        out = result if isinstance(result, bytes) else str(result).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = answer

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

const COLD: &str = "cold";
const SNAPSHOT: &str = "snap";
const NOOP: &str = "noop";

/// Concurrent connections of the requests-per-second client, and the no-op function's concurrency.
const CONNECTIONS: usize = 64;

pub async fn functions(ctx: &Ctx) -> Result<Vec<Row>> {
    const NAME: &str = "functions";
    println!(
        "\n== {NAME}: Python starts (300 ms of imports) on a 3-node mesh; gateway overhead over raw loopback HTTP and requests/s on a 1-node mesh"
    );
    let mut rows = Vec::new();
    // Starts on three nodes: the slot claim is a replicated ledger write, as in a real mesh.
    // Every node observes the functions (`observers: 3`), so the node asked starts locally.
    let starts = match ctx.mesh("functions-starts", 3).await {
        Ok(mesh) => starts(ctx, &mesh).await,
        Err(e) => Err(e),
    };
    let mesh = ctx.mesh(NAME, 1).await?;
    match starts {
        Ok(r) => rows.extend(r),
        Err(e) => {
            rows.push(Row::error("fn-snapshot-start", "p50 ≤ 10 ms", &e));
            rows.push(Row::error("fn-snapshot-vs-cold", "≥ 30× faster than cold", &e));
        }
    }
    match gateway(ctx, &mesh).await {
        Ok(r) => rows.extend(r),
        Err(e) => {
            rows.push(Row::error("gateway-overhead-one-cpu", "≤ 150 µs added p50", &e));
            rows.push(Row::error("gateway-overhead-two-cpus", "≤ 150 µs added p50", &e));
            rows.push(Row::error("fn-requests-per-second", "≥ 20,000/s per node", &e));
        }
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// Python starts.

/// A tar of `files` (path, content, mode), mtime 0.
fn bundle(files: &[(&str, &[u8], u32)]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(data.len() as u64);
        header.set_mode(*mode);
        header.set_mtime(0);
        builder.append_data(&mut header, path, *data)?;
    }
    Ok(builder.into_inner()?)
}

async fn deploy(client: &Client, yaml: &str, bundle: Vec<u8>) -> Result<falak_api::function::FunctionDeployed> {
    let stored = client.store_artifact(bundle).await.context("storing the bundle")?;
    let mut doc = FunctionDocument::parse(yaml).map_err(|e| anyhow!("{e}"))?;
    doc.artifact = Some(stored.id);
    client.deploy_function(&doc).await.with_context(|| format!("deploying {yaml:?}"))
}

/// Until the node runs no instance of `name` and the ledger holds no slot for it.
async fn wait_zero(client: &Client, name: &str) -> Result<()> {
    within(Duration::from_secs(30), format!("waiting for {name} to scale to zero"), async {
        loop {
            if client.function_instances(name).await?.is_empty() && client.function(name).await?.instances == 0 {
                return Ok(());
            }
            sleep_ms(20).await;
        }
    })
    .await
}

/// One invocation `GET /fn/{name}/`: the time to the full response and the `falak-start` header.
async fn invoke(client: &Client, name: &str) -> Result<(Duration, String)> {
    let t0 = Instant::now();
    let response = client.invoke(name, reqwest::Method::GET, "/", &[], Vec::new()).await?;
    let status = response.status().as_u16();
    let start = response
        .headers()
        .get(falak_api::function::START_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.bytes().await?;
    let took = t0.elapsed();
    if status != 200 || &body[..] != b"ok" {
        bail!("{name} answered {status} {:?}", String::from_utf8_lossy(&body));
    }
    Ok((took, start))
}

/// Samples of a start label and of each stage the `falak-start` header names, in order.
#[derive(Default)]
struct Starts {
    total: Samples,
    stages: Vec<(String, Samples)>,
    /// Samples discarded because the header's label was not the one measured.
    mislabelled: Vec<String>,
}

impl Starts {
    fn record(&mut self, want: &str, took: Duration, header: &str) {
        let mut parts = header.split(';').map(str::trim);
        if parts.next() != Some(want) {
            self.mislabelled.push(header.to_owned());
            return;
        }
        self.total.push(took);
        for part in parts {
            let Some((stage, ms)) = part.split_once('=') else { continue };
            let Ok(ms) = ms.parse::<f64>() else { continue };
            match self.stages.iter_mut().find(|(s, _)| s == stage) {
                Some((_, samples)) => samples.push_secs(ms / 1e3),
                None => {
                    let mut samples = Samples::new();
                    samples.push_secs(ms / 1e3);
                    self.stages.push((stage.to_owned(), samples));
                }
            }
        }
    }

    fn print(&self, label: &str) {
        let discarded = if self.mislabelled.is_empty() {
            String::new()
        } else {
            format!(
                "; {} discarded, labelled otherwise: {:?}",
                self.mislabelled.len(),
                &self.mislabelled[..self.mislabelled.len().min(3)]
            )
        };
        println!("  {label}: {}{discarded}", latency_text(&self.total));
        let stages: Vec<String> = self.stages.iter().map(|(s, v)| format!("{s} {}", fmt_secs(v.p50()))).collect();
        let inside: f64 = self.stages.iter().map(|(_, v)| v.p50()).sum();
        if !stages.is_empty() {
            println!(
                "    falak-start stages, p50 each: {} (sum {}; the rest of the client's p50 is HTTP, body and the client: {})",
                stages.join(", "),
                fmt_secs(inside),
                fmt_secs((self.total.p50() - inside).max(0.0))
            );
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "latency": self.total.json(),
            "stages_p50_s": self.stages.iter().map(|(s, v)| (s.clone(), serde_json::json!(v.p50()))).collect::<serde_json::Map<_, _>>(),
            "mislabelled": self.mislabelled,
        })
    }
}

/// `n` starts from zero instances, labelled `label`, taken round-robin over the deployments
/// `names` (identical functions): each round waits until every one is at zero, then invokes
/// each once. Also how long each took from its response to zero instances.
async fn starts_from_zero(client: &Client, names: &[String], label: &str, n: usize) -> Result<(Starts, Samples)> {
    let mut starts = Starts::default();
    let mut to_zero = Samples::new();
    // A few more attempts than samples, so a stray label does not leave the run short.
    let mut attempts = n + n / 2 + 2;
    let mut answered: Vec<(&str, Instant)> = Vec::new();
    while starts.total.len() < n && attempts > 0 {
        for name in names {
            wait_zero(client, name).await?;
        }
        for (name, at) in answered.drain(..) {
            wait_zero(client, name).await?;
            to_zero.push(at.elapsed());
        }
        for name in names {
            if starts.total.len() >= n || attempts == 0 {
                break;
            }
            attempts -= 1;
            let (took, header) = invoke(client, name).await.with_context(|| format!("invoking {name} from zero"))?;
            answered.push((name, Instant::now()));
            starts.record(label, took, &header);
        }
    }
    Ok((starts, to_zero))
}

/// The interpreter's real path, as the node resolves it (skipping pyenv shims).
fn real_python() -> Result<PathBuf> {
    let python = std::env::var_os("FALAK_PYTHON").unwrap_or_else(|| "python3".into());
    let out = Command::new(&python).args(["-c", "import sys; print(sys.executable)"]).output()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || path.is_empty() {
        bail!("{python:?} -c 'import sys; print(sys.executable)' failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(PathBuf::from(path))
}

/// A TCP port on loopback that was free a moment ago.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process killed (and reaped) when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Seed 004's start: spawn `python host.py` (which imports the module), then connect every
/// millisecond until a `GET /` is answered; from just before the spawn to the full response.
fn seed_start(python: &Path, host: &Path, module: &Path) -> Result<Duration> {
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let t0 = Instant::now();
    let mut child = Reaped(
        Command::new(python)
            .arg(host)
            .env("USER_FUNCTION_PATH", module)
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {}", python.display()))?,
    );
    loop {
        if let Ok(mut conn) = SyncConn::connect(addr, None) {
            let response = conn.round_trip(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
            let took = t0.elapsed();
            if response.status != 200 {
                bail!("the seed host answered {}", response.status);
            }
            return Ok(took);
        }
        if let Some(status) = child.0.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            bail!("the seed host exited ({status}): {err}");
        }
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("the seed host did not answer on port {port} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

async fn starts(ctx: &Ctx, mesh: &Mesh) -> Result<Vec<Row>> {
    let client = &mesh.nodes[0].client;
    let (n_cold, n_snapshot, n_warm, n_seed) = (ctx.pick(20, 4), ctx.pick(40, 6), ctx.pick(300, 50), ctx.pick(20, 4));
    let code = bundle(&[("main.py", MAIN_PY.as_bytes(), 0o644)])?;
    let scaling = "scaling: { max_instances: 4, concurrency: 1, idle_timeout: 1s }";
    // Several identical deployments of each kind, sampled in turn, so that waiting for scale to
    // zero overlaps.
    let cold_names: Vec<String> = (0..ctx.pick(4, 2)).map(|i| format!("{COLD}{i}")).collect();
    let snapshot_names: Vec<String> = (0..ctx.pick(8, 3)).map(|i| format!("{SNAPSHOT}{i}")).collect();
    let t = Instant::now();
    let mut prepared = Samples::new();
    for name in &cold_names {
        let yaml = format!(
            "name: {name}\nkind: function\nruntime: python\nhandler: main.handle\nsnapshot: none\ntimeout: 10s\nobservers: 3\n{scaling}"
        );
        deploy(client, &yaml, code.clone()).await?;
    }
    for name in &snapshot_names {
        let yaml = format!(
            "name: {name}\nkind: function\nruntime: python\nhandler: main.handle\nsnapshot: zygote\ntimeout: 10s\nobservers: 3\n{scaling}"
        );
        let deployed = deploy(client, &yaml, code.clone()).await?;
        if !deployed.prepare.snapshot {
            bail!("{name}: the node reports no snapshot ready after deploy: {deployed:?}");
        }
        prepared.push(Duration::from_millis(deployed.prepare.millis));
    }
    println!(
        "  deployed {} x {COLD}N (snapshot none) and {} x {SNAPSHOT}N (zygote; prepare with the snapshot ready {}) in {}; all idle_timeout 1 s",
        cold_names.len(),
        snapshot_names.len(),
        latency_text(&prepared),
        fmt_secs(t.elapsed().as_secs_f64())
    );

    println!(
        "  {n_cold} cold starts, each from zero instances, GET /fn/{COLD}N/ to the full response (round-robin over the deployments)"
    );
    let (cold, cold_to_zero) = starts_from_zero(client, &cold_names, "cold", n_cold).await?;
    cold.print("cold");

    println!("  {n_snapshot} snapshot starts, each from zero instances");
    let (snapshot, snapshot_to_zero) = starts_from_zero(client, &snapshot_names, "snapshot", n_snapshot).await?;
    snapshot.print("snapshot");
    println!(
        "  last response → zero instances (idle_timeout 1 s): cold {}; snapshot {}",
        latency_text(&cold_to_zero),
        latency_text(&snapshot_to_zero)
    );

    let mut warm = Starts::default();
    for _ in 0..n_warm + 5 {
        let (took, header) = invoke(client, &snapshot_names[0]).await?;
        warm.record("warm", took, &header);
    }
    // The first requests may race the snapshot instance's last request; five are slack.
    warm.print("warm (same client, sequential requests to the ready instance)");

    let python = real_python()?;
    let dir = tempfile::Builder::new().prefix("falak-bench-seed-").tempdir()?;
    let (host, module) = (dir.path().join("runtime_host.py"), dir.path().join("main.py"));
    std::fs::write(&host, SEED_HOST_PY)?;
    std::fs::write(&module, MAIN_PY)?;
    let seed = tokio::task::spawn_blocking(move || -> Result<Samples> {
        let mut samples = Samples::new();
        for _ in 0..n_seed {
            samples.push(seed_start(&python, &host, &module)?);
        }
        Ok(samples)
    })
    .await??;
    println!(
        "  seed 004 baseline (fresh `python3 runtime_host.py` per start: import + http.server on a port, polled every 1 ms): {}",
        latency_text(&seed)
    );

    for name in cold_names.iter().chain(&snapshot_names) {
        let _ = client.remove_function(name).await;
    }

    let (s50, c50, w50, seed50) = (snapshot.total.p50(), cold.total.p50(), warm.total.p50(), seed.p50());
    let speedup = if s50 > 0.0 { c50 / s50 } else { 0.0 };
    println!(
        "  cold/snapshot p50 {}; seed/snapshot p50 {}; snapshot over warm p50 {}",
        fmt_ratio(c50, s50),
        fmt_ratio(seed50, s50),
        fmt_ratio(s50, w50)
    );
    let data = serde_json::json!({
        "cold": cold.json(),
        "snapshot": snapshot.json(),
        "warm": warm.json(),
        "seed_respawn": seed.json(),
        "last_response_to_zero": { "cold": cold_to_zero.json(), "snapshot": snapshot_to_zero.json() },
    });
    let pass_snapshot = s50 <= 0.010;
    let pass_speedup = speedup >= 30.0;
    Ok(vec![
        Row {
            name: "fn-snapshot-start".into(),
            measured: latency_text(&snapshot.total),
            floor: format!("warm invoke p50 {}", fmt_secs(w50)),
            ratio: format!("p50 {}", fmt_ratio(s50, w50)),
            target: "p50 ≤ 10 ms".into(),
            verdict: Verdict::of(pass_snapshot),
            reason: format!(
                "snapshot start p50 {} {} 10 ms (p99 {}; {} mislabelled discarded)",
                fmt_secs(s50),
                if pass_snapshot { "≤" } else { ">" },
                fmt_secs(snapshot.total.p99()),
                snapshot.mislabelled.len()
            ),
            data: data.clone(),
        },
        Row {
            name: "fn-snapshot-vs-cold".into(),
            measured: format!("cold {} → {}", latency_text(&cold.total), fmt_ratio(c50, s50)),
            floor: format!("seed 004 respawn p50 {}, p99 {}", fmt_secs(seed50), fmt_secs(seed.p99())),
            ratio: format!("cold/seed p50 {}; seed/snapshot {}", fmt_ratio(c50, seed50), fmt_ratio(seed50, s50)),
            target: "≥ 30× faster than cold".into(),
            verdict: Verdict::of(pass_speedup),
            reason: format!(
                "cold p50 {} / snapshot p50 {} = {} {} 30×",
                fmt_secs(c50),
                fmt_secs(s50),
                fmt_ratio(c50, s50),
                if pass_speedup { "≥" } else { "<" }
            ),
            data,
        },
    ])
}

// ---------------------------------------------------------------------------------------------
// Gateway overhead and requests per second.

/// `falak-bench serve-noop`: answer `200 ok` to every request on `$FALAK_SOCKET` and `$PORT`.
pub fn serve_noop() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("serve-noop: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve_noop_inner()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("serve-noop: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve_noop_inner() -> Result<()> {
    let mut listening = false;
    if let Some(path) = std::env::var_os("FALAK_SOCKET") {
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).with_context(|| format!("binding {path:?}"))?;
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_connection(stream));
            }
        });
        listening = true;
    }
    if let Some(port) = std::env::var("PORT").ok().and_then(|p| p.parse::<u16>().ok()) {
        let listener =
            tokio::net::TcpListener::bind(("127.0.0.1", port)).await.with_context(|| format!("binding port {port}"))?;
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(stream));
            }
        });
        listening = true;
    }
    if !listening {
        bail!("set FALAK_SOCKET or PORT");
    }
    std::future::pending::<()>().await;
    Ok(())
}

const OK_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
/// A request larger than this (head and body) closes the connection.
const MAX_REQUEST: usize = 16 << 20;

/// Answer every request of a keep-alive connection, pipelined ones in one write.
async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut out: Vec<u8> = Vec::with_capacity(512);
    loop {
        let mut close = false;
        loop {
            match parse_request(&buf) {
                Ok(Some(request)) => {
                    buf.drain(..request.len);
                    out.extend_from_slice(OK_RESPONSE);
                    if request.close {
                        close = true;
                        break;
                    }
                }
                Ok(None) if buf.len() <= MAX_REQUEST => break,
                _ => {
                    out.extend_from_slice(BAD_REQUEST);
                    close = true;
                    break;
                }
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if close {
            let _ = stream.shutdown().await;
            return;
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A complete request at the start of a buffer.
struct Request {
    len: usize,
    close: bool,
}

/// A complete response at the start of a buffer.
struct Response {
    len: usize,
    status: u16,
    /// The `falak-start` header, when present.
    start: Option<String>,
}

enum Framing {
    Length(usize),
    Chunked,
}

fn framing(headers: &[httparse::Header<'_>]) -> Result<Option<Framing>> {
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding")
            && std::str::from_utf8(h.value).is_ok_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            return Ok(Some(Framing::Chunked));
        }
    }
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)?.trim().parse::<usize>()?;
            return Ok(Some(Framing::Length(n)));
        }
    }
    Ok(None)
}

/// The length of a complete chunked body at the start of `buf` (trailers included).
fn chunked_len(buf: &[u8]) -> Result<Option<usize>> {
    let line_end = |from: usize| buf[from..].windows(2).position(|w| w == b"\r\n").map(|i| from + i);
    let mut pos = 0;
    loop {
        let Some(end) = line_end(pos) else { return Ok(None) };
        let line = std::str::from_utf8(&buf[pos..end])?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or_default().trim(), 16)
            .with_context(|| format!("chunk size {line:?}"))?;
        pos = end + 2;
        if size == 0 {
            // Trailer lines, then an empty line.
            loop {
                let Some(end) = line_end(pos) else { return Ok(None) };
                let empty = end == pos;
                pos = end + 2;
                if empty {
                    return Ok(Some(pos));
                }
            }
        }
        pos += size + 2;
        if pos > buf.len() {
            return Ok(None);
        }
    }
}

/// The body's length after a head of `head` bytes, or `None` when it has not all arrived.
fn body_len(buf: &[u8], head: usize, framing: Option<Framing>) -> Result<Option<usize>> {
    let body = match framing {
        None => 0,
        Some(Framing::Length(n)) => n,
        Some(Framing::Chunked) => match chunked_len(&buf[head..])? {
            Some(n) => n,
            None => return Ok(None),
        },
    };
    Ok((buf.len() >= head + body).then_some(body))
}

fn parse_request(buf: &[u8]) -> Result<Option<Request>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head) = request.parse(buf)? else { return Ok(None) };
    let connection = request.headers.iter().find(|h| h.name.eq_ignore_ascii_case("connection"));
    let said = |word: &str| connection.is_some_and(|h| h.value.eq_ignore_ascii_case(word.as_bytes()));
    let close = said("close") || (request.version == Some(0) && !said("keep-alive"));
    let Some(body) = body_len(buf, head, framing(request.headers)?)? else { return Ok(None) };
    Ok(Some(Request { len: head + body, close }))
}

fn parse_response(buf: &[u8]) -> Result<Option<Response>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = response.parse(buf)? else { return Ok(None) };
    let status = response.code.unwrap_or(0);
    let framing = framing(response.headers)?;
    if framing.is_none() && !(status == 204 || status == 304 || (100..200).contains(&status)) {
        bail!("a {status} response without content-length or chunked encoding");
    }
    let start = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(falak_api::function::START_HEADER))
        .map(|h| String::from_utf8_lossy(h.value).into_owned());
    let Some(body) = body_len(buf, head, framing)? else { return Ok(None) };
    Ok(Some(Response { len: head + body, status, start }))
}

/// A client TLS configuration trusting only the mesh CA `ca_pem`: node gateways are HTTPS.
pub(crate) fn tls_config(ca_pem: &str) -> Result<std::sync::Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).context("the mesh CA")?)?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

/// A blocking keep-alive HTTP/1.1 connection (HTTPS when given a TLS configuration) that sends
/// one request at a time.
struct SyncConn {
    stream: Box<dyn ReadWrite>,
    buf: Vec<u8>,
}

impl SyncConn {
    fn connect(addr: SocketAddr, tls: Option<&std::sync::Arc<rustls::ClientConfig>>) -> Result<SyncConn> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let stream: Box<dyn ReadWrite> = match tls {
            Some(config) => {
                let name = rustls::pki_types::ServerName::from(addr.ip());
                let connection = rustls::ClientConnection::new(config.clone(), name)?;
                Box::new(rustls::StreamOwned::new(connection, stream))
            }
            None => Box::new(stream),
        };
        Ok(SyncConn { stream, buf: Vec::with_capacity(4096) })
    }

    fn round_trip(&mut self, request: &[u8]) -> Result<Response> {
        self.stream.write_all(request)?;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(response) = parse_response(&self.buf)? {
                self.buf.drain(..response.len);
                return Ok(response);
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                bail!("the connection closed before a full response");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// One request at a time on an async keep-alive connection.
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    request: &[u8],
) -> Result<Response> {
    stream.write_all(request).await?;
    loop {
        if let Some(response) = parse_response(buf)? {
            buf.drain(..response.len);
            return Ok(response);
        }
        if stream.read_buf(buf).await? == 0 {
            bail!("the connection closed before a full response");
        }
    }
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is an empty set; sched_getaffinity writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; the pointer and size describe `set`.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET reads the set within its bounds for every cpu < CPU_SETSIZE.
    Ok((0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect())
}

/// Run thread `tid` (0: the calling thread) on `cpus` only.
fn set_affinity(tid: i32, cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: CPU_SET writes within the set for cpu < CPU_SETSIZE, which allowed_cpus ensures.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: the pointer and size describe `set`; a tid of ours or of a process we started.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Run every thread of process `pid` on `cpus` only (threads it creates later inherit it).
fn pin_process(pid: i32, cpus: &[usize]) -> Result<()> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).with_context(|| format!("listing threads of {pid}"))?;
    for entry in tasks.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        match set_affinity(tid, cpus) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {} // the thread exited meanwhile
            Err(e) => bail!("sched_setaffinity({tid} of {pid}, {cpus:?}): {e}"),
        }
    }
    Ok(())
}

fn api_addr(api: &str) -> Result<SocketAddr> {
    api.trim_start_matches("https://").trim_end_matches('/').parse().with_context(|| format!("api address {api:?}"))
}

/// Sequential requests alternating between the gateway and the direct server, on one
/// keep-alive connection each, from a thread pinned to `client_cpu` (when given).
struct Alternated {
    gateway: Samples,
    direct: Samples,
    not_warm: usize,
}

fn alternate(
    auth: &str,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    gateway: SocketAddr,
    direct: SocketAddr,
    n: usize,
    warmup: usize,
    client_cpu: Option<usize>,
) -> Result<Alternated> {
    if let Some(cpu) = client_cpu {
        set_affinity(0, &[cpu]).context("pinning the client thread")?;
    }
    let via_gateway = format!("GET /fn/{NOOP}/ HTTP/1.1\r\nHost: {gateway}\r\n{auth}\r\n").into_bytes();
    let to_direct = format!("GET / HTTP/1.1\r\nHost: {direct}\r\n\r\n").into_bytes();
    let mut g = SyncConn::connect(gateway, Some(tls))?;
    let mut d = SyncConn::connect(direct, None)?;
    let mut out = Alternated { gateway: Samples::new(), direct: Samples::new(), not_warm: 0 };
    for i in 0..warmup + n {
        let t0 = Instant::now();
        let response = g.round_trip(&via_gateway)?;
        let took = t0.elapsed();
        if response.status != 200 {
            bail!("the gateway answered {}", response.status);
        }
        let warm = response.start.as_deref().is_some_and(|s| s.starts_with("warm;") || s == "warm");
        if i >= warmup {
            if warm {
                out.gateway.push(took);
            } else {
                out.not_warm += 1;
            }
        }
        let t0 = Instant::now();
        let response = d.round_trip(&to_direct)?;
        let took = t0.elapsed();
        if response.status != 200 {
            bail!("the direct server answered {}", response.status);
        }
        if i >= warmup {
            out.direct.push(took);
        }
    }
    Ok(out)
}

/// `conns` keep-alive connections each sending requests back to back for `duration`.
struct Throughput {
    requests: usize,
    elapsed: f64,
    latency: Samples,
    not_ok: usize,
    not_warm: usize,
}

/// Requests back to back on one connection until `deadline`: latencies, not-200s, not-warm.
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
    deadline: Instant,
) -> Result<(Vec<f64>, usize, usize)> {
    let mut buf = Vec::with_capacity(4096);
    let (mut latencies, mut not_ok, mut not_warm) = (Vec::with_capacity(1 << 16), 0usize, 0usize);
    while Instant::now() < deadline {
        let t0 = Instant::now();
        let response = round_trip(&mut stream, &mut buf, request).await?;
        latencies.push(t0.elapsed().as_secs_f64());
        not_ok += usize::from(response.status != 200);
        not_warm += usize::from(response.start.as_deref().is_some_and(|s| !s.starts_with("warm")));
    }
    Ok((latencies, not_ok, not_warm))
}

async fn throughput(
    addr: SocketAddr,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    request: Vec<u8>,
    conns: usize,
    duration: Duration,
) -> Result<Throughput> {
    let request: std::sync::Arc<[u8]> = request.into();
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (request, tls) = (request.clone(), tls.clone());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            match tls {
                Some(config) => {
                    let name = rustls::pki_types::ServerName::from(addr.ip());
                    let tls = tokio_rustls::TlsConnector::from(config).connect(name, stream).await?;
                    drive(tls, &request, deadline).await
                }
                None => drive(stream, &request, deadline).await,
            }
        }));
    }
    let mut out = Throughput { requests: 0, elapsed: 0.0, latency: Samples::new(), not_ok: 0, not_warm: 0 };
    for task in tasks {
        let (latencies, not_ok, not_warm) = task.await??;
        out.requests += latencies.len();
        for l in latencies {
            out.latency.push_secs(l);
        }
        out.not_ok += not_ok;
        out.not_warm += not_warm;
    }
    out.elapsed = start.elapsed().as_secs_f64();
    Ok(out)
}

async fn gateway(ctx: &Ctx, mesh: &Mesh) -> Result<Vec<Row>> {
    let node = &mesh.nodes[0];
    // Every gateway request carries the admin token (unlimited rate), as a real client's would.
    let auth = format!("Authorization: Bearer {}\r\n", mesh.token);
    // The gateway is HTTPS: the TLS cost is part of what it adds over the plain direct server.
    let tls = tls_config(&mesh.ca)?;
    let client = &node.client;
    let exe = std::env::current_exe().context("this binary's path")?;
    let exe = exe.to_str().context("this binary's path is not UTF-8")?;
    let readme = b"falak-bench serve-noop: the binary itself serves; this bundle is a placeholder\n";
    deploy(
        client,
        &format!(
            "name: {NOOP}\nkind: function\nruntime: http\ncommand: [{exe:?}, \"serve-noop\"]\ntimeout: 10s\n\
             scaling: {{ max_instances: 1, concurrency: {CONNECTIONS}, idle_timeout: 10m }}"
        ),
        bundle(&[("README", readme, 0o644)])?,
    )
    .await?;
    let gateway_addr = api_addr(&node.api)?;
    // First request starts the instance.
    let (first_auth, first_tls) = (auth.clone(), tls.clone());
    let first = tokio::task::spawn_blocking(move || -> Result<Response> {
        let auth = first_auth;
        SyncConn::connect(gateway_addr, Some(&first_tls))?
            .round_trip(format!("GET /fn/{NOOP}/ HTTP/1.1\r\nHost: x\r\n{auth}\r\n").as_bytes())
    })
    .await??;
    println!(
        "  deployed {NOOP} (http, `falak-bench serve-noop` on FALAK_SOCKET; max_instances 1, concurrency {CONNECTIONS}); first request {} {}",
        first.status,
        first.start.unwrap_or_default()
    );
    let instances = client.function_instances(NOOP).await?;
    let instance_pid = instances.first().and_then(|i| i.pid).context("the noop instance has no pid")? as i32;
    let node_pid = node.pid().context("the node is not running")?;

    let port = free_port()?;
    let direct_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let direct = Reaped(
        Command::new(exe)
            .arg("serve-noop")
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .spawn()
            .context("spawning the direct noop server")?,
    );
    within(Duration::from_secs(5), "the direct noop server listening", async {
        loop {
            if tokio::net::TcpStream::connect(direct_addr).await.is_ok() {
                return Ok(());
            }
            sleep_ms(5).await;
        }
    })
    .await?;
    let direct_pid = direct.0.id() as i32;
    let servers = [node_pid, instance_pid, direct_pid];

    let cpus = allowed_cpus()?;
    let (n, warmup) = (ctx.pick(5000, 500), ctx.pick(500, 100));
    println!(
        "  warm overhead: {n} sequential keep-alive GETs per path, alternating gateway (client → node → instance over its Unix socket) and direct (client → a second serve-noop over TCP), after {warmup} warm-up each"
    );
    let mut rows = Vec::new();
    // (name, what runs where, (client cpu, server cpu)).
    type Placement = (&'static str, &'static str, Option<(usize, usize)>);
    let placements: [Placement; 3] = [
        ("unpinned", "as scheduled", None),
        ("one-cpu", "client thread, node, instance and direct server on one cpu", cpus.first().map(|&c| (c, c))),
        (
            "two-cpus",
            "client thread on one cpu, node, instance and direct server on the other",
            cpus.get(1).map(|&s| (cpus[0], s)),
        ),
    ];
    for (placement, how, pins) in placements {
        let row_name = format!("gateway-overhead-{placement}");
        let result = async {
            if placement != "unpinned" && pins.is_none() {
                bail!("needs {} cpus; this process may use {cpus:?}", if placement == "one-cpu" { 1 } else { 2 });
            }
            if let Some((_, server)) = pins {
                for pid in servers {
                    pin_process(pid, &[server])?;
                }
            }
            let client_cpu = pins.map(|(c, _)| c);
            let (auth, tls) = (auth.clone(), tls.clone());
            let measured = tokio::task::spawn_blocking(move || {
                // A thread of its own, so that no pooled blocking thread keeps the pinning.
                std::thread::spawn(move || alternate(&auth, &tls, gateway_addr, direct_addr, n, warmup, client_cpu))
                    .join()
                    .map_err(|_| anyhow!("the client thread panicked"))?
            })
            .await?;
            for pid in servers {
                pin_process(pid, &cpus)?;
            }
            measured
        }
        .await;
        let m = match result {
            Ok(m) => m,
            Err(e) => {
                for pid in servers {
                    let _ = pin_process(pid, &cpus);
                }
                if placement == "unpinned" {
                    println!("  unpinned: {e:#}");
                } else {
                    rows.push(Row::error(&row_name, "≤ 150 µs added p50", &e));
                }
                continue;
            }
        };
        let added = m.gateway.p50() - m.direct.p50();
        let pins_text = pins.map_or(String::new(), |(c, s)| format!(" (client cpu {c}, servers cpu {s})"));
        println!("  {placement}{pins_text}: {how}");
        println!("    via the gateway: {}", latency_text(&m.gateway));
        println!("    direct:          {}", latency_text(&m.direct));
        println!(
            "    added p50 {}{}",
            fmt_secs(added),
            if m.not_warm > 0 {
                format!("; {} gateway answers not labelled warm, discarded", m.not_warm)
            } else {
                String::new()
            }
        );
        if placement == "unpinned" {
            continue;
        }
        let pass = added <= 150e-6;
        rows.push(Row {
            name: row_name,
            measured: format!("+{}: gateway {}", fmt_secs(added), latency_text(&m.gateway)),
            floor: format!("direct p50 {}, p99 {}", fmt_secs(m.direct.p50()), fmt_secs(m.direct.p99())),
            ratio: format!("p50 {}", fmt_ratio(m.gateway.p50(), m.direct.p50())),
            target: "≤ 150 µs added p50".into(),
            verdict: Verdict::of(pass),
            reason: format!(
                "{how}{pins_text}: gateway p50 {} − direct p50 {} = {} {} 150 µs",
                fmt_secs(m.gateway.p50()),
                fmt_secs(m.direct.p50()),
                fmt_secs(added),
                if pass { "≤" } else { ">" }
            ),
            data: serde_json::json!({
                "placement": placement,
                "client_cpu": pins.map(|(c, _)| c),
                "server_cpu": pins.map(|(_, s)| s),
                "gateway": m.gateway.json(),
                "direct": m.direct.json(),
                "added_p50_s": added,
                "not_warm": m.not_warm,
            }),
        });
    }

    let duration = if ctx.quick { Duration::from_secs(1) } else { Duration::from_secs(5) };
    println!(
        "  requests/s: {CONNECTIONS} keep-alive connections sending GETs back to back for {}, unpinned; the client (this harness, 2 tokio workers) shares the machine",
        fmt_secs(duration.as_secs_f64())
    );
    let via_gateway = format!("GET /fn/{NOOP}/ HTTP/1.1\r\nHost: {gateway_addr}\r\n{auth}\r\n").into_bytes();
    let to_direct = format!("GET / HTTP/1.1\r\nHost: {direct_addr}\r\n\r\n").into_bytes();
    let rps = async {
        let warm_up = Duration::from_millis(500);
        throughput(gateway_addr, Some(tls.clone()), via_gateway.clone(), CONNECTIONS, warm_up).await?;
        let g = throughput(gateway_addr, Some(tls.clone()), via_gateway, CONNECTIONS, duration).await?;
        let d = throughput(direct_addr, None, to_direct, CONNECTIONS, duration).await?;
        anyhow::Ok((g, d))
    }
    .await;
    drop(direct);
    let _ = client.remove_function(NOOP).await;
    match rps {
        Ok((g, d)) => {
            let (g_rate, d_rate) = (g.requests as f64 / g.elapsed, d.requests as f64 / d.elapsed);
            println!(
                "    via the gateway: {} ({} requests, {} not 200, {} not warm); latency {}",
                fmt_rate(g_rate),
                g.requests,
                g.not_ok,
                g.not_warm,
                latency_text(&g.latency)
            );
            println!(
                "    direct:          {} ({} requests, {} not 200); latency {}",
                fmt_rate(d_rate),
                d.requests,
                d.not_ok,
                latency_text(&d.latency)
            );
            let pass = g_rate >= 20_000.0 && g.not_ok == 0;
            rows.push(Row {
                name: "fn-requests-per-second".into(),
                measured: format!("{} ({CONNECTIONS} conns, p50 {})", fmt_rate(g_rate), fmt_secs(g.latency.p50())),
                floor: format!("direct {}", fmt_rate(d_rate)),
                ratio: fmt_ratio(g_rate, d_rate),
                target: "≥ 20,000/s per node".into(),
                verdict: Verdict::of(pass),
                reason: format!(
                    "{} through one node's gateway {} 20,000/s ({} not 200; direct {})",
                    fmt_rate(g_rate),
                    if g_rate >= 20_000.0 { "≥" } else { "<" },
                    g.not_ok,
                    fmt_rate(d_rate)
                ),
                data: serde_json::json!({
                    "connections": CONNECTIONS,
                    "duration_s": duration.as_secs_f64(),
                    "gateway": { "requests": g.requests, "per_sec": g_rate, "not_ok": g.not_ok, "not_warm": g.not_warm, "latency": g.latency.json() },
                    "direct": { "requests": d.requests, "per_sec": d_rate, "not_ok": d.not_ok, "latency": d.latency.json() },
                }),
            });
        }
        Err(e) => rows.push(Row::error("fn-requests-per-second", "≥ 20,000/s per node", &e)),
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests_and_responses() {
        let two = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST /a HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc";
        let r = parse_request(two).unwrap().unwrap();
        assert_eq!((r.len, r.close), (27, false));
        assert_eq!(parse_request(&two[27..]).unwrap().unwrap().len, two.len() - 27);
        assert!(parse_request(&two[27..two.len() - 1]).unwrap().is_none());
        let chunked = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n3;x=1\r\nabc\r\n0\r\nt: 1\r\n\r\n";
        let r = parse_request(chunked).unwrap().unwrap();
        assert_eq!((r.len, r.close), (chunked.len(), true));
        assert!(parse_request(&chunked[..chunked.len() - 2]).unwrap().is_none());
        let response = b"HTTP/1.1 200 OK\r\nfalak-start: warm; route=0.010\r\ncontent-length: 2\r\n\r\nokHTTP";
        let r = parse_response(response).unwrap().unwrap();
        assert_eq!((r.len, r.status, r.start.as_deref()), (response.len() - 4, 200, Some("warm; route=0.010")));
    }
}
