//! The command line: global options, the subcommand tree, and where the API is.
//!
//! One file per subcommand group. Commands that talk to a node get a [`Context`] with a typed
//! client; `node` and `up` run daemons and take no client.

use std::path::Path;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use falak_api::Client;
use serde::Deserialize;

pub mod capsule;
pub mod deployer;
pub mod events;
pub mod explain;
pub mod function;
pub mod image;
pub mod job;
pub mod logging;
pub mod mesh;
pub mod node;
pub mod nodes;
pub mod output;
pub mod service;
pub mod token;
pub mod up;

use output::Format;

/// Falak: a decentralized compute mesh in one binary.
#[derive(Debug, Parser)]
#[command(name = "falak", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// The mesh dir (where `falak up` keeps a mesh: its --data-dir) [default: the nearest
    /// .falak/mesh.json in this directory or above, else the current mesh: see `falak mesh`]
    #[arg(long, global = true, env = "FALAK_MESH", value_name = "DIR")]
    pub mesh: Option<std::path::PathBuf>,
    /// API URL of any node [default: the mesh's nodes, else https://127.0.0.1:7070]
    #[arg(long, global = true, env = "FALAK_API", value_name = "URL")]
    pub api: Option<String>,
    /// Bearer token sent with every request [default: the mesh's admin token]
    #[arg(long, global = true, env = "FALAK_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// The mesh CA certificate to trust for the nodes' HTTPS [default: the mesh's]
    #[arg(long, global = true, env = "FALAK_CA", value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,
    /// The deployer key (Ed25519 PEM) that signs capsules and functions [default: the mesh's]
    #[arg(long, global = true, env = "FALAK_DEPLOYER_KEY", value_name = "FILE")]
    pub deployer_key: Option<std::path::PathBuf>,
    /// How to print answers.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a local mesh of node processes on loopback in the foreground; prints endpoints.
    Up(up::UpArgs),
    /// Run one node daemon; `admit` makes a join token, `revoke` throws a node out.
    Node(node::NodeArgs),
    /// Which mesh commands talk to: `current` shows it and why, `use DIR` sets it.
    #[command(subcommand)]
    Mesh(mesh::MeshCommand),
    /// List nodes: state, labels, free cpu/memory, tasks, voter/leader, rtt.
    Nodes,
    /// Apply, list and show capsules.
    #[command(subcommand)]
    Capsule(capsule::CapsuleCommand),
    /// Import, pull, list, inspect and remove the images of the node the CLI talks to.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Submit, watch and inspect jobs.
    #[command(subcommand)]
    Job(job::JobCommand),
    /// Apply, list and remove services.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Deploy, invoke and inspect functions.
    #[command(subcommand)]
    Fn(function::FunctionCommand),
    /// Show a task's decision record: every candidate's gravity terms and why it won or lost.
    Explain(explain::ExplainArgs),
    /// Print the event stream.
    Events(events::EventsArgs),
    /// Create, list and revoke API tokens (admin).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// List, trust and revoke the deployer keys that sign capsules and functions.
    #[command(subcommand)]
    Deployer(deployer::DeployerCommand),
    /// Make a new deployer key pair in FILE (0600) and print its public key; no mesh needed.
    DeployerKey {
        /// Where to write the private key (must not exist).
        file: std::path::PathBuf,
    },
}

/// What a command that talks to a node needs.
pub struct Context {
    /// The node the command asks: `--api`, else the first of the mesh file.
    pub client: Client,
    /// Every node the command may ask, `client` first: the others of the mesh file when no
    /// `--api` was given. Where a retried write or a followed event stream moves to when a node
    /// does not answer.
    pub clients: Vec<Client>,
    pub output: Format,
}

/// How long a write is retried, through every node in turn, before the command gives up.
const WRITE_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(60);

impl Context {
    fn new(global: &Global) -> anyhow::Result<Context> {
        let mesh = mesh::for_command(global)?.map(|mesh| mesh.mesh_file());
        let mesh = mesh.as_deref();
        let urls = resolve_apis(global.api.as_deref(), mesh)?;
        let token = resolve_token(global.token.as_deref(), mesh)?;
        let deployer = resolve_deployer(global.deployer_key.as_deref(), mesh)?;
        let ca = resolve_ca(global.ca.as_deref(), mesh)?;
        let mut clients = Vec::new();
        for url in &urls {
            let mut client = Client::new(url)?.with_token(token.clone()).with_deployer(deployer.clone());
            if let Some(ca) = &ca {
                client = client.with_ca(ca)?;
            } else if url.starts_with("https://") {
                anyhow::bail!(
                    "{url} is HTTPS and no mesh CA certificate is known; pass --ca FILE (a node's ca.crt, or credentials/ca.crt from `falak up`), set FALAK_CA, or name the mesh with --mesh DIR"
                );
            }
            clients.push(client);
        }
        let client = clients.first().cloned().context("no API URL is known; pass --api URL")?;
        Ok(Context { client, clients, output: global.output })
    }

    pub fn json(&self) -> bool {
        self.output == Format::Json
    }

    /// Make one write that creates something, under a new idempotency key, retrying it through
    /// every node in turn while it fails in a way that may be temporary (no answer, `503`):
    /// with the key, the ledger applies it once however many attempts reached it. `what` names
    /// the write in the retry notes printed to stderr.
    pub async fn write_once<T>(
        &self,
        what: &str,
        write: impl AsyncFn(&Client) -> Result<T, falak_api::ClientError>,
    ) -> anyhow::Result<T> {
        self.retry_keyed(what, &self.clients, write).await
    }

    /// [`Context::write_once`] through this command's node only (a function deploy: its bundle
    /// is stored there).
    pub async fn write_once_here<T>(
        &self,
        what: &str,
        write: impl AsyncFn(&Client) -> Result<T, falak_api::ClientError>,
    ) -> anyhow::Result<T> {
        self.retry_keyed(what, std::slice::from_ref(&self.client), write).await
    }

    async fn retry_keyed<T>(
        &self,
        what: &str,
        clients: &[Client],
        write: impl AsyncFn(&Client) -> Result<T, falak_api::ClientError>,
    ) -> anyhow::Result<T> {
        let key = new_idempotency_key();
        let clients: Vec<Client> = clients.iter().map(|c| c.clone().with_idempotency_key(Some(key.clone()))).collect();
        let deadline = tokio::time::Instant::now() + WRITE_RETRY_FOR;
        let mut nodes = Rotation::new(&clients);
        loop {
            match write(nodes.current()).await {
                Ok(value) => return Ok(value),
                Err(error) if error.is_retryable() && tokio::time::Instant::now() < deadline => {
                    let next = nodes.advance().await;
                    eprintln!(
                        "{what}: {error}\n  retrying through {} with the same Idempotency-Key ({key}): it takes effect once",
                        next.base_url()
                    );
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}

/// Takes turns through the nodes a command may ask, pausing after each full round so that an
/// election in progress can finish.
pub struct Rotation<'a> {
    clients: &'a [Client],
    turn: usize,
}

impl<'a> Rotation<'a> {
    /// Starting with the first of `clients`, which must not be empty.
    pub fn new(clients: &'a [Client]) -> Rotation<'a> {
        debug_assert!(!clients.is_empty(), "a rotation needs a node");
        Rotation { clients, turn: 0 }
    }

    pub fn current(&self) -> &'a Client {
        &self.clients[self.turn % self.clients.len()]
    }

    /// Move to the next node, after a pause when every node has had its turn.
    pub async fn advance(&mut self) -> &'a Client {
        self.turn += 1;
        if self.turn.is_multiple_of(self.clients.len()) {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        self.current()
    }
}

/// A fresh idempotency key: `falak-` and 128 random bits in hex.
fn new_idempotency_key() -> falak_core::ledger::IdempotencyKey {
    let bits: [u8; 16] = rand::random();
    let text = format!("falak-{}", bits.iter().map(|b| format!("{b:02x}")).collect::<String>());
    text.parse().expect("hex is a valid idempotency key")
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Node(node::NodeArgs { command: Some(command), .. }) => {
            restore_sigpipe();
            node::admin(&Context::new(&cli.global)?, command).await
        }
        Command::Node(args) => node::run(args).await,
        Command::Mesh(command) => mesh::run(&cli.global, command),
        Command::DeployerKey { file } => deployer::new_key(&file),
        command => {
            restore_sigpipe();
            let ctx = Context::new(&cli.global)?;
            match command {
                Command::Nodes => nodes::run(&ctx).await,
                Command::Capsule(command) => capsule::run(&ctx, command).await,
                Command::Image(command) => image::run(&ctx, command).await,
                Command::Job(command) => job::run(&ctx, command).await,
                Command::Service(command) => service::run(&ctx, command).await,
                Command::Fn(command) => function::run(&ctx, command).await,
                Command::Explain(args) => explain::run(&ctx, args).await,
                Command::Events(args) => events::run(&ctx, args).await,
                Command::Token(command) => token::run(&ctx, command).await,
                Command::Deployer(command) => deployer::run(&ctx, command).await,
                Command::Up(_) | Command::Node(_) | Command::Mesh(_) | Command::DeployerKey { .. } => {
                    unreachable!("handled above")
                }
            }
        }
    }
}

/// Let a client command die quietly when its output pipe closes (`falak job list | head`), as
/// command-line tools do, instead of panicking on the write. Daemons (`node`, `up`) keep Rust's
/// default of ignoring SIGPIPE: a peer closing a socket must never kill a node.
fn restore_sigpipe() {
    // SAFETY: setting a signal disposition to its default before any thread writes to stdout.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// How to run this very binary from a shell, for the commands `falak` prints for people to
/// copy: `falak` when that is what PATH finds, else its absolute path (after `cargo run`,
/// `target/release/falak` is not on PATH).
pub fn self_command() -> String {
    match std::env::current_exe() {
        Ok(exe) => command_for(&exe, std::env::var_os("PATH").as_deref()),
        Err(_) => "falak".to_owned(),
    }
}

/// How to put this binary on PATH, when PATH does not find it as `falak`.
pub fn path_hint() -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    let path = std::env::var_os("PATH");
    if command_for(&exe, path.as_deref()) == "falak" {
        return None;
    }
    let what = match path.as_deref().and_then(|path| first_on_path(path, "falak")) {
        Some(other) => format!("the `falak` on your PATH is {}, not this binary", other.display()),
        None => "`falak` is not on your PATH".to_owned(),
    };
    let dir = exe.parent()?;
    Some(format!(
        "{what}; to type just `falak`: export PATH=\"{}:$PATH\" (or, in the source checkout: \
         cargo install --path crates/falak --locked)",
        dir.display()
    ))
}

fn command_for(exe: &Path, path: Option<&std::ffi::OsStr>) -> String {
    let same = |found: &Path| match (std::fs::canonicalize(found), std::fs::canonicalize(exe)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if path.and_then(|path| first_on_path(path, "falak")).is_some_and(|found| same(&found)) {
        "falak".to_owned()
    } else {
        shell_word(&exe.display().to_string())
    }
}

/// The executable file a shell runs for `name`.
fn first_on_path(path: &std::ffi::OsStr, name: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    std::env::split_paths(path).map(|dir| dir.join(name)).find(|candidate| executable(candidate))
}

/// `text` as one shell word: as it is when it needs no quoting, else in single quotes.
fn shell_word(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// The API URL used when nothing else names one.
pub const DEFAULT_API: &str = "https://127.0.0.1:7070";

/// The part of `mesh.json` the CLI reads.
#[derive(Debug, Deserialize)]
struct MeshFile {
    #[serde(default)]
    nodes: Vec<MeshNode>,
    /// The admin token `falak up` wrote.
    #[serde(default)]
    token_file: Option<std::path::PathBuf>,
    /// The mesh CA certificate.
    #[serde(default)]
    ca_cert: Option<std::path::PathBuf>,
    /// The deployer key `falak up` wrote.
    #[serde(default)]
    deployer_key_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Deserialize)]
struct MeshNode {
    api_url: String,
    /// `running` or `exited`, as `falak up` last saw the node.
    #[serde(default)]
    state: Option<String>,
}

/// The API URL a command asks first (see [`resolve_apis`]).
#[cfg(test)]
pub fn resolve_api(flag: Option<&str>, mesh_file: Option<&Path>) -> anyhow::Result<String> {
    Ok(resolve_apis(flag, mesh_file)?.swap_remove(0))
}

/// Every API URL a command may use, the one to ask first first: `--api`/`FALAK_API` alone,
/// else every node of the mesh file when there is one, else [`DEFAULT_API`]. Never empty.
pub fn resolve_apis(flag: Option<&str>, mesh_file: Option<&Path>) -> anyhow::Result<Vec<String>> {
    if let Some(url) = flag.filter(|u| !u.trim().is_empty()) {
        return Ok(vec![url.trim().to_owned()]);
    }
    let Some(mesh_file) = mesh_file else { return Ok(vec![DEFAULT_API.to_owned()]) };
    let text = match std::fs::read_to_string(mesh_file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![DEFAULT_API.to_owned()]),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", mesh_file.display())),
    };
    let mesh: MeshFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a mesh file; pass --api URL", mesh_file.display()))?;
    // Nodes `falak up` saw exit go last: asked only when no running one answers.
    let mut nodes: Vec<MeshNode> = mesh.nodes.into_iter().filter(|n| !n.api_url.is_empty()).collect();
    nodes.sort_by_key(|n| n.state.as_deref() == Some("exited"));
    let urls: Vec<String> = nodes.into_iter().map(|n| n.api_url).collect();
    if urls.is_empty() {
        anyhow::bail!("{} lists no node with an api_url; pass --api URL", mesh_file.display());
    }
    Ok(urls)
}

/// The deployer key: `--deployer-key`/`FALAK_DEPLOYER_KEY`, else the one the mesh file names,
/// else none (capsules and functions then go unsigned and the node says so).
pub fn resolve_deployer(
    flag: Option<&Path>,
    mesh_file: Option<&Path>,
) -> anyhow::Result<Option<std::sync::Arc<falak_core::signing::DeployerKey>>> {
    let path = match flag {
        Some(path) => path.to_owned(),
        None => {
            let Some(Ok(text)) = mesh_file.map(std::fs::read_to_string) else { return Ok(None) };
            let Ok(mesh) = serde_json::from_str::<MeshFile>(&text) else { return Ok(None) };
            let Some(path) = mesh.deployer_key_file else { return Ok(None) };
            path
        }
    };
    let pem =
        std::fs::read_to_string(&path).with_context(|| format!("cannot read the deployer key {}", path.display()))?;
    let key = falak_core::signing::DeployerKey::from_pem(&pem).with_context(|| path.display().to_string())?;
    Ok(Some(std::sync::Arc::new(key)))
}

/// The mesh CA certificate (PEM): `--ca`/`FALAK_CA`, else the one the mesh file names, else
/// none.
pub fn resolve_ca(flag: Option<&Path>, mesh_file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let path = match flag {
        Some(path) => path.to_owned(),
        None => {
            let Some(Ok(text)) = mesh_file.map(std::fs::read_to_string) else { return Ok(None) };
            let Ok(mesh) = serde_json::from_str::<MeshFile>(&text) else { return Ok(None) };
            let Some(path) = mesh.ca_cert else { return Ok(None) };
            path
        }
    };
    let pem = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the mesh CA certificate {}", path.display()))?;
    Ok(Some(pem))
}

/// The bearer token: `--token`/`FALAK_TOKEN`, else the admin token named by the mesh file when
/// it exists, else none (the node will answer `401` and say how to get one).
pub fn resolve_token(flag: Option<&str>, mesh_file: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Some(token) = flag.map(str::trim).filter(|t| !t.is_empty()) {
        return Ok(Some(token.to_owned()));
    }
    let Some(mesh_file) = mesh_file else { return Ok(None) };
    let Ok(text) = std::fs::read_to_string(mesh_file) else { return Ok(None) };
    let Ok(mesh) = serde_json::from_str::<MeshFile>(&text) else { return Ok(None) };
    let Some(path) = mesh.token_file else { return Ok(None) };
    let token = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the token file {} named in {}", path.display(), mesh_file.display()))?;
    Ok(Some(token.trim().to_owned()).filter(|t| !t.is_empty()))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("falak").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli = parse(&["job", "list", "--api", "http://h:1", "-o", "json"]).unwrap();
        assert_eq!(cli.global.api.as_deref(), Some("http://h:1"));
        assert_eq!(cli.global.output, Format::Json);
        assert!(matches!(cli.command, Command::Job(job::JobCommand::List { .. })));
        let cli = parse(&["--output", "table", "nodes"]).unwrap();
        assert!(matches!(cli.command, Command::Nodes));
    }

    #[test]
    fn submit_takes_tasks_or_inputs_not_both() {
        let cli = parse(&["job", "submit", "hello", "--tasks", "4", "--retries", "2", "--wait"]).unwrap();
        let Command::Job(job::JobCommand::Submit(args)) = cli.command else { panic!() };
        assert_eq!((args.capsule.as_str(), args.tasks, args.retries, args.wait), ("hello", Some(4), Some(2), true));
        let error = parse(&["job", "submit", "hello", "--tasks", "4", "--inputs", "f.txt"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn node_runs_a_daemon_or_admits_and_revokes() {
        let cli = parse(&["node", "admit", "--ttl", "2h", "--uses", "3"]).unwrap();
        let Command::Node(node::NodeArgs { command: Some(node::NodeCommand::Admit { ttl, uses }), .. }) = cli.command
        else {
            panic!("{:?}", cli.command)
        };
        assert_eq!((ttl.as_secs(), uses), (7200, 3));
        let cli = parse(&["node", "admit"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Node(node::NodeArgs { command: Some(node::NodeCommand::Admit { uses: 1, .. }), .. })
        ));
        let cli = parse(&["node", "revoke", "node-3", "--api", "https://127.0.0.1:1"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Node(node::NodeArgs { command: Some(node::NodeCommand::Revoke { node }), .. }) if node == "node-3"
        ));
        let cli = parse(&["node", "--name", "n9", "--join", "falak-join-v2.00"]).unwrap();
        let Command::Node(args) = cli.command else { panic!() };
        assert!(args.command.is_none() && args.name.as_deref() == Some("n9"));
        assert!(
            parse(&["node", "--name", "n9", "revoke", "x"]).is_err(),
            "daemon flags do not mix with admin commands"
        );
        assert!(matches!(
            parse(&["node", "tokens"]).unwrap().command,
            Command::Node(node::NodeArgs { command: Some(node::NodeCommand::Tokens), .. })
        ));
        let cli = parse(&["node", "revoke-token", "0707070707070707"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Node(node::NodeArgs { command: Some(node::NodeCommand::RevokeToken { .. }), .. })
        ));
        assert!(parse(&["node", "revoke-token", "nope"]).is_err());
    }

    #[test]
    fn ids_are_checked_while_parsing() {
        let error = parse(&["job", "status", "x7"]).unwrap_err().to_string();
        assert!(error.contains("is not a job id"), "{error}");
        assert!(parse(&["job", "status", "7"]).is_ok(), "a bare number is a job id");
        assert!(parse(&["explain", "j1-t0"]).is_ok());
        assert!(parse(&["explain", "j1"]).is_err());
    }

    #[test]
    fn printed_commands_name_the_binary_that_runs() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (bin, other) = (dir.path().join("bin"), dir.path().join("other"));
        for d in [&bin, &other] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("falak"), "").unwrap();
            std::fs::set_permissions(d.join("falak"), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let exe = bin.join("falak");
        let path = |dirs: &[&Path]| std::env::join_paths(dirs).unwrap();
        assert_eq!(command_for(&exe, Some(&path(&[&bin]))), "falak");
        assert_eq!(command_for(&exe, Some(&path(&[&other, &bin]))), exe.display().to_string(), "another falak first");
        assert_eq!(command_for(&exe, None), exe.display().to_string());
        assert_eq!(shell_word("/a b/it's"), r"'/a b/it'\''s'");
    }

    #[test]
    fn the_api_comes_from_the_flag_then_the_mesh_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.json");
        assert_eq!(resolve_apis(None, None).unwrap(), [DEFAULT_API]);
        let mesh = Some(path.as_path());
        assert_eq!(resolve_apis(None, mesh).unwrap(), [DEFAULT_API], "no mesh.json: the mesh is not running");
        std::fs::write(
            &path,
            r#"{ "name": "local", "nodes": [{ "name": "n1", "pid": 42, "api_url": "http://127.0.0.1:7301" }, { "name": "n2", "pid": 43, "api_url": "http://127.0.0.1:7302" }], "join_token": "t" }"#,
        )
        .unwrap();
        assert_eq!(resolve_apis(None, mesh).unwrap(), ["http://127.0.0.1:7301", "http://127.0.0.1:7302"]);
        assert_eq!(resolve_apis(Some("http://x:1"), mesh).unwrap(), ["http://x:1"], "--api names one node");
        std::fs::write(
            &path,
            r#"{ "nodes": [{ "api_url": "http://a:1", "state": "exited", "pid": null }, { "api_url": "http://b:1", "state": "running", "pid": 7 }] }"#,
        )
        .unwrap();
        assert_eq!(resolve_apis(None, mesh).unwrap(), ["http://b:1", "http://a:1"], "exited nodes go last");
        std::fs::write(&path, "not json").unwrap();
        let error = format!("{:#}", resolve_apis(None, mesh).unwrap_err());
        assert!(error.contains("is not a mesh file"), "{error}");
    }
}
