//! Cold starts: a fresh python `serve` process, an `http` program, a container, or an `exec`
//! instance.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use falak_core::function::Runtime;
use serde::Deserialize;
use tokio::io::AsyncBufReadExt;
use tokio::time::Instant;

use crate::client::{Client, Target};
use crate::error::StartError;
use crate::exec::ExecRunner;
use crate::instance::{Health, Ident, Instance, StartKind, StartTimings};
use crate::prepare::Prepared;
use falak_exec::workload::Enclosure;
use falak_exec::workload::{Launch, Process, arg, launch};

use crate::sandbox::{Needs, enclose};

/// How often an `http` instance's socket and port are tried at first, and at most.
const FIRST_PROBE: Duration = Duration::from_millis(1);
/// A failed connect costs microseconds; a long interval costs the start up to its length
/// (a container is ready after 10–25 ms: at 25 ms the probe added 4 ms at p50).
const MAX_PROBE: Duration = Duration::from_millis(4);
/// How long a process that closed its readiness pipe gets to exit before we say so anyway.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// Start instance `instance` from scratch: python runs the runtime host's `serve` mode, `http`
/// runs the command, `exec` makes an instance with no long-lived process. Resolves once the
/// instance accepts requests.
pub async fn spawn(prepared: &Prepared, instance: u64) -> Result<Instance, StartError> {
    let spec = prepared.spec();
    let ident = Ident { deployment: spec.deployment.clone(), instance, log_path: spec.log_path.clone() };
    match spec.runtime {
        Runtime::Python => spawn_python(prepared, ident).await,
        Runtime::Http => spawn_http(prepared, ident).await,
        Runtime::Container => crate::container::spawn(prepared, ident).await,
        Runtime::Exec => {
            let made = enclose(prepared, &format!("instance {instance}"), &format!("i{instance}"), Needs::TMP).await?;
            Ok(Instance::exec(ident, ExecRunner::new(prepared, instance, made.enclosure)))
        }
    }
}

async fn spawn_python(prepared: &Prepared, ident: Ident) -> Result<Instance, StartError> {
    let spec = prepared.spec();
    let socket = prepared.instance_socket(ident.instance);
    let host = host_script(prepared);
    let args: Vec<OsString> = vec![
        "-u".into(),
        arg(&host),
        "serve".into(),
        "--bundle".into(),
        arg(&spec.bundle_dir),
        "--handler".into(),
        spec.handler.clone().unwrap_or_default().into(),
        "--socket".into(),
        arg(&socket),
    ];
    let what = format!("instance {}", ident.instance);
    let name = format!("i{}", ident.instance);
    let started = Instant::now();
    let mut made = enclose(prepared, &what, &name, Needs::LAUNCH).await?;
    let mut env = prepared.instance_env(ident.instance);
    env.extend(prepared.tmp_env(&prepared.tmp_dir(&name)));
    let launched = launch(Launch {
        program: prepared.interpreter(),
        args,
        cwd: &spec.bundle_dir,
        env,
        log_path: &spec.log_path,
        ready_pipe: true,
        piped: false,
        confinement: made.confinement(&spec.sandbox),
    })
    .map_err(|source| StartError::Spawn {
        deployment: spec.deployment.clone(),
        what: what.clone(),
        program: prepared.interpreter().to_owned(),
        source,
    })?;
    let spawned = Instant::now();
    let process = launched.process;
    let enclosure = made.enclosure;
    wait_ready(prepared, &what, &process, launched.ready, &enclosure).await?;
    let client = Client::new(Target::Unix(socket));
    healthy(prepared, &ident, &process, &client, Health::Endpoint).await?;
    let timings =
        StartTimings { kind: StartKind::Cold, spawn_us: micros(spawned - started), init_us: micros(spawned.elapsed()) };
    Ok(Instance::served(ident, timings, process, client, Health::Endpoint, enclosure))
}

async fn spawn_http(prepared: &Prepared, ident: Ident) -> Result<Instance, StartError> {
    let spec = prepared.spec();
    let deployment = spec.deployment.clone();
    let what = format!("instance {}", ident.instance);
    let socket = prepared.instance_socket(ident.instance);
    let _ = tokio::fs::remove_file(&socket).await;
    let port = free_port().map_err(|source| StartError::Io {
        deployment: deployment.clone(),
        what: "finding a free port for PORT".to_owned(),
        source,
    })?;
    let name = format!("i{}", ident.instance);
    let mut env = prepared.instance_env(ident.instance);
    env.insert("PORT".into(), port.to_string().into());
    env.extend(prepared.tmp_env(&prepared.tmp_dir(&name)));
    let program = prepared.program().map(Path::to_owned).unwrap_or_else(|| spec.command.first().into_iter().collect());
    let started = Instant::now();
    let mut made = enclose(prepared, &what, &name, Needs::LAUNCH).await?;
    let launched = launch(Launch {
        program: &program,
        args: spec.command.iter().skip(1).map(OsString::from).collect(),
        cwd: &spec.bundle_dir,
        env,
        log_path: &spec.log_path,
        ready_pipe: false,
        piped: false,
        // The node may reach the program on 127.0.0.1:$PORT: see `WorkloadSandbox::network`.
        confinement: made.confinement(&spec.sandbox),
    })
    .map_err(|source| StartError::Spawn {
        deployment: deployment.clone(),
        what: what.clone(),
        program,
        source,
    })?;
    let spawned = Instant::now();
    let process = launched.process;
    let enclosure = made.enclosure;
    let tcp = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let said = format!("FALAK_SOCKET {} or PORT {port}", socket.display());
    let listening = Listening { socket: &socket, tcp: Some(tcp), said: &said };
    let client = connect(prepared, &what, &process, &enclosure, listening, spawned).await?;
    let timings =
        StartTimings { kind: StartKind::Cold, spawn_us: micros(spawned - started), init_us: micros(spawned.elapsed()) };
    Ok(Instance::served(ident, timings, process, client, Health::Connect, enclosure))
}

/// Where a served instance listens: its Unix socket as the node sees it, maybe a TCP port,
/// and how to say so in an error.
pub(crate) struct Listening<'a> {
    pub socket: &'a Path,
    pub tcp: Option<std::net::SocketAddr>,
    pub said: &'a str,
}

/// Connect to a new instance once it listens on its socket or port: tried at growing intervals
/// until the start timeout from `spawned`, or until its process exits.
pub(crate) async fn connect(
    prepared: &Prepared,
    what: &str,
    process: &Process,
    enclosure: &Enclosure,
    listening: Listening<'_>,
    spawned: Instant,
) -> Result<std::sync::Arc<Client>, StartError> {
    let spec = prepared.spec();
    let deployment = spec.deployment.clone();
    let deadline = spawned + prepared.start_timeout();
    let mut probe = FIRST_PROBE;
    loop {
        if let Ok(stream) = tokio::net::UnixStream::connect(listening.socket).await {
            let client = Client::new(Target::Unix(listening.socket.to_owned()));
            let _ = client.adopt(stream).await;
            return Ok(client);
        }
        if let Some(tcp) = listening.tcp
            && let Ok(stream) = tokio::net::TcpStream::connect(tcp).await
        {
            let _ = stream.set_nodelay(true);
            let client = Client::new(Target::Tcp(tcp));
            let _ = client.adopt(stream).await;
            return Ok(client);
        }
        if !process.is_alive() {
            let status = exit_status(process, enclosure, "exited").await;
            return Err(StartError::Exited { deployment, what: what.to_owned(), status, log: spec.log_path.clone() });
        }
        if Instant::now() >= deadline {
            return Err(StartError::Timeout {
                deployment,
                what: format!("{what} (listening on {})", listening.said),
                timeout: prepared.start_timeout(),
                log: spec.log_path.clone(),
            });
        }
        tokio::time::sleep(probe).await;
        probe = (probe * 2).min(MAX_PROBE);
    }
}

/// How a process that exited during its start ended: its exit status, or its memory limit
/// when that killed it.
/// `still_running` says what happened when it does not exit within [`EXIT_WAIT`].
async fn exit_status(process: &Process, enclosure: &Enclosure, still_running: &str) -> String {
    let status = tokio::time::timeout(EXIT_WAIT, process.exited()).await.map(|exit| exit.description);
    match enclosure.memory_kill() {
        Some(limit) => crate::error::exit_words(Some(limit)),
        None => status.unwrap_or_else(|_| still_running.to_owned()),
    }
}

/// What the python runtime host writes to `FALAK_READY_FD`.
#[derive(Deserialize)]
struct ReadyMessage {
    #[serde(default)]
    ready: bool,
    #[serde(default)]
    error: Option<String>,
}

/// Wait for the python runtime host's readiness line: ready, failed to load (the Python
/// error), exited, or not within the start timeout.
pub(crate) async fn wait_ready(
    prepared: &Prepared,
    what: &str,
    process: &Process,
    ready: Option<tokio::net::unix::pipe::Receiver>,
    enclosure: &Enclosure,
) -> Result<(), StartError> {
    let spec = prepared.spec();
    let deployment = spec.deployment.clone();
    let Some(ready) = ready else { return Ok(()) };
    let mut reader = tokio::io::BufReader::new(ready);
    let mut line = String::new();
    let read = tokio::time::timeout(prepared.start_timeout(), reader.read_line(&mut line)).await;
    match read {
        Err(_) => Err(StartError::Timeout {
            deployment,
            what: what.to_owned(),
            timeout: prepared.start_timeout(),
            log: spec.log_path.clone(),
        }),
        Ok(Err(source)) => Err(StartError::Io { deployment, what: format!("reading {what}'s readiness"), source }),
        Ok(Ok(0)) => {
            let status = exit_status(process, enclosure, "it closed its readiness pipe").await;
            Err(StartError::Exited { deployment, what: what.to_owned(), status, log: spec.log_path.clone() })
        }
        Ok(Ok(_)) => match serde_json::from_str::<ReadyMessage>(&line) {
            Ok(ReadyMessage { error: Some(error), .. }) => Err(StartError::Load { deployment, error }),
            Ok(ReadyMessage { ready: true, .. }) => Ok(()),
            _ => Err(StartError::Io {
                deployment,
                what: format!("reading {what}'s readiness"),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("unexpected line {line:?}")),
            }),
        },
    }
}

/// The first health check of a new instance, within the start timeout.
pub(crate) async fn healthy(
    prepared: &Prepared,
    ident: &Ident,
    process: &Process,
    client: &std::sync::Arc<Client>,
    health: Health,
) -> Result<(), StartError> {
    let spec = prepared.spec();
    match tokio::time::timeout(prepared.start_timeout(), crate::instance::first_health(ident, process, client, health))
        .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(StartError::Health {
            deployment: spec.deployment.clone(),
            instance: ident.instance,
            source: Box::new(source),
        }),
        Err(_) => Err(StartError::Timeout {
            deployment: spec.deployment.clone(),
            what: format!("the first health check of instance {}", ident.instance),
            timeout: prepared.start_timeout(),
            log: spec.log_path.clone(),
        }),
    }
}

pub(crate) fn host_script(prepared: &Prepared) -> PathBuf {
    prepared.host_script().map(Path::to_owned).unwrap_or_else(|| prepared.spec().work_dir.join("host.py"))
}

pub(crate) fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// A port that was free a moment ago (the program binds it soon after).
pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}
