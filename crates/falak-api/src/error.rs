//! The API's error: a small closed set of codes, each with one HTTP status.
//!
//! Every failure that leaves the API is an [`ApiError`]; this file is the only place that maps
//! errors to codes and codes to statuses. On the wire it is
//! `{ "error": { "code": "not_found", "message": "job j9 not found" } }`.

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use falak_core::ledger::{RejectCode, Rejection};
use falak_core::spec::SpecError;
use serde::{Deserialize, Serialize};

/// What kind of failure an [`ApiError`] is. Clients branch on this, never on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The named resource does not exist (404).
    NotFound,
    /// The request contradicts current state: already exists, already finished, stale (409).
    Conflict,
    /// The request is malformed or fails validation; the message names the field (400).
    Invalid,
    /// The request body is larger than the API accepts (413).
    TooLarge,
    /// No valid credentials (401).
    Unauthorized,
    /// Valid credentials without the needed role (403).
    Forbidden,
    /// The path exists but not with this HTTP method (405).
    MethodNotAllowed,
    /// The node cannot answer now: not joined, no leader, shutting down, timed out (503).
    Unavailable,
    /// The node's action queue is full; retry shortly (429).
    TooManyRequests,
    /// A bug or an unexpected failure inside the node (500).
    Internal,
    /// A function instance failed while serving the request: it crashed or answered garbage (502).
    BadGateway,
    /// A function did not answer within its timeout (504).
    Timeout,
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::Invalid => StatusCode::BAD_REQUEST,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::BadGateway => StatusCode::BAD_GATEWAY,
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The code as it appears on the wire.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Invalid => "invalid",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::Internal => "internal",
            ErrorCode::BadGateway => "bad_gateway",
            ErrorCode::Timeout => "timeout",
        }
    }

    /// The code a client should assume for an HTTP status whose body it could not read.
    pub fn from_status(status: u16) -> ErrorCode {
        match status {
            400 | 422 => ErrorCode::Invalid,
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            405 => ErrorCode::MethodNotAllowed,
            409 => ErrorCode::Conflict,
            413 => ErrorCode::TooLarge,
            429 => ErrorCode::TooManyRequests,
            502 => ErrorCode::BadGateway,
            503 => ErrorCode::Unavailable,
            504 => ErrorCode::Timeout,
            _ => ErrorCode::Internal,
        }
    }

    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::Invalid,
        ErrorCode::TooLarge,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Unavailable,
        ErrorCode::TooManyRequests,
        ErrorCode::Internal,
        ErrorCode::BadGateway,
        ErrorCode::Timeout,
    ];
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed request: a code and a message for humans (lowercase, no trailing period).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

/// The JSON body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ApiError,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into() }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Invalid, message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::TooLarge, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::TooManyRequests, message)
    }

    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadGateway, message)
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Timeout, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }
}

impl From<RejectCode> for ErrorCode {
    fn from(code: RejectCode) -> Self {
        match code {
            RejectCode::NotFound => ErrorCode::NotFound,
            RejectCode::Conflict | RejectCode::Stale | RejectCode::NoFit => ErrorCode::Conflict,
            RejectCode::Invalid => ErrorCode::Invalid,
            RejectCode::Forbidden => ErrorCode::Forbidden,
        }
    }
}

/// A command the ledger refused; state is unchanged.
impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        ApiError::new(rejection.code.into(), rejection.message)
    }
}

/// A spec or request field that failed validation; the message names the field.
impl From<SpecError> for ApiError {
    fn from(error: SpecError) -> Self {
        ApiError::invalid(error.to_string())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::invalid(format!("query string: {}", lowercase_first(&rejection.body_text())))
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::invalid(format!("path: {}", lowercase_first(&rejection.body_text())))
    }
}

/// Map a failure to read the request body. `limit` is the body limit in force, for the message.
pub(crate) fn body_rejection(rejection: BytesRejection, limit: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(format!("request body is larger than the limit of {limit} bytes"))
    } else {
        ApiError::invalid(format!("request body: {}", lowercase_first(&rejection.body_text())))
    }
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        (status, axum::Json(ErrorBody { error: self })).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_status_and_name() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_status(code.status().as_u16()), code);
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.name()));
        }
    }

    #[test]
    fn ledger_rejections_map_to_codes() {
        let cases = [
            (RejectCode::NotFound, ErrorCode::NotFound),
            (RejectCode::Conflict, ErrorCode::Conflict),
            (RejectCode::Invalid, ErrorCode::Invalid),
            (RejectCode::Stale, ErrorCode::Conflict),
            (RejectCode::NoFit, ErrorCode::Conflict),
        ];
        for (reject, code) in cases {
            let error = ApiError::from(Rejection { code: reject, message: "m".into() });
            assert_eq!(error.code, code);
        }
    }

    #[test]
    fn error_body_shape() {
        let body = ErrorBody { error: ApiError::not_found("job j9 not found") };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({ "error": { "code": "not_found", "message": "job j9 not found" } })
        );
    }
}
