//! Error shape and status for every way a request can fail.

use std::time::Duration;

use falak_api::job::JobSubmission;
use falak_api::{Action, ApiConfig, ClientError, ErrorBody, ErrorCode};
use falak_core::job::{JobId, TaskId};
use tokio::sync::mpsc;

use crate::fake_node::{serve, spawn};

/// Assert an error response's status, JSON shape and code; return its message.
async fn expect_error(response: reqwest::Response, status: u16, code: ErrorCode) -> String {
    assert_eq!(response.status().as_u16(), status);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let body: serde_json::Value = response.json().await.unwrap();
    let parsed: ErrorBody = serde_json::from_value(body.clone()).unwrap();
    assert_eq!(body["error"].as_object().unwrap().len(), 2, "only code and message: {body}");
    assert_eq!(parsed.error.code, code, "{body}");
    parsed.error.message
}

fn api_error(error: ClientError) -> (u16, ErrorCode, String) {
    match error {
        ClientError::Api { status, code, message } => (status, code, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn not_found_names_what_is_missing() {
    let h = spawn().await;
    let (status, code, message) = api_error(h.client.job(JobId(99)).await.unwrap_err());
    assert_eq!((status, code, message.as_str()), (404, ErrorCode::NotFound, "job j99 not found"));
    let missing_task = TaskId { job: JobId(1), index: 0 };
    assert_eq!(api_error(h.client.task(missing_task).await.unwrap_err()).1, ErrorCode::NotFound);
    assert_eq!(api_error(h.client.capsule("nope").await.unwrap_err()).2, "capsule nope not found");
    assert_eq!(api_error(h.client.service("nope").await.unwrap_err()).1, ErrorCode::NotFound);
    // The ledger's own rejection maps too: a job for a capsule never applied.
    let submission = JobSubmission { capsule: "ghost".into(), ..Default::default() };
    let (status, code, message) = api_error(h.client.submit_job(&submission).await.unwrap_err());
    assert_eq!((status, code), (404, ErrorCode::NotFound));
    assert!(message.contains("capsule ghost not found"), "{message}");
}

#[tokio::test]
async fn invalid_yaml_names_the_field() {
    let h = spawn().await;
    let bad_cpu = "name: a\nkind: process\ncommand: [x]\nresources: { cpu: lots }\n";
    let (status, code, message) = api_error(h.client.apply_capsule_text(bad_cpu).await.unwrap_err());
    assert_eq!((status, code), (400, ErrorCode::Invalid));
    assert!(message.starts_with("field `resources.cpu`"), "{message}");

    let response = h
        .raw()
        .post(format!("{}/api/v1/capsules", h.base))
        .header("content-type", "application/yaml")
        .body("name: [unclosed")
        .send()
        .await
        .unwrap();
    expect_error(response, 400, ErrorCode::Invalid).await;
}

#[tokio::test]
async fn unknown_fields_are_refused_by_name() {
    let h = spawn().await;
    let response = h
        .raw()
        .post(format!("{}/api/v1/jobs", h.base))
        .json(&serde_json::json!({ "capsule": "hello", "taskz": 3 }))
        .send()
        .await
        .unwrap();
    let message = expect_error(response, 400, ErrorCode::Invalid).await;
    assert!(message.contains("unknown field `taskz`"), "{message}");

    let response = h
        .raw()
        .post(format!("{}/api/v1/capsules", h.base))
        .json(&serde_json::json!({ "name": "a", "kind": "process", "command": ["x"], "placement": { "colour": 1 } }))
        .send()
        .await
        .unwrap();
    let message = expect_error(response, 400, ErrorCode::Invalid).await;
    assert!(message.starts_with("field `placement.colour`"), "{message}");

    let response = h.raw().get(format!("{}/api/v1/jobs?limit=3&colour=red", h.base)).send().await.unwrap();
    let message = expect_error(response, 400, ErrorCode::Invalid).await;
    assert!(message.contains("colour"), "{message}");
}

#[tokio::test]
async fn bad_json_and_bad_ids_are_invalid() {
    let h = spawn().await;
    let response = h
        .raw()
        .post(format!("{}/api/v1/jobs", h.base))
        .header("content-type", "application/json")
        .body("{ not json")
        .send()
        .await
        .unwrap();
    let message = expect_error(response, 400, ErrorCode::Invalid).await;
    assert!(message.starts_with("request body is not valid JSON"), "{message}");

    let response = h.raw().get(format!("{}/api/v1/jobs/12", h.base)).send().await.unwrap();
    let message = expect_error(response, 400, ErrorCode::Invalid).await;
    assert!(message.contains("ids look like `j12`"), "{message}");

    let response = h.raw().get(format!("{}/api/v1/jobs?limit=many", h.base)).send().await.unwrap();
    expect_error(response, 400, ErrorCode::Invalid).await;

    let response = h.raw().post(format!("{}/api/v1/jobs", h.base)).body("").send().await.unwrap();
    assert_eq!(expect_error(response, 400, ErrorCode::Invalid).await, "request body is empty");

    let response = h
        .raw()
        .post(format!("{}/api/v1/jobs", h.base))
        .header("content-type", "application/xml")
        .body("<job/>")
        .send()
        .await
        .unwrap();
    expect_error(response, 400, ErrorCode::Invalid).await;
}

#[tokio::test]
async fn a_ten_megabyte_body_is_too_large() {
    let h = spawn().await;
    let body = "x".repeat(10 << 20);
    let response = h
        .raw()
        .post(format!("{}/api/v1/capsules", h.base))
        .header("content-type", "application/yaml")
        .body(body)
        .send()
        .await
        .unwrap();
    let message = expect_error(response, 413, ErrorCode::TooLarge).await;
    assert_eq!(message, "request body is larger than the limit of 1048576 bytes");
}

#[tokio::test]
async fn unknown_route_and_wrong_method_answer_json() {
    let h = spawn().await;
    let response = h.raw().get(format!("{}/api/v1/nope", h.base)).send().await.unwrap();
    let message = expect_error(response, 404, ErrorCode::NotFound).await;
    assert_eq!(message, "no route for GET /api/v1/nope; see /api/v1/openapi.json");

    let response = h.raw().delete(format!("{}/api/v1/nodes", h.base)).send().await.unwrap();
    let message = expect_error(response, 405, ErrorCode::MethodNotAllowed).await;
    assert_eq!(message, "DELETE is not allowed on /api/v1/nodes");
    let response = h.raw().put(format!("{}/api/v1/jobs/j1", h.base)).send().await.unwrap();
    expect_error(response, 405, ErrorCode::MethodNotAllowed).await;
}

#[tokio::test]
async fn conflicts_map_from_the_ledger() {
    let h = spawn().await;
    h.client.apply_capsule_text("name: a\nkind: process\ncommand: [x]\n").await.unwrap();
    let job = h.client.submit_job(&JobSubmission { capsule: "a".into(), ..Default::default() }).await.unwrap();
    h.client.cancel_job(job.id).await.unwrap();
    let (status, code, message) = api_error(h.client.cancel_job(job.id).await.unwrap_err());
    assert_eq!((status, code), (409, ErrorCode::Conflict));
    assert_eq!(message, format!("job {} is already CANCELLED", job.id));
}

#[tokio::test]
async fn a_node_that_is_not_ready_answers_503_with_why() {
    let h = spawn().await;
    h.fake().ready = false;
    let (status, code, message) = api_error(h.client.ready().await.unwrap_err());
    assert_eq!((status, code, message.as_str()), (503, ErrorCode::Unavailable, "no ledger leader is known yet"));
    // Liveness does not depend on the node.
    assert_eq!(h.client.health().await.unwrap(), "ok");
}

#[tokio::test]
async fn a_busy_or_gone_node_is_unavailable_not_a_hang() {
    // A node that never answers: the first request times out, the next finds the queue full.
    let (tx, rx) = mpsc::channel::<Action>(1);
    let config = ApiConfig {
        action_timeout: Duration::from_millis(300),
        queue_wait: Duration::from_millis(50),
        ..ApiConfig::default()
    };
    let (auth, token) = falak_api::auth::one_token_for_tests(falak_core::access::Role::Admin);
    let base = serve(falak_api::router(tx, config.clone(), auth)).await;
    let client = falak_api::Client::new(&base).unwrap().with_token(Some(token));
    let (first, second) = tokio::join!(client.nodes(), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.nodes().await
    });
    let (status, code, message) = api_error(first.unwrap_err());
    assert_eq!((status, code), (503, ErrorCode::Unavailable));
    assert!(message.contains("did not answer list_nodes"), "{message}");
    assert_eq!(api_error(second.unwrap_err()).1, ErrorCode::TooManyRequests);

    // A node whose loop is gone.
    drop(rx);
    let (status, code, _) = api_error(client.nodes().await.unwrap_err());
    assert_eq!((status, code), (503, ErrorCode::Unavailable));
}

#[tokio::test]
async fn an_absent_node_gets_a_clear_message() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let error = falak_api::Client::new(&url).unwrap().nodes().await.unwrap_err();
    assert!(matches!(error, ClientError::Unreachable { .. }), "{error:?}");
    assert_eq!(error.to_string(), format!("cannot reach falak at {url}: is a node running? (`falak up`)"));
}

#[tokio::test]
async fn idempotency_keys_reach_the_node_on_creating_writes_and_are_refused_elsewhere() {
    let h = spawn().await;
    h.client.apply_capsule_text(crate::happy_paths::HELLO).await.unwrap();
    let submission = JobSubmission { capsule: "hello".into(), ..Default::default() };
    let keyed = h.client.clone().with_idempotency_key(Some("k-1".parse().unwrap()));
    keyed.submit_job(&submission).await.unwrap();
    assert_eq!(h.fake().last_key.as_ref().map(|k| k.as_str()), Some("k-1"));
    h.client.submit_job(&submission).await.unwrap();
    assert_eq!(h.fake().last_key, None, "no key, none passed on");
    // A malformed key is refused before the node sees anything.
    let response = h
        .raw()
        .post(format!("{}/api/v1/jobs", h.base))
        .header("idempotency-key", "has space")
        .json(&submission)
        .send()
        .await
        .unwrap();
    let message = expect_error(response, 400, ErrorCode::Invalid).await;
    assert!(message.contains("visible ASCII"), "{message}");
    // A POST that cannot be replayed refuses a key rather than ignore it; a GET ignores one.
    let response = h
        .raw()
        .post(format!("{}/api/v1/tokens", h.base))
        .header("idempotency-key", "k-2")
        .json(&serde_json::json!({ "name": "t", "role": "read" }))
        .send()
        .await
        .unwrap();
    let message = expect_error(response, 400, ErrorCode::Invalid).await;
    assert!(message.contains("does not take an Idempotency-Key"), "{message}");
    let response = h.raw().get(format!("{}/api/v1/jobs", h.base)).header("idempotency-key", "k-3").send().await;
    assert_eq!(response.unwrap().status(), 200);
    // The OpenAPI document shows which routes take one.
    let doc = h.client.openapi().await.unwrap();
    let params = doc["paths"]["/api/v1/jobs"]["post"]["parameters"].to_string();
    assert!(params.contains("Idempotency-Key"), "{params}");
    assert!(!doc["paths"]["/api/v1/tokens"]["post"]["parameters"].to_string().contains("Idempotency-Key"));
}
