//! The OpenAPI document lists every route, and every route in the table is really served.

use falak_api::routes;

use crate::fake_node::spawn;

/// A concrete path for a route: ids that parse, names that exist or not (either is fine here).
fn concrete(path: &str) -> String {
    path.replace("/tasks/{id}", "/tasks/j1-t0").replace("{id}", "j1").replace("{name}", "hello")
}

#[tokio::test]
async fn every_route_is_documented_and_served() {
    let h = spawn().await;
    let doc = h.client.openapi().await.unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    let table = routes();
    let documented: usize = doc["paths"].as_object().unwrap().values().map(|ops| ops.as_object().unwrap().len()).sum();
    assert_eq!(documented, table.len(), "the document has exactly the table's routes");
    for route in table {
        let method = route.method.as_str().to_ascii_lowercase();
        let op = &doc["paths"][route.path][&method];
        assert!(op.is_object(), "{} {} is not documented", route.method, route.path);
        assert!(op["responses"][route.status.to_string()].is_object());

        let url = format!("{}{}?follow=false", h.base, concrete(route.path));
        let url = if route.path.ends_with("/events") { url } else { url.replace("?follow=false", "") };
        let response = h.raw().request(route.method.clone(), &url).body("{}").send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert_ne!(status, 405, "{} {} is not served: {body}", route.method, route.path);
        assert!(!body.contains("no route for"), "{} {} is not served: {body}", route.method, route.path);
    }
}
