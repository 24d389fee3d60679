//! Falak's HTTP API: the JSON-facing types, the routes that turn requests into typed
//! [`Action`]s for the node, the one mapping of errors to codes, the OpenAPI document and the
//! typed [`client::Client`].
//!
//! **Boundary:** this crate never touches node internals. The node serves
//! [`router`]`(actions, config)` and answers each [`Action`] through its reply channel; the
//! types here depend only on `falak-core`. These are the only types that are JSON on the wire.
//!
//! One file per resource: [`node`], [`capsule`], [`job`], [`task`], [`service`], [`workload`],
//! [`function`] (with the invoke gateway), [`event`], [`health`]. Each holds its types, their constructors from committed state (so the
//! node's answer to a read is one call) and its handlers.

pub mod action;
pub mod auth;
pub mod capsule;
pub mod client;
pub mod deployer;
mod error;
pub mod event;
pub mod function;
pub mod health;
pub mod image;
pub mod job;
pub mod join;
pub mod node;
pub mod openapi;
pub mod routes;
pub mod service;
pub mod task;
pub mod token;
pub mod workload;

pub use action::{Action, Reply};
pub use auth::{Access, Authenticator, Principal};
pub use client::{Client, ClientError};
pub use error::{ApiError, ErrorBody, ErrorCode};
pub use event::{EventItem, EventRecord, EventSubscription};
pub use function::{FunctionAction, Gateway, NoGateway};
pub use routes::{ApiConfig, DEFAULT_BODY_LIMIT, RouteInfo, router, router_with_gateway, routes};
