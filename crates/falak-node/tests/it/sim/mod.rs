//! The seeded simulation: five nodes in one process, no real sockets or clocks.
//!
//! Each node is the real ledger (openraft + redb, in a tmpfs directory) over the in-memory
//! transport, driven by the node's real sans-IO core (`falak_node::reconcile::Reconciler`).
//! Tasks run on a simulated executor that finishes them after seeded durations. A seeded
//! schedule crashes and restarts nodes and cuts and heals links; membership is simulated from
//! that ground truth with the detection delay of the real failure detector. Virtual time comes
//! from tokio's paused clock.
//!
//! Checked invariants (one file each): no task attempt ever has two valid claims
//! (`single_claim.rs`); committed state never diverges across replicas (`convergence.rs`);
//! every acknowledged job reaches a terminal state after healing (`completion.rs`); a function
//! never holds more instance slots than its `max_instances`, and an OFFLINE node none
//! (`instance_slots.rs`); every node runs the function host's real core for function `f`
//! against simulated instances and requests: an instance serves only after its claim
//! committed, every request is answered once, no slot is left without an instance
//! (`functions.rs`); no OFFLINE mark proposed in an old term is ever applied
//! (`term_fencing.rs`); after any heal, every connected node is HEALTHY on every replica
//! within a bound (`heal.rs`).
//!
//! Replay a seed: `FALAK_SIM_SEED=123 cargo nextest run -p falak-node sim::replay`.
//! Determinism caveat: the fault schedule, job submissions and task durations are a pure
//! function of the seed; openraft's election timeouts and tokio's scheduling add their own
//! variation, so a replay reproduces the schedule but not every interleaving.

mod completion;
mod convergence;
mod functions;
mod harness;
mod heal;
mod instance_slots;
mod single_claim;
mod term_fencing;

pub use harness::{SimConfig, run_seed};

/// Seeds a CI run covers: `FALAK_SIM_SEEDS` (default 200) split across the shard tests.
fn seed_count() -> u64 {
    std::env::var("FALAK_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200)
}

const SHARDS: u64 = 4;

fn run_shard(shard: u64) {
    let total = seed_count();
    let seeds: Vec<u64> = (0..total).filter(|s| s % SHARDS == shard).collect();
    let mut failures = Vec::new();
    for seed in seeds {
        let report = run_seed(seed, &SimConfig::default());
        if report.acknowledged == 0 {
            failures.push(format!("seed {seed}: no job was acknowledged, so nothing was checked"));
        }
        if report.functions.dispatched == 0 {
            failures.push(format!("seed {seed}: no function request was served, so nothing was checked"));
        }
        if !report.violations.is_empty() {
            failures.push(format!(
                "seed {seed}: {}\n  faults: {}",
                report.violations.join("; "),
                report.faults.join(", ")
            ));
        }
    }
    assert!(failures.is_empty(), "invariant violations (replay with FALAK_SIM_SEED):\n{}", failures.join("\n"));
}

#[test]
fn shard_0() {
    run_shard(0);
}

#[test]
fn shard_1() {
    run_shard(1);
}

#[test]
fn shard_2() {
    run_shard(2);
}

#[test]
fn shard_3() {
    run_shard(3);
}

/// Replays one seed given in `FALAK_SIM_SEED` (seed 0 when unset) and prints its schedule.
#[test]
fn replay() {
    let seed = std::env::var("FALAK_SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let report = run_seed(seed, &SimConfig::default());
    eprintln!(
        "seed {seed}: {} jobs acknowledged; functions {:?}; faults {:?}",
        report.acknowledged, report.functions, report.faults
    );
    assert!(report.acknowledged > 0, "seed {seed}: no job was acknowledged");
    assert!(report.violations.is_empty(), "seed {seed}: {:?}", report.violations);
}

/// Whether some seed in 0..20 with the function-host driver broken by `bug` reports a violation
/// containing `needle`.
fn exposed_by_driver(bug: functions::DriverBug, needle: &str) -> bool {
    let config = SimConfig { driver_bug: bug, ..SimConfig::default() };
    (0..20).any(|seed| run_seed(seed, &config).violations.iter().any(|v| v.contains(needle)))
}

/// The serve-after-claim checker: a driver that answers claims without the ledger must be caught.
#[test]
fn planted_claim_bug_is_caught() {
    assert!(
        exposed_by_driver(functions::DriverBug::ClaimWithoutLedger, "before its claim committed"),
        "no seed in 0..20 exposed a driver that skips the ledger: the serve-after-claim checker is blind"
    );
}

/// The leaked-slot checker: a driver that never gives slots back must be caught.
#[test]
fn planted_slot_leak_is_caught() {
    assert!(
        exposed_by_driver(functions::DriverBug::KeepSlots, "with no instance behind them"),
        "no seed in 0..20 exposed a driver that keeps its slots: the leaked-slot checker is blind"
    );
}

/// Whether some seed in 0..20 with `bug` planted in the state machine reports a violation
/// containing `needle`: the checker that should catch the bug is not blind.
fn exposed(bug: falak_core::ledger::PlantedBug, needle: &str) -> bool {
    let config = SimConfig { planted_bug: bug, ..SimConfig::default() };
    (0..20).any(|seed| run_seed(seed, &config).violations.iter().any(|v| v.contains(needle)))
}

/// The single-claim checker: with the state machine's attempt check skipped and every
/// candidate claiming at once, some seed must produce two valid claims for one attempt.
#[test]
fn planted_bug_is_caught() {
    assert!(
        exposed(falak_core::ledger::PlantedBug::SkipAttemptCheck, "two valid claims"),
        "no seed in 0..20 exposed the planted bug: the single-claim checker is blind"
    );
}

/// The term checker: with the state machine's term check skipped, a deposed leader's OFFLINE
/// marks, retried after a heal, must show up in some seed.
#[test]
fn planted_term_bug_is_caught() {
    assert!(
        exposed(falak_core::ledger::PlantedBug::SkipTermCheck, "proposed in term"),
        "no seed in 0..20 exposed the planted term bug: the term checker is blind"
    );
}

/// The heal checker: with nodes never marked back online, some seed must leave a connected
/// node OFFLINE after a heal.
#[test]
fn planted_online_bug_is_caught() {
    assert!(
        exposed(falak_core::ledger::PlantedBug::RefuseNodeOnline, "still records running nodes OFFLINE"),
        "no seed in 0..20 exposed the planted online bug: the heal checker is blind"
    );
}

/// The slot checker: with the state machine's `max_instances` check skipped, some seed must
/// show a function holding more slots than its limit.
#[test]
fn planted_instance_limit_bug_is_caught() {
    assert!(
        exposed(falak_core::ledger::PlantedBug::SkipInstanceLimit, "instance slots"),
        "no seed in 0..20 exposed the planted instance-limit bug"
    );
}
