//! The authorization table: every route has a row, every row is a route, and every route
//! refuses a missing, malformed, unknown, expired, revoked or wrong-role token with the right
//! status, and lets the right roles through. Per-token rate limits answer 429.

use std::collections::BTreeSet;
use std::sync::Arc;

use falak_api::Action;
use falak_api::ApiError;
use falak_api::auth::{AUTHORIZATION, Access, TableAuthenticator, TokenTable};
use falak_api::routes::GATEWAY_PATHS;
use falak_core::access::{Role, Token, TokenRecord};
use tokio::sync::mpsc;

use crate::fake_node::serve;

const NOW: u64 = 1_000_000;

fn token(seed: u8) -> Token {
    Token::from_random([seed; 40])
}

fn record(token: &Token, role: Role) -> TokenRecord {
    TokenRecord {
        id: token.id,
        name: format!("{role}"),
        role,
        hash: token.hash(),
        created_at: 0,
        expires_at: None,
        rate_limit: Some(0),
        revoked_at: None,
    }
}

struct Tokens {
    by_role: Vec<(Role, String)>,
    expired: String,
    revoked: String,
    unknown: String,
    limited: String,
}

/// A router whose node answers every action with an error (the tests look at who gets past
/// the guard, not at answers), and the tokens it knows.
async fn guarded_api() -> (String, Tokens) {
    let (tx, mut rx) = mpsc::channel::<Action>(64);
    tokio::spawn(async move {
        while let Some(action) = rx.recv().await {
            action.fail(ApiError::internal("the guard let this through"));
        }
    });
    let mut records = Vec::new();
    let mut by_role = Vec::new();
    for (i, role) in Role::ALL.into_iter().enumerate() {
        let t = token(i as u8 + 1);
        records.push(record(&t, role));
        by_role.push((role, t.encode()));
    }
    let expired = token(20);
    records.push(TokenRecord { expires_at: Some(NOW - 1), ..record(&expired, Role::Admin) });
    let revoked = token(21);
    records.push(TokenRecord { revoked_at: Some(5), ..record(&revoked, Role::Admin) });
    let limited = token(22);
    records.push(TokenRecord { rate_limit: Some(1), ..record(&limited, Role::Admin) });
    let auth = TableAuthenticator::new(TokenTable::new(records, None), || NOW);
    let router = falak_api::router(tx, falak_api::ApiConfig::default(), Arc::new(auth));
    let base = serve(router).await;
    let tokens = Tokens {
        by_role,
        expired: expired.encode(),
        revoked: revoked.encode(),
        unknown: token(30).encode(),
        limited: limited.encode(),
    };
    (base, tokens)
}

/// A concrete path for a table path: every `{param}` filled in.
fn concrete(path: &str) -> String {
    path.replace("{*path}", "some/path").replace("{name}", "x").replace("{id}", "j1").replace("{node}", "n1")
}

/// The methods a row stands for.
fn methods(method: &str) -> Vec<reqwest::Method> {
    match method {
        "ANY" => vec![reqwest::Method::GET, reqwest::Method::POST, reqwest::Method::DELETE],
        m => vec![m.parse().unwrap()],
    }
}

async fn send(base: &str, method: &reqwest::Method, path: &str, authorization: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().request(method.clone(), format!("{base}{path}"));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.send().await.unwrap()
}

#[test]
fn every_route_has_a_row_and_every_row_is_a_route() {
    let mut served: BTreeSet<(String, String)> =
        falak_api::routes().iter().map(|r| (r.method.to_string(), r.path.to_owned())).collect();
    served.extend(GATEWAY_PATHS.iter().map(|p| ("ANY".to_owned(), (*p).to_owned())));
    let table: BTreeSet<(String, String)> =
        AUTHORIZATION.iter().map(|g| (g.method.to_owned(), g.path.to_owned())).collect();
    assert_eq!(AUTHORIZATION.len(), table.len(), "a route appears twice in the table");
    let missing: Vec<_> = served.difference(&table).collect();
    assert!(missing.is_empty(), "routes without a row in auth::AUTHORIZATION: {missing:?}");
    let stale: Vec<_> = table.difference(&served).collect();
    assert!(stale.is_empty(), "rows in auth::AUTHORIZATION for routes that do not exist: {stale:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_bad_tokens_and_wrong_roles() {
    let (base, tokens) = guarded_api().await;
    let mut checked = 0;
    for grant in AUTHORIZATION {
        let path = concrete(grant.path);
        for method in methods(grant.method) {
            let what = format!("{method} {path}");
            let roles = match grant.access {
                Access::Open | Access::JoinTicket => {
                    let status = send(&base, &method, &path, None).await.status().as_u16();
                    assert!(status != 401 && status != 403, "{what} is open but answered {status}");
                    continue;
                }
                Access::Roles(roles) => roles,
            };
            let none = send(&base, &method, &path, None).await;
            assert_eq!(none.status().as_u16(), 401, "{what} without a token");
            assert!(none.headers().contains_key("www-authenticate"), "{what}: 401 without WWW-Authenticate");
            let bad_cases = [
                ("Basic dXNlcjpwdw==", "not `Bearer"),
                ("Bearer not-a-token", "malformed"),
                (&format!("Bearer {}", tokens.unknown), "not known"),
                (&format!("Bearer {}", tokens.expired), "expired"),
                (&format!("Bearer {}", tokens.revoked), "revoked"),
            ];
            for (header, says) in bad_cases {
                let response = send(&base, &method, &path, Some(header)).await;
                assert_eq!(response.status().as_u16(), 401, "{what} with {says}");
                let body = response.text().await.unwrap();
                assert!(body.contains(says), "{what} with {says}: {body}");
            }
            for (role, token) in &tokens.by_role {
                let response = send(&base, &method, &path, Some(&format!("Bearer {token}"))).await;
                let status = response.status().as_u16();
                if roles.contains(role) {
                    assert!(![401, 403, 429].contains(&status), "{what} refused role {role}: {status}");
                } else {
                    assert_eq!(status, 403, "{what} let role {role} through");
                    let body = response.text().await.unwrap();
                    assert!(body.contains(&format!("has role {role}")), "{what}: {body}");
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} guarded routes checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_its_rate_gets_429_with_retry_after() {
    let (base, tokens) = guarded_api().await;
    let header = format!("Bearer {}", tokens.limited);
    let get = reqwest::Method::GET;
    // Rate 1/s: a burst of 2, then refused until the bucket refills.
    for _ in 0..2 {
        let status = send(&base, &get, "/api/v1/nodes", Some(&header)).await.status().as_u16();
        assert_ne!(status, 429);
    }
    let refused = send(&base, &get, "/api/v1/nodes", Some(&header)).await;
    assert_eq!(refused.status().as_u16(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    // Another token is not affected.
    let (_, admin) = &tokens.by_role[0];
    let other = send(&base, &get, "/api/v1/nodes", Some(&format!("Bearer {admin}"))).await;
    assert_ne!(other.status().as_u16(), 429);
}
