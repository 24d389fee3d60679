//! Preparing a deployment on this node: check the bundle, build its virtualenv, write the
//! Python runtime host into the work dir, make the `run/` dir the instances may write. Everything
//! an instance start would otherwise find out late is found here — including, when instances
//! run as another user, whether that user can reach the bundle, the interpreter and the
//! runtime host.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use falak_core::function::Runtime;
use falak_sandbox::{CgroupLimits, RunAs};

use crate::error::PrepareError;
use crate::venv;
use falak_exec::workload::INHERITED_ENV;
use falak_exec::workload::{WorkloadSandbox, blocking_directory, private_dir, user_may_access};

/// How long an instance or a zygote may take to become ready, unless
/// [`Prepared::set_start_timeout`] says otherwise.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(10);

/// The directory under the work dir that instances may write: sockets and tmp dirs.
pub(crate) const RUN_DIR: &str = "run";

/// The longest socket path under the work dir (a container instance's
/// `run/c<u64>/http.sock`; others' `run/i<u64>.sock` is shorter), and the most bytes a Unix
/// socket path may have (`sun_path` is 108 bytes including the NUL).
const LONGEST_SOCKET_NAME: usize = "/run/c18446744073709551615/http.sock".len();
const MAX_SOCKET_PATH: usize = 107;

/// The oldest Python the runtime host supports.
const MIN_PYTHON: (u32, u32) = (3, 8);

/// What one deployment needs on this node, built by the node from a `FunctionSpec`. `Debug`
/// shows `env`'s names only: the node opens the function's secrets into it.
#[derive(Clone, derive_more::Debug)]
pub struct HostSpec {
    /// The function's name.
    pub function: String,
    /// `name@version`.
    pub deployment: String,
    pub runtime: Runtime,
    /// Python: `module.function`.
    pub handler: Option<String>,
    /// `http` and `exec`: program and arguments, run with the bundle as working directory.
    pub command: Vec<String>,
    #[debug("{:?}", env.keys().collect::<Vec<_>>())]
    pub env: BTreeMap<String, String>,
    /// The unpacked bundle; a container deployment's image root.
    pub bundle_dir: PathBuf,
    /// Per-deployment dir on this node (the node's, `0711`): `host.py` and `run/`, where the
    /// sockets live, so keep it short.
    pub work_dir: PathBuf,
    /// Instances' and the zygote's stdout and stderr are appended here.
    pub log_path: PathBuf,
    /// The interpreter when the bundle has no requirements.txt (usually `python3`). A bare
    /// name is looked up on the node's `PATH`; when instances run as another user, the first
    /// match that user can run is taken.
    pub python: PathBuf,
    /// Each process's cgroup limits: the function's per-instance resources. The zygote gets
    /// the same, and every instance forked from it its own.
    pub limits: CgroupLimits,
    /// How the processes are confined.
    pub sandbox: WorkloadSandbox,
    /// `container`: what its instances run, and with which runtime.
    pub container: Option<ContainerHost>,
}

/// What a `container` deployment's instances run, resolved by the node from the image.
#[derive(Debug, Clone)]
pub struct ContainerHost {
    /// The OCI runtime of the node.
    pub runtime: falak_exec::ContainerRuntime,
    /// The image's unpacked root (shared, read-only), and the working directory and user inside
    /// it; no mounts.
    pub image: falak_exec::ContainerTask,
    /// The process: the image's entrypoint and cmd, or what the function replaced them with.
    pub args: Vec<String>,
    /// The image's environment; the deployment's `env` goes over it.
    pub env: BTreeMap<String, String>,
    pub network: falak_sandbox::Network,
}

/// A deployment ready to start: its spec (with absolute paths), the interpreter, the
/// virtualenv and the runtime host script.
#[derive(Debug, Clone)]
pub struct Prepared {
    spec: HostSpec,
    interpreter: PathBuf,
    venv: Option<PathBuf>,
    host_script: Option<PathBuf>,
    program: Option<PathBuf>,
    start_timeout: Duration,
}

impl Prepared {
    pub fn spec(&self) -> &HostSpec {
        &self.spec
    }

    /// The Python that runs the handler: the virtualenv's, else the resolved `spec.python`.
    /// For `http` and `exec` without a requirements.txt this is `spec.python` unchecked.
    pub fn interpreter(&self) -> &Path {
        &self.interpreter
    }

    /// The virtualenv built from the bundle's requirements.txt, if it has one.
    pub fn venv(&self) -> Option<&Path> {
        self.venv.as_deref()
    }

    /// The runtime host written into the work dir (python only).
    pub fn host_script(&self) -> Option<&Path> {
        self.host_script.as_deref()
    }

    /// The resolved program of `command` (`http` and `exec`).
    pub fn program(&self) -> Option<&Path> {
        self.program.as_deref()
    }

    pub fn start_timeout(&self) -> Duration {
        self.start_timeout
    }

    /// How long instances and the zygote may take to become ready.
    pub fn set_start_timeout(&mut self, timeout: Duration) {
        self.start_timeout = timeout;
    }

    /// The only directory the deployment's processes may write (Landlock): their sockets and
    /// tmp dirs. Owned by the instance user, mode `0700`.
    pub fn run_dir(&self) -> PathBuf {
        self.spec.work_dir.join(RUN_DIR)
    }

    /// What the deployment's processes see of the node's files: none of the hidden
    /// directories but the work dir (read-only: the runtime host), its `run/` dir (writable),
    /// the bundle and the virtualenv (read-only).
    pub fn view(&self) -> falak_sandbox::View {
        let mut view = falak_sandbox::View::hiding(self.spec.sandbox.hide.clone())
            .readable(&self.spec.work_dir)
            .writable(self.run_dir())
            .readable(&self.spec.bundle_dir);
        if let Some(venv) = &self.venv {
            view = view.readable(venv);
        }
        view
    }

    /// What the deployment's processes may read without a mount namespace, besides the
    /// system directories (Landlock): the same directories.
    pub(crate) fn readable(&self) -> Vec<PathBuf> {
        let mut readable = vec![self.spec.work_dir.clone(), self.spec.bundle_dir.clone()];
        readable.extend(self.venv.clone());
        // A resolved interpreter's dir; not a bare name's (`python3` where no process of the
        // deployment runs Python), whose parent is the empty path Landlock cannot open.
        readable.extend(self.interpreter.parent().filter(|dir| dir.is_absolute()).map(Path::to_path_buf));
        readable
    }

    /// The socket of instance `instance`.
    pub fn instance_socket(&self, instance: u64) -> PathBuf {
        self.run_dir().join(format!("i{instance}.sock"))
    }

    /// The directory a container instance gets bound writable at
    /// [`CONTAINER_SOCKET_DIR`](crate::container::CONTAINER_SOCKET_DIR): its socket's.
    pub fn container_socket_dir(&self, instance: u64) -> PathBuf {
        self.run_dir().join(format!("c{instance}"))
    }

    /// The private temporary dir of a process tree: `i7` → `run/i7.tmp`.
    pub fn tmp_dir(&self, name: &str) -> PathBuf {
        self.run_dir().join(format!("{name}.tmp"))
    }

    /// The environment every process of this deployment starts with: a few of the node's
    /// variables ([`INHERITED_ENV`]), the virtualenv's `PATH`, the function's `env`, then
    /// `FALAK_FUNCTION` and `FALAK_DEPLOYMENT`.
    pub(crate) fn base_env(&self) -> BTreeMap<String, OsString> {
        let mut env: BTreeMap<String, OsString> =
            INHERITED_ENV.iter().filter_map(|key| Some((key.to_string(), std::env::var_os(key)?))).collect();
        if let Some(venv) = &self.venv {
            let mut path = venv.join("bin").into_os_string();
            if let Some(inherited) = env.get("PATH") {
                path.push(":");
                path.push(inherited);
            }
            env.insert("PATH".into(), path);
            env.insert("VIRTUAL_ENV".into(), venv.clone().into_os_string());
        }
        env.extend(self.spec.env.iter().map(|(k, v)| (k.clone(), OsString::from(v))));
        env.insert("FALAK_FUNCTION".into(), self.spec.function.clone().into());
        env.insert("FALAK_DEPLOYMENT".into(), self.spec.deployment.clone().into());
        env
    }

    /// [`Prepared::base_env`] plus the instance's own variables.
    pub(crate) fn instance_env(&self, instance: u64) -> BTreeMap<String, OsString> {
        let mut env = self.base_env();
        env.insert("FALAK_INSTANCE".into(), instance.to_string().into());
        env.insert("FALAK_SOCKET".into(), self.instance_socket(instance).into_os_string());
        env
    }

    /// `TMPDIR` and `HOME` pointing at the private tmp dir `tmp`.
    pub(crate) fn tmp_env(&self, tmp: &Path) -> [(String, OsString); 2] {
        // Never the node's home: another user's, or hidden by the mount namespace.
        let home = tmp.as_os_str().to_owned();
        [("TMPDIR".into(), tmp.as_os_str().to_owned()), ("HOME".into(), home)]
    }
}

/// Check the bundle, build the virtualenv (cached under `venv_cache` by the content of
/// requirements.txt and the wheels dir) and write the runtime host into the work dir.
pub async fn prepare(spec: HostSpec, venv_cache: &Path) -> Result<Prepared, PrepareError> {
    let deployment = spec.deployment.clone();
    let io_error = |what: &'static str, path: &Path| {
        let deployment = deployment.clone();
        let path = path.to_owned();
        move |source| PrepareError::Io { deployment, what, path, source }
    };
    let mut spec = spec;
    spec.bundle_dir = std::path::absolute(&spec.bundle_dir).map_err(io_error("reading", &spec.bundle_dir))?;
    spec.work_dir = std::path::absolute(&spec.work_dir).map_err(io_error("reading", &spec.work_dir))?;
    spec.log_path = std::path::absolute(&spec.log_path).map_err(io_error("reading", &spec.log_path))?;
    let len = spec.work_dir.as_os_str().len();
    if len + LONGEST_SOCKET_NAME > MAX_SOCKET_PATH {
        return Err(PrepareError::WorkDirTooLong {
            deployment,
            path: spec.work_dir,
            len,
            max: MAX_SOCKET_PATH - LONGEST_SOCKET_NAME,
        });
    }
    if !spec.bundle_dir.is_dir() {
        return Err(io_error("reading the bundle dir", &spec.bundle_dir)(std::io::ErrorKind::NotFound.into()));
    }
    make_work_dir(&spec).await.map_err(io_error("creating the work dir", &spec.work_dir))?;
    if let Some(parent) = spec.log_path.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(io_error("creating the log dir", parent))?;
    }

    let requirements = spec.bundle_dir.join("requirements.txt");
    let needs_python =
        spec.runtime == Runtime::Python || (spec.runtime != Runtime::Container && requirements.is_file());
    let mut prepared = Prepared {
        interpreter: spec.python.clone(),
        venv: None,
        host_script: None,
        program: None,
        start_timeout: DEFAULT_START_TIMEOUT,
        spec,
    };
    if needs_python {
        let (python, version) = resolve_python(&prepared.spec).await?;
        prepared.interpreter = python;
        if requirements.is_file() {
            let venv = venv::build(&prepared.spec, &prepared.interpreter, &version, venv_cache).await?;
            // The venv's own `bin/python` is a link to the interpreter, which the instance
            // user can run; its files are the node's, readable by all (`venv::build`).
            prepared.interpreter = venv.join("bin").join("python");
            prepared.venv = Some(venv);
        }
    }
    match prepared.spec.runtime {
        Runtime::Python => {
            check_handler(&prepared.spec)?;
            prepared.host_script = Some(write_host_script(&prepared.spec).await?);
        }
        Runtime::Http | Runtime::Exec => {
            let Some(program) = prepared.spec.command.first() else {
                return Err(PrepareError::NoCommand { deployment, runtime: prepared.spec.runtime.name() });
            };
            let path = prepared.base_env().get("PATH").cloned().unwrap_or_default();
            let user = prepared.spec.sandbox.run_as;
            let bundle = prepared.spec.bundle_dir.clone();
            let (name, program) = (deployment.clone(), program.clone());
            let resolved = tokio::task::spawn_blocking(move || resolve_program(&name, &program, &bundle, &path, user))
                .await
                .unwrap_or_else(|e| Err(io_error("resolving the program in", &prepared.spec.bundle_dir)(e.into())))?;
            prepared.program = Some(resolved);
        }
        Runtime::Container => {
            // The node's runtime reads the image, and the container's user is the image's.
            if prepared.spec.container.is_none() {
                return Err(PrepareError::NoContainer { deployment });
            }
            return Ok(prepared);
        }
    }
    check_reachable(&prepared).await?;
    Ok(prepared)
}

/// The work dir, the node's (`0711`: the instance user may pass, not list), and its `run/`
/// dir, the instance user's (`0700`).
async fn make_work_dir(spec: &HostSpec) -> std::io::Result<()> {
    let (work_dir, user) = (spec.work_dir.clone(), spec.sandbox.run_as);
    let made = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&work_dir)?;
        std::fs::set_permissions(&work_dir, std::fs::Permissions::from_mode(0o711))?;
        private_dir(&work_dir.join(RUN_DIR), user, 0o700)
    });
    made.await.unwrap_or_else(|e| Err(e.into()))
}

/// When instances run as another user: every path they open by name must be reachable by
/// that user (its parents searchable), or the start would fail later with a bare "permission
/// denied". Names the directory in the way.
async fn check_reachable(prepared: &Prepared) -> Result<(), PrepareError> {
    let Some(user) = prepared.spec.sandbox.run_as else { return Ok(()) };
    if prepared.spec.sandbox.namespaces != falak_sandbox::Namespaces::Unavailable {
        // The mount namespace binds each of them at its path: directories above do not count.
        return Ok(());
    }
    let spec = &prepared.spec;
    let mut needed: Vec<(PathBuf, libc::c_int, &'static str)> = vec![
        (spec.bundle_dir.clone(), libc::R_OK | libc::X_OK, "the bundle"),
        (prepared.run_dir(), libc::R_OK | libc::W_OK | libc::X_OK, "the run dir"),
    ];
    if let Some(host) = &prepared.host_script {
        needed.push((host.clone(), libc::R_OK, "the runtime host"));
    }
    if let Some(venv) = &prepared.venv {
        needed.push((venv.clone(), libc::R_OK | libc::X_OK, "the virtualenv"));
    }
    if spec.runtime == Runtime::Python || prepared.venv.is_some() {
        needed.push((prepared.interpreter.clone(), libc::X_OK, "the interpreter"));
    }
    if let Some(program) = &prepared.program {
        needed.push((program.clone(), libc::X_OK, "the program"));
    }
    let checked = tokio::task::spawn_blocking(move || {
        for (path, mode, what) in needed {
            if let Err(source) = user_may_access(user, &path, mode) {
                return Err((path, what, source));
            }
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|e| Err((spec.bundle_dir.clone(), "the bundle", e.into())));
    checked.map_err(|(path, what, source)| PrepareError::Unreachable {
        deployment: spec.deployment.clone(),
        what,
        uid: user.uid,
        hint: blocking_directory(user, &path).map_or_else(
            || source.to_string(),
            |dir| format!("{source}: {dir}; make every directory above it searchable by that user (chmod o+x)"),
        ),
        path,
    })
}

/// The interpreter's real path (so that instances skip wrappers such as pyenv shims) and its
/// `major.minor` version, as the instance user sees them. When instances run as another user,
/// a bare name is looked up on `PATH` and a match that user may not run is passed over.
async fn resolve_python(spec: &HostSpec) -> Result<(PathBuf, String), PrepareError> {
    let failed = |detail: String| PrepareError::Python {
        deployment: spec.deployment.clone(),
        python: spec.python.clone(),
        detail,
    };
    let user = spec.sandbox.run_as.or(spec.sandbox.inner_user);
    let bare = !spec.python.as_os_str().as_encoded_bytes().contains(&b'/');
    let candidates: Vec<PathBuf> = if bare {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path).map(|dir| dir.join(&spec.python)).filter(|c| c.is_file()).collect()
    } else {
        vec![spec.python.clone()]
    };
    let mut refused = Vec::new();
    for candidate in &candidates {
        let output = match probe_python(spec, candidate).await {
            Ok(output) => output,
            // Hidden from instances (under the node user's home) or not theirs to run.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::NotFound) => {
                refused.push(candidate.display().to_string());
                continue;
            }
            Err(e) => return Err(failed(e.to_string())),
        };
        let (success, stdout, stderr) = output;
        let mut lines = stdout.lines();
        let (Some(executable), Some(version), true) = (lines.next(), lines.next(), success) else {
            return Err(failed(format!("it failed: {}", stderr.trim())));
        };
        let parsed =
            version.split_once('.').and_then(|(major, minor)| Some((major.parse().ok()?, minor.parse().ok()?)));
        match parsed {
            Some(v) if v >= MIN_PYTHON => {}
            _ => return Err(failed(format!("it is Python {version}"))),
        }
        let executable = if executable.is_empty() { candidate.clone() } else { PathBuf::from(executable) };
        return Ok((executable, version.to_owned()));
    }
    Err(failed(match (user, refused.is_empty()) {
        (Some(user), false) => format!(
            "the instance user (uid {}) may not run {}, or cannot see it; install python3 where it can (e.g. /usr/bin) or set FALAK_PYTHON",
            user.uid,
            refused.join(", ")
        ),
        (None, false) => format!(
            "instances cannot see {} (the node's home and data dir are hidden from them); install python3 in a system directory or set FALAK_PYTHON",
            refused.join(", ")
        ),
        _ => "not found on PATH".to_owned(),
    }))
}

/// Run `python` as the deployment's instances would (their user, namespaces and filter), to
/// learn its real path and version: `(exited 0, stdout, stderr)`. `NotFound` or
/// `PermissionDenied` when instances could not run it.
async fn probe_python(spec: &HostSpec, python: &Path) -> std::io::Result<(bool, String, String)> {
    use tokio::io::AsyncReadExt;
    let sandbox = spec.sandbox.clone();
    let isolation =
        sandbox.isolation().inner_user(sandbox.inner_user).view(falak_sandbox::View::hiding(sandbox.hide.clone()));
    let isolation = tokio::task::spawn_blocking(move || isolation.prepare()).await.map_err(std::io::Error::other)??;
    let confinement = sandbox.confinement(sandbox.run_as, &sandbox.rlimits, Vec::new(), Some(isolation), None);
    let cwd = Path::new("/");
    let launched = falak_exec::workload::launch(falak_exec::workload::Launch {
        program: python,
        args: vec!["-c".into(), "import sys; print(sys.executable); print('%d.%d' % sys.version_info[:2])".into()],
        cwd,
        env: BTreeMap::new(),
        log_path: cwd,
        ready_pipe: false,
        piped: true,
        confinement,
    })?;
    let Some((stdin, mut stdout, mut stderr)) = launched.stdio else {
        return Err(std::io::Error::other("the probe has no pipes"));
    };
    drop(stdin);
    let (mut out, mut err) = (String::new(), String::new());
    let reading = async { tokio::try_join!(stdout.read_to_string(&mut out), stderr.read_to_string(&mut err)) };
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), reading).await;
    let exit = tokio::time::timeout(std::time::Duration::from_secs(5), launched.process.exited()).await;
    match (read, exit) {
        (Ok(Ok(_)), Ok(exit)) => Ok((exit.success, out, err)),
        _ => {
            launched.process.stop(std::time::Duration::from_millis(100)).await;
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "it did not answer within 20 s"))
        }
    }
}

/// The handler's module must be in the bundle: `a.b.handle` is `a/b.py` or `a/b/__init__.py`.
fn check_handler(spec: &HostSpec) -> Result<(), PrepareError> {
    let handler = spec.handler.clone().unwrap_or_default();
    let identifier = |s: &str| {
        !s.is_empty() && !s.as_bytes()[0].is_ascii_digit() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    let module = match handler.rsplit_once('.') {
        Some((module, function)) if identifier(function) && module.split('.').all(identifier) => module,
        _ => return Err(PrepareError::InvalidHandler { deployment: spec.deployment.clone(), handler }),
    };
    let relative: PathBuf = module.split('.').collect();
    let looked_for =
        vec![spec.bundle_dir.join(&relative).with_extension("py"), spec.bundle_dir.join(&relative).join("__init__.py")];
    if looked_for.iter().any(|path| path.is_file()) {
        return Ok(());
    }
    Err(PrepareError::MissingHandler { deployment: spec.deployment.clone(), handler, looked_for })
}

/// Write `host.py` into the work dir unless it is there already with the same content
/// (through a temporary file, so a concurrent prepare never sees half a script).
async fn write_host_script(spec: &HostSpec) -> Result<PathBuf, PrepareError> {
    let path = spec.work_dir.join("host.py");
    let source = crate::runtime_host_source();
    if tokio::fs::read(&path).await.is_ok_and(|existing| existing == source.as_bytes()) {
        return Ok(path);
    }
    let temporary = spec.work_dir.join(format!(".host.py.{}", std::process::id()));
    let failed = |source| PrepareError::Io {
        deployment: spec.deployment.clone(),
        what: "writing the runtime host",
        path: path.clone(),
        source,
    };
    tokio::fs::write(&temporary, source).await.map_err(failed)?;
    // Read by the instance user, written by nobody but the node.
    tokio::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o644)).await.map_err(failed)?;
    tokio::fs::rename(&temporary, &path).await.map_err(failed)?;
    Ok(path)
}

/// `program` as exec would find it: a path with a `/` relative to the bundle, else on `PATH`
/// (passing over matches the instance user, when it is another, may not run). Blocking.
fn resolve_program(
    deployment: &str,
    program: &str,
    bundle: &Path,
    path: &std::ffi::OsStr,
    user: Option<RunAs>,
) -> Result<PathBuf, PrepareError> {
    let missing = |hint: String| PrepareError::MissingProgram {
        deployment: deployment.to_owned(),
        program: program.to_owned(),
        hint,
    };
    let executable = |candidate: &Path| {
        std::fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let runnable = |candidate: &Path| user.is_none_or(|user| user_may_access(user, candidate, libc::X_OK).is_ok());
    if program.contains('/') {
        // `./server` is `<bundle>/server` (components, so that no `/./` shows in errors).
        let candidate: PathBuf =
            bundle.join(program).components().filter(|c| *c != std::path::Component::CurDir).collect();
        if executable(&candidate) {
            return Ok(candidate);
        }
        let hint = if candidate.is_file() {
            format!("{} is not executable; mark it executable (chmod +x) before bundling", candidate.display())
        } else {
            format!("{} does not exist", candidate.display())
        };
        return Err(missing(hint));
    }
    for dir in std::env::split_paths(path) {
        let candidate = bundle.join(dir).join(program);
        if executable(&candidate) && runnable(&candidate) {
            return Ok(candidate);
        }
    }
    let hint = if bundle.join(program).is_file() {
        format!("it is not on PATH; to run the bundle's own {program}, write ./{program}")
    } else {
        "it is neither on PATH nor a path into the bundle; install it on the node or ship it in the bundle".to_owned()
    };
    Err(missing(hint))
}
