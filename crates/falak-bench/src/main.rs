//! `falak-bench --falak target/release/falak [--only NAME] [--quick] [--json FILE]`: run the
//! benchmarks against meshes of real node processes and print a verdict per target.
//! `falak-bench serve-noop` (hidden) is the no-op HTTP server the functions benchmark deploys.

#![allow(clippy::disallowed_methods, reason = "benchmarks measure real time")]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;
use falak_bench::benches::{BENCHES, Bench, Ctx, run};
use falak_bench::report::{self, Row, Verdict};
use falak_node::config::FailureDetection;

/// Benchmarks of a Falak mesh of real `falak node` processes on loopback, against the targets
/// of DESIGN.md §6. Each benchmark starts its own mesh and kills it when done.
#[derive(Debug, Parser)]
#[command(name = "falak-bench")]
struct Args {
    /// The `falak` binary to run nodes with.
    #[arg(long, default_value = "target/release/falak")]
    falak: PathBuf,
    /// Run only this benchmark (repeatable): idle-rss, submit-to-running, claims-per-second
    /// (also noop-tasks-per-second), kill-to-offline, pause-false-positives, kill-to-rerun,
    /// leader-failover, heal (needs root and iptables), functions (or one of its rows, e.g.
    /// fn-snapshot-start), images (needs docker-registry and skopeo), containers (needs runc and
    /// busybox-static), prefetch (needs docker-registry, skopeo and busybox-static).
    #[arg(long)]
    only: Vec<String>,
    /// Fewer samples and trials: a smoke run, not numbers to quote.
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the meshes' data directories (under this directory) instead of a temporary one.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// The membership preset of every node (`fast` or `pause-tolerant`); the daemon's default
    /// when absent.
    #[arg(long, value_parser = parse_preset)]
    failure_detection: Option<FailureDetection>,
    /// Tasks in the claims-per-second job (default 5,000; 1,000 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    noop_tasks: Option<u32>,
    /// Mesh sizes the heal benchmark runs on (default 3 and 5), e.g. `--heal-nodes 7`.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(2..=64))]
    heal_nodes: Vec<u16>,
    /// List the benchmarks and exit.
    #[arg(long)]
    list: bool,
}

fn parse_preset(text: &str) -> Result<FailureDetection, String> {
    match text {
        "fast" => Ok(FailureDetection::Fast),
        "pause-tolerant" => Ok(FailureDetection::PauseTolerant),
        other => Err(format!("{other:?} is not a preset; use fast or pause-tolerant")),
    }
}

fn selected(only: &[String]) -> Result<Vec<&'static Bench>> {
    if only.is_empty() {
        return Ok(BENCHES.iter().collect());
    }
    let mut out: Vec<&'static Bench> = Vec::new();
    for name in only {
        let Some(bench) = BENCHES.iter().find(|b| b.name == name || b.rows.iter().any(|(row, _)| row == name)) else {
            let names: Vec<&str> = BENCHES.iter().map(|b| b.name).collect();
            bail!("no benchmark named {name:?}; choose from {}", names.join(", "));
        };
        if !out.iter().any(|b| b.name == bench.name) {
            out.push(bench);
        }
    }
    Ok(out)
}

async fn run_all(args: &Args, benches: &[&'static Bench], root: PathBuf) -> Result<Vec<Row>> {
    let falak = std::fs::canonicalize(&args.falak)
        .with_context(|| format!("the falak binary {:?} (build it: cargo build --release --bin falak)", args.falak))?;
    let ctx = Ctx {
        falak,
        quick: args.quick,
        root,
        failure_detection: args.failure_detection,
        noop_tasks: args.noop_tasks,
        heal_sizes: args.heal_nodes.iter().map(|n| usize::from(*n)).collect(),
    };
    let mut rows = Vec::new();
    for bench in benches {
        let new = run(&ctx, bench).await;
        for row in &new {
            println!("  {}", row.verdict_line());
        }
        rows.extend(new);
    }
    Ok(rows)
}

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "serve-noop") {
        return falak_bench::functions::serve_noop();
    }
    harness()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn harness() -> ExitCode {
    let args = Args::parse();
    if args.list {
        for b in BENCHES {
            for (row, target) in b.rows {
                println!("{:<24} {row:<24} target {target}", b.name);
            }
        }
        return ExitCode::SUCCESS;
    }
    match main_inner(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("falak-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn main_inner(args: Args) -> Result<ExitCode> {
    let benches = selected(&args.only)?;
    let machine = report::machine();
    println!(
        "falak-bench{}{}: {} on {} cpus, kernel {}, {}",
        if args.quick { " --quick" } else { "" },
        match args.failure_detection {
            None => "",
            Some(FailureDetection::Fast) => " --failure-detection fast",
            Some(FailureDetection::PauseTolerant) => " --failure-detection pause-tolerant",
        },
        args.falak.display(),
        machine["nproc"],
        machine["kernel"].as_str().unwrap_or("?"),
        machine["date_utc"].as_str().unwrap_or("?"),
    );
    let temp;
    let root = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new().prefix("falak-bench-").tempdir()?;
            temp.path().to_owned()
        }
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Interrupted: dropping the running benchmark drops its mesh, which kills the nodes.
    let rows = tokio::select! {
        rows = run_all(&args, &benches, root) => rows?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; node processes killed"),
        _ = terminate.recv() => bail!("terminated; node processes killed"),
    };
    println!("\n== summary ({})\n", if args.quick { "quick run: smoke numbers only" } else { "full run" });
    print!("{}", report::table(&rows));
    println!();
    for row in &rows {
        println!("{}", row.verdict_line());
    }
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "machine": machine,
            "falak": args.falak,
            "quick": args.quick,
            "failure_detection": args.failure_detection.map(|p| format!("{p:?}")),
            "results": rows.iter().map(Row::json).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {path:?}"))?;
        println!("\nresults written to {}", path.display());
    }
    let errors = rows.iter().filter(|r| r.verdict == Verdict::Error).count();
    Ok(if errors > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
