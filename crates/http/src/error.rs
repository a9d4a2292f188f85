//! Errors → HTTP responses. The one table:
//!
//! | error                                   | status | issue code        |
//! |-----------------------------------------|--------|-------------------|
//! | malformed request / JSON / parameters   | 400    | invalid           |
//! | resource invalid against R4 definitions | 400    | (per issue)       |
//! | business rule (UK identifiers)          | 422    | business-rule     |
//! | policy refused a write                  | 403    | forbidden         |
//! | unknown type, id, route; withheld       | 404    | not-found         |
//! | method not allowed on the URL           | 405    | not-supported     |
//! | `Accept`/`_format` not JSON             | 406    | not-supported     |
//! | concurrent changes exhausted retries    | 409    | conflict          |
//! | deleted                                 | 410    | deleted           |
//! | stale `If-Match`, conditional ≥2 matches| 412    | conflict / multiple-matches |
//! | body or Bundle over the limit           | 413    | too-costly        |
//! | body not JSON (`Content-Type`)          | 415    | not-supported     |
//! | feature not implemented                 | 501    | not-supported     |
//! | store unavailable (+ `Retry-After: 5`)  | 503    | transient         |
//! | anything else                           | 500    | exception         |
//!
//! Error types by layer: `StoreError` (store) → `RecordsError` (records) →
//! [`ApiError`] (here). 5xx causes are logged here and never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use carelayer_records::{Issue, RecordsError, render::operation_outcome, status_of};

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Records(#[from] RecordsError),
    #[error("{0}")]
    RouteNotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Records(e) => {
                StatusCode::from_u16(status_of(e)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            Self::RouteNotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    fn issues(&self) -> Vec<Issue> {
        match self {
            Self::Records(e) => e.issues(),
            Self::RouteNotFound(m) => vec![Issue::error("not-found", None, m.clone())],
            Self::MethodNotAllowed(m) | Self::NotAcceptable(m) | Self::UnsupportedMediaType(m) => {
                vec![Issue::error("not-supported", None, m.clone())]
            }
            Self::PayloadTooLarge(m) => vec![Issue::error("too-costly", None, m.clone())],
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, debug = ?self, "request failed");
        }
        outcome_response(status, &self.issues())
    }
}

/// An OperationOutcome response.
pub(crate) fn outcome_response(status: StatusCode, issues: &[Issue]) -> Response {
    let body = serde_json::to_vec(&operation_outcome(issues)).unwrap_or_default();
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::response::FHIR_JSON),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        // The store is down or not answering: tell clients when to try
        // again rather than have them retry at once, all together.
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECONDS),
        );
    }
    response
}

/// `Retry-After` of a 503: a failover or restart of the store takes
/// seconds, and the store's own deadlines answer within about 13 s.
pub(crate) const RETRY_AFTER_SECONDS: &str = "5";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_503_carries_retry_after() {
        let unavailable = outcome_response(StatusCode::SERVICE_UNAVAILABLE, &[]);
        assert_eq!(
            unavailable.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from_static(RETRY_AFTER_SECONDS))
        );
        let failed = outcome_response(StatusCode::INTERNAL_SERVER_ERROR, &[]);
        assert!(failed.headers().get(header::RETRY_AFTER).is_none());
    }
}
