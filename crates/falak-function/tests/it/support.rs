//! Bundles, specs and requests for the tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use falak_core::function::Runtime;
use falak_function::{BoxBody, CgroupLimits, HostSpec, Instance, Prepared, WorkloadSandbox, prepare};
use http_body_util::{BodyExt, Full};
use tempfile::TempDir;

/// Waits on outcomes are generous: the machine running the tests may be loaded.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A temporary dir holding a bundle (`b/`), a work dir (`w/`), a log and a venv cache.
pub struct Fixture {
    pub root: TempDir,
}

impl Fixture {
    /// A bundle with these files (path relative to the bundle, content).
    pub fn new(files: &[(&str, &str)]) -> Fixture {
        let root = tempfile::Builder::new().prefix("ff").tempdir_in("/tmp").expect("a temporary dir");
        let fixture = Fixture { root };
        std::fs::create_dir_all(fixture.bundle()).expect("the bundle dir");
        for (path, content) in files {
            fixture.write(path, content);
        }
        fixture
    }

    pub fn write(&self, path: &str, content: &str) {
        let path = self.bundle().join(path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("a dir");
        std::fs::write(path, content).expect("a bundle file");
    }

    pub fn bundle(&self) -> PathBuf {
        self.root.path().join("b")
    }

    pub fn work_dir(&self) -> PathBuf {
        self.root.path().join("w")
    }

    pub fn log(&self) -> PathBuf {
        self.root.path().join("instances.log")
    }

    pub fn venv_cache(&self) -> PathBuf {
        self.root.path().join("venvs")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// The spec of a deployment of the bundle, unconfined (the protocol tests); the sandbox
    /// tests set `sandbox` and `limits`.
    pub fn spec(&self, runtime: Runtime) -> HostSpec {
        HostSpec {
            function: "greet".into(),
            deployment: "greet@1".into(),
            runtime,
            handler: (runtime == Runtime::Python).then(|| "main.handle".to_owned()),
            command: Vec::new(),
            env: BTreeMap::from([("GREETING".to_owned(), "salaam".to_owned())]),
            bundle_dir: self.bundle(),
            work_dir: self.work_dir(),
            log_path: self.log(),
            python: PathBuf::from("python3"),
            limits: CgroupLimits::default(),
            sandbox: WorkloadSandbox::unconfined(),
            container: None,
        }
    }

    pub async fn prepare(&self, spec: HostSpec) -> Prepared {
        match prepare(spec, &self.venv_cache()).await {
            Ok(prepared) => prepared,
            Err(e) => panic!("prepare failed: {e}"),
        }
    }

    pub async fn python(&self) -> Prepared {
        self.prepare(self.spec(Runtime::Python)).await
    }

    pub async fn command(&self, runtime: Runtime, command: &[&str]) -> Prepared {
        let mut spec = self.spec(runtime);
        spec.command = command.iter().map(|s| s.to_string()).collect();
        self.prepare(spec).await
    }
}

pub fn body(bytes: impl Into<Bytes>) -> BoxBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

pub fn request(method: &str, uri: &str, content: impl Into<Bytes>) -> http::Request<BoxBody> {
    http::Request::builder().method(method).uri(uri).body(body(content)).expect("a request")
}

/// Send and read the whole response, within [`PATIENCE`].
pub async fn call(instance: &Instance, request: http::Request<BoxBody>) -> (http::StatusCode, http::HeaderMap, Bytes) {
    let exchange = async {
        let response = instance.send(request).await.unwrap_or_else(|e| panic!("send failed: {e}"));
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap_or_else(|e| panic!("reading the body failed: {e}")).to_bytes();
        (parts.status, parts.headers, bytes)
    };
    tokio::time::timeout(PATIENCE, exchange).await.expect("a response within the patience")
}

pub fn text(bytes: &Bytes) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn json(bytes: &Bytes) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(bytes)))
}

/// Whether a process exists (and is not a zombie).
pub fn process_runs(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    matches!(state, Some(s) if s != 'Z' && s != 'X')
}

pub fn kill(pid: u32) {
    let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill runs");
    assert!(status.success(), "kill -9 {pid} failed");
}

/// Wait until `path` exists.
pub async fn wait_for_file(path: &Path) {
    let wait = async {
        while !path.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(PATIENCE, wait).await.expect("the file appears");
}
