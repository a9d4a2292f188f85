//! search (GET and POST `_search`).

use axum::http::StatusCode;
use axum::response::Response;
use carelayer_records::{SearchRequest, render_searchset};

use super::{Ctx, form_params};
use crate::error::ApiError;
use crate::response::fhir_json;

pub(crate) async fn search(ctx: Ctx, ty: Option<&str>) -> Result<Response, ApiError> {
    let params = ctx.params.clone();
    run(ctx, ty, params).await
}

/// `POST [base]/[type]/_search`: parameters in the form body (and the URL).
pub(crate) async fn search_post(ctx: Ctx, ty: Option<&str>) -> Result<Response, ApiError> {
    let mut params = ctx.params.clone();
    params.extend(form_params(&ctx.body)?);
    run(ctx, ty, params).await
}

async fn run(
    ctx: Ctx,
    ty: Option<&str>,
    params: Vec<(String, String)>,
) -> Result<Response, ApiError> {
    let request = SearchRequest {
        resource_type: ty.map(str::to_owned),
        params,
        lenient: ctx.prefer.lenient,
    };
    let outcome = ctx.state.records.search(&ctx.caller, &request).await?;
    Ok(fhir_json(
        StatusCode::OK,
        render_searchset(&outcome, &request, &ctx.base),
    ))
}

/// `GET [base]/Patient/{id}/{type}?…`: a search inside the patient's compartment.
pub(crate) async fn compartment(
    ctx: Ctx,
    compartment: &str,
    id: &str,
    ty: &str,
) -> Result<Response, ApiError> {
    let request = SearchRequest {
        resource_type: Some(ty.to_owned()),
        params: ctx.params.clone(),
        lenient: ctx.prefer.lenient,
    };
    let outcome = ctx
        .state
        .records
        .search_compartment(&ctx.caller, compartment, id, &request)
        .await?;
    Ok(fhir_json(
        StatusCode::OK,
        render_searchset(&outcome, &request, &ctx.base),
    ))
}

/// `GET [base]/Patient/{id}/$everything` (`_since`, `_type`, `_count`).
pub(crate) async fn everything(ctx: Ctx, id: &str) -> Result<Response, ApiError> {
    let request = SearchRequest {
        resource_type: Some("Patient".into()),
        params: ctx.params.clone(),
        lenient: ctx.prefer.lenient,
    };
    let outcome = ctx
        .state
        .records
        .everything(&ctx.caller, id, &ctx.params, ctx.prefer.lenient)
        .await?;
    Ok(fhir_json(
        StatusCode::OK,
        render_searchset(&outcome, &request, &ctx.base),
    ))
}
