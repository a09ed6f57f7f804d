//! The one mapping from errors to HTTP responses, with Ironic's error body (reference §1.3).
//!
//! Ironic double-encodes: the body is `{"error_message": "<json string>"}` where the string
//! itself is `{"faultcode": "Client"|"Server", "faultstring": …, "debuginfo": null}`.
//! Clients (python-ironicclient, IPA) decode both layers, so the shape must be exact.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use deploy::PublicError;
use thiserror::Error;

/// Every error an API handler can answer with.
#[derive(Debug, Error)]
pub enum ApiError {
    /// A domain error from the store, the state machine or validation.
    #[error(transparent)]
    Public(#[from] PublicError),
    /// Unsupported microversion or a feature used below its version (406).
    #[error("{0}")]
    NotAcceptable(String),
    /// Missing or wrong user credentials (401 with `WWW-Authenticate`).
    #[error("Authentication required")]
    Unauthorized,
    /// The caller may not do this (403), e.g. deleting a protected node.
    #[error("{0}")]
    Forbidden(String),
    /// No route matches the path (404).
    #[error("The resource could not be found.")]
    RouteNotFound,
    /// The route exists but not for this method (405).
    #[error("The method is not allowed for the requested URL.")]
    MethodNotAllowed,
    /// The node's driver does not implement this interface (Ironic's
    /// `UnsupportedDriverExtension`, a 404).
    #[error("{0}")]
    Unsupported(String),
    /// The request body is larger than allowed (413).
    #[error("Request is too large.")]
    PayloadTooLarge,
    /// The client sent too many requests to a rate-limited endpoint (429).
    #[error("Too many requests, please slow down.")]
    TooManyRequests,
    /// The node's BMC failed a management call (Ironic's `IPMIFailure` / `RedfishError`,
    /// a 500 that carries the message: it names the BMC, never credentials).
    #[error("{0}")]
    BmcFailed(String),
}

impl ApiError {
    /// A 400 with a message.
    pub fn bad_request(msg: impl Into<String>) -> Self {
        ApiError::Public(PublicError::invalid(msg))
    }

    /// The HTTP status for this error. Exhaustive on purpose: a new `PublicError` variant
    /// must be mapped here.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Public(p) => match p {
                PublicError::NotFound { .. } => StatusCode::NOT_FOUND,
                PublicError::AlreadyExists { .. } => StatusCode::CONFLICT,
                PublicError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
                PublicError::Conflict { .. } => StatusCode::CONFLICT,
                PublicError::NodeLocked { .. } => StatusCode::CONFLICT,
                PublicError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
                PublicError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::RouteNotFound | ApiError::Unsupported(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BmcFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<ApiError> for tonic::Status {
    /// The gRPC side: `PublicError` goes through the one mapping in `proto::status`; the
    /// API-local variants are mapped here. Exhaustive on purpose.
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Public(p) => {
                if let PublicError::Internal { internal } = &p {
                    tracing::error!(error = %internal, "internal error answering a gRPC call");
                }
                proto::status::to_status(&p)
            }
            ApiError::NotAcceptable(m) => tonic::Status::invalid_argument(m),
            ApiError::Unauthorized => tonic::Status::unauthenticated("Authentication required"),
            ApiError::Forbidden(m) => tonic::Status::permission_denied(m),
            ApiError::RouteNotFound => tonic::Status::not_found("The resource could not be found."),
            ApiError::Unsupported(m) => tonic::Status::unimplemented(m),
            ApiError::MethodNotAllowed => tonic::Status::unimplemented("Method not allowed"),
            ApiError::PayloadTooLarge => tonic::Status::resource_exhausted("Request is too large."),
            ApiError::TooManyRequests => {
                tonic::Status::resource_exhausted("Too many requests, please slow down.")
            }
            ApiError::BmcFailed(m) => tonic::Status::internal(m),
        }
    }
}

/// Ironic's double-encoded error body for a status and message.
pub fn error_body(status: StatusCode, message: &str) -> String {
    let faultcode = if status.is_server_error() { "Server" } else { "Client" };
    let inner = serde_json::json!({
        "faultcode": faultcode,
        "faultstring": message,
        "debuginfo": null,
    });
    serde_json::json!({ "error_message": inner.to_string() }).to_string()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Public(PublicError::Internal { internal }) = &self {
            // The details go to the logs only; the client sees a generic message.
            tracing::error!(error = %internal, "internal error answering a request");
        }
        let mut resp = (status, error_body(status, &self.to_string())).into_response();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if matches!(self, ApiError::Public(PublicError::NodeLocked { .. })) {
            // The lock is held for the length of one operation; clients may retry.
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, ApiError::TooManyRequests) {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, ApiError::Unauthorized) {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Baremetal API\""),
            );
        }
        resp
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::bad_request(
                "Expected a JSON request body (Content-Type: application/json).",
            ),
            // Syntax and data errors: serde's text names the offending field or position.
            other => ApiError::bad_request(format!(
                "Invalid JSON in request body: {}",
                other.body_text()
            )),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request(format!("Invalid query parameters: {}", r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::bad_request(format!("Invalid path: {}", r.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(body: &str) -> serde_json::Value {
        let outer: serde_json::Value = serde_json::from_str(body).unwrap();
        serde_json::from_str(outer["error_message"].as_str().unwrap()).unwrap()
    }

    #[test]
    fn test_error_body_is_double_encoded() {
        let inner = decode(&error_body(StatusCode::BAD_REQUEST, "bad thing"));
        assert_eq!(inner["faultcode"], "Client");
        assert_eq!(inner["faultstring"], "bad thing");
        assert!(inner["debuginfo"].is_null());
        let inner = decode(&error_body(StatusCode::SERVICE_UNAVAILABLE, "down"));
        assert_eq!(inner["faultcode"], "Server");
    }

    #[test]
    fn test_status_mapping() {
        let cases = [
            (PublicError::not_found("Node", "x"), 404),
            (PublicError::AlreadyExists { message: "dup".into() }, 409),
            (PublicError::invalid("x"), 400),
            (PublicError::conflict("x"), 409),
            (PublicError::NodeLocked { node: "n".into(), holder: "h".into() }, 409),
            (PublicError::unavailable("x"), 503),
            (PublicError::internal("secret"), 500),
        ];
        for (e, code) in cases {
            assert_eq!(ApiError::Public(e).status().as_u16(), code);
        }
        assert_eq!(ApiError::NotAcceptable("v".into()).status().as_u16(), 406);
        assert_eq!(ApiError::Unauthorized.status().as_u16(), 401);
    }

    #[test]
    fn test_internal_details_not_in_body() {
        let resp = ApiError::Public(PublicError::internal("password=hunter2")).into_response();
        assert_eq!(resp.status(), 500);
        let msg = ApiError::Public(PublicError::internal("password=hunter2")).to_string();
        assert!(!msg.contains("hunter2"));
    }
}
