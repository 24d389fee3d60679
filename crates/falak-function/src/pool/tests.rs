//! Each test feeds a script of inputs and snapshots the exact actions each one returned.
//!
//! Script lines are `<now> <input> <args>`: `request <id> [no-start]`, `started <instance>`,
//! `start-failed <instance> at-limit|error <message>`, `finished <request>`, `failed <instance>`,
//! `stopped <instance>`, `tick`, `drain`. Actions print as `start #1`, `stop #1`, `r5→#1`,
//! `reject r5 <reason> [<retry-after>ms]`.

use std::collections::{BTreeMap, BTreeSet};

use expect_test::{Expect, expect};
use proptest::prelude::*;

use super::*;

const CONFIG: PoolConfig = PoolConfig {
    min_instances: 0,
    max_instances: 2,
    concurrency: 2,
    idle_timeout_ms: 10_000,
    max_queue: 4,
    max_wait_ms: 5_000,
    start_timeout_ms: 3_000,
};

fn short(action: &Action) -> String {
    match action {
        Action::Dispatch { request, instance } => format!("r{request}→#{instance}"),
        Action::Start { instance } => format!("start #{instance}"),
        Action::Stop { instance } => format!("stop #{instance}"),
        Action::Reject { request, reason, retry_after_ms } => {
            let reason = match reason {
                RejectReason::QueueFull => "queue-full".to_string(),
                RejectReason::WaitedTooLong => "waited-too-long".to_string(),
                RejectReason::StartFailed(message) => format!("start-failed({message})"),
                RejectReason::Draining => "draining".to_string(),
            };
            match retry_after_ms {
                Some(ms) => format!("reject r{request} {reason} {ms}ms"),
                None => format!("reject r{request} {reason}"),
            }
        }
    }
}

fn feed(pool: &mut Pool, line: &str) -> Vec<Action> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let now: Millis = words[0].parse().unwrap();
    let arg = |i: usize| -> u64 { words[i].parse().unwrap() };
    match words[1] {
        "request" => pool.request(now, arg(2), words.get(3) != Some(&"no-start")),
        "started" => pool.started(now, arg(2)),
        "start-failed" => {
            let failure = match words[3] {
                "at-limit" => StartFailure::AtLimit,
                "error" => StartFailure::Error(words[4..].join(" ")),
                other => panic!("unknown start failure {other}"),
            };
            pool.start_failed(now, arg(2), failure)
        }
        "finished" => pool.finished(now, arg(2)),
        "failed" => pool.instance_failed(now, arg(2)),
        "stopped" => pool.stopped(now, arg(2)),
        "tick" => pool.tick(now),
        "drain" => pool.drain(now),
        other => panic!("unknown input {other}"),
    }
}

fn run(pool: &mut Pool, script: &str) -> String {
    let mut transcript = String::new();
    for line in script.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let actions: Vec<String> = feed(pool, line).iter().map(short).collect();
        transcript.push_str(line);
        if !actions.is_empty() {
            transcript.push_str(" => ");
            transcript.push_str(&actions.join(", "));
        }
        transcript.push('\n');
    }
    transcript
}

fn check(config: PoolConfig, script: &str, expect: Expect) {
    expect.assert_eq(&run(&mut Pool::new(config), script));
}

#[test]
fn cold_start_serves_the_request_then_idles_out() {
    check(
        CONFIG,
        "
        0 request 1
        40 started 1
        90 finished 1
        10089 tick
        10090 tick
        10095 stopped 1
        ",
        expect![[r#"
            0 request 1 => start #1
            40 started 1 => r1→#1
            90 finished 1
            10089 tick
            10090 tick => stop #1
            10095 stopped 1
        "#]],
    );
}

#[test]
fn dispatch_prefers_the_most_recently_used_instance_then_the_lowest_id() {
    // Two instances ready at the same time: the tie goes to #1. Once #2 served the newest
    // request it is the hot one and keeps getting work while it has a free slot.
    check(
        PoolConfig { concurrency: 1, ..CONFIG },
        "
        0 request 1
        0 request 2
        10 started 2
        10 started 1
        20 finished 1
        20 finished 2
        30 request 3
        31 finished 3
        40 request 4
        41 request 5
        ",
        expect![[r#"
            0 request 1 => start #1
            0 request 2 => start #2
            10 started 2 => r1→#2
            10 started 1 => r2→#1
            20 finished 1
            20 finished 2
            30 request 3 => r3→#1
            31 finished 3
            40 request 4 => r4→#1
            41 request 5 => r5→#2
        "#]],
    );
}

#[test]
fn starting_capacity_covers_waiting_requests() {
    // Concurrency 2: the first start covers two waiting requests, the third needs a second
    // start, the fifth finds max_instances reached and waits; beyond max_queue it is rejected.
    check(
        CONFIG,
        "
        0 request 1
        0 request 2
        0 request 3
        0 request 4
        0 request 5
        ",
        expect![[r#"
            0 request 1 => start #1
            0 request 2
            0 request 3 => start #2
            0 request 4
            0 request 5 => reject r5 queue-full 2000ms
        "#]],
    );
}

#[test]
fn a_ready_instance_takes_waiting_requests_in_order_up_to_its_concurrency() {
    check(
        PoolConfig { max_instances: 1, max_queue: 10, ..CONFIG },
        "
        0 request 1
        1 request 2
        2 request 3
        3 request 4
        50 started 1
        60 finished 2
        70 finished 1
        ",
        expect![[r#"
            0 request 1 => start #1
            1 request 2
            2 request 3
            3 request 4
            50 started 1 => r1→#1, r2→#1
            60 finished 2 => r3→#1
            70 finished 1 => r4→#1
        "#]],
    );
}

#[test]
fn a_busy_instance_gets_company_when_requests_wait() {
    check(
        PoolConfig { concurrency: 1, ..CONFIG },
        "
        0 request 1
        10 started 1
        20 request 2
        30 started 2
        ",
        expect![[r#"
            0 request 1 => start #1
            10 started 1 => r1→#1
            20 request 2 => start #2
            30 started 2 => r2→#2
        "#]],
    );
}

#[test]
fn a_request_that_may_not_start_waits_only_for_instances_that_exist() {
    // Nothing starting or ready: turned away at once. A starting instance: it waits, and it
    // does not cause a second start even when the first does not cover it.
    check(
        PoolConfig { concurrency: 1, ..CONFIG },
        "
        0 request 1 no-start
        1 request 2
        2 request 3 no-start
        10 started 1
        15 finished 2
        ",
        expect![[r#"
            0 request 1 no-start => reject r1 queue-full 1000ms
            1 request 2 => start #1
            2 request 3 no-start
            10 started 1 => r2→#1
            15 finished 2 => r3→#1
        "#]],
    );
}

#[test]
fn queue_full_is_a_capacity_rejection_with_retry_after() {
    check(
        PoolConfig { max_instances: 1, concurrency: 1, max_queue: 1, ..CONFIG },
        "
        0 request 1
        0 request 2
        ",
        expect![[r#"
            0 request 1 => start #1
            0 request 2 => reject r2 queue-full 2000ms
        "#]],
    );
}

#[test]
fn retry_after_follows_service_time_and_queue_length() {
    // Requests took 3 s and 5 s: the mean moves 1/8 of the way per sample. A full queue of
    // 4 with capacity 2 waits about three rounds.
    check(
        PoolConfig { max_instances: 1, concurrency: 2, ..CONFIG },
        "
        0 request 1
        0 started 1
        0 finished 1
        0 request 2
        3000 finished 2
        3000 request 3
        3000 request 4
        3000 request 5
        3000 request 6
        3000 request 7
        3000 request 8
        3000 request 9
        ",
        expect![[r#"
            0 request 1 => start #1
            0 started 1 => r1→#1
            0 finished 1
            0 request 2 => r2→#1
            3000 finished 2
            3000 request 3 => r3→#1
            3000 request 4 => r4→#1
            3000 request 5
            3000 request 6
            3000 request 7
            3000 request 8
            3000 request 9 => reject r9 queue-full 1125ms
        "#]],
    );
    check(
        PoolConfig { max_instances: 1, concurrency: 2, ..CONFIG },
        "
        0 request 1
        0 started 1
        5000 finished 1
        5000 request 2
        5000 request 3
        5000 request 4
        5000 request 5
        5000 request 6
        5000 request 7
        5000 request 8
        ",
        expect![[r#"
            0 request 1 => start #1
            0 started 1 => r1→#1
            5000 finished 1
            5000 request 2 => r2→#1
            5000 request 3 => r3→#1
            5000 request 4
            5000 request 5
            5000 request 6
            5000 request 7
            5000 request 8 => reject r8 queue-full 15000ms
        "#]],
    );
}

#[test]
fn at_limit_with_nothing_else_turns_waiting_requests_away_as_capacity() {
    // The mesh-wide budget said no: 429 with Retry-After, and no new start for a second.
    check(
        CONFIG,
        "
        0 request 1
        0 request 2
        5 start-failed 1 at-limit
        500 request 3
        1005 request 4
        ",
        expect![[r#"
            0 request 1 => start #1
            0 request 2
            5 start-failed 1 at-limit => reject r1 queue-full 1000ms, reject r2 queue-full 1000ms
            500 request 3 => reject r3 queue-full 1000ms
            1005 request 4 => start #2
        "#]],
    );
}

#[test]
fn at_limit_with_another_instance_keeps_requests_waiting() {
    // Request 2 waits for instance 1; the start it wanted is tried again after the backoff.
    check(
        PoolConfig { concurrency: 1, ..CONFIG },
        "
        0 request 1
        0 request 2
        5 start-failed 2 at-limit
        10 started 1
        900 tick
        1005 tick
        1010 started 3
        ",
        expect![[r#"
            0 request 1 => start #1
            0 request 2 => start #2
            5 start-failed 2 at-limit
            10 started 1 => r1→#1
            900 tick
            1005 tick => start #3
            1010 started 3 => r2→#3
        "#]],
    );
}

#[test]
fn start_error_fails_the_requests_nothing_else_can_serve() {
    check(
        CONFIG,
        "
        0 request 1
        0 request 2
        5 start-failed 1 error exit status 1: ModuleNotFoundError
        500 request 3
        1004 tick
        1005 tick
        1010 request 4
        ",
        expect![[r#"
            0 request 1 => start #1
            0 request 2
            5 start-failed 1 error exit status 1: ModuleNotFoundError => reject r1 start-failed(exit status 1: ModuleNotFoundError), reject r2 start-failed(exit status 1: ModuleNotFoundError)
            500 request 3 => reject r3 start-failed(exit status 1: ModuleNotFoundError)
            1004 tick
            1005 tick
            1010 request 4 => start #2
        "#]],
    );
}

#[test]
fn start_error_with_another_instance_starting_keeps_requests_waiting() {
    check(
        PoolConfig { concurrency: 1, ..CONFIG },
        "
        0 request 1
        0 request 2
        5 start-failed 1 error boom
        10 started 2
        ",
        expect![[r#"
            0 request 1 => start #1
            0 request 2 => start #2
            5 start-failed 1 error boom
            10 started 2 => r1→#2
        "#]],
    );
}

#[test]
fn a_start_past_start_timeout_is_stopped_and_failed() {
    check(
        CONFIG,
        "
        0 request 1
        2999 tick
        3000 tick
        3001 started 1
        3002 stopped 1
        ",
        expect![[r#"
            0 request 1 => start #1
            2999 tick
            3000 tick => stop #1, reject r1 start-failed(the instance did not become ready within 3000 ms)
            3001 started 1
            3002 stopped 1
        "#]],
    );
}

#[test]
fn raising_min_instances_starts_instances_and_lowering_it_lets_them_idle_out() {
    let mut pool = Pool::new(PoolConfig { min_instances: 0, max_instances: 4, ..CONFIG });
    let starts = pool.set_min_instances(0, 2);
    assert_eq!(starts, vec![Action::Start { instance: 1 }, Action::Start { instance: 2 }]);
    pool.started(10, 1);
    pool.started(10, 2);
    assert!(pool.set_min_instances(20, 0).is_empty());
    let idle = CONFIG.idle_timeout_ms;
    let stops = pool.tick(20 + idle);
    assert_eq!(stops.len(), 2, "{stops:?}");
    assert!(stops.iter().all(|a| matches!(a, Action::Stop { .. })));
}

#[test]
fn requests_wait_for_a_starting_instance_past_max_wait() {
    check(
        PoolConfig { max_instances: 1, concurrency: 1, start_timeout_ms: 60_000, ..CONFIG },
        "
        0 request 1
        6000 tick
        7000 started 1
        ",
        expect![[r#"
            0 request 1 => start #1
            6000 tick
            7000 started 1 => r1→#1
        "#]],
    );
}

#[test]
fn requests_waiting_past_max_wait_are_rejected_by_tick() {
    check(
        PoolConfig { max_instances: 1, concurrency: 1, ..CONFIG },
        "
        0 request 1
        10 started 1
        100 request 2
        200 request 3
        5099 tick
        5100 tick
        5200 tick
        ",
        expect![[r#"
            0 request 1 => start #1
            10 started 1 => r1→#1
            100 request 2
            200 request 3
            5099 tick
            5100 tick => reject r2 waited-too-long 3000ms
            5200 tick => reject r3 waited-too-long 2000ms
        "#]],
    );
}

#[test]
fn idle_instances_stop_least_recently_used_first_down_to_min_instances() {
    check(
        PoolConfig { min_instances: 1, max_instances: 3, concurrency: 1, ..CONFIG },
        "
        0 tick
        10 started 1
        20 request 1
        20 request 2
        20 request 3
        30 started 2
        30 started 3
        100 finished 3
        200 finished 1
        300 finished 2
        10100 tick
        10200 tick
        10300 tick
        ",
        expect![[r#"
            0 tick => start #1
            10 started 1
            20 request 1 => r1→#1
            20 request 2 => start #2
            20 request 3 => start #3
            30 started 2 => r2→#2
            30 started 3 => r3→#3
            100 finished 3
            200 finished 1
            300 finished 2
            10100 tick => stop #3
            10200 tick => stop #1
            10300 tick
        "#]],
    );
}

#[test]
fn min_instances_start_on_tick_and_are_replaced_after_a_loss() {
    check(
        PoolConfig { min_instances: 1, ..CONFIG },
        "
        0 tick
        10 started 1
        20 failed 1
        ",
        expect![[r#"
            0 tick => start #1
            10 started 1
            20 failed 1 => start #2
        "#]],
    );
}

#[test]
fn a_failed_instance_requests_are_not_dispatched_again_and_a_replacement_starts() {
    let mut pool = Pool::new(PoolConfig { max_instances: 1, concurrency: 1, ..CONFIG });
    let before = run(
        &mut pool,
        "
        0 request 1
        10 started 1
        20 request 2
        ",
    );
    assert_eq!(pool.in_flight(1), vec![1]);
    let after = run(
        &mut pool,
        "
        30 failed 1
        31 finished 1
        40 started 2
        ",
    );
    expect![[r#"
        0 request 1 => start #1
        10 started 1 => r1→#1
        20 request 2
        30 failed 1 => start #2
        31 finished 1
        40 started 2 => r2→#2
    "#]]
    .assert_eq(&(before + &after));
}

#[test]
fn a_start_held_by_a_stopping_instance_happens_when_it_stops() {
    check(
        PoolConfig { max_instances: 1, concurrency: 1, idle_timeout_ms: 100, ..CONFIG },
        "
        0 request 1
        10 started 1
        20 finished 1
        120 tick
        121 request 2
        122 request 3 no-start
        200 stopped 1
        ",
        expect![[r#"
            0 request 1 => start #1
            10 started 1 => r1→#1
            20 finished 1
            120 tick => stop #1
            121 request 2
            122 request 3 no-start
            200 stopped 1 => start #2
        "#]],
    );
}

#[test]
fn drain_rejects_waiting_requests_and_stops_instances_as_they_go_idle() {
    let mut pool = Pool::new(PoolConfig { max_instances: 3, concurrency: 1, ..CONFIG });
    let transcript = run(
        &mut pool,
        "
        0 request 1
        0 request 2
        0 request 3
        10 started 1
        10 started 2
        20 finished 2
        30 request 4
        30 request 5
        40 drain
        41 request 6
        50 finished 1
        51 finished 3
        52 stopped 1
        52 stopped 2
        ",
    );
    assert!(!pool.is_drained());
    let transcript = transcript + &run(&mut pool, "53 stopped 3");
    assert!(pool.is_drained());
    expect![[r#"
        0 request 1 => start #1
        0 request 2 => start #2
        0 request 3 => start #3
        10 started 1 => r1→#1
        10 started 2 => r2→#2
        20 finished 2 => r3→#2
        30 request 4
        30 request 5
        40 drain => reject r4 draining, reject r5 draining, stop #3
        41 request 6 => reject r6 draining
        50 finished 1 => stop #1
        51 finished 3 => stop #2
        52 stopped 1
        52 stopped 2
        53 stopped 3
    "#]]
    .assert_eq(&transcript);
}

#[test]
fn next_deadline_is_the_earliest_timeout() {
    let mut pool = Pool::new(PoolConfig { max_instances: 1, concurrency: 1, ..CONFIG });
    let mut deadlines = Vec::new();
    for line in ["0 request 1", "10 started 1", "20 request 2", "30 finished 1", "40 finished 2", "10040 tick"] {
        feed(&mut pool, line);
        deadlines.push(format!("{line}: {:?}", pool.next_deadline()));
    }
    expect![[r#"
        0 request 1: Some(3000)
        10 started 1: None
        20 request 2: Some(5020)
        30 finished 1: None
        40 finished 2: Some(10040)
        10040 tick: None"#]]
    .assert_eq(&deadlines.join("\n"));
}

#[test]
fn view_shows_states_in_flight_and_times() {
    let mut pool = Pool::new(PoolConfig { max_instances: 3, concurrency: 2, ..CONFIG });
    run(
        &mut pool,
        "
        0 request 1
        0 request 2
        0 request 3
        10 started 1
        20 finished 1
        20 finished 2
        ",
    );
    expect![[r#"
        PoolView {
            instances: [
                InstanceView {
                    id: 1,
                    state: Busy,
                    in_flight: 1,
                    since: 10,
                    last_used: 20,
                },
                InstanceView {
                    id: 2,
                    state: Starting,
                    in_flight: 0,
                    since: 0,
                    last_used: 0,
                },
            ],
            queued: 0,
            free_slots: 1,
            draining: false,
            totals: PoolTotals {
                dispatched: 3,
                rejected: 0,
                starts: 2,
                start_failures: 0,
                stops: 0,
                instance_failures: 0,
            },
        }
    "#]]
    .assert_debug_eq(&pool.view());
    assert_eq!(pool.free_slots(), 1);
    assert!(pool.has_free_slot());
}

/// 1,000 requests at once on a node allowed 4 instances of concurrency 4 and a queue of 64.
#[test]
fn burst_of_a_thousand_requests() {
    let config = PoolConfig {
        min_instances: 0,
        max_instances: 4,
        concurrency: 4,
        idle_timeout_ms: 60_000,
        max_queue: 64,
        max_wait_ms: 30_000,
        start_timeout_ms: 10_000,
    };
    #[derive(Default)]
    struct Seen {
        answered: BTreeMap<RequestId, Action>,
        starts: Vec<InstanceId>,
        in_flight: Vec<RequestId>,
    }
    impl Seen {
        fn record(&mut self, actions: Vec<Action>) {
            for action in actions {
                match &action {
                    Action::Start { instance } => self.starts.push(*instance),
                    Action::Dispatch { request, .. } => {
                        self.in_flight.push(*request);
                        assert!(self.answered.insert(*request, action.clone()).is_none(), "answered twice");
                    }
                    Action::Reject { request, retry_after_ms, .. } => {
                        assert!(retry_after_ms.is_some());
                        assert!(self.answered.insert(*request, action.clone()).is_none(), "answered twice");
                    }
                    Action::Stop { .. } => panic!("nothing stops during the burst"),
                }
            }
        }
    }
    let mut pool = Pool::new(config);
    let mut seen = Seen::default();
    for request in 0..1000 {
        seen.record(pool.request(0, request, true));
    }
    assert_eq!(seen.starts, vec![1, 2, 3, 4]);
    assert_eq!(pool.view().queued, 64);
    assert_eq!(seen.answered.len(), 936);
    for instance in seen.starts.clone() {
        seen.record(pool.started(100, instance));
    }
    let mut now = 100;
    let mut max_in_flight = 0;
    while !seen.in_flight.is_empty() {
        max_in_flight = max_in_flight.max(seen.in_flight.len());
        let request = seen.in_flight.remove(0);
        now += 5;
        seen.record(pool.finished(now, request));
    }
    assert_eq!(seen.starts.len(), 4);
    assert_eq!(max_in_flight, 16);
    assert_eq!(seen.answered.len(), 1000);
    let dispatched = seen.answered.values().filter(|a| matches!(a, Action::Dispatch { .. })).count();
    assert_eq!(dispatched, 64);
    assert_eq!(pool.view().queued, 0);
    assert_eq!(pool.free_slots(), 16);
}

/// Random input sequences with a monotone clock and a driver that reacts plausibly.
mod invariants {
    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Request {
            may_start: bool,
        },
        /// Answer one obligation of the driver: a start, a stop or a request in flight.
        Resolve(usize),
        FailStart {
            pick: usize,
            at_limit: bool,
        },
        FailInstance(usize),
        Tick,
        Drain,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => Just(Op::Request { may_start: true }),
            2 => any::<bool>().prop_map(|may_start| Op::Request { may_start }),
            8 => any::<usize>().prop_map(Op::Resolve),
            1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, at_limit)| Op::FailStart { pick, at_limit }),
            1 => any::<usize>().prop_map(Op::FailInstance),
            3 => Just(Op::Tick),
            1 => (0..40u32).prop_map(|n| if n == 0 { Op::Drain } else { Op::Tick }),
        ]
    }

    fn config() -> impl Strategy<Value = PoolConfig> {
        (0..3u32, 0..5u32, 0..4u32, 0..3_000u64, 0..8u32, 0..3_000u64, 1..3_000u64).prop_map(
            |(min_instances, max_instances, concurrency, idle_timeout_ms, max_queue, max_wait_ms, start_timeout_ms)| {
                PoolConfig {
                    min_instances,
                    max_instances,
                    concurrency,
                    idle_timeout_ms,
                    max_queue,
                    max_wait_ms,
                    start_timeout_ms,
                }
            },
        )
    }

    struct Driver {
        pool: Pool,
        config: PoolConfig,
        now: Millis,
        next_request: RequestId,
        seen_instances: BTreeSet<InstanceId>,
        starting: BTreeSet<InstanceId>,
        stopping: BTreeSet<InstanceId>,
        running: BTreeSet<RequestId>,
        /// Requests not answered yet, with their arrival.
        waiting: BTreeMap<RequestId, Millis>,
        answered: BTreeSet<RequestId>,
    }

    impl Driver {
        fn new(config: PoolConfig) -> Driver {
            Driver {
                pool: Pool::new(config),
                config: PoolConfig { concurrency: config.concurrency.max(1), ..config },
                now: 0,
                next_request: 1,
                seen_instances: BTreeSet::new(),
                starting: BTreeSet::new(),
                stopping: BTreeSet::new(),
                running: BTreeSet::new(),
                waiting: BTreeMap::new(),
                answered: BTreeSet::new(),
            }
        }

        fn apply(&mut self, op: Op) {
            let actions = match op {
                Op::Request { may_start } => {
                    let request = self.next_request;
                    self.next_request += 1;
                    self.waiting.insert(request, self.now);
                    self.pool.request(self.now, request, may_start)
                }
                Op::Resolve(pick) => {
                    let obligations = self.starting.len() + self.stopping.len() + self.running.len();
                    if obligations == 0 {
                        return;
                    }
                    self.resolve(pick % obligations)
                }
                Op::FailStart { pick, at_limit } => {
                    let Some(&instance) = self.starting.iter().nth(pick % self.starting.len().max(1)) else { return };
                    self.starting.remove(&instance);
                    let failure = if at_limit { StartFailure::AtLimit } else { StartFailure::Error("boom".into()) };
                    self.pool.start_failed(self.now, instance, failure)
                }
                Op::FailInstance(pick) => {
                    let view = self.pool.view();
                    let Some(instance) = view.instances.get(pick % view.instances.len().max(1)).map(|i| i.id) else {
                        return;
                    };
                    for request in self.pool.in_flight(instance) {
                        assert!(self.running.remove(&request));
                    }
                    self.starting.remove(&instance);
                    self.stopping.remove(&instance);
                    self.pool.instance_failed(self.now, instance)
                }
                Op::Tick => {
                    let actions = self.pool.tick(self.now);
                    self.record(actions);
                    let starting = self.pool.view().instances.iter().any(|i| i.state == InstanceState::Starting);
                    for (request, arrived) in &self.waiting {
                        assert!(
                            starting || arrived + self.config.max_wait_ms > self.now,
                            "request {request} from {arrived} still waits at {}",
                            self.now
                        );
                    }
                    if let Some(deadline) = self.pool.next_deadline() {
                        assert!(deadline > self.now, "deadline {deadline} not after tick at {}", self.now);
                    }
                    self.check();
                    return;
                }
                Op::Drain => self.pool.drain(self.now),
            };
            self.record(actions);
            self.check();
        }

        fn resolve(&mut self, mut pick: usize) -> Vec<Action> {
            if let Some(&instance) = self.starting.iter().nth(pick) {
                self.starting.remove(&instance);
                return self.pool.started(self.now, instance);
            }
            pick -= self.starting.len();
            if let Some(&instance) = self.stopping.iter().nth(pick) {
                self.stopping.remove(&instance);
                return self.pool.stopped(self.now, instance);
            }
            pick -= self.stopping.len();
            let request = *self.running.iter().nth(pick).expect("pick is within the obligations");
            self.running.remove(&request);
            self.pool.finished(self.now, request)
        }

        fn record(&mut self, actions: Vec<Action>) {
            for action in actions {
                match action {
                    Action::Start { instance } => {
                        assert!(self.seen_instances.insert(instance), "instance {instance} started twice");
                        self.starting.insert(instance);
                    }
                    Action::Stop { instance } => {
                        assert!(self.seen_instances.contains(&instance));
                        assert!(self.stopping.insert(instance), "instance {instance} stopped twice");
                        // The driver may still hear back from a start it is cancelling.
                    }
                    Action::Dispatch { request, instance } => {
                        assert!(
                            self.waiting.remove(&request).is_some(),
                            "request {request} dispatched but not waiting"
                        );
                        assert!(self.answered.insert(request));
                        self.running.insert(request);
                        assert!(self.pool.in_flight(instance).contains(&request));
                    }
                    Action::Reject { request, reason, retry_after_ms } => {
                        assert!(self.waiting.remove(&request).is_some(), "request {request} rejected but not waiting");
                        assert!(self.answered.insert(request));
                        assert_eq!(retry_after_ms.is_some(), reason.is_capacity(), "{reason:?}");
                    }
                }
            }
        }

        fn check(&self) {
            let view = self.pool.view();
            assert!(view.instances.len() <= self.config.max_instances as usize, "{view:#?}");
            assert!(view.queued <= self.config.max_queue);
            assert_eq!(view.queued as usize, self.waiting.len());
            let mut in_flight = 0;
            for i in &view.instances {
                assert!(i.in_flight <= self.config.concurrency);
                in_flight += i.in_flight as usize;
                if matches!(i.state, InstanceState::Idle | InstanceState::Busy)
                    && i.in_flight < self.config.concurrency
                    && !view.draining
                {
                    assert_eq!(view.queued, 0, "a free slot while requests wait: {view:#?}");
                }
            }
            assert_eq!(in_flight, self.running.len());
        }

        /// Answer every obligation and let time pass until nothing happens.
        fn settle(&mut self) {
            let step = self.config.idle_timeout_ms.max(self.config.max_wait_ms).max(self.config.start_timeout_ms)
                + START_BACKOFF_MS
                + 1;
            for _ in 0..10_000 {
                let obligations = self.starting.len() + self.stopping.len() + self.running.len();
                if obligations > 0 {
                    self.now += 1;
                    let actions = self.resolve(0);
                    self.record(actions);
                    self.check();
                    continue;
                }
                self.now += step;
                let actions = self.pool.tick(self.now);
                if actions.is_empty() {
                    return;
                }
                self.record(actions);
                self.check();
            }
            panic!("the pool never settled");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn invariants_hold(config in config(), ops in prop::collection::vec((0..1_500u64, op()), 0..200)) {
            let mut driver = Driver::new(config);
            for (elapsed, op) in ops {
                driver.now += elapsed;
                driver.apply(op);
            }
            driver.settle();
            prop_assert!(driver.waiting.is_empty());
            prop_assert_eq!(driver.answered.len() as u64, driver.next_request - 1);
            let view = driver.pool.view();
            if config.min_instances == 0 || view.draining {
                prop_assert!(view.instances.is_empty(), "{:#?}", view);
            } else {
                let live = view.instances.iter().filter(|i| i.state != InstanceState::Stopping).count() as u32;
                prop_assert_eq!(live, config.min_instances.min(config.max_instances));
            }
        }
    }
}
