//! batch and transaction: `POST [base]` with a Bundle.

use axum::http::StatusCode;
use axum::response::Response;

use super::Ctx;
use crate::error::ApiError;
use crate::response::{self, fhir_json};

pub(crate) async fn process(ctx: Ctx) -> Result<Response, ApiError> {
    response::check_content_type(&ctx.headers, false)?;
    let body = ctx
        .state
        .records
        .process_bundle(&ctx.caller, &ctx.body, &ctx.base, ctx.prefer.return_pref)
        .await?;
    Ok(fhir_json(StatusCode::OK, body))
}
