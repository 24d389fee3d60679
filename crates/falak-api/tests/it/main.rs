//! API tests: the router served on 127.0.0.1:0 in front of a fake node, driven through the
//! typed client (and a raw HTTP client for what the typed one would never send).

mod auth;
mod errors;
mod events;
mod fake_node;
mod happy_paths;
mod openapi;
