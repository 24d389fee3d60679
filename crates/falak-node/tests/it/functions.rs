//! Functions against real daemons in one process: real Python runtime hosts, zygote snapshots,
//! the gateway, scale to zero, a burst against `max_instances`, bad input, async invocations.
//! Needs `python3` (and `python3 -m venv` for the dependency case), as CI installs.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use falak_api::function::FunctionDeployed;
use falak_api::{Client, ClientError, ErrorCode};
use falak_core::function::{FunctionDocument, InvocationState};

use crate::daemon::InProcessMesh;

const MAIN_PY: &str = r#"
import os, time
time.sleep(0.3)   # imports that take 300 ms

def handle(request):
    if request.path == "/boom":
        raise ValueError("boom: the handler raised")
    if request.path == "/hang":
        time.sleep(30)
    if request.path == "/slow":
        time.sleep(0.05)
    if request.path == "/pid":
        return str(os.getpid())
    if request.path == "/crash":
        os._exit(3)
    if request.path == "/headers":
        return sorted(request.headers)
    return {"hello": request.body.decode() or "world", "path": request.path}
"#;

/// The parent of the nodes' data dirs. A root node runs function instances as nobody, who must
/// pass through every directory above the bundles and sockets (the node refuses a deployment
/// it cannot reach, naming the directory): make it `0711` whatever the umask.
fn data_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

async fn eventually<T>(what: &str, secs: u64, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..secs * 10 {
        if let Some(v) = probe().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within {secs} s");
}

fn bundle(dir: &Path, files: &[(&str, &str)]) -> Vec<u8> {
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    falak_artifact::bundle::pack(dir).unwrap()
}

/// Store the bundle and deploy `yaml` with it.
async fn deploy(client: &Client, yaml: &str, bundle: Vec<u8>) -> Result<FunctionDeployed, ClientError> {
    let stored = client.store_artifact(bundle).await?;
    let mut doc = FunctionDocument::parse(yaml).unwrap();
    doc.artifact = Some(stored.id);
    client.deploy_function(&doc).await
}

async fn invoke(client: &Client, name: &str, path: &str, body: &str) -> (u16, String, String) {
    let response =
        client.invoke(name, reqwest::Method::POST, path, &[], body.as_bytes().to_vec()).await.expect("an answer");
    let status = response.status().as_u16();
    let start = response.headers().get("falak-start").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, start, response.text().await.unwrap())
}

/// Wait until the node says a snapshot of `name` is ready (an `observer_warmed` event).
async fn wait_warmed(client: &Client, name: &str) {
    let url = format!("{}/api/v1/events?follow=false", client.base_url());
    eventually("the observer's snapshot", 60, async || {
        let text = client.http().get(&url).bearer_auth(client.token()?).send().await.ok()?.text().await.ok()?;
        text.lines()
            .any(|l| l.contains("observer_warmed") && l.contains(name) && l.contains("\"snapshot\":true"))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_function_starts_from_a_snapshot_serves_warm_and_survives_bad_requests() {
    let dir = data_dir();
    let mesh = InProcessMesh::start(dir.path(), 1).await;
    let client = &mesh.clients[0];
    let yaml = "name: greet\nkind: function\nruntime: python\nhandler: main.handle\ntimeout: 2s\n\
                scaling: { max_instances: 2, concurrency: 4, idle_timeout: 60s }";
    let src = tempfile::tempdir().unwrap();
    let deployed = deploy(client, yaml, bundle(src.path(), &[("main.py", MAIN_PY)])).await.unwrap();
    assert_eq!((deployed.name.as_str(), deployed.version), ("greet", 1));
    assert!(deployed.prepare.snapshot, "{deployed:?}");
    wait_warmed(client, "greet").await;

    // The caller's Falak token authorized the call; the function never sees it, on the path
    // that starts an instance as on the warm one.
    let (status, start, names) = invoke(client, "greet", "/headers", "").await;
    assert_eq!(status, 200, "{names}");
    assert!(start.starts_with("snapshot;"), "first start forks from the zygote: {start}");
    assert!(names.contains("\"host\"") && !names.contains("authorization"), "{names}");
    assert!(!names.contains("falak-hop"), "{names}");
    let (status, start, body) = invoke(client, "greet", "/x", "falak").await;
    assert_eq!(status, 200, "{body}");
    assert!(start.starts_with("warm;"), "{start}");
    assert!(body.contains("\"hello\": \"falak\"") && body.contains("\"path\": \"/x\""), "{body}");
    let (status, _, names) = invoke(client, "greet", "/headers", "").await;
    assert_eq!(status, 200);
    assert!(!names.contains("authorization") && !names.contains("falak-hop"), "{names}");

    // The handler raises: 500 with its error text; the same instance keeps serving.
    let (_, _, pid_before) = invoke(client, "greet", "/pid", "").await;
    let (status, _, body) = invoke(client, "greet", "/boom", "").await;
    assert_eq!(status, 500);
    assert!(body.contains("boom: the handler raised"), "{body}");
    let (status, _, pid_after) = invoke(client, "greet", "/pid", "").await;
    assert_eq!((status, &pid_after), (200, &pid_before));

    // The handler hangs past the timeout: 504, and the instance is replaced. (The node's pid
    // for it, not its own: it lives in its zygote's pid namespace.)
    let instances = client.function_instances("greet").await.unwrap();
    let old = instances.first().and_then(|i| i.pid).expect("the instance's pid");
    let (status, _, body) = invoke(client, "greet", "/hang", "").await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("timeout of 2000 ms"), "{body}");
    // The replacement starts while the request waits; on a loaded machine it may not be ready
    // within the gateway's wait, and the answer is then 429 with Retry-After: ask again.
    let pid_new = eventually("a replacement instance to answer", 20, async || {
        let (status, _, pid) = invoke(client, "greet", "/pid", "").await;
        assert!(status == 200 || status == 429, "{status}: {pid}");
        (status == 200).then_some(pid)
    })
    .await;
    assert_ne!(pid_new, pid_before, "the hung instance was replaced");
    eventually("the hung instance to exit", 10, async || (!Path::new(&format!("/proc/{old}")).exists()).then_some(()))
        .await;

    // The instance dies mid-request: 502 saying so, and a new instance serves the next one.
    let (status, _, body) = invoke(client, "greet", "/crash", "").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("exited while serving"), "{body}");
    let (status, _, pid_after_crash) = invoke(client, "greet", "/pid", "").await;
    assert_eq!(status, 200);
    assert_ne!(pid_after_crash, pid_new);

    // Unknown function, oversize body.
    let (status, _, body) = invoke(client, "nope", "/", "").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no function named nope"), "{body}");
    let big = vec![b'x'; 10 << 20];
    let response = client.invoke("greet", reqwest::Method::POST, "/", &[], big).await.unwrap();
    assert_eq!(response.status().as_u16(), 413);
    assert!(response.text().await.unwrap().contains("larger than the gateway's limit"));

    // Instances and metrics say what happened.
    let instances = client.function_instances("greet").await.unwrap();
    assert_eq!(instances.len(), 1, "{instances:?}");
    let metrics = client.metrics().await.unwrap();
    assert!(metrics.contains("falak_invocations_total{start=\"snapshot\"}"), "{metrics}");
    assert!(metrics.contains("falak_invocation_stage_seconds_bucket{stage=\"fork\""), "{metrics}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_errors_name_what_is_wrong_and_deploy_nothing() {
    let dir = data_dir();
    let mesh = InProcessMesh::start(dir.path(), 1).await;
    let client = &mesh.clients[0];
    let yaml = "name: bad\nkind: function\nruntime: python\nhandler: main.handle";

    // Not an archive.
    let err = client.store_artifact(b"definitely not a tar archive".to_vec()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Invalid), "{err}");
    // An archive whose path escapes.
    let mut evil = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(1);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    let name = b"../escape.py";
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_cksum();
    evil.append(&header, &b"x"[..]).unwrap();
    let err = client.store_artifact(evil.into_inner().unwrap()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Invalid), "{err}");
    // Oversize upload.
    let err = client.store_artifact(vec![0; 65 << 20]).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TooLarge), "{err}");

    // The handler attribute is missing: the deploy fails with Python's words.
    let src = tempfile::tempdir().unwrap();
    let err =
        deploy(client, yaml, bundle(src.path(), &[("main.py", "def other(r):\n    return 'x'\n")])).await.unwrap_err();
    assert!(err.to_string().contains("has no attribute 'handle'"), "{err}");
    // The module is missing.
    let src = tempfile::tempdir().unwrap();
    let err = deploy(client, yaml, bundle(src.path(), &[("other.py", "x = 1\n")])).await.unwrap_err();
    assert!(err.to_string().contains("main"), "{err}");
    // The module fails to import.
    let src = tempfile::tempdir().unwrap();
    let err = deploy(client, yaml, bundle(src.path(), &[("main.py", "raise RuntimeError('import exploded')\n")]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("import exploded"), "{err}");
    // A dependency cannot be installed (offline: an empty wheels dir).
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("wheels")).unwrap();
    std::fs::write(src.path().join("wheels/.keep"), "").unwrap();
    let files = [("main.py", "def handle(r):\n    return 'x'\n"), ("requirements.txt", "no-such-package-falak==1.0\n")];
    let err = deploy(client, yaml, bundle(src.path(), &files)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Invalid), "{err}");
    assert!(err.to_string().contains("no-such-package-falak"), "{err}");
    // A bundle the node never received.
    let mut doc = FunctionDocument::parse(yaml).unwrap();
    doc.artifact = Some(falak_core::ArtifactId([7; 32]));
    let err = client.deploy_function(&doc).await.unwrap_err();
    assert!(err.to_string().contains("upload it first"), "{err}");

    // Nothing was deployed.
    assert!(client.functions().await.unwrap().is_empty());
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instances_scale_to_zero_and_the_next_request_brings_one_back() {
    let dir = data_dir();
    let mesh = InProcessMesh::start(dir.path(), 1).await;
    let client = &mesh.clients[0];
    let yaml = "name: nap\nkind: function\nruntime: python\nhandler: main.handle\n\
                scaling: { min_instances: 0, max_instances: 2, idle_timeout: 1s }";
    let src = tempfile::tempdir().unwrap();
    deploy(client, yaml, bundle(src.path(), &[("main.py", MAIN_PY)])).await.unwrap();
    wait_warmed(client, "nap").await;
    let (status, _, _) = invoke(client, "nap", "/", "").await;
    assert_eq!(status, 200);
    assert_eq!(client.function("nap").await.unwrap().instances, 1);
    eventually("scale to zero", 20, async || {
        let info = client.function("nap").await.ok()?;
        let local = client.function_instances("nap").await.ok()?;
        (info.instances == 0 && local.is_empty()).then_some(())
    })
    .await;
    let (status, start, _) = invoke(client, "nap", "/", "").await;
    assert_eq!(status, 200);
    assert!(start.starts_with("snapshot;"), "back from zero through the snapshot: {start}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_1000_requests_is_answered_within_max_instances() {
    let dir = data_dir();
    let mesh = InProcessMesh::start(dir.path(), 1).await;
    let client = mesh.clients[0].clone();
    let yaml = "name: burst\nkind: function\nruntime: python\nhandler: main.handle\n\
                scaling: { max_instances: 4, concurrency: 2, idle_timeout: 60s }";
    let src = tempfile::tempdir().unwrap();
    deploy(&client, yaml, bundle(src.path(), &[("main.py", MAIN_PY)])).await.unwrap();
    wait_warmed(&client, "burst").await;

    let most = Arc::new(AtomicU32::new(0));
    let watching = tokio::spawn({
        let (client, most) = (client.clone(), most.clone());
        async move {
            loop {
                if let Ok(info) = client.function("burst").await {
                    most.fetch_max(info.instances, Ordering::Relaxed);
                }
                if let Ok(list) = client.function_instances("burst").await {
                    most.fetch_max(list.len() as u32, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let http = crate::daemon::http_with_token(&mesh.ca, &mesh.token);
    let url = format!("{}/fn/burst/slow", client.base_url());
    let requests = (0..1000).map(|_| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http.post(&url).timeout(Duration::from_secs(60)).send().await.expect("an answer, not a hang");
            let status = r.status().as_u16();
            let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            (status, retry_after)
        }
    });
    let answers = tokio::time::timeout(Duration::from_secs(90), futures_util::future::join_all(requests))
        .await
        .expect("every request is answered");
    watching.abort();
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    let busy = answers.iter().filter(|(s, r)| *s == 429 && r.is_some_and(|r| r >= 1)).count();
    assert_eq!(ok + busy, 1000, "only 200 or 429 with Retry-After: {:?}", &answers[..10]);
    assert!(ok >= 8, "the instances served some: {ok}");
    assert!(most.load(Ordering::Relaxed) <= 4, "never more than 4 instances: {}", most.load(Ordering::Relaxed));
    assert!(client.function("burst").await.unwrap().instances <= 4);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_invocations_run_and_post_their_result_to_the_callback() {
    let dir = data_dir();
    let mesh = InProcessMesh::start(dir.path(), 1).await;
    let client = &mesh.clients[0];
    let yaml = "name: later\nkind: function\nruntime: python\nhandler: main.handle";
    let src = tempfile::tempdir().unwrap();
    deploy(client, yaml, bundle(src.path(), &[("main.py", MAIN_PY)])).await.unwrap();

    // A callback receiver.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let app = axum::Router::new().route(
        "/done",
        axum::routing::post(move |body: String| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let callback = format!("http://{}/done", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let info = client.invoke_async("later", b"async".to_vec(), Some(&callback), Some(2)).await.unwrap();
    assert_eq!(info.state, InvocationState::Pending);
    let done = eventually("the invocation to finish", 30, async || {
        let i = client.invocation("later", info.id).await.ok()?;
        (i.state != InvocationState::Pending).then_some(i)
    })
    .await;
    assert_eq!(done.state, InvocationState::Succeeded, "{done:?}");
    assert_eq!(done.status, Some(200));
    assert!(done.body.as_deref().unwrap_or("").contains("\"hello\": \"async\""), "{done:?}");
    let posted = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
    assert!(posted.contains("SUCCEEDED") && posted.contains(&format!("\"id\":{}", info.id)), "{posted}");
    // Unknown ids and functions are clear errors.
    let err = client.invocation("later", 999).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    let err = client.invoke_async("nope", vec![], None, None).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
    mesh.stop().await;
}

/// Processes whose environment mentions `needle`.
fn processes_mentioning(needle: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter(|e| std::fs::read(e.path().join("environ")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_retires_the_old_snapshot_rolls_back_and_exec_functions_answer_per_request() {
    let dir = data_dir();
    let mesh = InProcessMesh::start(dir.path(), 1).await;
    let client = &mesh.clients[0];
    let yaml = "name: ver\nkind: function\nruntime: python\nhandler: main.handle";
    let src = tempfile::tempdir().unwrap();
    let deployed_v1 = deploy(client, yaml, bundle(src.path(), &[("main.py", MAIN_PY)])).await.unwrap();
    wait_warmed(client, "ver").await;
    assert_eq!(invoke(client, "ver", "/", "").await.0, 200);
    assert!(processes_mentioning("FALAK_DEPLOYMENT=ver@1\0") > 0, "version 1 runs");
    let src2 = tempfile::tempdir().unwrap();
    let v2 = MAIN_PY.replace("hello", "hi");
    let deployed = deploy(client, yaml, bundle(src2.path(), &[("main.py", &v2)])).await.unwrap();
    assert_eq!(deployed.version, 2);
    eventually("version 1's zygote and instance to stop", 30, async || {
        (processes_mentioning("FALAK_DEPLOYMENT=ver@1\0") == 0).then_some(())
    })
    .await;
    let (status, _, body) = invoke(client, "ver", "/", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"hi\""), "version 2 answers: {body}");

    // Rolled back: version 1's spec, bundle and signature as version 3.
    let info = client.function("ver").await.unwrap();
    assert_eq!(info.earlier_versions, [1]);
    let back = client.rollback_function("ver", None).await.unwrap();
    assert_eq!((back.version, back.artifact), (3, deployed_v1.artifact));
    assert_eq!(back.earlier_versions, [1, 2]);
    let (status, _, body) = eventually("version 3 (version 1's code) to answer", 30, async || {
        let answer = invoke(client, "ver", "/", "").await;
        answer.2.contains("\"hello\"").then_some(answer)
    })
    .await;
    assert_eq!(status, 200, "{body}");
    let missing = client.rollback_function("ver", Some(7)).await.unwrap_err().to_string();
    assert!(missing.contains("keeps no version 7; it keeps 1, 2"), "{missing}");

    // An exec function: one process per request, body on stdin, answer on stdout.
    let yaml = "name: upper\nkind: function\nruntime: exec\ncommand: [\"tr\", \"a-z\", \"A-Z\"]";
    let src = tempfile::tempdir().unwrap();
    deploy(client, yaml, bundle(src.path(), &[("README", "tr does the work\n")])).await.unwrap();
    let (status, _, body) = invoke(client, "upper", "/", "shout").await;
    assert_eq!((status, body.as_str()), (200, "SHOUT"));
    mesh.stop().await;
}

/// The kinds of `name`'s function events a node published itself.
async fn events_of(client: &Client, kind: &str, name: &str) -> usize {
    let url = format!("{}/api/v1/events?follow=false", client.base_url());
    let token = client.token().unwrap_or_default();
    let sent = client.http().get(&url).bearer_auth(token).send().await;
    let Ok(text) = sent.and_then(|r| r.error_for_status()) else { return 0 };
    let text = text.text().await.unwrap_or_default();
    text.lines().filter(|l| l.contains(kind) && l.contains(&format!("\"function\":\"{name}\""))).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_observer_puts_the_function_at_risk_and_another_node_is_recruited_and_warmed() {
    let dir = data_dir();
    let mut mesh = InProcessMesh::start(dir.path(), 3).await;
    let yaml = "name: orbit\nkind: function\nruntime: python\nhandler: main.handle\nobservers: 2";
    let src = tempfile::tempdir().unwrap();
    deploy(&mesh.clients[0], yaml, bundle(src.path(), &[("main.py", MAIN_PY)])).await.unwrap();
    // Two observers warm their snapshots; the third node does not.
    let mut observers = Vec::new();
    eventually("two observers warmed", 60, async || {
        observers.clear();
        for (i, c) in mesh.clients.iter().enumerate() {
            if events_of(c, "observer_warmed", "orbit").await > 0 {
                observers.push(i);
            }
        }
        (observers.len() == 2).then_some(())
    })
    .await;
    let outsider = (0..3).find(|i| !observers.contains(i)).unwrap();
    // Let the deployment age past the recruitment grace, then lose an observer.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let lost = *observers.iter().find(|i| **i != 0).unwrap_or(&observers[0]);
    mesh.stop_node(lost).await;
    let client = mesh.clients[outsider].clone();
    eventually("the outsider recruited and warmed", 60, async || {
        let at_risk = events_of(&client, "function_at_risk", "orbit").await;
        let warmed = events_of(&client, "observer_warmed", "orbit").await;
        (at_risk > 0 && warmed > 0).then_some(())
    })
    .await;
    // The recruited node serves from its snapshot.
    let (status, start, _) = invoke(&client, "orbit", "/", "").await;
    assert_eq!(status, 200);
    assert!(start.starts_with("snapshot;") || start.starts_with("remote-warm;"), "{start}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_instances_are_kept_running_without_requests() {
    let dir = data_dir();
    let mesh = InProcessMesh::start(dir.path(), 1).await;
    let client = &mesh.clients[0];
    let yaml = "name: floor\nkind: function\nruntime: python\nhandler: main.handle\n\
                scaling: { min_instances: 1, max_instances: 2, idle_timeout: 1s }";
    let src = tempfile::tempdir().unwrap();
    deploy(client, yaml, bundle(src.path(), &[("main.py", MAIN_PY)])).await.unwrap();
    eventually("the floor instance", 30, async || {
        let list = client.function_instances("floor").await.ok()?;
        (list.len() == 1 && list[0].state == "IDLE").then_some(())
    })
    .await;
    // Past the idle timeout it is still there: min_instances is a floor.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(client.function_instances("floor").await.unwrap().len(), 1);
    assert_eq!(client.function("floor").await.unwrap().instances, 1);
    let (status, start, _) = invoke(client, "floor", "/", "").await;
    assert_eq!(status, 200);
    assert!(start.starts_with("warm;"), "{start}");
    mesh.stop().await;
}

/// What a sandboxed function may do, asked from inside it.
const SANDBOX_PY: &str = r#"
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
    if request.path == "/ids":
        return {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}
    if request.path == "/write":
        return {
            "bundle": attempt(write(os.path.join(os.getcwd(), "planted.py"))),
            "etc": attempt(write("/etc/falak-function-probe")),
            "tmp": attempt(write("/tmp/falak-function-probe-%d" % os.getpid())),
            "own_tmp": attempt(write(os.path.join(os.environ["TMPDIR"], "scratch"))),
        }
    if request.path == "/io_uring_setup":
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.syscall(int(args["nr"]), 1, ctypes.create_string_buffer(256))
        return [rc, ctypes.get_errno()]
    if request.path == "/connect":
        return {"connect": attempt(lambda: socket.create_connection(("127.0.0.1", int(args["port"])), timeout=2).close())}
    if request.path == "/hog":
        return str(len(bytearray(int(args["bytes"]))))
    return str(os.getpid())
"#;

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root: a root node runs function instances as nobody, in cgroups and network namespaces of \
         their own, and the test checks exactly that; run it as root (CI does)"
    );
}

/// A one-node mesh with `SANDBOX_PY` deployed as `probe` (`extra` YAML lines appended), warm.
async fn sandboxed_probe(dir: &Path, extra: &str) -> InProcessMesh {
    require_root();
    let mesh = InProcessMesh::start(dir, 1).await;
    let yaml = format!("name: probe\nkind: function\nruntime: python\nhandler: main.handle\ntimeout: 10s\n{extra}");
    let src = tempfile::tempdir().unwrap();
    deploy(&mesh.clients[0], &yaml, bundle(src.path(), &[("main.py", SANDBOX_PY)])).await.unwrap();
    wait_warmed(&mesh.clients[0], "probe").await;
    mesh
}

async fn probe(client: &Client, path: &str) -> serde_json::Value {
    let (status, _, body) = invoke(client, "probe", path, "").await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_a_function_runs_as_its_own_uid_and_cannot_write_outside_its_directory() {
    let dir = data_dir();
    let mesh = sandboxed_probe(dir.path(), "").await;
    let client = &mesh.clients[0];
    let ids = probe(client, "/ids").await;
    let (first, count) = falak_exec::WorkloadUsers::DEFAULT_RANGE;
    let uid = ids["uid"].as_u64().unwrap_or_else(|| panic!("{ids}"));
    assert!((u64::from(first)..u64::from(first + count)).contains(&uid), "a uid of the function's own: {ids}");
    assert_eq!(ids, serde_json::json!({"uid": uid, "gid": uid, "groups": []}));
    let writes = probe(client, "/write").await;
    assert_eq!(writes["bundle"], "OSError: EROFS", "its own code is bound read-only: {writes}");
    assert_eq!(writes["etc"], "PermissionError: EACCES", "{writes}");
    // /tmp is writable by everyone: Landlock (this kernel has it) keeps the function out.
    assert_eq!(writes["tmp"], "PermissionError: EACCES", "{writes}");
    assert_eq!(writes["own_tmp"], "ok", "its own TMPDIR is writable: {writes}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_a_function_cannot_set_up_io_uring() {
    let dir = data_dir();
    let mesh = sandboxed_probe(dir.path(), "").await;
    let reply = probe(&mesh.clients[0], &format!("/io_uring_setup?nr={}", libc::SYS_io_uring_setup)).await;
    assert_eq!(reply, serde_json::json!([-1, libc::EPERM]), "the seccomp filter refuses io_uring_setup");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_a_function_cannot_reach_ports_on_the_node_s_loopback() {
    let dir = data_dir();
    let mesh = sandboxed_probe(dir.path(), "").await;
    let client = &mesh.clients[0];
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let api_port = reqwest::Url::parse(client.base_url()).unwrap().port().expect("the API's port");
    for port in [port, api_port] {
        let reply = probe(client, &format!("/connect?port={port}")).await;
        let refused = serde_json::json!({"connect": "ConnectionRefusedError: ECONNREFUSED"});
        assert_eq!(reply, refused, "port {port}: the function has a network namespace of its own");
    }
    assert!(listener.accept().is_err(), "nothing connected to the test's port");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_an_instance_over_its_memory_limit_is_killed_and_a_new_one_serves_the_next_request() {
    let dir = data_dir();
    let mesh = sandboxed_probe(dir.path(), "resources: { memory: 64Mi }\nscaling: { max_instances: 2 }").await;
    let client = &mesh.clients[0];
    let (status, _, first) = invoke(client, "probe", "/pid", "").await;
    assert_eq!(status, 200, "{first}");
    let (status, _, body) = invoke(client, "probe", &format!("/hog?bytes={}", 1u64 << 30), "").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("killed by its memory limit (67108864 bytes)"), "the answer names the limit: {body}");
    let (status, start, next) = invoke(client, "probe", "/pid", "").await;
    assert_eq!(status, 200, "{next}");
    assert_ne!(next, first, "a new instance serves the next request ({start})");
    assert!(start.starts_with("snapshot;"), "forked from the zygote, which the kill spared: {start}");
    let failed = eventually("the instance_failed event", 10, async || {
        (events_of(client, "killed by its memory limit (67108864 bytes)", "probe").await > 0).then_some(())
    });
    failed.await;
    mesh.stop().await;
}

const DISK_PY: &str = r#"
import os

def handle(request):
    tmp = os.environ["TMPDIR"]
    if request.path == "/big":
        try:
            with open(os.path.join(tmp, "big"), "wb") as f:
                f.write(b"\0" * (8 << 20))
        finally:
            os.remove(os.path.join(tmp, "big"))
    if request.path == "/fill":
        for i in range(8):
            with open(os.path.join(tmp, f"f{i}"), "wb") as f:
                f.write(b"\0" * (1 << 20))
    return str(os.getpid())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_over_its_disk_limit_is_replaced_and_no_file_outgrows_it() {
    let dir = data_dir();
    let mesh = InProcessMesh::start(dir.path(), 1).await;
    let client = &mesh.clients[0];
    let yaml = "name: disk\nkind: function\nruntime: python\nhandler: main.handle\nresources: { disk: 4Mi }";
    let src = tempfile::tempdir().unwrap();
    deploy(client, yaml, bundle(src.path(), &[("main.py", DISK_PY)])).await.unwrap();
    wait_warmed(client, "disk").await;
    let (status, _, first) = invoke(client, "disk", "/pid", "").await;
    assert_eq!(status, 200, "{first}");

    // One file past the limit: RLIMIT_FSIZE (Python ignores SIGXFSZ and sees EFBIG).
    let (status, _, body) = invoke(client, "disk", "/big", "").await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("File too large"), "{body}");

    // Many files under it each, past it together: the deployment's check replaces the instance.
    let (status, _, filled) = invoke(client, "disk", "/fill", "").await;
    assert_eq!((status, &filled), (200, &first), "the same instance wrote them");
    eventually("the instance_failed event naming the disk limit", 10, async || {
        (events_of(client, "killed by its disk limit (4194304 bytes)", "disk").await > 0).then_some(())
    })
    .await;
    let (status, _, next) = invoke(client, "disk", "/pid", "").await;
    assert_eq!(status, 200, "{next}");
    assert_ne!(next, first, "a new instance serves the next request");
    mesh.stop().await;
}
