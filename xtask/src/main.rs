//! `cargo xtask <task>`: the one entry point for checks.
//!
//! - `check`: fmt (no changes), clippy `-D warnings`, layering, then the whole test suite.
//!   Never modifies files.
//! - `test`: the whole test suite (what README and CI run).
//! - `lint`: fmt check, clippy, layering.
//! - `layering`: fail when a crate depends on a workspace crate its role forbids.
//! - `fix`: `cargo fmt` and `cargo clippy --fix`.
//! - `bench [ARGS]`: build `falak` and `falak-bench` release and run
//!   `target/release/falak-bench --falak target/release/falak ARGS` (under `$CARGO_TARGET_DIR` when
//!   set), see BENCHMARKS.md.
//! - `fuzz [--seconds N] [--jobs J] [--sanitizer S] [TARGET...]`: build the cargo-fuzz targets
//!   in `fuzz/` and run each (all by default) for N seconds (60) on a copy of its committed
//!   corpus, J at a time (the number of cores); fails if any target crashes. See
//!   `fuzz/README.md`.

mod fuzz;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, ExitCode};

/// Which workspace crates each crate may depend on (normal dependencies). The folder listing
/// is the architecture diagram; this table is its arrows.
const ALLOWED: &[(&str, &[&str])] = &[
    ("falak-core", &[]),
    ("falak-membership", &["falak-core"]),
    ("falak-transport", &["falak-core"]),
    ("falak-ledger", &["falak-core", "falak-transport"]),
    ("falak-sandbox", &[]),
    ("falak-exec", &["falak-core", "falak-sandbox"]),
    ("falak-artifact", &["falak-core", "falak-transport"]),
    ("falak-image", &["falak-core", "falak-artifact"]),
    ("falak-function", &["falak-core", "falak-exec", "falak-sandbox"]),
    ("falak-api", &["falak-core"]),
    (
        "falak-node",
        &[
            "falak-core",
            "falak-membership",
            "falak-transport",
            "falak-ledger",
            "falak-sandbox",
            "falak-exec",
            "falak-artifact",
            "falak-image",
            "falak-function",
            "falak-api",
        ],
    ),
    (
        "falak",
        &[
            "falak-core",
            "falak-membership",
            "falak-transport",
            "falak-ledger",
            "falak-sandbox",
            "falak-exec",
            "falak-artifact",
            "falak-image",
            "falak-function",
            "falak-api",
            "falak-node",
        ],
    ),
    // The bench measures the executor and the function host directly, beside whole nodes.
    (
        "falak-bench",
        &["falak-core", "falak-artifact", "falak-image", "falak-exec", "falak-function", "falak-api", "falak-node"],
    ),
    ("xtask", &[]),
];

/// External crates a crate must never pull in, even indirectly.
const FORBIDDEN_ANYWHERE: &[(&str, &str)] =
    &[("falak-core", "tokio"), ("falak-core", "mio"), ("falak", "aws-lc-sys"), ("falak", "openssl-sys")];

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_else(|| "check".into());
    let result = match task.as_str() {
        "check" => lint().and_then(|_| test()),
        "test" => test(),
        "lint" => lint(),
        "layering" => layering(),
        "fix" => fix(),
        "bench" => bench(),
        "fuzz" => fuzz::run(std::env::args().skip(2).collect()),
        other => Err(format!("unknown task {other:?}; use check, test, lint, layering, fix, bench or fuzz")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {task}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    eprintln!("$ {program} {}", args.join(" "));
    let status = Command::new(program).args(args).status().map_err(|e| format!("cannot run {program}: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("`{program} {}` failed ({status})", args.join(" "))) }
}

fn cargo(args: &[&str]) -> Result<(), String> {
    run(&std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()), args)
}

fn lint() -> Result<(), String> {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    layering()
}

fn test() -> Result<(), String> {
    // The binary must exist before the real-process tests spawn it.
    cargo(&["build", "--workspace", "--bins"])?;
    let nextest = Command::new("cargo").args(["nextest", "--version"]).output().is_ok_and(|o| o.status.success());
    if nextest {
        cargo(&["nextest", "run", "--workspace", "--no-fail-fast"])
    } else {
        eprintln!("cargo-nextest not found; falling back to cargo test");
        cargo(&["test", "--workspace", "--no-fail-fast"])
    }
}

fn fix() -> Result<(), String> {
    cargo(&["fmt", "--all"])?;
    cargo(&["clippy", "--workspace", "--all-targets", "--fix", "--allow-dirty", "--allow-staged"])
}

fn bench() -> Result<(), String> {
    cargo(&["build", "--release", "-p", "falak", "-p", "falak-bench", "--bin", "falak", "--bin", "falak-bench"])?;
    let extra: Vec<String> = std::env::args().skip(2).collect();
    // Where cargo put them: `CARGO_TARGET_DIR` when set (a worktree with a target dir of its own).
    let release =
        std::path::Path::new(&std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into())).join("release");
    let falak = release.join("falak").display().to_string();
    let mut args = vec!["--falak", falak.as_str()];
    args.extend(extra.iter().map(String::as_str));
    run(&release.join("falak-bench").display().to_string(), &args)
}

fn layering() -> Result<(), String> {
    let out = Command::new("cargo")
        .args(["metadata", "--format-version", "1"])
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let members: BTreeSet<String> = meta["workspace_members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut problems = Vec::new();
    let packages = meta["packages"].as_array().cloned().unwrap_or_default();
    let workspace_names: BTreeSet<String> = packages
        .iter()
        .filter(|p| members.contains(p["id"].as_str().unwrap_or_default()))
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    for p in packages.iter().filter(|p| members.contains(p["id"].as_str().unwrap_or_default())) {
        let name = p["name"].as_str().unwrap_or_default();
        let Some(ok) = allowed.get(name) else {
            problems.push(format!("crate {name} has no row in xtask's layering table; add one"));
            continue;
        };
        for dep in p["dependencies"].as_array().into_iter().flatten() {
            let dep_name = dep["name"].as_str().unwrap_or_default();
            let normal = dep["kind"].is_null();
            if normal && workspace_names.contains(dep_name) && !ok.contains(&dep_name) {
                problems.push(format!("{name} must not depend on {dep_name}"));
            }
        }
    }
    // Transitive checks through the resolved graph.
    let resolve = &meta["resolve"]["nodes"];
    let id_of = |name: &str| {
        packages
            .iter()
            .find(|p| p["name"] == name && members.contains(p["id"].as_str().unwrap_or_default()))
            .and_then(|p| p["id"].as_str().map(str::to_owned))
    };
    let name_of: BTreeMap<String, String> =
        packages.iter().filter_map(|p| Some((p["id"].as_str()?.to_owned(), p["name"].as_str()?.to_owned()))).collect();
    for (krate, forbidden) in FORBIDDEN_ANYWHERE {
        let Some(root) = id_of(krate) else { continue };
        let mut stack = vec![root];
        let mut seen = BTreeSet::new();
        while let Some(id) = stack.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if name_of.get(&id).map(String::as_str) == Some(forbidden) {
                problems.push(format!("{krate} pulls in {forbidden}"));
                break;
            }
            let node = resolve.as_array().into_iter().flatten().find(|n| n["id"] == id.as_str());
            for d in node.and_then(|n| n["deps"].as_array()).into_iter().flatten() {
                let normal = d["dep_kinds"].as_array().into_iter().flatten().any(|k| k["kind"].is_null());
                if normal && let Some(dep_id) = d["pkg"].as_str() {
                    stack.push(dep_id.to_owned());
                }
            }
        }
    }
    if problems.is_empty() {
        eprintln!("layering: ok");
        Ok(())
    } else {
        Err(format!("layering violations:\n  {}", problems.join("\n  ")))
    }
}
