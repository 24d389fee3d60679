//! The python runtime host: zygote and forks, cold starts, handler errors, crashes,
//! concurrency and streaming.

use std::time::Duration;

use bytes::Bytes;
use falak_function::{InstanceError, StartError, StartKind, Zygote, spawn};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::time::Instant;

use crate::support::{Fixture, PATIENCE, call, json, kill, process_runs, request, text, wait_for_file};

const ECHO: &str = r#"
import os

def handle(request):
    if request.path == "/fail":
        raise ValueError("boom: the handler failed")
    return (201, {"x-reply": "yes"}, {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "args": request.args,
        "header": request.headers.get("x-test"),
        "body": request.body.decode(),
        "json": request.json() if request.headers.get("content-type") == "application/json" else None,
        "instance": os.environ["FALAK_INSTANCE"],
        "function": os.environ["FALAK_FUNCTION"],
        "greeting": os.environ["GREETING"],
        "pid": os.getpid(),
    })
"#;

#[tokio::test]
async fn a_forked_instance_gets_method_path_query_headers_and_body_and_answers_status_headers_and_body() {
    let fixture = Fixture::new(&[("main.py", ECHO)]);
    let prepared = fixture.python().await;
    let zygote = Zygote::start(&prepared).await.unwrap_or_else(|e| panic!("zygote: {e}"));
    let instance = zygote.fork(7).await.unwrap_or_else(|e| panic!("fork: {e}"));
    assert_eq!(instance.id(), 7);
    assert_eq!(instance.timings().kind, StartKind::Fork);
    let pid = instance.pid().expect("a forked instance has a pid");
    assert_ne!(pid, zygote.pid());
    assert_eq!(instance.process_group(), Some(pid as i32), "the instance leads its own process group");

    let request = http::Request::builder()
        .method("PUT")
        .uri("/items/3?a=1&b=two")
        .header("x-test", "passed")
        .header("content-type", "application/json")
        .body(crate::support::body(r#"{"n": 5}"#))
        .expect("a request");
    let (status, headers, body) = call(&instance, request).await;
    assert_eq!(status, 201);
    assert_eq!(headers["x-reply"], "yes");
    assert_eq!(headers["content-type"], "application/json");
    let reply = json(&body);
    assert_eq!(reply["method"], "PUT");
    assert_eq!(reply["path"], "/items/3");
    assert_eq!(reply["query"], "a=1&b=two");
    assert_eq!(reply["args"], serde_json::json!({"a": "1", "b": "two"}));
    assert_eq!(reply["header"], "passed");
    assert_eq!(reply["body"], r#"{"n": 5}"#);
    assert_eq!(reply["json"], serde_json::json!({"n": 5}));
    assert_eq!(reply["instance"], "7");
    assert_eq!(reply["function"], "greet");
    assert_eq!(reply["greeting"], "salaam");
    assert_eq!(reply["pid"], pid);

    // A second instance is another process from the same zygote.
    let other = zygote.fork(8).await.unwrap_or_else(|e| panic!("fork: {e}"));
    let (_, _, body) = call(&other, request_get("/")).await;
    assert_eq!(json(&body)["instance"], "8");
    assert_ne!(json(&body)["pid"], pid);
    instance.health().await.unwrap_or_else(|e| panic!("health: {e}"));
    zygote.stop().await;
}

fn request_get(uri: &str) -> http::Request<falak_function::BoxBody> {
    request("GET", uri, Bytes::new())
}

#[tokio::test]
async fn handler_return_values_become_responses() {
    let fixture = Fixture::new(&[(
        "main.py",
        r#"
def handle(request):
    p = request.path
    if p == "/str": return "hello"
    if p == "/bytes": return b"\x00\x01"
    if p == "/list": return [1, 2]
    if p == "/dict": return {"status": "ok"}
    if p == "/response": return {"status": 404, "headers": {"x-a": "b"}, "body": "nothing here"}
    if p == "/pair": return (202, "accepted")
    if p == "/stream": return (200, {"content-type": "text/plain"}, (str(i) for i in range(3)))
    if p == "/none": return None
    return object()
"#,
    )]);
    let prepared = fixture.python().await;
    let instance = spawn(&prepared, 1).await.unwrap_or_else(|e| panic!("spawn: {e}"));
    assert_eq!(instance.timings().kind, StartKind::Cold);
    let cases: &[(&str, u16, &str, &str)] = &[
        ("/str", 200, "text/plain; charset=utf-8", "hello"),
        ("/bytes", 200, "application/octet-stream", "\u{0}\u{1}"),
        ("/list", 200, "application/json", "[1, 2]"),
        ("/dict", 200, "application/json", r#"{"status": "ok"}"#),
        ("/response", 404, "text/plain; charset=utf-8", "nothing here"),
        ("/pair", 202, "text/plain; charset=utf-8", "accepted"),
        ("/stream", 200, "text/plain", "012"),
    ];
    for &(path, want_status, want_type, want_body) in cases {
        let (status, headers, body) = call(&instance, request_get(path)).await;
        assert_eq!((path, status.as_u16(), text(&body).as_str()), (path, want_status, want_body));
        assert_eq!(headers["content-type"], want_type, "{path}");
    }
    let (status, _, body) = call(&instance, request_get("/none")).await;
    assert_eq!((status.as_u16(), body.len()), (200, 0));
    let (status, headers, body) = call(&instance, request_get("/other")).await;
    assert_eq!(status, 500);
    assert_eq!(headers["falak-error"], "handler");
    assert!(text(&body).contains("the handler returned a object"), "{}", text(&body));
}

#[tokio::test]
async fn a_raising_handler_is_a_500_with_the_traceback_and_the_instance_keeps_serving() {
    let fixture = Fixture::new(&[("main.py", ECHO)]);
    let prepared = fixture.python().await;
    let zygote = Zygote::start(&prepared).await.unwrap_or_else(|e| panic!("zygote: {e}"));
    let instance = zygote.fork(1).await.unwrap_or_else(|e| panic!("fork: {e}"));
    let (status, headers, body) = call(&instance, request_get("/fail")).await;
    assert_eq!(status, 500);
    assert_eq!(headers["falak-error"], "handler");
    let body = text(&body);
    assert!(body.starts_with("ValueError: boom: the handler failed"), "{body}");
    assert!(body.contains("Traceback (most recent call last)") && body.contains("main.py"), "{body}");
    let (status, _, _) = call(&instance, request_get("/fine")).await;
    assert_eq!(status, 201);
    assert!(fixture.log_text().contains("ValueError: boom"), "handler errors are logged too");
}

#[tokio::test]
async fn fork_skips_the_import_a_cold_start_pays_for() {
    let fixture =
        Fixture::new(&[("main.py", "import time\ntime.sleep(0.3)\n\ndef handle(request):\n    return 'ok'\n")]);
    let prepared = fixture.python().await;

    let started = Instant::now();
    let cold = spawn(&prepared, 1).await.unwrap_or_else(|e| panic!("spawn: {e}"));
    let cold_time = started.elapsed();
    assert!(cold_time >= Duration::from_millis(300), "a cold start imports the module: {cold_time:?}");
    assert_eq!(call(&cold, request_get("/")).await.0, 200);

    let zygote = Zygote::start(&prepared).await.unwrap_or_else(|e| panic!("zygote: {e}"));
    let mut fastest = Duration::MAX;
    for id in 2..5 {
        let started = Instant::now();
        let instance = zygote.fork(id).await.unwrap_or_else(|e| panic!("fork: {e}"));
        fastest = fastest.min(started.elapsed());
        assert_eq!(call(&instance, request_get("/")).await.0, 200);
    }
    assert!(fastest < Duration::from_millis(150), "a fork does not import again: the fastest took {fastest:?}");
}

#[tokio::test]
async fn a_missing_handler_fails_the_zygote_start_with_pythons_error() {
    let fixture = Fixture::new(&[("main.py", "def other(request):\n    return 'x'\n")]);
    let prepared = fixture.python().await;
    match Zygote::start(&prepared).await {
        Err(StartError::Load { error, .. }) => {
            assert_eq!(error, "module 'main' has no attribute 'handle'");
        }
        other => panic!("expected a load error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_import_error_fails_the_zygote_and_the_cold_start_with_the_traceback() {
    let fixture = Fixture::new(&[("main.py", "import falak_no_such_module\n\ndef handle(request):\n    return 'x'\n")]);
    let prepared = fixture.python().await;
    for start in ["zygote", "cold"] {
        let error = match start {
            "zygote" => Zygote::start(&prepared).await.map(drop),
            _ => spawn(&prepared, 1).await.map(drop),
        };
        match error {
            Err(StartError::Load { error, .. }) => {
                assert!(error.starts_with("importing module 'main' failed"), "{start}: {error}");
                assert!(error.contains("ModuleNotFoundError: No module named 'falak_no_such_module'"), "{error}");
            }
            other => panic!("{start}: expected a load error, got {other:?}"),
        }
    }
    let error = Zygote::start(&prepared).await.expect_err("the import fails").to_string();
    assert!(error.starts_with("greet@1: loading the handler failed: importing module 'main' failed"), "{error}");
}

#[tokio::test]
async fn an_instance_killed_mid_request_is_a_crash_and_its_exit_is_seen() {
    let fixture = Fixture::new(&[(
        "main.py",
        "import os, time\n\ndef handle(request):\n    open(os.environ['MARK'], 'w').close()\n    time.sleep(30)\n    return 'late'\n",
    )]);
    let mark = fixture.root.path().join("started");
    let mut spec = fixture.spec(falak_core::function::Runtime::Python);
    spec.env.insert("MARK".into(), mark.display().to_string());
    let prepared = fixture.prepare(spec).await;
    let zygote = Zygote::start(&prepared).await.unwrap_or_else(|e| panic!("zygote: {e}"));
    let instance = zygote.fork(1).await.unwrap_or_else(|e| panic!("fork: {e}"));
    let pid = instance.pid().expect("a pid");

    let (outcome, ()) = tokio::join!(instance.send(request_get("/slow")), async {
        wait_for_file(&mark).await;
        kill(pid);
    });
    match outcome {
        Err(e @ InstanceError::Crashed { .. }) => assert!(e.to_string().contains("exited"), "{e}"),
        other => panic!("expected a crash, got {other:?}"),
    }
    tokio::time::timeout(PATIENCE, instance.exited()).await.expect("exited() resolves");
    assert!(!instance.is_alive());
    assert!(matches!(instance.send(request_get("/")).await, Err(InstanceError::Crashed { .. })));
    assert!(zygote.is_alive(), "the zygote outlives its instances");
}

#[tokio::test]
async fn an_instance_serves_concurrent_requests_at_once() {
    let fixture =
        Fixture::new(&[("main.py", "import time\n\ndef handle(request):\n    time.sleep(0.6)\n    return 'done'\n")]);
    let prepared = fixture.python().await;
    let zygote = Zygote::start(&prepared).await.unwrap_or_else(|e| panic!("zygote: {e}"));
    let instance = zygote.fork(1).await.unwrap_or_else(|e| panic!("fork: {e}"));
    let started = Instant::now();
    let calls = (0..4).map(|_| call(&instance, request_get("/")));
    let results = futures_util::future::join_all(calls).await;
    let elapsed = started.elapsed();
    assert!(results.iter().all(|(status, _, body)| *status == 200 && body == "done"));
    assert!(elapsed < Duration::from_millis(1800), "4 requests of 0.6 s took {elapsed:?}, as if one at a time");
}

#[tokio::test]
async fn stopping_the_zygote_kills_the_instances_forked_from_it() {
    let fixture = Fixture::new(&[("main.py", ECHO)]);
    let prepared = fixture.python().await;
    let zygote = Zygote::start(&prepared).await.unwrap_or_else(|e| panic!("zygote: {e}"));
    let first = zygote.fork(1).await.unwrap_or_else(|e| panic!("fork: {e}"));
    let second = zygote.fork(2).await.unwrap_or_else(|e| panic!("fork: {e}"));
    let pids = [first.pid().expect("a pid"), second.pid().expect("a pid")];
    zygote.stop().await;
    assert!(!zygote.is_alive());
    for instance in [&first, &second] {
        tokio::time::timeout(PATIENCE, instance.exited()).await.expect("the instance dies with its zygote");
    }
    assert!(pids.iter().all(|&pid| !process_runs(pid)));
    assert!(matches!(zygote.fork(3).await, Err(StartError::ZygoteExited { .. })));
}

#[tokio::test]
async fn a_cold_instance_stops_gracefully_and_dropping_one_kills_it() {
    let fixture = Fixture::new(&[("main.py", ECHO)]);
    let prepared = fixture.python().await;
    let instance = spawn(&prepared, 1).await.unwrap_or_else(|e| panic!("spawn: {e}"));
    assert_eq!(call(&instance, request_get("/")).await.0, 201);
    instance.stop(Duration::from_secs(5)).await;
    assert!(!instance.is_alive());
    assert!(matches!(instance.health().await, Err(InstanceError::Stopped { .. })));

    let dropped = spawn(&prepared, 2).await.unwrap_or_else(|e| panic!("spawn: {e}"));
    let pid = dropped.pid().expect("a pid");
    drop(dropped);
    let gone = async {
        while process_runs(pid) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(PATIENCE, gone).await.expect("a dropped instance is killed");
}

#[tokio::test]
async fn a_5_mb_body_streams_through_both_ways() {
    let fixture = Fixture::new(&[("main.py", "def handle(request):\n    return request.body\n")]);
    let prepared = fixture.python().await;
    let zygote = Zygote::start(&prepared).await.unwrap_or_else(|e| panic!("zygote: {e}"));
    let instance = zygote.fork(1).await.unwrap_or_else(|e| panic!("fork: {e}"));
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<Bytes> =
        (0..80).map(|n| Bytes::from(chunk.iter().map(|b| b ^ n as u8).collect::<Vec<_>>())).collect();
    let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    assert_eq!(expected.len(), 5 * 1024 * 1024);
    let stream =
        futures_util::stream::iter(chunks.into_iter().map(|c| Ok::<_, falak_function::BoxError>(Frame::data(c))));
    let request = http::Request::post("/echo").body(StreamBody::new(stream).boxed()).expect("a request");
    let response = instance.send(request).await.unwrap_or_else(|e| panic!("send: {e}"));
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = Vec::new();
    let mut frames = 0;
    while let Some(frame) = tokio::time::timeout(PATIENCE, body.frame()).await.expect("a frame in time") {
        let frame = frame.unwrap_or_else(|e| panic!("body: {e}"));
        if let Ok(data) = frame.into_data() {
            received.extend_from_slice(&data);
            frames += 1;
        }
    }
    assert!(received == expected, "the body came back changed ({} bytes)", received.len());
    assert!(frames > 1, "the response arrived as a stream of frames, not one buffer");
    // The connection went back to the pool and still works.
    assert_eq!(call(&instance, request_get("/")).await.0, 200);
}
