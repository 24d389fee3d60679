//! Virtualenvs for bundles with a requirements.txt, one per dependency content.
//!
//! The cache key hashes the interpreter, requirements.txt and the name and *bytes* of every
//! file in the bundle's `wheels/` dir, so deployments with the same dependencies share one
//! virtualenv and no deployment can plant a wheel another one imports.
//!
//! A virtualenv is built in a temporary dir and renamed into place only when pip succeeded, so
//! the cache never holds half a virtualenv; a failed build leaves nothing behind. `venv` and
//! `pip` run in the deployment's sandbox, as its user ([`crate::sandbox`]): they see the
//! bundle (read-only) and the dir they build in, not the node's data dir, keys or home; they
//! get a network only when the bundle carries no `wheels/` dir; at most [`BUILD_TIMEOUT`] and
//! files of at most [`MAX_FILE_BYTES`]. So a package's `setup.py` runs with exactly what an
//! instance has. The node then takes the tree back and makes it readable by all and writable
//! only by itself (`0755` dirs, `0644`/`0755` files, whatever the umask): instances only read
//! it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use falak_sandbox::{Confinement, LandlockRuleset, Network, Rlimit, View};

use crate::error::PrepareError;
use crate::prepare::HostSpec;
use falak_exec::workload::{Launch, launch};

/// How long `venv` plus `pip install` may take.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(300);
/// The largest file a build may write (`RLIMIT_FSIZE`).
pub const MAX_FILE_BYTES: u64 = 512 << 20;
/// Variables of the node's environment a build with network access keeps: where the package
/// index is and how to reach it.
const PIP_NETWORK_ENV: &[&str] = &[
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_TRUSTED_HOST",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// Written last into a finished virtualenv.
const COMPLETE_MARKER: &str = ".falak-complete";
/// How much of pip's output a failure carries.
const OUTPUT_TAIL: usize = 4000;

static BUILDS: AtomicU64 = AtomicU64::new(0);

/// The virtualenv for the bundle's requirements.txt, built with `python` unless cached.
pub(crate) async fn build(
    spec: &HostSpec,
    python: &Path,
    version: &str,
    cache: &Path,
) -> Result<PathBuf, PrepareError> {
    let io_error = |what: &'static str, path: &Path| {
        let deployment = spec.deployment.clone();
        let path = path.to_owned();
        move |source| PrepareError::Io { deployment, what, path, source }
    };
    let requirements = spec.bundle_dir.join("requirements.txt");
    let wheels = spec.bundle_dir.join("wheels");
    let content = tokio::fs::read(&requirements).await.map_err(io_error("reading", &requirements))?;

    let mut hasher = blake3::Hasher::new();
    hasher.update(b"falak venv v1\0");
    hasher.update(python.as_os_str().as_encoded_bytes());
    hasher.update(b"\0");
    hasher.update(version.as_bytes());
    hasher.update(b"\0");
    hasher.update(&(content.len() as u64).to_le_bytes());
    hasher.update(&content);
    let has_wheels = wheels.is_dir();
    if has_wheels {
        let dir = wheels.clone();
        let hashed = tokio::task::spawn_blocking(move || hash_wheels(&dir, &mut hasher).map(|()| hasher)).await;
        hasher = hashed.unwrap_or_else(|e| Err(e.into())).map_err(io_error("reading", &wheels))?;
    }
    let key = hasher.finalize().to_hex();
    let key = &key.as_str()[..32];
    let target = cache.join(key);
    if target.join(COMPLETE_MARKER).is_file() {
        return Ok(target);
    }

    tokio::fs::create_dir_all(cache).await.map_err(io_error("creating the virtualenv cache", cache))?;
    let building = cache.join(format!(".tmp-{key}-{}-{}", std::process::id(), BUILDS.fetch_add(1, Ordering::Relaxed)));
    let result = match make_build_dir(&building, spec) {
        Ok(()) => {
            build_in(spec, python, &building, &target, &requirements, has_wheels.then_some(wheels.as_path())).await
        }
        Err(e) => Err(io_error("creating", &building)(e)),
    };
    if let Err(e) = result {
        let _ = tokio::fs::remove_dir_all(&building).await;
        return Err(e);
    }
    if let Err(e) = tokio::fs::rename(&building, &target).await {
        let _ = tokio::fs::remove_dir_all(&building).await;
        // Another prepare built the same virtualenv first: use theirs.
        if target.join(COMPLETE_MARKER).is_file() {
            return Ok(target);
        }
        return Err(io_error("moving the new virtualenv into", &target)(e));
    }
    Ok(target)
}

async fn build_in(
    spec: &HostSpec,
    python: &Path,
    building: &Path,
    target: &Path,
    requirements: &Path,
    wheels: Option<&Path>,
) -> Result<(), PrepareError> {
    // The network only for a bundle that does not carry its wheels.
    let network = wheels.is_none();
    run(spec, python, |argv| argv.extend(["-m".into(), "venv".into(), building.into()]), building, network).await?;
    let pip = |argv: &mut Vec<OsString>| {
        for arg in ["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--quiet"] {
            argv.push(arg.into());
        }
        if let Some(wheels) = wheels {
            argv.extend(["--no-index".into(), "--find-links".into(), wheels.into()]);
        }
        argv.extend(["-r".into(), requirements.into()]);
    };
    run(spec, &building.join("bin").join("python"), pip, building, network).await?;
    retarget_scripts(building, target).await;
    let root = building.to_owned();
    let opened = tokio::task::spawn_blocking(move || {
        let _ = std::fs::remove_dir_all(root.join(BUILD_HOME));
        open_for_reading(&root)
    })
    .await;
    opened.unwrap_or_else(|e| Err(e.into())).map_err(|source| PrepareError::Io {
        deployment: spec.deployment.clone(),
        what: "making readable",
        path: building.to_owned(),
        source,
    })?;
    let marker = building.join(COMPLETE_MARKER);
    tokio::fs::write(&marker, b"").await.map_err(|source| PrepareError::Io {
        deployment: spec.deployment.clone(),
        what: "writing",
        path: marker,
        source,
    })
}

/// The dir a build writes its `HOME` and `TMPDIR` into, inside the virtualenv being built
/// (removed before the virtualenv is cached).
const BUILD_HOME: &str = ".falak-build";

/// The build dir, `0700`, the deployment user's (when the node switches users), with its
/// private home.
fn make_build_dir(building: &Path, spec: &HostSpec) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(building)?;
    std::fs::DirBuilder::new().mode(0o700).create(building.join(BUILD_HOME))?;
    if let Some(user) = spec.sandbox.run_as {
        for dir in [building.to_path_buf(), building.join(BUILD_HOME)] {
            std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid))?;
        }
    }
    Ok(())
}

/// Hash the name and content of every file in `dir`, in name order. Blocking.
fn hash_wheels(dir: &Path, hasher: &mut blake3::Hasher) -> std::io::Result<()> {
    let mut names: Vec<OsString> =
        std::fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        if !std::fs::symlink_metadata(&path)?.is_file() {
            continue;
        }
        hasher.update(name.as_encoded_bytes());
        hasher.update(b"\0");
        let mut file = std::fs::File::open(&path)?;
        let mut content = blake3::Hasher::new();
        std::io::copy(&mut file, &mut content)?;
        hasher.update(content.finalize().as_bytes());
    }
    Ok(())
}

/// Run one build step in the deployment's sandbox, in the bundle dir; a failure is
/// `Dependencies` with the output's tail.
async fn run(
    spec: &HostSpec,
    program: &Path,
    args: impl FnOnce(&mut Vec<OsString>),
    building: &Path,
    network: bool,
) -> Result<(), PrepareError> {
    let failed = |output: String| PrepareError::Dependencies { deployment: spec.deployment.clone(), output };
    let mut argv = Vec::new();
    args(&mut argv);
    let home = building.join(BUILD_HOME);
    let mut env: BTreeMap<String, OsString> = BTreeMap::new();
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    env.insert("PATH".into(), path);
    env.insert("HOME".into(), home.clone().into());
    env.insert("TMPDIR".into(), home.clone().into());
    env.insert("PIP_NO_INPUT".into(), "1".into());
    env.insert("PIP_DISABLE_PIP_VERSION_CHECK".into(), "1".into());
    env.insert("PIP_NO_CACHE_DIR".into(), "1".into());
    if network {
        for name in PIP_NETWORK_ENV {
            if let Some(value) = std::env::var_os(name) {
                env.insert((*name).into(), value);
            }
        }
    }
    let sandbox = &spec.sandbox;
    let (building_dir, bundle) = (building.to_owned(), spec.bundle_dir.clone());
    let isolation = sandbox
        .isolation()
        .network(if network || sandbox.namespaces == falak_sandbox::Namespaces::Unavailable {
            Network::Host
        } else {
            Network::None
        })
        .inner_user(sandbox.inner_user)
        .view(View::hiding(sandbox.hide.clone()).readable(&bundle).writable(&building_dir))
        .chdir(&bundle);
    let (landlock_on, read_everything) =
        (sandbox.landlock, sandbox.namespaces != falak_sandbox::Namespaces::Unavailable);
    let interpreter_dir = program.parent().map(Path::to_path_buf).unwrap_or_default();
    let made = tokio::task::spawn_blocking(move || {
        let isolation = isolation.prepare()?;
        let landlock = if landlock_on {
            let readable = [bundle.as_path(), interpreter_dir.as_path()];
            LandlockRuleset::for_workload(&building_dir, &readable, read_everything)
                .map_err(|e| std::io::Error::other(e.to_string()))?
        } else {
            None
        };
        Ok::<_, std::io::Error>((isolation, landlock))
    })
    .await;
    let (isolation, landlock) = made
        .unwrap_or_else(|e| Err(e.into()))
        .map_err(|e| failed(format!("preparing the build's sandbox failed: {e}")))?;
    let confinement = Confinement::new()
        .rlimits(&[(Rlimit::Core, 0), (Rlimit::OpenFiles, 1024), (Rlimit::FileSize, MAX_FILE_BYTES)])
        .isolation(isolation)
        .run_as(sandbox.run_as)
        .landlock(landlock)
        .seccomp(sandbox.seccomp.clone());
    let log_path = building.with_extension("log");
    let launched = launch(Launch {
        program,
        args: argv,
        cwd: &spec.bundle_dir,
        env,
        log_path: &log_path,
        ready_pipe: false,
        piped: false,
        confinement,
    })
    .map_err(|e| failed(format!("running {} failed: {e}", program.display())))?;
    let process = launched.process;
    let exit = match tokio::time::timeout(BUILD_TIMEOUT, process.exited()).await {
        Ok(exit) => Some(exit),
        Err(_) => {
            process.stop(Duration::from_secs(2)).await;
            None
        }
    };
    let output = tokio::fs::read(&log_path).await.unwrap_or_default();
    let _ = tokio::fs::remove_file(&log_path).await;
    let status = match exit {
        Some(exit) if exit.success => return Ok(()),
        Some(exit) => exit.description,
        None => format!("stopped after {}s, the build time limit", BUILD_TIMEOUT.as_secs()),
    };
    let text = String::from_utf8_lossy(&output);
    let text = text.trim();
    let mut start = text.len().saturating_sub(OUTPUT_TAIL);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    Err(failed(format!("{} ({status}):\n{}", program.display(), &text[start..])))
}

/// Scripts pip installs into `bin/` name the interpreter by absolute path; point them at the
/// virtualenv's final place before it moves there. (Instances run `bin/python` itself, which
/// finds its virtualenv relative to itself and needs no fixing.)
async fn retarget_scripts(building: &Path, target: &Path) {
    let (Some(from), Some(to)) = (building.to_str(), target.to_str()) else { return };
    let Ok(mut entries) = tokio::fs::read_dir(building.join("bin")).await else { return };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let path = entry.path();
        if entry.file_type().await.map(|t| !t.is_file()).unwrap_or(true) {
            continue;
        }
        let Ok(text) = tokio::fs::read(&path).await else { continue };
        if !text.starts_with(b"#!") || text.len() > 1 << 20 {
            continue;
        }
        let Ok(text) = String::from_utf8(text) else { continue };
        if text.contains(from) {
            let _ = tokio::fs::write(&path, text.replace(from, to)).await;
        }
    }
}

/// Take the tree under `dir` back (a build ran as the deployment's user) and make it readable
/// (its directories and executables searchable and runnable) by every user, owned and
/// writable only by the node, so that no deployment can change a virtualenv others share.
/// Symlinks are neither followed nor changed but for their owner. Blocking.
fn open_for_reading(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid/getegid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let set = |path: &Path, mode: u32| {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    };
    set(dir, 0o755)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            open_for_reading(&entry.path())?;
        } else if kind.is_file() {
            let mode = entry.metadata()?.permissions().mode();
            set(&entry.path(), if mode & 0o100 != 0 { 0o755 } else { 0o644 })?;
        } else {
            std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid))?;
        }
    }
    Ok(())
}
