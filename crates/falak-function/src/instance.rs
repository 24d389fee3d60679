//! An instance: one process serving the runtime host protocol on its socket (python, http),
//! or, for `exec`, a command run once per request.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, Response};

use crate::BoxBody;
use crate::client::{Client, SendError};
use crate::error::InstanceError;
use crate::exec::ExecRunner;
use falak_exec::workload::Enclosure;
use falak_exec::workload::Process;

/// How long a failed request waits for the instance's exit before calling the failure a
/// protocol error rather than a crash. Only failures wait, never a good request.
const CRASH_WAIT: Duration = Duration::from_secs(2);

/// How an instance came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartKind {
    /// A fresh process that imported the code itself.
    Cold,
    /// Forked from the deployment's zygote.
    Fork,
    /// No long-lived process: an `exec` command runs per request.
    Exec,
}

/// How long an instance took to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartTimings {
    pub kind: StartKind,
    /// From the start until the process existed: `spawn` for cold starts, the zygote's fork
    /// round trip for forks (µs).
    pub spawn_us: u64,
    /// From then until the instance answered its first health check: import and bind for cold
    /// python, listening for http, the first connection for forks (µs).
    pub init_us: u64,
}

/// Names an instance in errors.
#[derive(Debug, Clone)]
pub(crate) struct Ident {
    pub deployment: String,
    pub instance: u64,
    pub log_path: PathBuf,
}

/// How the instance checks its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    /// `GET /.falak/health` answers 2xx (the runtime hosts falak ships).
    Endpoint,
    /// The socket or port accepts a connection (any `http` program).
    Connect,
}

enum Kind {
    Served {
        process: Process,
        client: Arc<Client>,
        health: Health,
        enclosure: Enclosure,
    },
    /// Boxed: it carries the deployment's whole preparation.
    Exec(Box<ExecRunner>),
}

/// A running instance of a deployment. Dropping it kills its process group and its cgroup.
pub struct Instance {
    ident: Ident,
    timings: StartTimings,
    kind: Kind,
    stopped: AtomicBool,
}

impl Instance {
    pub(crate) fn served(
        ident: Ident,
        timings: StartTimings,
        process: Process,
        client: Arc<Client>,
        health: Health,
        enclosure: Enclosure,
    ) -> Instance {
        let kind = Kind::Served { process, client, health, enclosure };
        Instance { ident, timings, kind, stopped: AtomicBool::new(false) }
    }

    pub(crate) fn exec(ident: Ident, runner: ExecRunner) -> Instance {
        let timings = StartTimings { kind: StartKind::Exec, spawn_us: 0, init_us: 0 };
        Instance { ident, timings, kind: Kind::Exec(Box::new(runner)), stopped: AtomicBool::new(false) }
    }

    pub fn id(&self) -> u64 {
        self.ident.instance
    }

    /// The instance's process; `None` for `exec`.
    pub fn pid(&self) -> Option<u32> {
        match &self.kind {
            Kind::Served { process, .. } => Some(process.pid()),
            Kind::Exec(_) => None,
        }
    }

    /// The instance's process group (its pid), so the node can record it and kill orphans
    /// after a restart; `None` for `exec`.
    pub fn process_group(&self) -> Option<i32> {
        match &self.kind {
            Kind::Served { process, .. } => Some(process.process_group()),
            Kind::Exec(_) => None,
        }
    }

    pub fn timings(&self) -> StartTimings {
        self.timings
    }

    /// The memory limit, when the kernel killed the instance for going over it (its cgroup's
    /// `oom_kill` count); `None` otherwise, and always for `exec`, whose commands each report
    /// their own in the response.
    pub fn memory_kill(&self) -> Option<u64> {
        match &self.kind {
            Kind::Served { enclosure, .. } => enclosure.memory_kill(),
            Kind::Exec(_) => None,
        }
    }

    /// Where the instance listens, e.g. `unix:/…/i3.sock` or `tcp:127.0.0.1:4100`; `exec` for
    /// exec instances.
    pub fn address(&self) -> String {
        match &self.kind {
            Kind::Served { client, .. } => client.target().to_string(),
            Kind::Exec(_) => "exec".to_owned(),
        }
    }

    /// Send one request: method, path and query (the request's URI), headers and body pass
    /// through; the response streams back. Up to the deployment's `concurrency` requests may
    /// be in flight on one instance at once.
    pub async fn send(&self, request: Request<BoxBody>) -> Result<Response<BoxBody>, InstanceError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(self.stopped_error());
        }
        match &self.kind {
            Kind::Served { process, client, .. } => {
                if !process.is_alive() {
                    return Err(self.crashed());
                }
                match client.send(request).await {
                    Ok(response) => Ok(response),
                    Err(e) => Err(self.classify(process, client, e).await),
                }
            }
            Kind::Exec(runner) => runner.run(&self.ident, request).await,
        }
    }

    /// Whether the instance answers: its health endpoint (python), a connection (http), or
    /// not being stopped (exec).
    pub async fn health(&self) -> Result<(), InstanceError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(self.stopped_error());
        }
        let Kind::Served { process, client, health, .. } = &self.kind else { return Ok(()) };
        if !process.is_alive() {
            return Err(self.crashed());
        }
        let result = match health {
            Health::Endpoint => client.get("/.falak/health").await.map(|(status, _)| status),
            Health::Connect => client.connect().await.map(|()| http::StatusCode::OK).map_err(SendError::Connect),
        };
        match result {
            Ok(status) if status.is_success() => Ok(()),
            Ok(status) => Err(InstanceError::Unhealthy {
                deployment: self.ident.deployment.clone(),
                instance: self.ident.instance,
                status: status.as_u16(),
            }),
            Err(e) => Err(self.classify(process, client, e).await),
        }
    }

    /// Resolves when the instance's process has exited (for `exec`: when it is stopped and
    /// its running commands are gone).
    pub async fn exited(&self) {
        match &self.kind {
            Kind::Served { process, .. } => {
                process.exited().await;
            }
            Kind::Exec(runner) => runner.stopped().await,
        }
    }

    pub fn is_alive(&self) -> bool {
        match &self.kind {
            Kind::Served { process, .. } => process.is_alive(),
            Kind::Exec(runner) => !runner.is_stopped(),
        }
    }

    /// SIGTERM the process group (the python host then finishes its in-flight requests and
    /// exits), SIGKILL it after `grace`; resolves when the process has exited and its cgroup
    /// (with anything left in it) and tmp dir are gone.
    pub async fn stop(&self, grace: Duration) {
        self.stopped.store(true, Ordering::Release);
        match &self.kind {
            Kind::Served { process, enclosure, .. } => {
                process.stop(grace).await;
                enclosure.teardown().await;
            }
            Kind::Exec(runner) => runner.stop(grace).await,
        }
    }

    /// A failed exchange is a crash if the process exits around it.
    async fn classify(&self, process: &Process, client: &Client, error: SendError) -> InstanceError {
        if tokio::time::timeout(CRASH_WAIT, process.exited()).await.is_ok() {
            return if self.stopped.load(Ordering::Acquire) { self.stopped_error() } else { self.crashed() };
        }
        let (deployment, instance) = (self.ident.deployment.clone(), self.ident.instance);
        match error {
            SendError::Connect(source) => {
                InstanceError::Connect { deployment, instance, target: client.target().to_string(), source }
            }
            SendError::Http(source) => InstanceError::Http { deployment, instance, source },
        }
    }

    fn crashed(&self) -> InstanceError {
        InstanceError::Crashed {
            deployment: self.ident.deployment.clone(),
            instance: self.ident.instance,
            log: self.ident.log_path.clone(),
            memory_limit: self.memory_kill(),
        }
    }

    fn stopped_error(&self) -> InstanceError {
        InstanceError::Stopped { deployment: self.ident.deployment.clone(), instance: self.ident.instance }
    }
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("deployment", &self.ident.deployment)
            .field("id", &self.ident.instance)
            .field("pid", &self.pid())
            .field("address", &self.address())
            .field("timings", &self.timings)
            .finish()
    }
}

/// Wait for a new served instance's first successful health check.
pub(crate) async fn first_health(
    ident: &Ident,
    process: &Process,
    client: &Arc<Client>,
    health: Health,
) -> Result<(), InstanceError> {
    let error = |e: SendError| match e {
        SendError::Connect(source) => InstanceError::Connect {
            deployment: ident.deployment.clone(),
            instance: ident.instance,
            target: client.target().to_string(),
            source,
        },
        SendError::Http(source) => {
            InstanceError::Http { deployment: ident.deployment.clone(), instance: ident.instance, source }
        }
    };
    if !process.is_alive() {
        return Err(InstanceError::Crashed {
            deployment: ident.deployment.clone(),
            instance: ident.instance,
            log: ident.log_path.clone(),
            memory_limit: None,
        });
    }
    match health {
        Health::Endpoint => match client.get("/.falak/health").await.map_err(error)? {
            (status, _) if status.is_success() => Ok(()),
            (status, _) => Err(InstanceError::Unhealthy {
                deployment: ident.deployment.clone(),
                instance: ident.instance,
                status: status.as_u16(),
            }),
        },
        Health::Connect => Ok(()),
    }
}
