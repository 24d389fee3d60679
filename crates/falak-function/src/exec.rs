//! The `exec` runtime: the command runs once per request, CGI-like. The request body goes to
//! its stdin and its stdout becomes the response body: exit 0 is 200, anything else 500 with
//! the end of its stderr. The response is buffered (its status depends on the exit code); use
//! the `http` runtime to stream responses.
//!
//! Each command is launched confined ([`crate::sandbox`]) in a cgroup of its own with the
//! deployment's per-instance limits, removed (with anything the command left running) when it
//! exits; a command the kernel killed for its memory limit is a 500 that says so. The commands
//! of one instance share its tmp dir.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::error::InstanceError;
use crate::instance::Ident;
use crate::prepare::Prepared;
use falak_exec::workload::Enclosure;
use falak_exec::workload::{Launch, append_log, launch};

use crate::sandbox::{Needs, enclose};
use crate::{BoxBody, BoxError};

/// The most stdout one request may produce; more is a 500.
const MAX_EXEC_OUTPUT: usize = 64 << 20;
/// How much of stderr a failure's response carries.
const STDERR_TAIL: usize = 8 << 10;
/// How long `stop` waits for killed commands to go.
const KILL_WAIT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct State {
    stopped: bool,
    next: u64,
    /// Running commands' process groups.
    running: BTreeMap<u64, i32>,
}

pub(crate) struct ExecRunner {
    prepared: Prepared,
    instance: u64,
    program: PathBuf,
    args: Vec<String>,
    cwd: PathBuf,
    env: BTreeMap<String, OsString>,
    log_path: PathBuf,
    state: watch::Sender<State>,
    /// Numbers the commands (their cgroups' names).
    commands: AtomicU64,
    /// The instance's tmp dir, which its commands share.
    tmp: Enclosure,
}

impl ExecRunner {
    pub fn new(prepared: &Prepared, instance: u64, tmp: Enclosure) -> ExecRunner {
        let spec = prepared.spec();
        let program =
            prepared.program().map(Path::to_owned).unwrap_or_else(|| spec.command.first().into_iter().collect());
        let mut env = prepared.base_env();
        env.insert("FALAK_INSTANCE".into(), instance.to_string().into());
        env.extend(prepared.tmp_env(&prepared.tmp_dir(&format!("i{instance}"))));
        ExecRunner {
            prepared: prepared.clone(),
            instance,
            program,
            args: spec.command.iter().skip(1).cloned().collect(),
            cwd: spec.bundle_dir.clone(),
            env,
            log_path: spec.log_path.clone(),
            state: watch::Sender::new(State::default()),
            commands: AtomicU64::new(0),
            tmp,
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.state.borrow().stopped
    }

    /// Resolves once stopped with no command running.
    pub async fn stopped(&self) {
        let _ = self.state.subscribe().wait_for(|s| s.stopped && s.running.is_empty()).await;
    }

    /// SIGTERM every running command's group, SIGKILL after `grace`; refuse new requests;
    /// remove the instance's tmp dir.
    pub async fn stop(&self, grace: Duration) {
        self.state.send_modify(|s| s.stopped = true);
        self.signal_all(libc::SIGTERM);
        let mut state = self.state.subscribe();
        if tokio::time::timeout(grace, state.wait_for(|s| s.running.is_empty())).await.is_err() {
            self.signal_all(libc::SIGKILL);
            let _ = tokio::time::timeout(KILL_WAIT, state.wait_for(|s| s.running.is_empty())).await;
        }
        self.tmp.teardown().await;
    }

    fn signal_all(&self, signal: libc::c_int) {
        for &group in self.state.borrow().running.values() {
            // SAFETY: kill takes plain integers; the group is alive while it is in `running`.
            unsafe { libc::kill(-group, signal) };
        }
    }

    /// Run the command for one request.
    pub async fn run(&self, ident: &Ident, request: Request<BoxBody>) -> Result<Response<BoxBody>, InstanceError> {
        let (parts, mut body) = request.into_parts();
        let exec_error = |source| InstanceError::Exec {
            deployment: ident.deployment.clone(),
            instance: ident.instance,
            program: self.program.clone(),
            source,
        };
        let mut env = self.env.clone();
        env.insert("FALAK_METHOD".into(), parts.method.as_str().into());
        env.insert("FALAK_PATH".into(), parts.uri.path().into());
        env.insert("FALAK_QUERY".into(), parts.uri.query().unwrap_or("").into());
        for (name, value) in &parts.headers {
            let key = match *name {
                header::CONTENT_TYPE => "CONTENT_TYPE".to_owned(),
                header::CONTENT_LENGTH => "CONTENT_LENGTH".to_owned(),
                _ => format!("HTTP_{}", name.as_str().to_ascii_uppercase().replace('-', "_")),
            };
            let value = OsString::from_vec(value.as_bytes().to_vec());
            match env.get_mut(&key) {
                Some(existing) if key.starts_with("HTTP_") => {
                    existing.push(", ");
                    existing.push(value);
                }
                _ => {
                    env.insert(key, value);
                }
            }
        }
        if self.is_stopped() {
            return Err(InstanceError::Stopped { deployment: ident.deployment.clone(), instance: ident.instance });
        }
        let number = self.commands.fetch_add(1, Ordering::Relaxed);
        let (what, name) =
            (format!("instance {} command {number}", self.instance), format!("i{}-c{number}", self.instance));
        let sandbox = &self.prepared.spec().sandbox;
        let mut made = enclose(&self.prepared, &what, &name, Needs::COMMAND)
            .await
            .map_err(|e| exec_error(std::io::Error::other(e.to_string())))?;
        let launched = launch(Launch {
            program: &self.program,
            args: self.args.iter().map(OsString::from).collect(),
            cwd: &self.cwd,
            env,
            log_path: &self.log_path,
            ready_pipe: false,
            piped: true,
            confinement: made.confinement(sandbox),
        })
        .map_err(exec_error)?;
        // Dropped (the request abandoned) or torn down below, it kills what the command left.
        let enclosure = made.enclosure;
        let process = launched.process;
        let Some((mut stdin, stdout, stderr)) = launched.stdio else {
            return Err(exec_error(std::io::Error::other("the command's standard streams were not piped")));
        };
        let _running = Running::new(&self.state, process.process_group());

        let feed = async {
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame?.into_data() else { continue };
                if let Err(e) = stdin.write_all(&data).await {
                    // The command need not read all of its input.
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        break;
                    }
                    return Err(Box::new(e) as BoxError);
                }
            }
            drop(stdin);
            Ok(())
        };
        let (fed, output, errors) = tokio::join!(feed, read_limited(stdout, MAX_EXEC_OUTPUT), read_tail(stderr));
        if let Err(source) = fed {
            return Err(InstanceError::RequestBody {
                deployment: ident.deployment.clone(),
                instance: ident.instance,
                source,
            });
        }
        let errors = errors.unwrap_or_default();
        if !matches!(output, Ok(Some(_))) {
            process.signal(libc::SIGKILL);
        }
        let exit = process.exited().await;
        let memory_kill = enclosure.memory_kill();
        enclosure.teardown().await;
        if !errors.is_empty() {
            append_log(&self.log_path, &errors);
        }
        if self.is_stopped() && !exit.success {
            return Err(InstanceError::Stopped { deployment: ident.deployment.clone(), instance: ident.instance });
        }
        let response = match output.map_err(exec_error)? {
            Some(stdout) if exit.success => Response::builder().status(StatusCode::OK).body(full(stdout.into())),
            stdout => {
                let mut text = match (stdout, memory_kill) {
                    (_, Some(limit)) => {
                        format!("{} {}", self.program.display(), crate::error::exit_words(Some(limit)))
                    }
                    (Some(_), None) => format!("{} exited with {}", self.program.display(), exit.description),
                    (None, None) => {
                        format!("{} wrote more than {MAX_EXEC_OUTPUT} bytes to stdout", self.program.display())
                    }
                }
                .into_bytes();
                if !errors.is_empty() {
                    text.extend_from_slice(b"\n\nstderr (the end):\n");
                    text.extend_from_slice(&errors);
                }
                Response::builder()
                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                    .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                    .header("falak-error", "exec")
                    .body(full(text.into()))
            }
        };
        response.map_err(|e| exec_error(std::io::Error::other(e)))
    }
}

fn full(bytes: Bytes) -> BoxBody {
    BoxBody::new(Full::new(bytes).map_err(|never| match never {}))
}

/// All of `reader`, or `None` once it exceeds `limit` bytes.
async fn read_limited(mut reader: impl AsyncRead + Unpin, limit: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut buffer = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Some(buffer));
        }
        if buffer.len() + n > limit {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// The last [`STDERR_TAIL`] bytes of `reader`.
async fn read_tail(mut reader: impl AsyncRead + Unpin) -> std::io::Result<Vec<u8>> {
    let mut tail = Vec::new();
    let mut chunk = vec![0u8; 16 << 10];
    loop {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Ok(tail);
        }
        tail.extend_from_slice(&chunk[..n]);
        if tail.len() > STDERR_TAIL {
            tail.drain(..tail.len() - STDERR_TAIL);
        }
    }
}

/// Registers a running command's process group for `stop`; unregisters on drop.
struct Running<'a> {
    state: &'a watch::Sender<State>,
    id: u64,
}

impl<'a> Running<'a> {
    fn new(state: &'a watch::Sender<State>, group: i32) -> Running<'a> {
        let mut id = 0;
        state.send_modify(|s| {
            id = s.next;
            s.next += 1;
            s.running.insert(id, group);
        });
        Running { state, id }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.state.send_modify(|s| {
            if let Some(group) = s.running.remove(&self.id) {
                // Whatever the command left running in its group (or all of it, when the
                // request was abandoned) goes with the request.
                // SAFETY: kill takes plain integers; the worst it does is fail.
                unsafe { libc::kill(-group, libc::SIGKILL) };
            }
        });
    }
}
