//! The FHIR base: one dispatcher for FHIR's URL grammar (R4 http §3.1.0),
//! then a file per interaction.

mod audit;
mod bulk_import;
mod bundle;
mod history;
mod import;

pub(crate) use bulk_import::ImportJobs;
mod metadata;
mod read;
mod search;
mod validate;
mod write;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use carelayer_records::{Caller, RecordsError, parse_query_string};

use crate::AppState;
use crate::error::ApiError;
use crate::response::{self, Prefer};

/// Everything a handler needs about the request.
pub(crate) struct Ctx {
    pub state: AppState,
    pub caller: Caller,
    pub headers: HeaderMap,
    pub params: Vec<(String, String)>,
    pub base: String,
    pub prefer: Prefer,
    pub body: Bytes,
}

pub(crate) async fn root_redirect() -> Redirect {
    Redirect::temporary("/fhir/metadata")
}

pub(crate) async fn not_found(uri: Uri) -> Response {
    ApiError::RouteNotFound(format!(
        "no such endpoint: {}; the FHIR base is /fhir",
        uri.path()
    ))
    .into_response()
}

/// Route a request under `/fhir`.
pub(crate) async fn dispatch(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match route(state, method, uri, headers, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn route(
    state: AppState,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let params = parse_query_string(uri.query().unwrap_or(""));
    let format = params
        .iter()
        .find(|(k, _)| k == "_format")
        .map(|(_, v)| v.as_str());
    response::check_accept(&headers, format)?;
    let body = axum::body::to_bytes(body, state.config.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::PayloadTooLarge(format!(
                "the request body is larger than this server's limit of {} bytes",
                state.config.max_body_bytes
            ))
        })?;
    let path = uri
        .path()
        .strip_prefix("/fhir")
        .unwrap_or("")
        .trim_matches('/')
        .to_owned();
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let ctx = Ctx {
        caller: crate::caller::current(),
        base: response::base_url(&state, &headers),
        prefer: response::prefer(&headers),
        state,
        headers,
        params,
        body,
    };
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let not_allowed = || {
        Err(ApiError::MethodNotAllowed(format!(
            "{method} is not allowed on /fhir/{path}"
        )))
    };
    match (segs.as_slice(), &method) {
        (["AuditEvent"], &Method::GET) => audit::search(ctx).await,
        (["AuditEvent", "_search"], &Method::POST) => audit::search_post(ctx).await,
        (["AuditEvent", "$alerts"], &Method::GET) => audit::alerts(ctx).await,
        (["AuditEvent", id], &Method::GET) if !id.starts_with(['$', '_']) => {
            audit::read(ctx, id).await
        }
        (["AuditEvent", ..], _) if !segs.contains(&"$validate") => audit::refuse(&method, &path),
        ([], &Method::POST) => bundle::process(ctx).await,
        ([], &Method::GET) => search::search(ctx, None).await,
        ([], _) => not_allowed(),
        (["metadata"], &Method::GET) => Ok(metadata::capability_statement(&ctx)),
        (["_history"], &Method::GET) => history::history(ctx, None, None).await,
        (["$import"], &Method::POST) if is_json(&ctx.headers) => bulk_import::kick_off(ctx).await,
        (["$import"], &Method::POST) => import::import(ctx).await,
        (["$import-poll-status", id], &Method::GET) => bulk_import::status(ctx, id).await,
        (["$import-poll-status", id], &Method::DELETE) => bulk_import::cancel(ctx, id).await,
        (["$import-poll-status", id, "errors", n], &Method::GET) => {
            bulk_import::errors(ctx, id, n).await
        }
        (["_search"], &Method::POST) => search::search_post(ctx, None).await,
        ([ty], &Method::GET) if is_type_like(ty) => search::search(ctx, Some(ty)).await,
        ([ty], &Method::POST) if is_type_like(ty) => write::create(ctx, ty).await,
        ([ty], &Method::PUT) if is_type_like(ty) => write::update(ctx, ty, None).await,
        ([ty], &Method::PATCH) if is_type_like(ty) => write::patch(ctx, ty, None).await,
        ([ty], &Method::DELETE) if is_type_like(ty) => write::delete(ctx, ty, None).await,
        ([ty, "_search"], &Method::POST) => search::search_post(ctx, Some(ty)).await,
        ([ty, "_history"], &Method::GET) => history::history(ctx, Some(ty), None).await,
        ([ty, "$validate"], &Method::POST) => validate::validate(ctx, ty).await,
        ([ty, id], &Method::GET) if !id.starts_with(['$', '_']) => read::read(ctx, ty, id).await,
        ([ty, id], &Method::PUT) => write::update(ctx, ty, Some(id)).await,
        ([ty, id], &Method::PATCH) => write::patch(ctx, ty, Some(id)).await,
        ([ty, id], &Method::DELETE) => write::delete(ctx, ty, Some(id)).await,
        ([ty, _, "$validate"], &Method::POST) => validate::validate(ctx, ty).await,
        ([ty, id, "_history"], &Method::GET) => history::history(ctx, Some(ty), Some(id)).await,
        ([ty, id, "_history", vid], &Method::GET) => read::vread(ctx, ty, id, vid).await,
        (["Patient", id, "$everything"], &Method::GET) => search::everything(ctx, id).await,
        ([comp, id, ty], &Method::GET) if is_type_like(comp) && is_type_like(ty) => {
            search::compartment(ctx, comp, id, ty).await
        }
        ([_] | [_, _] | [_, _, _] | [_, _, _, _], _) if is_known_shape(&segs) => not_allowed(),
        _ => Err(ApiError::RouteNotFound(format!(
            "/fhir/{path} is not a FHIR interaction this server knows"
        ))),
    }
}

/// A JSON body (`application/fhir+json` or `application/json`).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let media = ct.split(';').next().unwrap_or("").trim();
            media.eq_ignore_ascii_case("application/fhir+json")
                || media.eq_ignore_ascii_case("application/json")
        })
}

/// Resource types start with an upper-case letter; anything else under the
/// base is an unknown endpoint, not an unknown type.
fn is_type_like(segment: &str) -> bool {
    segment
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_uppercase())
}

fn is_known_shape(segments: &[&str]) -> bool {
    segments
        .first()
        .is_some_and(|s| is_type_like(s) || *s == "metadata" || *s == "_history")
}

/// Parse the body as UTF-8 form parameters (`_search` via POST).
pub(crate) fn form_params(body: &Bytes) -> Result<Vec<(String, String)>, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| {
        ApiError::Records(RecordsError::BadRequest(
            "the _search body must be application/x-www-form-urlencoded text".into(),
        ))
    })?;
    Ok(parse_query_string(text))
}
