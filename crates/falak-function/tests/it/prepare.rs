//! prepare: bundle checks and virtualenvs.

use std::path::Path;
use std::time::Duration;

use falak_core::function::Runtime;
use falak_function::{PrepareError, Zygote, prepare, runtime_host_source};
use tokio::time::Instant;

use crate::support::{Fixture, call, json, request};

#[tokio::test]
async fn a_missing_handler_module_fails_prepare_naming_the_paths_looked_for() {
    let fixture = Fixture::new(&[("main.py", "def handle(r):\n    return 'x'\n")]);
    let mut spec = fixture.spec(Runtime::Python);
    spec.handler = Some("app.handle".into());
    match prepare(spec, &fixture.venv_cache()).await {
        Err(e @ PrepareError::MissingHandler { .. }) => {
            let text = e.to_string();
            assert!(text.contains("b/app.py") && text.contains("b/app/__init__.py"), "{text}");
        }
        other => panic!("expected MissingHandler, got {other:?}"),
    }
    let mut spec = fixture.spec(Runtime::Python);
    spec.handler = Some("main".into());
    assert!(matches!(prepare(spec, &fixture.venv_cache()).await, Err(PrepareError::InvalidHandler { .. })));
}

#[tokio::test]
async fn a_package_handler_is_found_and_the_runtime_host_is_written_to_the_work_dir() {
    let fixture = Fixture::new(&[("app/__init__.py", ""), ("app/api.py", "def handle(r):\n    return 'pkg'\n")]);
    let mut spec = fixture.spec(Runtime::Python);
    spec.handler = Some("app.api.handle".into());
    let prepared = fixture.prepare(spec).await;
    let host = prepared.host_script().expect("a host script");
    assert_eq!(host, fixture.work_dir().join("host.py"));
    assert_eq!(std::fs::read_to_string(host).expect("host.py"), runtime_host_source());
    assert!(prepared.venv().is_none());
    let zygote = Zygote::start(&prepared).await.unwrap_or_else(|e| panic!("zygote: {e}"));
    let instance = zygote.fork(1).await.unwrap_or_else(|e| panic!("fork: {e}"));
    assert_eq!(call(&instance, request("GET", "/", "")).await.2, "pkg");
}

#[tokio::test]
async fn an_unsatisfiable_requirement_fails_prepare_and_caches_nothing() {
    let fixture = Fixture::new(&[
        ("main.py", "def handle(r):\n    return 'x'\n"),
        ("requirements.txt", "falak-no-such-package==1.0\n"),
    ]);
    std::fs::create_dir_all(fixture.bundle().join("wheels")).expect("a wheels dir");
    match prepare(fixture.spec(Runtime::Python), &fixture.venv_cache()).await {
        Err(e @ PrepareError::Dependencies { .. }) => {
            let text = e.to_string();
            assert!(text.contains("falak-no-such-package"), "the output names the package: {text}");
        }
        other => panic!("expected Dependencies, got {other:?}"),
    }
    let left: Vec<_> = std::fs::read_dir(fixture.venv_cache()).expect("the cache dir").collect();
    assert!(left.is_empty(), "a failed build leaves nothing in the cache: {left:?}");
}

#[tokio::test]
async fn requirements_install_from_the_bundles_wheels_into_a_cached_virtualenv() {
    let fixture = Fixture::new(&[
        (
            "main.py",
            "import sys, falakdep\n\ndef handle(r):\n    return {'value': falakdep.VALUE, 'prefix': sys.prefix}\n",
        ),
        ("requirements.txt", "falakdep==1.0\n"),
    ]);
    build_wheel(&fixture.bundle().join("wheels"));
    let prepared = fixture.python().await;
    let venv = prepared.venv().expect("a virtualenv").to_owned();
    assert!(venv.starts_with(fixture.venv_cache()));
    assert_eq!(prepared.interpreter(), venv.join("bin/python"));

    let zygote = Zygote::start(&prepared).await.unwrap_or_else(|e| panic!("zygote: {e}"));
    let instance = zygote.fork(1).await.unwrap_or_else(|e| panic!("fork: {e}"));
    let reply = json(&call(&instance, request("GET", "/", "")).await.2);
    assert_eq!(reply["value"], 42);
    assert_eq!(Path::new(reply["prefix"].as_str().expect("a prefix")), venv);

    // The same dependencies in another deployment reuse the virtualenv without pip.
    let mut spec = fixture.spec(Runtime::Python);
    spec.deployment = "greet@2".into();
    let started = Instant::now();
    let again = fixture.prepare(spec).await;
    assert_eq!(again.venv(), Some(venv.as_path()));
    assert!(started.elapsed() < Duration::from_secs(3), "a cached virtualenv is not rebuilt");
}

/// A pure-python wheel `falakdep-1.0` with `VALUE = 42`, written with python's zipfile.
fn build_wheel(dir: &Path) {
    build_wheel_with(dir, 42);
}

#[tokio::test]
async fn wheels_of_the_same_name_and_size_but_other_bytes_get_their_own_virtualenv() {
    let requirements = ("requirements.txt", "falakdep==1.0\n");
    let first = Fixture::new(&[("main.py", "def handle(r):\n    return 'x'\n"), requirements]);
    let second = Fixture::new(&[("main.py", "def handle(r):\n    return 'x'\n"), requirements]);
    build_wheel_with(&first.bundle().join("wheels"), 42);
    build_wheel_with(&second.bundle().join("wheels"), 43);
    let wheel = |f: &Fixture| std::fs::metadata(f.bundle().join("wheels/falakdep-1.0-py3-none-any.whl")).unwrap().len();
    assert_eq!(wheel(&first), wheel(&second), "the same name and size");
    // One cache for both, as on a node.
    let cache = first.venv_cache();
    let a = prepare(first.spec(Runtime::Python), &cache).await.unwrap_or_else(|e| panic!("{e}"));
    let b = prepare(second.spec(Runtime::Python), &cache).await.unwrap_or_else(|e| panic!("{e}"));
    let (a, b) = (a.venv().expect("a venv").to_owned(), b.venv().expect("a venv").to_owned());
    assert_ne!(a, b, "different bytes, different virtualenvs");
    let value = |venv: &Path| {
        let out = std::process::Command::new(venv.join("bin/python"))
            .args(["-c", "import falakdep; print(falakdep.VALUE)"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!((value(&a), value(&b)), ("42".to_owned(), "43".to_owned()));
}

/// The wheel `falakdep-1.0` with `VALUE = <value>` (two digits keep every size the same).
fn build_wheel_with(dir: &Path, value: u32) {
    std::fs::create_dir_all(dir).expect("a wheels dir");
    let script = r#"
import base64, hashlib, sys, zipfile
files = {
    "falakdep/__init__.py": b"VALUE = %d\n" % int(sys.argv[2]),
    "falakdep-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: falakdep\nVersion: 1.0\n",
    "falakdep-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: falak-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = ""
for name, data in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record += "%s,sha256=%s,%d\n" % (name, digest, len(data))
record += "falakdep-1.0.dist-info/RECORD,,\n"
files["falakdep-1.0.dist-info/RECORD"] = record.encode()
with zipfile.ZipFile(sys.argv[1], "w") as wheel:
    for name, data in files.items():
        wheel.writestr(name, data)
"#;
    let status = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(dir.join("falakdep-1.0-py3-none-any.whl"))
        .arg(value.to_string())
        .status()
        .expect("python3 runs");
    assert!(status.success(), "building the test wheel failed");
}

#[tokio::test]
async fn a_missing_program_fails_prepare() {
    let fixture = Fixture::new(&[("run.sh", "#!/bin/sh\necho hi\n")]);
    for (command, needle) in [
        ("./nope", "b/nope does not exist"),
        ("./run.sh", "is not executable"),
        ("run.sh", "write ./run.sh"),
        ("falak-no-such-program", "neither on PATH"),
    ] {
        let mut spec = fixture.spec(Runtime::Exec);
        spec.command = vec![command.to_owned()];
        match prepare(spec, &fixture.venv_cache()).await {
            Err(e @ PrepareError::MissingProgram { .. }) => assert!(e.to_string().contains(needle), "{e}"),
            other => panic!("{command}: expected MissingProgram, got {other:?}"),
        }
    }
    let spec = fixture.spec(Runtime::Http);
    assert!(matches!(prepare(spec, &fixture.venv_cache()).await, Err(PrepareError::NoCommand { .. })));
}

#[tokio::test]
async fn a_work_dir_too_long_for_unix_sockets_is_refused() {
    let fixture = Fixture::new(&[("main.py", "def handle(r):\n    return 'x'\n")]);
    let mut spec = fixture.spec(Runtime::Python);
    spec.work_dir = fixture.root.path().join("w".repeat(100));
    assert!(matches!(prepare(spec, &fixture.venv_cache()).await, Err(PrepareError::WorkDirTooLong { .. })));
}
