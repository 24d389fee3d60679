//! `cargo xtask fuzz`: build the cargo-fuzz targets in `fuzz/` and run each for a while.
//!
//! Every target runs on a copy of nothing: libFuzzer is given a fresh temporary directory first
//! (where it writes whatever new inputs it finds) and the committed `fuzz/corpus/<target>/`
//! second, which it only reads. So a run, in CI or locally, never changes the committed corpus;
//! crash inputs go to the temporary directory, whose path is printed.
//!
//! cargo-fuzz needs nightly flags (`-Zsanitizer=address`); `RUSTC_BOOTSTRAP=1` lets the stable
//! toolchain accept them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Options {
    seconds: u64,
    jobs: usize,
    sanitizer: String,
    targets: Vec<String>,
}

fn parse(args: Vec<String>) -> Result<Options, String> {
    let jobs = std::thread::available_parallelism().map_or(1, usize::from);
    let mut options = Options { seconds: 60, jobs, sanitizer: "address".into(), targets: Vec::new() };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--seconds" => {
                options.seconds = value("--seconds")?.parse().map_err(|e| format!("--seconds: {e}"))?;
            }
            "--jobs" => {
                options.jobs = value("--jobs")?.parse().map_err(|e| format!("--jobs: {e}"))?;
                options.jobs = options.jobs.max(1);
            }
            "--sanitizer" => options.sanitizer = value("--sanitizer")?,
            flag if flag.starts_with('-') => {
                return Err(format!(
                    "unknown option {flag}; use fuzz [--seconds N] [--jobs J] [--sanitizer address|none] [TARGET...]"
                ));
            }
            target => options.targets.push(target.to_owned()),
        }
    }
    Ok(options)
}

/// One running target.
struct Run {
    target: String,
    child: Child,
    log: PathBuf,
    work: PathBuf,
}

/// What a finished target reports.
struct Outcome {
    target: String,
    ok: bool,
    line: String,
}

#[allow(clippy::disallowed_methods, reason = "a developer tool reporting how long the build and the run took")]
pub fn run(args: Vec<String>) -> Result<(), String> {
    let options = parse(args)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    if !Command::new(&cargo).args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success()) {
        return Err("cargo-fuzz is not installed; run `cargo install --locked cargo-fuzz`".into());
    }
    let all = list_targets()?;
    let targets = if options.targets.is_empty() { all.clone() } else { options.targets.clone() };
    if let Some(unknown) = targets.iter().find(|t| !all.contains(t)) {
        return Err(format!("no fuzz target {unknown:?}; the targets are {}", all.join(", ")));
    }

    let started = Instant::now();
    let mut build = vec!["fuzz", "build", "-O", "--sanitizer", options.sanitizer.as_str()];
    build.extend(targets.iter().map(String::as_str).filter(|_| targets.len() == 1));
    eprintln!("$ RUSTC_BOOTSTRAP=1 cargo {}", build.join(" "));
    let status = Command::new(&cargo)
        .args(&build)
        .env("RUSTC_BOOTSTRAP", "1")
        .status()
        .map_err(|e| format!("cannot run cargo fuzz: {e}"))?;
    if !status.success() {
        return Err(format!("building the fuzz targets failed ({status})"));
    }
    let built_in = started.elapsed();
    eprintln!("fuzz: targets built in {:.0} s", built_in.as_secs_f64());

    let bin_dir = Path::new("fuzz/target").join(host_triple()?).join("release");
    let scratch = std::env::temp_dir().join(format!("falak-fuzz-{}", std::process::id()));
    let mut pending: Vec<String> = targets.iter().rev().cloned().collect();
    let mut running: Vec<Run> = Vec::new();
    let mut outcomes = Vec::new();
    while !pending.is_empty() || !running.is_empty() {
        while running.len() < options.jobs
            && let Some(target) = pending.pop()
        {
            running.push(start(&bin_dir, &scratch, &target, options.seconds)?);
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut still = Vec::new();
        for mut run in running {
            match run.child.try_wait().map_err(|e| format!("waiting for {}: {e}", run.target))? {
                Some(status) => {
                    let outcome = finish(&run, status.success());
                    eprintln!("{}", outcome.line);
                    outcomes.push(outcome);
                }
                None => still.push(run),
            }
        }
        running = still;
    }

    outcomes.sort_by(|a, b| a.target.cmp(&b.target));
    eprintln!(
        "fuzz: {} targets, {} s each, {} at a time; build {:.0} s, total {:.0} s",
        outcomes.len(),
        options.seconds,
        options.jobs,
        built_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    for outcome in &outcomes {
        println!("{}", outcome.line);
    }
    let crashed: Vec<_> = outcomes.iter().filter(|o| !o.ok).map(|o| o.target.as_str()).collect();
    if crashed.is_empty() {
        let _ = fs::remove_dir_all(&scratch);
        Ok(())
    } else {
        Err(format!(
            "{} crashed: {}; inputs and logs are under {}",
            if crashed.len() == 1 { "a target" } else { "targets" },
            crashed.join(", "),
            scratch.display()
        ))
    }
}

fn list_targets() -> Result<Vec<String>, String> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["fuzz", "list"])
        .output()
        .map_err(|e| format!("cannot run cargo fuzz list: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo fuzz list failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::trim).filter(|l| !l.is_empty()).map(Into::into).collect())
}

fn host_triple() -> Result<String, String> {
    let out = Command::new("rustc").arg("-vV").output().map_err(|e| format!("cannot run rustc -vV: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .ok_or_else(|| "rustc -vV names no host".into())
}

fn start(bin_dir: &Path, scratch: &Path, target: &str, seconds: u64) -> Result<Run, String> {
    let work = scratch.join(target);
    let new_inputs = work.join("new");
    let artifacts = work.join("artifacts");
    for dir in [&new_inputs, &artifacts] {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let corpus = Path::new("fuzz/corpus").join(target);
    let log = work.join("log.txt");
    let log_file = fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let child = Command::new(bin_dir.join(target))
        .arg(format!("-max_total_time={seconds}"))
        // A single input taking over 10 s is a hang, and a failure.
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        // New inputs go to the first directory; the committed corpus is only read.
        .arg(&new_inputs)
        .arg(&corpus)
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("cannot start fuzz target {target}: {e}"))?;
    Ok(Run { target: target.to_owned(), child, log, work })
}

fn finish(run: &Run, success: bool) -> Outcome {
    let log = fs::read_to_string(&run.log).unwrap_or_default();
    let stat = |name: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")).map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| "?".into())
    };
    let new_entries = fs::read_dir(run.work.join("new")).map_or(0, |d| d.count());
    let crashes: Vec<String> = fs::read_dir(run.work.join("artifacts"))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path().display().to_string())).collect())
        .unwrap_or_default();
    let ok = success && crashes.is_empty();
    let verdict = if ok {
        "ok".to_owned()
    } else if crashes.is_empty() {
        format!("FAILED, see {}", run.log.display())
    } else {
        format!("CRASH {}, log {}", crashes.join(" "), run.log.display())
    };
    let line = format!(
        "fuzz {:<18} {:>10} runs, {:>6} execs/s, {:>4} new corpus entries: {verdict}",
        run.target,
        stat("number_of_executed_units"),
        stat("average_exec_per_sec"),
        new_entries
    );
    Outcome { target: run.target.clone(), ok, line }
}
