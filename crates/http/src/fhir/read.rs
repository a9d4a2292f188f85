//! read and vread.

use axum::http::StatusCode;
use axum::response::Response;
use carelayer_records::ReturnPreference;

use super::Ctx;
use crate::error::ApiError;
use crate::response::version_response;

pub(crate) async fn read(ctx: Ctx, ty: &str, id: &str) -> Result<Response, ApiError> {
    let version = ctx.state.records.read(&ctx.caller, ty, id).await?;
    Ok(version_response(
        StatusCode::OK,
        &version,
        &ctx.base,
        ReturnPreference::Representation,
        false,
    ))
}

pub(crate) async fn vread(ctx: Ctx, ty: &str, id: &str, vid: &str) -> Result<Response, ApiError> {
    let version = ctx.state.records.vread(&ctx.caller, ty, id, vid).await?;
    Ok(version_response(
        StatusCode::OK,
        &version,
        &ctx.base,
        ReturnPreference::Representation,
        false,
    ))
}
