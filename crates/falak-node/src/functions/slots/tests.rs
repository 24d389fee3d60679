//! Scripts of inputs with the effects each causes. A line is `<now> <input> [args]`; the handle
//! of an instance is its slot. Slots are numbered from 100.

use expect_test::{Expect, expect};

use super::*;

const CONFIG: PoolConfig = PoolConfig {
    min_instances: 0,
    max_instances: 2,
    concurrency: 1,
    idle_timeout_ms: 10_000,
    max_queue: 4,
    max_wait_ms: 5_000,
    start_timeout_ms: 3_000,
};

fn short(effect: &Effect<u64>) -> String {
    match effect {
        Effect::Claim { instance, slot } => format!("claim #{instance} s{slot}"),
        Effect::Launch { instance, slot, snapshot } => {
            format!("launch #{instance} s{slot}{}", if *snapshot { " from snapshot" } else { "" })
        }
        Effect::Serving { instance, .. } => format!("serving #{instance}"),
        Effect::Dispatch { request, instance, .. } => format!("dispatch r{request} to #{instance}"),
        Effect::Reject { request, reason, .. } => format!("reject r{request} ({reason:?})"),
        Effect::Stop { instance, release, .. } => match release {
            Some(slot) => format!("stop #{instance} and release s{slot}"),
            None => format!("stop #{instance}"),
        },
        Effect::Release { slot } => format!("release s{slot}"),
        Effect::Report(report) => format!("report {report:?}"),
    }
}

fn feed(core: &mut DeploymentCore<u64>, line: &str) -> Vec<Effect<u64>> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let now: Millis = words[0].parse().expect("time");
    let arg = |i: usize| -> u64 { words[i].parse().expect("number") };
    let input = match words[1] {
        "request" => Input::Request { request: arg(2), may_start: true },
        "finished" => Input::Finished { request: arg(2) },
        "claimed" => Input::Claimed {
            instance: arg(2),
            result: match words[3] {
                "ok" => Ok(()),
                "limit" => Err(ClaimFailure { failure: StartFailure::AtLimit, uncertain: false }),
                "lost" => Err(ClaimFailure { failure: StartFailure::Error("no leader".into()), uncertain: true }),
                other => panic!("unknown claim outcome {other}"),
            },
        },
        "launched" => {
            let instance = arg(2);
            // The handle is the slot: instance n holds slot 99 + n in these scripts.
            let result = if words[3] == "ok" { Ok(99 + instance) } else { Err("exec failed".to_owned()) };
            Input::Launched { instance, result }
        }
        "broke" => Input::Broke { instance: arg(2), why: "crashed".into() },
        "stopped" => Input::Stopped { instance: arg(2) },
        "snapshot" => Input::SnapshotReady(true),
        "min" => Input::SetMinInstances(arg(2) as u32),
        "retire" => Input::Retire,
        "tick" => Input::Tick,
        other => panic!("unknown input {other}"),
    };
    core.step(now, input)
}

fn check(script: &str, expect: Expect) {
    let mut core = DeploymentCore::new(CONFIG, SlotNumbers::starting_at(100));
    let mut transcript = String::new();
    for line in script.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let effects: Vec<String> = feed(&mut core, line).iter().map(short).collect();
        transcript.push_str(line);
        if !effects.is_empty() {
            transcript.push_str(" => ");
            transcript.push_str(&effects.join(", "));
        }
        transcript.push('\n');
    }
    transcript.push_str(&format!("slots held: {:?}; drained: {}\n", core.slots(), core.is_drained()));
    expect.assert_eq(&transcript);
}

#[test]
fn a_cold_start_claims_first_and_serves_only_after_both() {
    check(
        "
        0 request 1
        5 claimed 1 ok
        40 launched 1 ok
        50 finished 1
        ",
        expect![[r#"
            0 request 1 => claim #1 s100
            5 claimed 1 ok => launch #1 s100
            40 launched 1 ok => serving #1, dispatch r1 to #1
            50 finished 1
            slots held: [100]; drained: false
        "#]],
    );
}

#[test]
fn a_snapshot_start_forks_while_the_claim_commits_and_waits_for_it() {
    check(
        "
        0 snapshot
        0 request 1
        3 launched 1 ok
        8 claimed 1 ok
        ",
        expect![[r#"
            0 snapshot
            0 request 1 => claim #1 s100, launch #1 s100 from snapshot
            3 launched 1 ok
            8 claimed 1 ok => serving #1, dispatch r1 to #1
            slots held: [100]; drained: false
        "#]],
    );
}

#[test]
fn a_refused_claim_stops_the_forked_process_and_holds_nothing() {
    check(
        "
        0 snapshot
        0 request 1
        3 launched 1 ok
        8 claimed 1 limit
        9 stopped 1
        ",
        expect![[r#"
            0 snapshot
            0 request 1 => claim #1 s100, launch #1 s100 from snapshot
            3 launched 1 ok
            8 claimed 1 limit => stop #1, reject r1 (QueueFull)
            9 stopped 1
            slots held: []; drained: false
        "#]],
    );
}

#[test]
fn a_claim_without_an_answer_is_released_in_case_it_commits() {
    check(
        "
        0 request 1
        5000 claimed 1 lost
        ",
        expect![[r#"
            0 request 1 => claim #1 s100
            5000 claimed 1 lost => release s100, reject r1 (StartFailed("no leader"))
            slots held: []; drained: false
        "#]],
    );
}

#[test]
fn a_launch_that_fails_after_the_claim_committed_gives_the_slot_back() {
    check(
        "
        0 request 1
        5 claimed 1 ok
        30 launched 1 fail
        ",
        expect![[r#"
            0 request 1 => claim #1 s100
            5 claimed 1 ok => launch #1 s100
            30 launched 1 fail => release s100, report StartFailed { message: "exec failed" }, reject r1 (StartFailed("exec failed"))
            slots held: []; drained: false
        "#]],
    );
}

#[test]
fn retiring_during_a_start_undoes_it_when_it_ends() {
    check(
        "
        0 request 1
        2 retire
        5 claimed 1 ok
        ",
        expect![[r#"
            0 request 1 => claim #1 s100
            2 retire => reject r1 (Draining)
            5 claimed 1 ok => release s100
            slots held: []; drained: true
        "#]],
    );
    check(
        "
        0 snapshot
        0 request 1
        2 retire
        5 claimed 1 ok
        6 launched 1 ok
        7 stopped 1
        ",
        expect![[r#"
            0 snapshot
            0 request 1 => claim #1 s100, launch #1 s100 from snapshot
            2 retire => reject r1 (Draining)
            5 claimed 1 ok
            6 launched 1 ok => stop #1 and release s100
            7 stopped 1
            slots held: []; drained: true
        "#]],
    );
}

#[test]
fn a_broken_instance_is_replaced_and_its_slot_given_back() {
    check(
        "
        0 request 1
        5 claimed 1 ok
        40 launched 1 ok
        50 request 2
        60 broke 1
        61 claimed 2 ok
        80 launched 2 ok
        90 broke 1
        ",
        expect![[r#"
            0 request 1 => claim #1 s100
            5 claimed 1 ok => launch #1 s100
            40 launched 1 ok => serving #1, dispatch r1 to #1
            50 request 2 => claim #2 s101
            60 broke 1 => report InstanceFailed { slot: 100, why: "crashed" }, stop #1 and release s100
            61 claimed 2 ok => launch #2 s101
            80 launched 2 ok => serving #2, dispatch r2 to #2
            90 broke 1
            slots held: [101]; drained: false
        "#]],
    );
}

#[test]
fn an_idle_instance_stops_then_releases_and_a_retired_deployment_drains() {
    check(
        "
        0 request 1
        5 claimed 1 ok
        40 launched 1 ok
        50 finished 1
        10050 tick
        10060 stopped 1
        10070 retire
        ",
        expect![[r#"
            0 request 1 => claim #1 s100
            5 claimed 1 ok => launch #1 s100
            40 launched 1 ok => serving #1, dispatch r1 to #1
            50 finished 1
            10050 tick => stop #1 and release s100
            10060 stopped 1
            10070 retire
            slots held: []; drained: true
        "#]],
    );
}
