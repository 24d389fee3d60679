//! Virtualenvs for bundles with a requirements.txt, one per dependency content.
//!
//! The cache key hashes the interpreter, requirements.txt and the names and sizes in the
//! bundle's `wheels/` dir, so deployments with the same dependencies share one virtualenv.
//! A virtualenv is built in a temporary dir and renamed into place only when pip succeeded, so
//! the cache never holds half a virtualenv; a failed build leaves nothing behind. The node
//! builds it (as root, when it is), and the instance user only reads it: every directory is
//! made `0755` and every file readable by all (and writable only by the node), whatever the
//! node's umask.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::PrepareError;
use crate::prepare::HostSpec;

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
        let mut listing = Vec::new();
        let mut entries = tokio::fs::read_dir(&wheels).await.map_err(io_error("reading", &wheels))?;
        while let Some(entry) = entries.next_entry().await.map_err(io_error("reading", &wheels))? {
            let size = entry.metadata().await.map(|m| m.len()).unwrap_or(0);
            listing.push((entry.file_name(), size));
        }
        listing.sort();
        for (name, size) in listing {
            hasher.update(name.as_encoded_bytes());
            hasher.update(b"\0");
            hasher.update(&size.to_le_bytes());
        }
    }
    let key = hasher.finalize().to_hex();
    let key = &key.as_str()[..32];
    let target = cache.join(key);
    if target.join(COMPLETE_MARKER).is_file() {
        return Ok(target);
    }

    tokio::fs::create_dir_all(cache).await.map_err(io_error("creating the virtualenv cache", cache))?;
    let building = cache.join(format!(".tmp-{key}-{}-{}", std::process::id(), BUILDS.fetch_add(1, Ordering::Relaxed)));
    let result =
        build_in(spec, python, &building, &target, &requirements, has_wheels.then_some(wheels.as_path())).await;
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
    run(spec, python, |c| {
        c.args(["-m", "venv"]).arg(building);
    })
    .await?;
    run(spec, &building.join("bin").join("python"), |c| {
        c.args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--quiet"]);
        if let Some(wheels) = wheels {
            c.arg("--no-index").arg("--find-links").arg(wheels);
        }
        c.arg("-r").arg(requirements);
    })
    .await?;
    retarget_scripts(building, target).await;
    let root = building.to_owned();
    let opened = tokio::task::spawn_blocking(move || open_for_reading(&root)).await;
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

/// Run one build step in the bundle dir; a failure is `Dependencies` with the output's tail.
async fn run(
    spec: &HostSpec,
    program: &Path,
    args: impl FnOnce(&mut tokio::process::Command),
) -> Result<(), PrepareError> {
    let mut command = tokio::process::Command::new(program);
    args(&mut command);
    command
        .current_dir(&spec.bundle_dir)
        .env("PIP_NO_INPUT", "1")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = command.output().await.map_err(|e| PrepareError::Dependencies {
        deployment: spec.deployment.clone(),
        output: format!("running {} failed: {e}", program.display()),
    })?;
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    let text = text.trim();
    let mut start = text.len().saturating_sub(OUTPUT_TAIL);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    Err(PrepareError::Dependencies {
        deployment: spec.deployment.clone(),
        output: format!("{} ({}):\n{}", program.display(), output.status, &text[start..]),
    })
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

/// Make the tree under `dir` readable (and its directories and executables searchable and
/// runnable) by every user, writable only by its owner. Symlinks are left alone. Blocking.
fn open_for_reading(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let set = |path: &Path, mode: u32| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    set(dir, 0o755)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            open_for_reading(&entry.path())?;
        } else if kind.is_file() {
            let mode = entry.metadata()?.permissions().mode();
            set(&entry.path(), if mode & 0o100 != 0 { 0o755 } else { 0o644 })?;
        }
    }
    Ok(())
}
