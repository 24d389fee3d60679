//! The sandbox around function processes, observed from inside them: user, no_new_privs,
//! seccomp, Landlock, network namespace, cgroup (with its memory limit) and tmp dir. These
//! need root (the node is root in production and CI); the `privileged_` tests fail, never
//! skip, without it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use falak_core::function::Runtime;
use falak_function::{
    CgroupLimits, DEFAULT_MAX_PIDS, HostSandbox, HostSpec, InstanceError, PrepareError, WorkloadSandbox, Zygote,
    prepare, spawn,
};
use falak_sandbox::Controller;

use crate::support::{Fixture, call, json, request, text};

/// The memory limit of each process in these tests.
const MEMORY: u64 = 64 << 20;

/// Reports what the process may do; `/hog?bytes=N` allocates and touches N bytes.
const PROBE: &str = r#"
import ctypes, errno, os, socket

def attempt(action):
    try:
        action()
        return "ok"
    except OSError as e:
        return "%s: %s" % (type(e).__name__, errno.errorcode.get(e.errno, e.errno))

def write(path):
    def go():
        with open(path, "w") as f:
            f.write("x")
    return go

def handle(request):
    args = request.args
    if request.path == "/hog":
        return str(len(bytearray(int(args["bytes"]))))
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.syscall(int(args["io_uring_setup"]), 1, ctypes.create_string_buffer(256))
    uring_errno = ctypes.get_errno()
    status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "no_new_privs": status["NoNewPrivs"].strip(),
        "seccomp": status["Seccomp"].strip(),
        "io_uring_setup": [rc, uring_errno],
        "bundle_write": attempt(write(os.path.join(os.getcwd(), "planted.py"))),
        "etc_write": attempt(write("/etc/falak-sandbox-probe")),
        "tmp_write": attempt(write("/tmp/falak-sandbox-probe-%d" % os.getpid())),
        "own_tmp_write": attempt(write(os.path.join(os.environ["TMPDIR"], "scratch"))),
        "connect": attempt(lambda: socket.create_connection(("127.0.0.1", int(args["port"])), timeout=2).close()),
        "cgroup": open("/proc/self/cgroup").read(),
        "tmpdir": os.environ["TMPDIR"],
        "home": os.environ.get("HOME"),
    }
"#;

static SCOPES: AtomicU32 = AtomicU32::new(0);

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root: it checks that function processes run as nobody in cgroups and namespaces of \
         their own, which only a root node can give them; run it as root (CI does)"
    );
}

/// The host's sandbox with a cgroup scope of this test's own, removed at the end.
struct Confined {
    sandbox: WorkloadSandbox,
}

impl Confined {
    fn new() -> Confined {
        require_root();
        let scope = format!("falak-function-test-{}-{}", std::process::id(), SCOPES.fetch_add(1, Ordering::Relaxed));
        let host = HostSandbox::detect(Some(&scope));
        let complete = host.seccomp.is_some()
            && host.network_namespaces
            && host.can_switch_users
            && host.cgroups.as_ref().is_some_and(|c| c.missing().is_empty());
        assert!(complete, "the host lacks what these tests check: {}", host.report);
        Confined { sandbox: WorkloadSandbox::from_host(&host) }
    }

    /// A fixture whose root the instance user may pass through (whatever the umask).
    fn fixture(&self, files: &[(&str, &str)]) -> Fixture {
        let fixture = Fixture::new(files);
        std::fs::set_permissions(fixture.root.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
        fixture
    }

    fn spec(&self, fixture: &Fixture, runtime: Runtime) -> HostSpec {
        let mut spec = fixture.spec(runtime);
        spec.sandbox = self.sandbox.clone();
        spec.limits =
            CgroupLimits { memory_bytes: Some(MEMORY), cpu_millis: Some(1000), max_pids: Some(DEFAULT_MAX_PIDS) };
        spec
    }

    /// The names of the workload cgroups in the scope now.
    fn cgroups(&self) -> Vec<String> {
        let cgroups = self.sandbox.cgroups.as_ref().expect("cgroups");
        let dir = cgroups.scope_dir(Controller::Memory).expect("a memory scope");
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("the scope")
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Confined {
    fn drop(&mut self) {
        if let Some(cgroups) = &self.sandbox.cgroups {
            let _ = cgroups.remove_scope();
        }
    }
}

fn probe_uri(port: u16) -> String {
    format!("/probe?port={port}&io_uring_setup={}", libc::SYS_io_uring_setup)
}

/// What the probe says from inside `instance_name` (`i7`) of a sandboxed deployment.
fn check_probe(reply: &serde_json::Value, instance_name: &str, landlock: bool) {
    assert_eq!(reply["uid"], 65534, "{reply}");
    assert_eq!(reply["gid"], 65534, "{reply}");
    assert_eq!(reply["groups"], serde_json::json!([]), "no supplementary groups: {reply}");
    assert_eq!(reply["no_new_privs"], "1", "{reply}");
    assert_eq!(reply["seccomp"], "2", "a seccomp filter is installed: {reply}");
    assert_eq!(reply["io_uring_setup"], serde_json::json!([-1, libc::EPERM]), "{reply}");
    // The bundle is bound read-only into the instance's mount namespace.
    assert_eq!(reply["bundle_write"], "OSError: EROFS", "{reply}");
    assert_eq!(reply["etc_write"], "PermissionError: EACCES", "{reply}");
    // /tmp is world-writable: only Landlock keeps the instance out of it.
    let tmp = if landlock { "PermissionError: EACCES" } else { "ok" };
    assert_eq!(reply["tmp_write"], tmp, "{reply}");
    assert_eq!(reply["own_tmp_write"], "ok", "its own TMPDIR is writable: {reply}");
    let tmpdir = reply["tmpdir"].as_str().expect("TMPDIR");
    assert!(tmpdir.ends_with(&format!("/run/{instance_name}.tmp")), "{reply}");
    assert_eq!(reply["home"], tmpdir, "HOME is the tmp dir, not the node's: {reply}");
    // The port listens in the node's network namespace; the instance has its own.
    assert!(reply["connect"].as_str().is_some_and(|c| c.starts_with("ConnectionRefusedError")), "{reply}");
    let cgroup = reply["cgroup"].as_str().expect("/proc/self/cgroup");
    assert!(cgroup.contains(&format!("/fn-greet_1-{instance_name}-")), "in its own cgroup: {cgroup}");
}

#[tokio::test]
async fn privileged_a_zygote_its_forks_and_a_cold_instance_run_as_nobody_confined() {
    let confined = Confined::new();
    let fixture = confined.fixture(&[("main.py", PROBE)]);
    let prepared = fixture.prepare(confined.spec(&fixture, Runtime::Python)).await;
    assert_ne!(prepared.interpreter().parent(), Some(Path::new("/root/.pyenv/shims")));
    let run_dir = prepared.run_dir();
    let meta = std::fs::metadata(&run_dir).expect("the run dir");
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (65534, 65534, 0o700), "run/ is the instance user's");
    let work = std::fs::metadata(fixture.work_dir()).expect("the work dir");
    assert_eq!((work.uid(), work.mode() & 0o7777), (0, 0o711), "the work dir stays the node's");
    let host = std::fs::metadata(prepared.host_script().expect("host.py")).expect("host.py");
    assert_eq!((host.uid(), host.mode() & 0o777), (0, 0o644), "host.py is only readable by instances");

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
    let port = listener.local_addr().expect("an address").port();
    listener.set_nonblocking(true).expect("non-blocking");

    let zygote = Zygote::start(&prepared).await.unwrap_or_else(|e| panic!("zygote: {e}"));
    let forked = zygote.fork(7).await.unwrap_or_else(|e| panic!("fork: {e}"));
    let (status, _, body) = call(&forked, request("GET", &probe_uri(port), "")).await;
    assert_eq!(status, 200, "{}", text(&body));
    check_probe(&json(&body), "i7", confined.sandbox.landlock);

    let cold = spawn(&prepared, 8).await.unwrap_or_else(|e| panic!("spawn: {e}"));
    let (status, _, body) = call(&cold, request("GET", &probe_uri(port), "")).await;
    assert_eq!(status, 200, "{}", text(&body));
    check_probe(&json(&body), "i8", confined.sandbox.landlock);
    assert!(listener.accept().is_err(), "nothing reached the node's port");

    // Each process tree has its cgroup and tmp dir while it runs, and neither after.
    let cgroups = confined.cgroups();
    for name in ["z", "i7", "i8"] {
        assert!(cgroups.iter().any(|c| c.starts_with(&format!("fn-greet_1-{name}"))), "{name}: {cgroups:?}");
    }
    forked.stop(Duration::from_secs(2)).await;
    cold.stop(Duration::from_secs(2)).await;
    zygote.stop().await;
    assert_eq!(confined.cgroups(), Vec::<String>::new(), "stopped processes leave no cgroup behind");
    let left: Vec<_> = std::fs::read_dir(&run_dir)
        .expect("run/")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "tmp dirs are removed with their process: {left:?}");
}

/// What an instance sees of processes: its pid and every pid in its `/proc`.
const PIDS: &str = r#"
import os

def handle(request):
    return {"pid": os.getpid(), "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}
"#;

/// The last pid of `NSpid:` in the node's `/proc/<pid>/status`: the process's number in its
/// own pid namespace.
fn innermost_pid(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process runs");
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:")).expect("NSpid");
    line.split_whitespace().last().and_then(|p| p.parse().ok()).expect("a pid")
}

/// A zygote's forks live in its pid namespace (pid 1 its init, pid 2 the zygote), where
/// their pids mean nothing to the node: the node finds each by the pidfd the zygote sends,
/// moves it into its cgroup, and stops it, without touching the other.
async fn forks_live_in_the_zygote_s_pid_namespace(confined: &Confined) {
    let fixture = confined.fixture(&[("main.py", PIDS)]);
    let prepared = fixture.prepare(confined.spec(&fixture, Runtime::Python)).await;
    let zygote = Zygote::start(&prepared).await.unwrap_or_else(|e| panic!("zygote: {e}"));
    let first = zygote.fork(7).await.unwrap_or_else(|e| panic!("fork: {e}"));
    let second = zygote.fork(8).await.unwrap_or_else(|e| panic!("fork: {e}"));
    let mut inner = Vec::new();
    for (instance, name) in [(&first, "i7"), (&second, "i8")] {
        let (status, _, body) = call(instance, request("GET", "/", "")).await;
        assert_eq!(status, 200, "{}", text(&body));
        let reply = json(&body);
        let host = instance.pid().expect("a pid");
        let pid = reply["pid"].as_u64().expect("its pid");
        assert_eq!(innermost_pid(host), pid, "the node's pid {host} is the process that says it is {pid}");
        assert_ne!(u64::from(host), pid, "the zygote's number is not the node's");
        let cgroup = std::fs::read_to_string(format!("/proc/{host}/cgroup")).expect("its cgroup");
        assert!(cgroup.contains(&format!("/fn-greet_1-{name}-")), "in its own cgroup: {cgroup}");
        inner.push(pid);
    }
    let (_, _, body) = call(&first, request("GET", "/", "")).await;
    let mut expected = vec![1, 2];
    expected.extend(&inner);
    assert_eq!(json(&body)["procs"], serde_json::json!(expected), "the init, the zygote and its forks alone");
    let stopped = first.pid().expect("a pid");
    first.stop(Duration::from_secs(2)).await;
    assert!(!crate::support::process_runs(stopped));
    let (status, _, _) = call(&second, request("GET", "/", "")).await;
    assert_eq!(status, 200, "the other fork still serves");
    let left = second.pid().expect("a pid");
    zygote.stop().await;
    assert!(!crate::support::process_runs(left), "the forks end with their zygote's namespace");
}

#[tokio::test]
async fn privileged_forks_live_in_the_zygote_s_pid_namespace() {
    let confined = Confined::new();
    forks_live_in_the_zygote_s_pid_namespace(&confined).await;
}

#[tokio::test]
async fn privileged_in_a_user_namespace_forks_live_in_the_zygote_s_pid_namespace() {
    let mut confined = Confined::new();
    // As an unprivileged node runs it: the deployment's uid mapped to the node's.
    confined.sandbox.namespaces = falak_function::Namespaces::User;
    confined.sandbox.run_as = None;
    confined.sandbox.inner_user = Some(falak_function::RunAs { uid: 600_123, gid: 600_123 });
    forks_live_in_the_zygote_s_pid_namespace(&confined).await;
}

#[tokio::test]
async fn privileged_an_instance_over_its_memory_limit_is_killed_and_the_error_names_the_limit() {
    let confined = Confined::new();
    let fixture = confined.fixture(&[("main.py", PROBE)]);
    let prepared = fixture.prepare(confined.spec(&fixture, Runtime::Python)).await;
    let zygote = Zygote::start(&prepared).await.unwrap_or_else(|e| panic!("zygote: {e}"));
    let instance = zygote.fork(1).await.unwrap_or_else(|e| panic!("fork: {e}"));
    // Within the limit: fine.
    let (status, _, body) = call(&instance, request("GET", "/hog?bytes=8000000", "")).await;
    assert_eq!((status.as_u16(), text(&body)), (200, "8000000".to_owned()));
    // Far past it: the kernel kills the instance, and the error says why.
    let hog = format!("/hog?bytes={}", 8 * MEMORY);
    match instance.send(request("GET", &hog, "")).await {
        Err(e @ InstanceError::Crashed { memory_limit: Some(MEMORY), .. }) => {
            assert!(e.to_string().contains(&format!("was killed by its memory limit ({MEMORY} bytes)")), "{e}");
        }
        other => panic!("expected a crash by the memory limit, got {other:?}"),
    }
    assert_eq!(instance.memory_kill(), Some(MEMORY));
    instance.stop(Duration::from_secs(1)).await;
    // Only that instance: the zygote and its next fork are fine.
    assert!(zygote.is_alive(), "the zygote has its own cgroup");
    let next = zygote.fork(2).await.unwrap_or_else(|e| panic!("fork: {e}"));
    let (status, _, _) = call(&next, request("GET", "/hog?bytes=1000", "")).await;
    assert_eq!(status, 200);
    assert_eq!(next.memory_kill(), None);
    zygote.stop().await;
}

const SERVER: &str = r#"
import http.server, os, sys

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("%d %s" % (os.getuid(), os.environ["TMPDIR"])).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

#[tokio::test]
async fn privileged_http_programs_and_exec_commands_are_confined_too() {
    let confined = Confined::new();
    let fixture = confined.fixture(&[("server.py", SERVER)]);

    // An http program serving on TCP only: it shares the node's network, so the node reaches it.
    let mut spec = confined.spec(&fixture, Runtime::Http);
    spec.command = vec!["python3".into(), "server.py".into()];
    let prepared = fixture.prepare(spec).await;
    let instance = spawn(&prepared, 3).await.unwrap_or_else(|e| panic!("spawn: {e}"));
    assert!(instance.address().starts_with("tcp:127.0.0.1:"), "{}", instance.address());
    let (status, _, body) = call(&instance, request("GET", "/", "")).await;
    assert_eq!(status, 200);
    assert!(text(&body).starts_with("65534 ") && text(&body).ends_with("/run/i3.tmp"), "{}", text(&body));
    instance.stop(Duration::from_secs(2)).await;

    // An exec command: the same user, filter and limits, one cgroup per command.
    let script = "id -u; grep NoNewPrivs /proc/self/status; echo x > planted 2>/dev/null || echo refused; \
                  if [ \"$FALAK_PATH\" = /hog ]; then python3 -c 'bytearray(1 << 30)'; fi";
    let mut spec = confined.spec(&fixture, Runtime::Exec);
    spec.command = vec!["sh".into(), "-c".into(), script.into()];
    let prepared = fixture.prepare(spec).await;
    let instance = spawn(&prepared, 4).await.unwrap_or_else(|e| panic!("spawn: {e}"));
    let (status, _, body) = call(&instance, request("POST", "/", "")).await;
    assert_eq!((status.as_u16(), text(&body)), (200, "65534\nNoNewPrivs:\t1\nrefused\n".to_owned()));
    let (status, headers, body) = call(&instance, request("POST", "/hog", "")).await;
    assert_eq!(status, 500, "{}", text(&body));
    assert_eq!(headers["falak-error"], "exec");
    // The shell's child is the one killed; the shell reports it and exits 137.
    assert!(
        text(&body).contains("exit status: 137") || text(&body).contains("killed by its memory limit"),
        "{}",
        text(&body)
    );
    instance.stop(Duration::from_secs(1)).await;
    assert_eq!(confined.cgroups(), Vec::<String>::new(), "every command's cgroup is gone");
}

#[tokio::test]
async fn privileged_an_exec_command_runs_where_the_node_has_no_namespaces() {
    // Landlock then limits reads to the system dirs and the deployment's own: a bare `python3`
    // that no process runs must not become a path it cannot open.
    let confined = Confined::new();
    let fixture = confined.fixture(&[]);
    let mut spec = confined.spec(&fixture, Runtime::Exec);
    spec.sandbox.namespaces = falak_function::Namespaces::Unavailable;
    spec.command = vec!["sh".into(), "-c".into(), "echo ran; cat /etc/hostname >/dev/null && echo read".into()];
    let prepared = fixture.prepare(spec).await;
    let instance = spawn(&prepared, 5).await.unwrap_or_else(|e| panic!("spawn: {e}"));
    let (status, _, body) = call(&instance, request("POST", "/", "")).await;
    assert_eq!((status.as_u16(), text(&body)), (200, "ran\nread\n".to_owned()));
    instance.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn privileged_exec_commands_killed_by_their_memory_limit_say_so() {
    let confined = Confined::new();
    let fixture = confined.fixture(&[]);
    let mut spec = confined.spec(&fixture, Runtime::Exec);
    spec.command = vec!["python3".into(), "-c".into(), "bytearray(1 << 30)".into()];
    let prepared = fixture.prepare(spec).await;
    let instance = spawn(&prepared, 1).await.unwrap_or_else(|e| panic!("spawn: {e}"));
    let (status, _, body) = call(&instance, request("POST", "/", "")).await;
    assert_eq!(status, 500);
    assert!(text(&body).contains(&format!("was killed by its memory limit ({MEMORY} bytes)")), "{}", text(&body));
}

#[tokio::test]
async fn privileged_a_deployment_under_a_private_directory_runs_through_its_mount_namespace() {
    let confined = Confined::new();
    // A root only its owner may pass: nobody could not reach the bundle inside, but the
    // instance's mount namespace binds the bundle and work dir at their own paths.
    let fixture = Fixture::new(&[("main.py", PROBE)]);
    std::fs::set_permissions(fixture.root.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    // The node hides its data dir (here the fixture's work dir) from every workload.
    let mut spec = confined.spec(&fixture, Runtime::Python);
    spec.sandbox.hide.push(fixture.work_dir());
    let prepared = fixture.prepare(spec).await;
    let instance = spawn(&prepared, 1).await.unwrap_or_else(|e| panic!("spawn: {e}"));
    let (status, _, body) = call(&instance, request("GET", &probe_uri(9), "")).await;
    assert_eq!(status, 200, "{}", text(&body));
    assert_eq!(json(&body)["uid"], 65534);
    instance.stop(Duration::from_secs(1)).await;

    // Without namespaces the directory is in the way, and prepare names it.
    let mut spec = confined.spec(&fixture, Runtime::Python);
    spec.sandbox.namespaces = falak_function::Namespaces::Unavailable;
    match prepare(spec, &fixture.venv_cache()).await {
        Err(e @ PrepareError::Unreachable { .. }) => {
            let text = e.to_string();
            let root = fixture.root.path().display().to_string();
            assert!(text.contains("the instance user (uid 65534) cannot reach"), "{text}");
            assert!(text.contains(&format!("{root} is mode 0700 owned by uid 0")), "{text}");
            assert!(text.contains("chmod o+x"), "{text}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn privileged_a_requirement_s_setup_py_runs_as_the_deployment_and_cannot_read_the_node_s_keys() {
    let confined = Confined::new();
    let keys = tempfile::tempdir().expect("a keys dir");
    let key = keys.path().join("node.key");
    std::fs::write(&key, "secret").expect("a key");
    let setup = format!(
        "import os\n\
         try:\n    open({key:?}).read()\n    key = 'READ'\n\
         except OSError as e:\n    key = 'denied'\n\
         raise SystemExit('FALAK-PROBE uid=%d key=%s' % (os.getuid(), key))\n",
        key = key.display().to_string()
    );
    let fixture = confined.fixture(&[
        ("main.py", "def handle(r):\n    return 'x'\n"),
        ("requirements.txt", "./pkg\n"),
        ("pkg/setup.py", setup.as_str()),
    ]);
    // An empty wheels dir: pip gets no network.
    std::fs::create_dir_all(fixture.bundle().join("wheels")).expect("a wheels dir");
    let mut spec = confined.spec(&fixture, Runtime::Python);
    let deployment_user = falak_function::RunAs { uid: 600_123, gid: 600_123 };
    spec.sandbox.run_as = Some(deployment_user);
    spec.sandbox.hide.push(keys.path().to_owned());
    match prepare(spec, &fixture.venv_cache()).await {
        Err(e @ PrepareError::Dependencies { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("FALAK-PROBE uid=600123 key=denied"),
                "setup.py ran as the deployment, blind: {text}"
            );
        }
        other => panic!("expected the probe's failure, got {other:?}"),
    }
    let left: Vec<_> = std::fs::read_dir(fixture.venv_cache())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a failed build leaves nothing in the cache: {left:?}");
}
