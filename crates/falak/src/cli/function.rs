//! `falak fn deploy | list | show | invoke | invocation | logs | instances | rm`.
//!
//! Deploying bundles the document's `source` here, on the deployer's machine: the node receives
//! the bundle's bytes (stored under their content id) and a document naming that id, never a
//! local path.

use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use falak_api::ErrorBody;
use falak_api::function::{FunctionDeployed, FunctionInfo, InstanceInfo, InvocationInfo, START_HEADER};
use falak_core::function::{FunctionDocument, InvocationId, InvocationState, Runtime, SnapshotPolicy};
use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue, RETRY_AFTER};

use super::Context;
use super::capsule::read_document;
use super::output::{Table, duration, or_dash, print_json, print_raw, timestamp};

#[derive(Debug, Subcommand)]
pub enum FunctionCommand {
    /// Bundle a function's `source`, upload it and deploy the function.
    Deploy(DeployArgs),
    /// List functions.
    List,
    /// Show one function.
    Show { name: String },
    /// Invoke a function through the gateway and print its answer.
    Invoke(InvokeArgs),
    /// Show one asynchronous invocation and its result.
    Invocation { name: String, id: InvocationId },
    /// Print the tail of a function's output, gathered from every node.
    Logs {
        name: String,
        /// At most this many trailing bytes per node.
        #[arg(long)]
        max_bytes: Option<usize>,
    },
    /// List a function's instances on every node.
    Instances { name: String },
    /// Remove a function and stop its instances.
    Rm { name: String },
    /// Deploy an earlier version again (as a new version with its spec and signature).
    Rollback {
        name: String,
        /// The version to bring back; the one before the current when absent.
        #[arg(long = "to", value_name = "VERSION")]
        to: Option<u32>,
    },
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The function document (YAML or JSON); `-` reads standard input. A relative `source` is
    /// relative to the document's directory.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Then wait until the function's `min_instances` instances of the new version are running.
    #[arg(long)]
    pub wait_ready: bool,
}

#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// The function to invoke.
    pub name: String,
    /// The request body: TEXT, @FILE, or `-` for standard input.
    #[arg(short = 'd', long, value_name = "DATA", value_parser = parse_data)]
    pub data: Option<Data>,
    /// The path after `/fn/NAME`, with an optional query.
    #[arg(long, default_value = "/", conflicts_with = "asynchronous")]
    pub path: String,
    /// The HTTP method [default: POST with --data, else GET].
    #[arg(short = 'X', long, value_parser = parse_method, conflicts_with = "asynchronous")]
    pub method: Option<Method>,
    /// A request header `name: value`; repeatable.
    #[arg(short = 'H', long = "header", value_name = "HEADER", value_parser = parse_header)]
    #[arg(conflicts_with = "asynchronous")]
    pub headers: Vec<(String, String)>,
    /// Print how the invocation started and what each stage took (the `falak-start` header) to
    /// standard error.
    #[arg(long, conflicts_with = "asynchronous")]
    pub show_start: bool,
    /// Record the invocation and return its id; the mesh runs it and retries failures.
    #[arg(long = "async")]
    pub asynchronous: bool,
    /// With --async: a URL the result is POSTed to when known.
    #[arg(long, value_name = "URL", requires = "asynchronous")]
    pub callback: Option<String>,
    /// With --async: attempts before the invocation fails (1 to 10; default 3).
    #[arg(long, value_name = "N", requires = "asynchronous")]
    pub attempts: Option<u32>,
    /// With --async: wait for the result and print it.
    #[arg(long, requires = "asynchronous")]
    pub wait: bool,
}

/// Where a request body comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    Text(String),
    File(PathBuf),
    Stdin,
}

impl Data {
    fn read(&self) -> anyhow::Result<Vec<u8>> {
        match self {
            Data::Text(text) => Ok(text.clone().into_bytes()),
            Data::File(path) => {
                std::fs::read(path).with_context(|| format!("cannot read --data file {}", path.display()))
            }
            Data::Stdin => {
                let mut body = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut body).context("cannot read standard input")?;
                Ok(body)
            }
        }
    }
}

/// `--data` as curl takes it: `@FILE` names a file, `-` (or `@-`) is standard input, anything
/// else is the body itself.
pub fn parse_data(text: &str) -> Result<Data, String> {
    match text {
        "-" | "@-" => Ok(Data::Stdin),
        _ => match text.strip_prefix('@') {
            Some("") => Err("`@` needs a file name, e.g. `--data @body.json`".to_owned()),
            Some(path) => Ok(Data::File(PathBuf::from(path))),
            None => Ok(Data::Text(text.to_owned())),
        },
    }
}

/// An HTTP method, in any case: `post`, `GET`.
pub fn parse_method(text: &str) -> Result<Method, String> {
    Method::from_bytes(text.trim().to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("{text:?} is not an HTTP method; use e.g. GET, POST or PUT"))
}

/// A header as curl takes it: `name: value`.
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    let Some((name, value)) = text.split_once(':') else {
        return Err(format!("header {text:?} must look like `name: value`"));
    };
    let (name, value) = (name.trim(), value.trim());
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("{name:?} is not a header name"))?;
    HeaderValue::from_str(value)
        .map_err(|_| format!("the value of header {name} has characters a header cannot carry"))?;
    Ok((name.to_string(), value.to_owned()))
}

pub async fn run(ctx: &Context, command: FunctionCommand) -> anyhow::Result<()> {
    match command {
        FunctionCommand::Deploy(args) => deploy(ctx, args).await,
        FunctionCommand::List => {
            let functions = ctx.client.functions().await?;
            if ctx.json() {
                return print_json(&functions);
            }
            print!("{}", render_list(&functions, ctx.client.base_url()));
            Ok(())
        }
        FunctionCommand::Show { name } => {
            let function = ctx.client.function(&name).await?;
            if ctx.json() {
                return print_json(&function);
            }
            print!("{}", render_show(&function, ctx.client.base_url()));
            Ok(())
        }
        FunctionCommand::Invoke(args) if args.asynchronous => invoke_async(ctx, args).await,
        FunctionCommand::Invoke(args) => invoke(ctx, args).await,
        FunctionCommand::Invocation { name, id } => {
            let info = ctx.client.invocation(&name, id).await?;
            if ctx.json() {
                return print_json(&info);
            }
            print!("{}", render_invocation(&info));
            Ok(())
        }
        FunctionCommand::Logs { name, max_bytes } => {
            let text = ctx.client.function_logs(&name, max_bytes).await?;
            if text.is_empty() {
                eprintln!("function {name} has written no output yet");
            }
            print_raw(&text)
        }
        FunctionCommand::Instances { name } => {
            let mut instances = ctx.client.function_instances(&name).await?;
            if ctx.json() {
                return print_json(&instances);
            }
            instances.sort_by(|a, b| (&a.node_name, a.instance).cmp(&(&b.node_name, b.instance)));
            print!("{}", render_instances(&name, &instances));
            Ok(())
        }
        FunctionCommand::Rm { name } => {
            let function = ctx.client.remove_function(&name).await?;
            if ctx.json() {
                return print_json(&function);
            }
            println!("function {} removed", function.name);
            Ok(())
        }
        FunctionCommand::Rollback { name, to } => {
            let function = ctx.client.rollback_function(&name, to).await?;
            if ctx.json() {
                return print_json(&function);
            }
            let from = to.map_or_else(|| "the previous version".to_owned(), |v| format!("version {v}"));
            println!("function {} version {} deployed: {from} again", function.name, function.version);
            Ok(())
        }
    }
}

async fn deploy(ctx: &Context, args: DeployArgs) -> anyhow::Result<()> {
    let file = &args.file;
    let text = read_document(file)?;
    let mut document = FunctionDocument::parse(&text)
        .with_context(|| format!("{} is not a valid function document", file_name(file)))?;
    let mut size = None;
    match document.source.take() {
        Some(source) => {
            let bundle = bundle_source(file, &source).await?;
            size = Some(bundle.len() as u64);
            let stored = ctx
                .client
                .store_artifact(bundle)
                .await
                .with_context(|| format!("cannot upload the bundle of {}", document.name))?;
            document.artifact = Some(stored.id);
        }
        None if document.artifact.is_some() => {}
        // A container function's code is its image, pinned to the digest the node pulls.
        None if document.runtime == Runtime::Container => {
            if let Some(image) = document.image.as_deref() {
                let what = format!("function {}", document.name);
                document.image = Some(super::capsule::pin_image(ctx, image, &what).await?);
            }
        }
        None => anyhow::bail!(
            "{} names no code; add `source: ./dir` (a directory, .tar or .tar.gz relative to the file) \
             and deploy again",
            file_name(file)
        ),
    }
    let deployed = ctx
        .write_once_here("deploying the function", async |client| client.deploy_function(&document).await)
        .await
        .with_context(|| format!("cannot deploy function {}", document.name))?;
    if !ctx.json() {
        println!("{}", deployed_line(&deployed, size, snapshot_policy(&document)));
    }
    if args.wait_ready {
        wait_ready(ctx, &deployed).await?;
    }
    if ctx.json() {
        return print_json(&deployed);
    }
    Ok(())
}

/// Where `source` as written in the document `file` is: relative to the file's directory (to
/// the working directory when the document comes from standard input).
pub fn source_path(file: &Path, source: &str) -> PathBuf {
    let source: PathBuf = Path::new(source).components().filter(|c| *c != Component::CurDir).collect();
    let dir = if file == Path::new("-") || source.is_absolute() { None } else { file.parent() };
    match dir.map(|d| d.join(&source)) {
        Some(path) if !path.as_os_str().is_empty() => path,
        None if !source.as_os_str().is_empty() => source,
        _ => PathBuf::from("."),
    }
}

/// Pack the document's `source` into a bundle, saying which path failed and why.
pub(super) async fn bundle_source(file: &Path, source: &str) -> anyhow::Result<Vec<u8>> {
    let path = source_path(file, source);
    match std::fs::metadata(&path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "source {} does not exist; `source: {source}` in {} is relative to the file's directory",
            path.display(),
            file_name(file)
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot read source {}", path.display())),
    }
    let packed = path.clone();
    tokio::task::spawn_blocking(move || falak_artifact::bundle::pack(&packed))
        .await
        .context("bundling the source stopped unexpectedly")?
        .with_context(|| format!("cannot bundle source {}", path.display()))
}

/// The snapshot policy the node applies to the document (the default depends on the runtime).
fn snapshot_policy(document: &FunctionDocument) -> SnapshotPolicy {
    document.snapshot.unwrap_or(match document.runtime {
        Runtime::Python => SnapshotPolicy::Zygote,
        Runtime::Http | Runtime::Exec | Runtime::Container => SnapshotPolicy::None,
    })
}

/// `function greet version 3 deployed (bundle 1a2b3c4d5e6f, 12.3 KiB; prepared on n1 in 412 ms, snapshot ready)`.
pub fn deployed_line(deployed: &FunctionDeployed, size: Option<u64>, snapshot: SnapshotPolicy) -> String {
    let what = if deployed.unchanged { "unchanged" } else { "deployed" };
    let bundle = match (deployed.artifact, size) {
        (Some(artifact), Some(n)) => format!("bundle {}, {}", artifact.short(), human_size(n)),
        (Some(artifact), None) => format!("bundle {}", artifact.short()),
        (None, _) => format!("image {}", deployed.image.as_deref().unwrap_or("?")),
    };
    let p = &deployed.prepare;
    let mut prepared = format!("prepared on {} in {} ms", p.node, p.millis);
    if p.dependencies {
        prepared.push_str(", dependencies installed");
    }
    if snapshot == SnapshotPolicy::Zygote {
        prepared.push_str(if p.snapshot { ", snapshot ready" } else { ", no snapshot yet" });
    }
    format!("function {} version {} {what} ({bundle}; {prepared})", deployed.name, deployed.version)
}

/// How often `--wait-ready` looks at the instances, and for how long.
const READY_POLL: Duration = Duration::from_millis(250);
const READY_LIMIT: Duration = Duration::from_secs(120);

/// Wait until `min_instances` instances of the deployed version are running.
async fn wait_ready(ctx: &Context, deployed: &FunctionDeployed) -> anyhow::Result<()> {
    let name = &deployed.name;
    let wanted = ctx.client.function(name).await?.scaling.min_instances as usize;
    if wanted == 0 {
        if !ctx.json() {
            eprintln!("{name} keeps no instance running (min_instances 0): its first request starts one");
        }
        return Ok(());
    }
    let mut last = None;
    for _ in 0..READY_LIMIT.as_millis() / READY_POLL.as_millis() {
        let instances = ctx.client.function_instances(name).await?;
        let ready = instances
            .iter()
            .filter(|i| i.version == deployed.version && matches!(i.state.as_str(), "IDLE" | "BUSY"))
            .count();
        if ready >= wanted {
            if !ctx.json() {
                eprintln!("{name} version {} is ready: {ready} instances running", deployed.version);
            }
            return Ok(());
        }
        if last != Some(ready) && !ctx.json() {
            eprintln!("waiting for {name}: {ready} of {wanted} instances running");
        }
        last = Some(ready);
        tokio::time::sleep(READY_POLL).await;
    }
    anyhow::bail!(
        "function {name} version {} has {} of {wanted} instances running after {}; see `falak fn instances {name}` \
         and `falak fn logs {name}`",
        deployed.version,
        last.unwrap_or(0),
        duration(READY_LIMIT.as_millis() as u64)
    )
}

/// Invoke through the gateway: the body goes to stdout as it came; any other status than 2xx
/// fails the command with the body on stderr.
async fn invoke(ctx: &Context, args: InvokeArgs) -> anyhow::Result<()> {
    let name = &args.name;
    let body = args.data.as_ref().map(Data::read).transpose()?;
    let method = args.method.unwrap_or(if body.is_some() { Method::POST } else { Method::GET });
    let response = ctx.client.invoke(name, method, &args.path, &args.headers, body.unwrap_or_default()).await?;
    let status = response.status();
    let header = |key| response.headers().get(key).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (start, retry_after) = (header(START_HEADER), header(RETRY_AFTER.as_str()));
    let body = response.bytes().await.with_context(|| format!("the answer of function {name} broke off"))?;
    if args.show_start {
        eprintln!("start: {}", start.as_deref().unwrap_or("- (no falak-start header)"));
    }
    if status.is_success() {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&body)?;
        return Ok(stdout.flush()?);
    }
    // Without a start header the function never ran: the answer is falak's own error.
    if start.is_none()
        && let Ok(ErrorBody { error }) = serde_json::from_slice::<ErrorBody>(&body)
    {
        let retry = retry_after.map(|s| format!("; retry in {s}s")).unwrap_or_default();
        anyhow::bail!("cannot invoke {name}: {} ({status}){retry}", error.message);
    }
    let mut stderr = std::io::stderr().lock();
    stderr.write_all(&body)?;
    if !body.is_empty() && !body.ends_with(b"\n") {
        stderr.write_all(b"\n")?;
    }
    anyhow::bail!("function {name} answered {status}")
}

/// How often `--async --wait` asks for the result: quickly at first, then every second.
const INVOCATION_POLL: [u64; 5] = [50, 100, 200, 500, 1000];

async fn invoke_async(ctx: &Context, args: InvokeArgs) -> anyhow::Result<()> {
    let name = &args.name;
    let body = args.data.as_ref().map(Data::read).transpose()?.unwrap_or_default();
    let info = ctx
        .write_once("recording the invocation", async |client| {
            client.invoke_async(name, body.clone(), args.callback.as_deref(), args.attempts).await
        })
        .await?;
    if !args.wait {
        if ctx.json() {
            return print_json(&info);
        }
        println!("invocation {} of {name} accepted (at most {} attempts)", info.id, info.max_attempts);
        println!("fetch its result with `falak fn invocation {name} {}`", info.id);
        return Ok(());
    }
    let mut info = info;
    for polls in 0.. {
        if info.state != InvocationState::Pending {
            break;
        }
        let ms = INVOCATION_POLL[polls.min(INVOCATION_POLL.len() - 1)];
        tokio::time::sleep(Duration::from_millis(ms)).await;
        info = ctx.client.invocation(name, info.id).await?;
    }
    if ctx.json() {
        print_json(&info)?;
    } else {
        print_raw(info.body.as_deref().unwrap_or(""))?;
        if info.truncated {
            eprintln!("(the result was cut; only its beginning is kept)");
        }
    }
    match info.state {
        InvocationState::Failed => anyhow::bail!(
            "invocation {} of {name} FAILED after {} attempts: {}",
            info.id,
            info.attempts,
            failure(&info)
        ),
        InvocationState::Succeeded | InvocationState::Pending => Ok(()),
    }
}

fn failure(info: &InvocationInfo) -> String {
    match (&info.error, info.status) {
        (Some(error), _) => error.clone(),
        (None, Some(status)) => format!("the function answered {status}"),
        (None, None) => "no answer".to_owned(),
    }
}

fn state_name(state: InvocationState) -> &'static str {
    match state {
        InvocationState::Pending => "PENDING",
        InvocationState::Succeeded => "SUCCEEDED",
        InvocationState::Failed => "FAILED",
    }
}

fn snapshot_name(policy: SnapshotPolicy) -> &'static str {
    match policy {
        SnapshotPolicy::Zygote => "zygote",
        SnapshotPolicy::None => "none",
    }
}

/// `812 B`, `12.3 KiB`, `4.0 MiB`.
pub fn human_size(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// The file as the user named it, or `standard input`.
fn file_name(file: &Path) -> String {
    if file == Path::new("-") { "standard input".to_owned() } else { file.display().to_string() }
}

pub fn render_list(functions: &[FunctionInfo], base_url: &str) -> String {
    if functions.is_empty() {
        return "no functions; deploy one with `falak fn deploy -f FILE`\n".to_owned();
    }
    let mut table = Table::new(&["NAME", "VERSION", "RUNTIME", "INSTANCES", "MIN/MAX", "CONCURRENCY", "URL"]);
    for f in functions {
        table.row(vec![
            f.name.clone(),
            f.version.to_string(),
            f.runtime.name().to_owned(),
            f.instances.to_string(),
            format!("{}/{}", f.scaling.min_instances, f.scaling.max_instances),
            f.scaling.concurrency.to_string(),
            format!("{base_url}{}", f.url_path),
        ]);
    }
    table.render()
}

pub fn render_show(f: &FunctionInfo, base_url: &str) -> String {
    let s = &f.scaling;
    let mut lines = vec![("name", f.name.clone()), ("version", f.version.to_string())];
    lines.push(("runtime", f.runtime.name().to_owned()));
    if let Some(handler) = &f.handler {
        lines.push(("handler", handler.clone()));
    }
    if !f.command.is_empty() {
        lines.push(("command", serde_json::to_string(&f.command).unwrap_or_default()));
    }
    if let Some(artifact) = f.artifact {
        lines.push(("bundle", artifact.to_string()));
    }
    if let Some(image) = &f.image {
        lines.push(("image", image.clone()));
    }
    lines.extend([
        (
            "scaling",
            format!(
                "min {}, max {}, concurrency {}, idle timeout {}",
                s.min_instances,
                s.max_instances,
                s.concurrency,
                duration(s.idle_timeout_ms)
            ),
        ),
        ("timeout", duration(f.timeout_ms)),
        ("snapshot", snapshot_name(f.snapshot).to_owned()),
        ("observers", f.observers.to_string()),
        ("deployed", timestamp(f.deployed_at)),
        ("instances", f.instances.to_string()),
        ("url", format!("{base_url}{}", f.url_path)),
    ]);
    if !f.earlier_versions.is_empty() {
        let kept: Vec<String> = f.earlier_versions.iter().map(u32::to_string).collect();
        lines.push(("earlier", format!("{} (falak fn rollback {} --to N)", kept.join(", "), f.name)));
    }
    key_values(&lines)
}

pub fn render_invocation(info: &InvocationInfo) -> String {
    let mut out = key_values(&[
        ("invocation", info.id.to_string()),
        ("function", info.function.clone()),
        ("state", state_name(info.state).to_owned()),
        ("attempts", format!("{} of {}", info.attempts, info.max_attempts)),
        ("submitted", timestamp(info.submitted_at)),
        ("finished", or_dash(info.finished_at.map(timestamp))),
        ("status", or_dash(info.status)),
        ("error", or_dash(info.error.as_deref())),
        ("owner", info.owner.clone()),
    ]);
    if let Some(body) = &info.body {
        out.push_str(if info.truncated { "body (cut):\n" } else { "body:\n" });
        out.push_str(body);
        if !body.is_empty() && !body.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

pub fn render_instances(name: &str, instances: &[InstanceInfo]) -> String {
    if instances.is_empty() {
        return format!("no instances of {name}; its next request starts one\n");
    }
    let mut table = Table::new(&["NODE", "INSTANCE", "VERSION", "STATE", "IN-FLIGHT", "START", "PID", "AGE"]);
    for i in instances {
        table.row(vec![
            i.node_name.clone(),
            i.instance.to_string(),
            i.version.to_string(),
            i.state.clone(),
            i.in_flight.to_string(),
            i.start.clone(),
            or_dash(i.pid),
            duration(i.age_ms),
        ]);
    }
    table.render()
}

/// `key: value` lines with the values aligned.
fn key_values(lines: &[(&str, String)]) -> String {
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    lines.iter().map(|(k, v)| format!("{:width$} {v}\n", format!("{k}:"))).collect()
}

#[cfg(test)]
mod tests {
    use falak_api::function::PrepareReport;
    use falak_api::{Action, ApiConfig, ApiError, Client, FunctionAction};
    use falak_core::ArtifactId;
    use falak_core::function::Scaling;
    use tokio::sync::mpsc;

    use super::super::output::Format;
    use super::*;

    #[test]
    fn data_is_text_a_file_or_standard_input() {
        assert_eq!(parse_data("hello"), Ok(Data::Text("hello".into())));
        assert_eq!(parse_data("@body.json"), Ok(Data::File("body.json".into())));
        assert_eq!(parse_data("-"), Ok(Data::Stdin));
        assert_eq!(parse_data("@-"), Ok(Data::Stdin));
        assert!(parse_data("@").unwrap_err().contains("needs a file name"));
        assert_eq!(Data::Text("{}".into()).read().unwrap(), b"{}");
        let error = format!("{:#}", Data::File("/nonexistent/body".into()).read().unwrap_err());
        assert!(error.starts_with("cannot read --data file /nonexistent/body: "), "{error}");
    }

    #[test]
    fn headers_and_methods_as_curl_takes_them() {
        assert_eq!(
            parse_header("Content-Type: application/json"),
            Ok(("content-type".into(), "application/json".into()))
        );
        assert_eq!(parse_header("x-a:b:c"), Ok(("x-a".into(), "b:c".into())));
        assert!(parse_header("no-colon").unwrap_err().contains("must look like `name: value`"));
        assert!(parse_header("bad name: v").unwrap_err().contains("is not a header name"));
        assert_eq!(parse_method("post"), Ok(Method::POST));
        assert!(parse_method("no way").is_err());
    }

    #[test]
    fn source_is_relative_to_the_document() {
        assert_eq!(source_path(Path::new("fns/greet/fn.yaml"), "./app"), Path::new("fns/greet/app"));
        assert_eq!(source_path(Path::new("fn.yaml"), "./app"), Path::new("app"));
        assert_eq!(source_path(Path::new("fn.yaml"), "."), Path::new("."));
        assert_eq!(source_path(Path::new("a/fn.yaml"), "."), Path::new("a"));
        assert_eq!(source_path(Path::new("a/fn.yaml"), "/srv/app.tgz"), Path::new("/srv/app.tgz"));
        assert_eq!(source_path(Path::new("-"), "app"), Path::new("app"));
    }

    #[test]
    fn invoke_flags_that_need_or_exclude_async() {
        use clap::Parser;
        let parse = |args: &[&str]| super::super::Cli::try_parse_from([&["falak", "fn", "invoke"], args].concat());
        let cli = parse(&["greet", "-d", "@b.json", "-H", "x-a: 1", "-X", "put", "--path", "/x"]).unwrap();
        let super::super::Command::Fn(FunctionCommand::Invoke(args)) = cli.command else { panic!() };
        assert_eq!(args.data, Some(Data::File("b.json".into())));
        assert_eq!((args.method, args.path.as_str()), (Some(Method::PUT), "/x"));
        assert!(parse(&["greet", "--async", "--wait", "--attempts", "2", "-d", "-"]).is_ok());
        for bad in [&["greet", "--wait"][..], &["greet", "--async", "--path", "/x"], &["greet", "--attempts", "2"]] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn deployed_lines_say_what_happened() {
        let mut deployed = FunctionDeployed {
            name: "greet".into(),
            version: 3,
            unchanged: false,
            artifact: Some(ArtifactId([0x1a; 32])),
            image: None,
            prepare: PrepareReport { node: "n1".into(), millis: 412, dependencies: false, snapshot: true },
        };
        assert_eq!(
            deployed_line(&deployed, Some(12_595), SnapshotPolicy::Zygote),
            "function greet version 3 deployed (bundle 1a1a1a1a1a1a, 12.3 KiB; prepared on n1 in 412 ms, snapshot ready)"
        );
        deployed.unchanged = true;
        assert_eq!(
            deployed_line(&deployed, None, SnapshotPolicy::None),
            "function greet version 3 unchanged (bundle 1a1a1a1a1a1a; prepared on n1 in 412 ms)"
        );
    }

    fn info() -> FunctionInfo {
        FunctionInfo {
            name: "greet".into(),
            version: 3,
            runtime: Runtime::Python,
            handler: Some("main.handle".into()),
            command: Vec::new(),
            artifact: Some(ArtifactId([0x1a; 32])),
            image: None,
            scaling: Scaling { min_instances: 0, max_instances: 8, concurrency: 4, idle_timeout_ms: 60_000 },
            timeout_ms: 30_000,
            snapshot: SnapshotPolicy::Zygote,
            observers: 2,
            deployed_at: 0,
            instances: 1,
            url_path: "/fn/greet".into(),
            earlier_versions: vec![1, 2],
        }
    }

    #[test]
    fn list_and_show() {
        expect_test::expect![[r#"
            NAME   VERSION  RUNTIME  INSTANCES  MIN/MAX  CONCURRENCY  URL
            greet  3        python   1          0/8      4            http://h:1/fn/greet
        "#]]
        .assert_eq(&render_list(&[info()], "http://h:1"));
        expect_test::expect![[r#"
            name:      greet
            version:   3
            runtime:   python
            handler:   main.handle
            bundle:    1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a
            scaling:   min 0, max 8, concurrency 4, idle timeout 1m00s
            timeout:   30s
            snapshot:  zygote
            observers: 2
            deployed:  1970-01-01T00:00:00Z
            instances: 1
            url:       http://h:1/fn/greet
            earlier:   1, 2 (falak fn rollback greet --to N)
        "#]]
        .assert_eq(&render_show(&info(), "http://h:1"));
    }

    #[test]
    fn instances_and_invocations() {
        let instance = InstanceInfo {
            node: "ab".into(),
            node_name: "n1".into(),
            instance: 7,
            version: 3,
            state: "IDLE".into(),
            in_flight: 0,
            start: "snapshot".into(),
            pid: Some(4242),
            age_ms: 4_200,
        };
        expect_test::expect![[r#"
            NODE  INSTANCE  VERSION  STATE  IN-FLIGHT  START     PID   AGE
            n1    7         3        IDLE   0          snapshot  4242  4.2s
        "#]]
        .assert_eq(&render_instances("greet", &[instance]));
        let invocation = InvocationInfo {
            id: 9,
            function: "greet".into(),
            state: InvocationState::Failed,
            attempts: 3,
            max_attempts: 3,
            submitted_at: 1_000,
            finished_at: Some(2_000),
            status: Some(500),
            body: Some("boom".into()),
            truncated: false,
            error: None,
            owner: "n1".into(),
        };
        expect_test::expect![[r#"
            invocation: 9
            function:   greet
            state:      FAILED
            attempts:   3 of 3
            submitted:  1970-01-01T00:00:01Z
            finished:   1970-01-01T00:00:02Z
            status:     500
            error:      -
            owner:      n1
            body:
            boom
        "#]]
        .assert_eq(&render_invocation(&invocation));
        assert_eq!(failure(&invocation), "the function answered 500");
    }

    /// A node that stores any bundle and deploys any document, checking that the document
    /// names the stored bundle and no local path.
    fn spawn_fake() -> String {
        let (tx, mut rx) = mpsc::channel::<Action>(16);
        tokio::spawn(async move {
            let mut stored = None;
            while let Some(action) = rx.recv().await {
                match action {
                    Action::Function(FunctionAction::StoreArtifact { bytes, reply }) => {
                        falak_artifact::bundle::validate(&bytes).unwrap();
                        let id = ArtifactId([7; 32]);
                        stored = Some(id);
                        let _ = reply.send(Ok(falak_api::function::ArtifactStored {
                            id,
                            size: bytes.len() as u64,
                            existed: false,
                        }));
                    }
                    Action::Function(FunctionAction::Deploy { document, reply, .. }) => {
                        assert_eq!((document.source.as_deref(), document.artifact), (None, stored));
                        let _ = reply.send(Ok(FunctionDeployed {
                            name: document.name.clone(),
                            version: 1,
                            unchanged: false,
                            artifact: document.artifact,
                            image: None,
                            prepare: PrepareReport {
                                node: "n1".into(),
                                millis: 5,
                                dependencies: false,
                                snapshot: true,
                            },
                        }));
                    }
                    other => other.fail(ApiError::internal("not scripted in this fake")),
                }
            }
        });
        let (auth, _) = falak_api::auth::one_token_for_tests(falak_core::access::Role::Admin);
        let router = falak_api::router(tx, ApiConfig::default(), auth);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        tokio::spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, router).await.unwrap();
        });
        url
    }

    fn context(url: &str) -> Context {
        let (_, token) = falak_api::auth::one_token_for_tests(falak_core::access::Role::Admin);
        let client = Client::new(url).unwrap().with_token(Some(token));
        Context { clients: vec![client.clone()], client, output: Format::Json }
    }

    /// Deploy `yaml` written to `fn.yaml` in `dir`; the error text when it fails.
    async fn deploy_in(dir: &Path, url: &str, yaml: &str) -> Result<(), String> {
        let file = dir.join("fn.yaml");
        std::fs::write(&file, yaml).unwrap();
        deploy(&context(url), DeployArgs { file, wait_ready: false }).await.map_err(|e| format!("{e:#}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deploy_bundles_the_source_beside_the_document() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("app")).unwrap();
        std::fs::write(dir.path().join("app/main.py"), "def handle(request):\n    return 'hi'\n").unwrap();
        let yaml = "name: greet\nkind: function\nruntime: python\nhandler: main.handle\nsource: ./app\n";
        assert_eq!(deploy_in(dir.path(), &spawn_fake(), yaml).await, Ok(()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_invocation_the_function_never_saw_is_falaks_error() {
        use clap::Parser;
        let cli = super::super::Cli::try_parse_from(["falak", "fn", "invoke", "greet", "-d", "hi"]).unwrap();
        let super::super::Command::Fn(FunctionCommand::Invoke(args)) = cli.command else { panic!() };
        let error = format!("{:#}", invoke(&context(&spawn_fake()), args).await.unwrap_err());
        assert_eq!(
            error,
            "cannot invoke greet: this node has no function gateway; cannot invoke greet (503 Service Unavailable)"
        );
    }

    #[tokio::test]
    async fn deploy_errors_name_the_file_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fn.yaml").display().to_string();
        let closed = "http://127.0.0.1:9";
        let error = deploy_in(dir.path(), closed, "name: greet\nkind: function\nruntime: python\nsource: ./app\n")
            .await
            .unwrap_err();
        assert!(error.starts_with(&format!("{file} is not a valid function document: field `handler`")), "{error}");

        let yaml = "name: greet\nkind: function\nruntime: python\nhandler: main.handle\n";
        let error = deploy_in(dir.path(), closed, yaml).await.unwrap_err();
        assert!(error.starts_with(&format!("{file} names no code; add `source: ./dir`")), "{error}");

        let error = deploy_in(dir.path(), closed, &format!("{yaml}source: ./app\n")).await.unwrap_err();
        let app = dir.path().join("app").display().to_string();
        assert_eq!(
            error,
            format!("source {app} does not exist; `source: ./app` in {file} is relative to the file's directory")
        );
    }
}
