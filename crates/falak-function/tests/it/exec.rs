//! The exec runtime: one process per request.

use std::time::Duration;

use falak_core::function::Runtime;
use falak_function::{InstanceError, StartKind, spawn};

use crate::support::{Fixture, PATIENCE, call, request, text};

#[tokio::test]
async fn exec_cat_echoes_the_body() {
    let fixture = Fixture::new(&[]);
    let prepared = fixture.command(Runtime::Exec, &["cat"]).await;
    let instance = spawn(&prepared, 1).await.unwrap_or_else(|e| panic!("spawn: {e}"));
    assert_eq!(instance.timings().kind, StartKind::Exec);
    assert_eq!(instance.pid(), None);
    let (status, _, body) = call(&instance, request("POST", "/", "hello exec")).await;
    assert_eq!((status.as_u16(), text(&body)), (200, "hello exec".to_owned()));
    let big = vec![b'x'; 3 << 20];
    let (status, _, body) = call(&instance, request("POST", "/", big.clone())).await;
    assert_eq!((status.as_u16(), body.len()), (200, big.len()));
}

#[tokio::test]
async fn exec_gets_a_cgi_like_environment_and_a_failure_is_a_500_with_stderr() {
    let fixture = Fixture::new(&[]);
    let script = r#"echo "$FALAK_METHOD $FALAK_PATH $FALAK_QUERY $HTTP_X_TEST $CONTENT_TYPE $FALAK_INSTANCE $GREETING"
if [ "$FALAK_PATH" = /fail ]; then echo "something broke" >&2; exit 3; fi"#;
    let prepared = fixture.command(Runtime::Exec, &["sh", "-c", script]).await;
    let instance = spawn(&prepared, 5).await.unwrap_or_else(|e| panic!("spawn: {e}"));
    let request_with = |path: &str| {
        http::Request::post(path)
            .header("x-test", "yes")
            .header("content-type", "text/plain")
            .body(crate::support::body("ignored"))
            .expect("a request")
    };
    let (status, _, body) = call(&instance, request_with("/p?a=1")).await;
    assert_eq!((status.as_u16(), text(&body)), (200, "POST /p a=1 yes text/plain 5 salaam\n".to_owned()));
    let (status, headers, body) = call(&instance, request_with("/fail")).await;
    assert_eq!(status, 500);
    assert_eq!(headers["falak-error"], "exec");
    let body = text(&body);
    assert!(body.contains("exited with exit status: 3") && body.contains("something broke"), "{body}");
}

#[tokio::test]
async fn a_stopped_exec_instance_kills_its_running_command_and_refuses_requests() {
    let fixture = Fixture::new(&[]);
    let prepared = fixture.command(Runtime::Exec, &["sleep", "30"]).await;
    let instance = spawn(&prepared, 1).await.unwrap_or_else(|e| panic!("spawn: {e}"));
    let (outcome, ()) = tokio::join!(instance.send(request("GET", "/", "")), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        instance.stop(Duration::from_secs(1)).await;
    });
    assert!(matches!(outcome, Err(InstanceError::Stopped { .. })), "{outcome:?}");
    tokio::time::timeout(PATIENCE, instance.exited()).await.expect("exited() resolves once stopped");
    assert!(!instance.is_alive());
    assert!(matches!(instance.send(request("GET", "/", "")).await, Err(InstanceError::Stopped { .. })));
}
