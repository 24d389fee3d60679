//! Functions with real node processes: the only warm instance is on some node C, requests come
//! in through another node B, C is killed with `kill -9`, and the next request is answered by another node.

use std::time::{Duration, Instant};

use falak_core::function::FunctionDocument;

use crate::procs::Mesh;

const MAIN_PY: &str = "import os, time\ntime.sleep(0.3)\n\ndef handle(request):\n    return os.environ.get('FALAK_DEPLOYMENT', '?') + ' pid ' + str(os.getpid())\n";

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_falak"))
}

/// POST through `api`; the status, the `falak-start` label and the body.
async fn invoke(http: &reqwest::Client, api: &str) -> Result<(u16, String, String), reqwest::Error> {
    let response = http.post(format!("{api}/fn/echo")).body("x").timeout(Duration::from_secs(20)).send().await?;
    let status = response.status().as_u16();
    let start = response.headers().get("falak-start").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let label = start.split(';').next().unwrap_or("").to_owned();
    Ok((status, label, response.text().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_request_is_answered_elsewhere_when_the_node_with_the_only_instance_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::start(binary(), dir.path(), 3);
    mesh.wait_ready(Duration::from_secs(60)).await;
    let client = mesh.nodes[0].client.clone();

    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("main.py"), MAIN_PY).unwrap();
    let stored = client.store_artifact(falak_artifact::bundle::pack(src.path()).unwrap()).await.unwrap();
    // Every node observes it, so each keeps a snapshot ready.
    let mut doc = FunctionDocument::parse(
        "name: echo\nkind: function\nruntime: python\nhandler: main.handle\nobservers: 3\n\
         scaling: { max_instances: 4, concurrency: 4, idle_timeout: 5m }",
    )
    .unwrap();
    doc.artifact = Some(stored.id);
    client.deploy_function(&doc).await.unwrap();

    // The first request through the last node starts one instance. The gateway may place it on
    // another node (one whose snapshot was ready first), so the test follows it: `c` is wherever
    // it runs and `b` is another node. Retrying only until the first answer keeps it one
    // instance: a second request before gossip shows the first instance could start another.
    let http = mesh.http();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _, body) = invoke(&http, &mesh.nodes[2].api).await.unwrap();
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "echo never answered: {status} {body}\n{}", mesh.log(2));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let instances = client.function_instances("echo").await.unwrap();
    assert_eq!(instances.len(), 1, "one instance: {instances:?}");
    let c = mesh.nodes.iter().position(|n| n.name == instances[0].node_name).expect("a mesh node");
    let b = (c + 1) % mesh.nodes.len();
    let client = mesh.nodes[b].client.clone();
    let b_api = mesh.nodes[b].api.clone();
    // Through B it is served by C's warm instance once B's gossip view shows it (gossip is
    // republished every 500 ms).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, label, body) = invoke(&http, &b_api).await.unwrap();
    assert_eq!((status, label.as_str()), (200, "remote-warm"), "{body}");
    assert_eq!(client.function_instances("echo").await.unwrap().len(), 1, "B did not start its own");

    mesh.kill9(c);
    let killed = Instant::now();
    let (status, label, body) = invoke(&http, &b_api).await.expect("B answers");
    assert_eq!(status, 200, "the next request is served by another node: {label} {body}\n{}", mesh.log(b));
    assert!(label == "snapshot" || label == "cold" || label == "warm", "{label}");
    assert!(killed.elapsed() < Duration::from_secs(10), "answered in {:?}", killed.elapsed());
    let instances = mesh.nodes[b].client.function_instances("echo").await.unwrap();
    assert!(
        instances.iter().all(|i| i.node_name != mesh.nodes[c].name),
        "the new instance is on a live node: {instances:?}"
    );
    // C's slot is released once the mesh marks it OFFLINE.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = mesh.nodes[b].client.function("echo").await.unwrap();
        if info.instances as usize == instances.len() {
            break;
        }
        assert!(Instant::now() < deadline, "C's instance slot was never released: {info:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
