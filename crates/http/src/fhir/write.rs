//! create, update, patch and delete (plain and conditional).

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use carelayer_records::{Conditional, RecordsError, WriteOutcome, WriteStatus};

use super::Ctx;
use crate::error::ApiError;
use crate::response::{self, version_response};

/// The query string of a conditional request (everything but result params).
fn conditional_query(ctx: &Ctx) -> Result<String, ApiError> {
    let kept: Vec<String> = ctx
        .params
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "_format" | "_pretty"))
        .map(|(k, v)| {
            format!(
                "{}={}",
                carelayer_records::encode_query_component(k),
                carelayer_records::encode_query_component(v)
            )
        })
        .collect();
    if kept.is_empty() {
        return Err(ApiError::Records(RecordsError::BadRequest(
            "a conditional operation needs search parameters in the URL".into(),
        )));
    }
    Ok(kept.join("&"))
}

fn target(ctx: &Ctx, id: Option<&str>) -> Result<Conditional, ApiError> {
    Ok(match id {
        Some(id) => Conditional::Id(id.to_owned()),
        None => Conditional::Query(conditional_query(ctx)?),
    })
}

fn outcome_response(ctx: &Ctx, outcome: &WriteOutcome) -> Response {
    let status = match outcome.status {
        WriteStatus::Created => StatusCode::CREATED,
        WriteStatus::Updated | WriteStatus::Existing => StatusCode::OK,
        WriteStatus::Deleted | WriteStatus::NothingToDelete => StatusCode::NO_CONTENT,
    };
    match &outcome.version {
        Some(v) if !v.deleted => version_response(
            status,
            v,
            &ctx.base,
            ctx.prefer.return_pref,
            matches!(
                outcome.status,
                WriteStatus::Created | WriteStatus::Updated | WriteStatus::Existing
            ),
        ),
        Some(v) => {
            let mut r = status.into_response();
            if let Ok(tag) = carelayer_records::render::etag(v.version).parse() {
                r.headers_mut().insert(header::ETAG, tag);
            }
            r
        }
        None => status.into_response(),
    }
}

pub(crate) async fn create(ctx: Ctx, ty: &str) -> Result<Response, ApiError> {
    response::check_content_type(&ctx.headers, false)?;
    let if_none_exist = ctx
        .headers
        .get("if-none-exist")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let outcome = ctx
        .state
        .records
        .create(&ctx.caller, ty, &ctx.body, if_none_exist.as_deref())
        .await?;
    Ok(outcome_response(&ctx, &outcome))
}

pub(crate) async fn update(ctx: Ctx, ty: &str, id: Option<&str>) -> Result<Response, ApiError> {
    response::check_content_type(&ctx.headers, false)?;
    let target = target(&ctx, id)?;
    let if_match = response::if_match(&ctx.headers)?;
    let outcome = ctx
        .state
        .records
        .update(&ctx.caller, ty, target, &ctx.body, if_match)
        .await?;
    Ok(outcome_response(&ctx, &outcome))
}

pub(crate) async fn patch(ctx: Ctx, ty: &str, id: Option<&str>) -> Result<Response, ApiError> {
    response::check_content_type(&ctx.headers, true)?;
    let target = target(&ctx, id)?;
    let if_match = response::if_match(&ctx.headers)?;
    let outcome = ctx
        .state
        .records
        .patch(&ctx.caller, ty, target, &ctx.body, if_match)
        .await?;
    Ok(outcome_response(&ctx, &outcome))
}

pub(crate) async fn delete(ctx: Ctx, ty: &str, id: Option<&str>) -> Result<Response, ApiError> {
    let target = target(&ctx, id)?;
    let if_match = response::if_match(&ctx.headers)?;
    let outcome = ctx
        .state
        .records
        .delete(&ctx.caller, ty, target, if_match)
        .await?;
    Ok(outcome_response(&ctx, &outcome))
}
