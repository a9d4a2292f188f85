//! The authentication middleware. It verifies the bearer token (if any,
//! or always when tokens are required) and runs the rest of the request
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

/// Axum middleware: authenticate, then run the request as that caller.
pub(crate) async fn authenticate(
    State(auth): State<Arc<Authenticator>>,
    request: Request<Body>,
    next: Next,
) -> Response {
    let token = match bearer(&request) {
        Ok(token) => token,
        Err(e) => return e.into_response(),
    };
    let caller = match token {
        Some(token) => match auth.verify(&token).await {
            Ok(caller) => caller,
            Err(e) => return e.into_response(),
        },
        None if auth.config().require_tokens && !is_public(request.uri().path()) => {
            return AuthError::Missing.into_response();
        }
        None => return next.run(request).await,
    };
    CALLER.scope(caller, next.run(request)).await
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
