//! The authentication middleware. It verifies the bearer token (required
//! everywhere but the public paths), takes the `X-Break-Glass` reason, and
//! runs the rest of the request
//! with the resulting caller in a task-local, which `caller.rs` reads: the
//! handlers keep asking "who is calling" in one place and never see tokens.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use carelayer_records::Caller;

use super::{AuthError, Authenticator};

tokio::task_local! {
    static CALLER: Caller;
}

/// The caller the middleware authenticated for this request, if it ran.
pub(crate) fn current_caller() -> Option<Caller> {
    CALLER.try_with(Clone::clone).ok()
}

/// Paths anyone may call: the CapabilityStatement, SMART discovery, the
/// JWKS and the token endpoint (which authenticates clients itself).
fn is_public(path: &str) -> bool {
    matches!(
        path.trim_end_matches('/'),
        "" | "/fhir/metadata" | "/oauth/token"
    ) || path.starts_with("/.well-known/")
        || path.starts_with("/fhir/.well-known/")
}

/// The request header stating an emergency reason (break-glass).
pub const BREAK_GLASS_HEADER: &str = "x-break-glass";
/// The response header saying the emergency reason was needed and used.
pub const BREAK_GLASS_USED_HEADER: &str = "x-break-glass-used";

/// Axum middleware: authenticate, then run the request as that caller.
/// Every path but the public ones needs a valid token; a token on a public
/// path is still verified (a bad token is a 401, never ignored).
pub(crate) async fn authenticate(
    State(auth): State<Arc<Authenticator>>,
    request: Request<Body>,
    next: Next,
) -> Response {
    let token = match bearer(&request) {
        Ok(token) => token,
        Err(e) => return e.into_response(),
    };
    let mut caller = match token {
        Some(token) => match auth.verify(&token).await {
            Ok(caller) => caller,
            Err(e) => return e.into_response(),
        },
        None if is_public(request.uri().path()) => return next.run(request).await,
        None => return AuthError::Missing.into_response(),
    };
    if let Some(value) = request.headers().get(BREAK_GLASS_HEADER) {
        let reason = value.to_str().map(str::trim).unwrap_or_default();
        if reason.is_empty() {
            return crate::error::outcome_response(
                axum::http::StatusCode::BAD_REQUEST,
                &[carelayer_records::Issue::error(
                    "required",
                    None,
                    "X-Break-Glass must state the emergency reason (printable ASCII)",
                )],
            );
        }
        caller = caller.with_break_glass(reason);
    }
    let glass = caller.break_glass.clone();
    let mut response = CALLER.scope(caller, next.run(request)).await;
    if glass
        .as_ref()
        .is_some_and(carelayer_records::BreakGlass::was_used)
    {
        response.headers_mut().insert(
            BREAK_GLASS_USED_HEADER,
            axum::http::HeaderValue::from_static("true"),
        );
    }
    response
}

/// The bearer token of `Authorization`, if any.
fn bearer(request: &Request<Body>) -> Result<Option<String>, AuthError> {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| AuthError::invalid("the Authorization header is not ASCII"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| AuthError::invalid("the Authorization header must be 'Bearer <token>'"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::invalid(
            "the Authorization header must be 'Bearer <token>'",
        ));
    }
    Ok(Some(token.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::is_public;

    #[test]
    fn public_paths() {
        for p in [
            "/",
            "/fhir/metadata",
            "/oauth/token",
            "/.well-known/jwks.json",
            "/.well-known/smart-configuration",
            "/fhir/.well-known/smart-configuration",
        ] {
            assert!(is_public(p), "{p}");
        }
        for p in [
            "/fhir/Patient",
            "/fhir",
            "/fhir/metadata/x",
            "/fhir/AuditEvent",
        ] {
            assert!(!is_public(p), "{p}");
        }
    }
}
