//! carelayer over HTTP: the FHIR R4 REST API on axum.
//!
//! Map:
//! - [`app`] builds the router from a [`Records`] service and [`HttpConfig`];
//!   [`serve`] runs it on an injected listener until a shutdown future fires
//!   (tests run the real app on port 0).
//! - `fhir`: the FHIR base `/fhir`: one dispatcher for FHIR's URL grammar,
//!   with a file per interaction (read, write, history, search, bundle,
//!   metadata, validate).
//! - [`auth`]: bearer-token authentication (JWKS-trusted issuers, the
//!   built-in issuer, SMART Backend Services `/oauth/token`), the public
//!   `/.well-known/*` endpoints, and the middleware that turns a token into
//!   the caller.
//! - `caller`: who is calling: the authenticated principal, or the loopback
//!   operator when tokens are not required and none was sent.
//! - [`error`]: the one table from errors to HTTP status and FHIR issue
//!   code; 5xx causes are logged, never sent.
//! - `response`: FHIR response helpers (content type, ETag, `Prefer`).
//!
//! This crate never sees the store: everything goes through `records`.

pub mod auth;
mod caller;
pub mod error;
mod fhir;
mod response;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use carelayer_records::Records;
use tokio::net::TcpListener;

/// HTTP settings.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes; larger bodies get 413.
    pub max_body_bytes: usize,
    /// The public FHIR base URL (`https://host/fhir`). When absent it is
    /// derived from each request's `Host` header.
    pub base_url: Option<String>,
    /// Authentication: trusted issuers and the built-in issuer (every
    /// non-public request needs a token).
    pub auth: auth::AuthConfig,
    /// URL prefixes a bulk `$import` kick-off may name as inputs (the
    /// server fetches them; empty: none).
    pub import_sources: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024 * 1024,
            base_url: None,
            auth: auth::AuthConfig::default(),
            import_sources: Vec::new(),
        }
    }
}

/// Shared state of every handler.
#[derive(Clone)]
pub(crate) struct AppState {
    pub records: Arc<Records>,
    pub config: Arc<HttpConfig>,
    /// Bulk `$import` jobs (see `fhir/bulk_import.rs`).
    pub import_jobs: Arc<fhir::ImportJobs>,
}

/// The application router.
pub fn app(records: Arc<Records>, config: HttpConfig) -> Router {
    let authenticator = Arc::new(auth::Authenticator::new(
        config.auth.clone(),
        config.base_url.as_deref(),
    ));
    let auth_routes = auth::routes::router(auth::routes::RouteState {
        auth: Arc::clone(&authenticator),
        base_url: config.base_url.clone(),
    });
    let state = AppState {
        records,
        config: Arc::new(config),
        import_jobs: Arc::default(),
    };
    let fhir = Router::new()
        .route("/", axum::routing::get(fhir::root_redirect))
        .route("/fhir", axum::routing::any(fhir::dispatch))
        .route("/fhir/", axum::routing::any(fhir::dispatch))
        .route("/fhir/{*rest}", axum::routing::any(fhir::dispatch))
        .fallback(fhir::not_found)
        .with_state(state);
    fhir.merge(auth_routes)
        .layer(axum::middleware::from_fn_with_state(
            authenticator,
            auth::authenticate,
        ))
}

/// Serve `app` on `listener` until `shutdown` completes, then finish the
/// requests in flight.
///
/// # Errors
/// I/O errors from the listener.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
