//! The OpenAPI 3 document, generated from the same route table that registers the routes, so
//! every served route is documented and nothing documented is missing.
//!
//! It is deliberately small: paths, methods, parameters, body and answer content types, and
//! the error shape. The JSON-facing types themselves are documented on their Rust definitions.

use axum::Json;
use serde_json::{Map, Value, json};

use crate::auth::{Access, access_for};
use crate::error::ErrorCode;
use crate::routes::{RouteInfo, routes};

/// The OpenAPI document for every route in [`routes`].
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in routes() {
        let entry = paths.entry(route.path).or_insert_with(|| Value::Object(Map::new()));
        entry[route.method.as_str().to_ascii_lowercase()] = operation(&route);
    }
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.name()).collect();
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Falak API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every node serves this API. Errors are `{ \"error\": { \"code\", \"message\" } }`.",
        },
        "paths": paths,
        "security": [{ "bearer": [] }],
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`falak-token-v1.<id>.<secret>`; `falak token create` makes one. Each operation lists the roles it allows in `x-falak-roles`.",
                },
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": { "type": "string", "enum": codes },
                                "message": { "type": "string" },
                            },
                        },
                    },
                },
            },
        },
    })
}

fn operation(route: &RouteInfo) -> Value {
    let mut parameters: Vec<Value> = path_parameters(route.path)
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
        .collect();
    parameters.extend(route.query.iter().map(|(name, description)| {
        json!({ "name": name, "in": "query", "required": false, "description": description, "schema": { "type": "string" } })
    }));
    if route.idempotent {
        parameters.push(json!({
            "name": "Idempotency-Key",
            "in": "header",
            "required": false,
            "description": "1-255 visible ASCII characters: a retry with the same key (through any node, within 24 hours) takes effect once and gets the first answer; the same key for another request is a conflict",
            "schema": { "type": "string" },
        }));
    }
    let mut op = json!({
        "summary": route.summary,
        "operationId": operation_id(route),
        "parameters": parameters,
        "responses": {
            route.status.to_string(): {
                "description": "success",
                "content": { route.produces: {} },
            },
            "default": {
                "description": "error",
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } },
            },
        },
    });
    if !route.body.is_empty() {
        let content: Map<String, Value> = route.body.iter().map(|t| ((*t).to_owned(), json!({}))).collect();
        op["requestBody"] = json!({ "required": true, "content": content });
    }
    match access_for(route.method.as_str(), route.path) {
        Some(Access::Roles(roles)) => {
            op["x-falak-roles"] = json!(roles.iter().map(|r| r.as_str()).collect::<Vec<_>>());
        }
        Some(Access::Open | Access::JoinTicket) | None => op["security"] = json!([]),
    }
    op
}

/// `{name}` segments of a path.
fn path_parameters(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}

/// `get_api_v1_jobs_id_tasks` for `GET /api/v1/jobs/{id}/tasks`.
fn operation_id(route: &RouteInfo) -> String {
    let mut id = route.method.as_str().to_ascii_lowercase();
    for part in route.path.split('/').filter(|s| !s.is_empty()) {
        id.push('_');
        id.extend(part.chars().filter(|c| c.is_ascii_alphanumeric()));
    }
    id
}

pub(crate) async fn serve() -> Json<Value> {
    Json(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_once() {
        let doc = document();
        let mut ids = std::collections::BTreeSet::new();
        for route in routes() {
            let op = &doc["paths"][route.path][route.method.as_str().to_ascii_lowercase()];
            assert!(op.is_object(), "{} {} missing", route.method, route.path);
            assert!(ids.insert(op["operationId"].as_str().unwrap().to_owned()), "duplicate operation id");
        }
    }

    #[test]
    fn every_operation_names_its_roles_or_is_open() {
        let doc = document();
        let healthz = &doc["paths"]["/healthz"]["get"];
        assert_eq!(healthz["security"], json!([]));
        let submit = &doc["paths"]["/api/v1/jobs"]["post"];
        assert_eq!(submit["x-falak-roles"], json!(["admin", "deploy"]));
    }

    #[test]
    fn path_parameters_are_declared() {
        let doc = document();
        let op = &doc["paths"]["/api/v1/jobs/{id}/result"]["get"];
        let names: Vec<&str> =
            op["parameters"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["id", "format"]);
    }
}
