//! Public SMART/OAuth endpoints: `/.well-known/jwks.json`,
//! `/.well-known/smart-configuration` (also under `/fhir/`), and
//! `POST /oauth/token` (client credentials with a `private_key_jwt`
//! assertion, SMART Backend Services). Token-endpoint errors are OAuth JSON
//! (`{"error": …}`, RFC 6749 §5.2), not OperationOutcomes.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde_json::json;

use super::clients;
use super::issuer::TokenSubject;
use super::{Authenticator, DEFAULT_AUDIENCE};

pub(crate) const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

#[derive(Clone)]
pub(crate) struct RouteState {
    pub auth: Arc<Authenticator>,
    pub base_url: Option<String>,
}

pub(crate) fn router(state: RouteState) -> Router {
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/smart-configuration", get(smart_configuration))
        .route(
            "/fhir/.well-known/smart-configuration",
            get(smart_configuration),
        )
        .route("/oauth/token", post(token))
        .with_state(state)
}

/// `http://host` (no `/fhir`): the configured base or the Host header.
fn origin(state: &RouteState, headers: &HeaderMap) -> String {
    if let Some(base) = &state.base_url {
        let base = base.trim_end_matches('/');
        return base.strip_suffix("/fhir").unwrap_or(base).to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        })
        .unwrap_or("localhost");
    format!("http://{host}")
}

async fn jwks(State(state): State<RouteState>) -> Response {
    let keys = state
        .auth
        .config()
        .builtin
        .as_ref()
        .map(|b| b.jwks())
        .unwrap_or(jsonwebtoken::jwk::JwkSet { keys: Vec::new() });
    Json(keys).into_response()
}

async fn smart_configuration(State(state): State<RouteState>, headers: HeaderMap) -> Response {
    let origin = origin(&state, &headers);
    Json(json!({
        "issuer": super::BUILTIN_ISSUER,
        "jwks_uri": format!("{origin}/.well-known/jwks.json"),
        "token_endpoint": format!("{origin}/oauth/token"),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"],
        "scopes_supported": ["system/*.cruds", "system/*.rs", "user/*.cruds", "patient/*.rs"],
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
    }))
    .into_response()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

async fn token(
    State(state): State<RouteState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let bad =
        |error: &str, description: &str| oauth_error(StatusCode::BAD_REQUEST, error, description);
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    if field("grant_type") != "client_credentials" {
        return bad(
            "unsupported_grant_type",
            "only grant_type=client_credentials is supported",
        );
    }
    if field("client_assertion_type") != ASSERTION_TYPE {
        return bad(
            "invalid_client",
            "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        );
    }
    let assertion = field("client_assertion");
    let config = state.auth.config();
    let (Some(issuer), Some(file)) = (&config.builtin, &config.clients_file) else {
        return bad("invalid_client", "this server has no registered clients");
    };
    // The assertion's iss names the client; the signature check below
    // proves it.
    let Ok(client_id) = super::claims::unverified_issuer(assertion) else {
        return bad("invalid_client", "malformed client assertion");
    };
    let clients = match clients::load(file) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the client registry");
            return oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the client registry cannot be read",
            );
        }
    };
    let Some(client) = clients.iter().find(|c| c.client_id == client_id) else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client");
    };
    let origin = origin(&state, &headers);
    let token_urls = vec![format!("{origin}/oauth/token")];
    let verified = match clients::verify_assertion(client, assertion, &token_urls) {
        Ok(v) => v,
        Err(reason) => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", &reason),
    };
    if !state
        .auth
        .remember_jti(&client.client_id, &verified.jti, verified.exp)
    {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "this client assertion (jti) was already used",
        );
    }
    let Some(granted) = clients::grant(client, form.get("scope").map(String::as_str)) else {
        return bad(
            "invalid_scope",
            "a requested scope is beyond the client's registration",
        );
    };
    let scope = granted.join(" ");
    let ttl = if config.access_token_ttl_secs == 0 {
        300
    } else {
        config.access_token_ttl_secs
    };
    let audience = config
        .audiences
        .first()
        .map_or(DEFAULT_AUDIENCE, String::as_str);
    let subject = TokenSubject::Client {
        client_id: client.client_id.clone(),
        org: client.org.clone(),
    };
    match issuer.mint(&subject, Some(&scope), audience, ttl) {
        Ok(access_token) => {
            let mut response = Json(json!({
                "access_token": access_token,
                "token_type": "bearer",
                "expires_in": ttl,
                "scope": scope,
            }))
            .into_response();
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot sign an access token");
            oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "cannot sign the access token",
            )
        }
    }
}
