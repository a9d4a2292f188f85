//! history: instance, type and system.

use axum::http::StatusCode;
use axum::response::Response;
use carelayer_records::{HistoryRequest, RecordsError, clock, render_history};

use super::Ctx;
use crate::error::ApiError;
use crate::response::fhir_json;

pub(crate) async fn history(
    ctx: Ctx,
    ty: Option<&str>,
    id: Option<&str>,
) -> Result<Response, ApiError> {
    let mut request = HistoryRequest {
        resource_type: ty.map(str::to_owned),
        id: id.map(str::to_owned),
        ..HistoryRequest::default()
    };
    let bad = |m: String| ApiError::Records(RecordsError::BadRequest(m));
    for (key, value) in &ctx.params {
        match key.as_str() {
            "_since" => request.since = Some(clock::parse_instant(value).map_err(bad)?),
            "_count" => {
                request.count = Some(
                    value
                        .parse()
                        .map_err(|_| bad(format!("_count '{value}' is not a whole number")))?,
                );
            }
            "_page" => {
                request.before_seq = Some(value.parse().map_err(|_| {
                    bad(format!(
                        "_page '{value}' is not a paging token of this server"
                    ))
                })?);
            }
            "_format" | "_pretty" => {}
            other => {
                if !ctx.prefer.lenient {
                    return Err(bad(format!(
                        "'{other}' is not a history parameter (use _since, _count)"
                    )));
                }
            }
        }
    }
    let page = ctx.state.records.history(&ctx.caller, &request).await?;
    let path = match (ty, id) {
        (None, _) => "_history".to_owned(),
        (Some(t), None) => format!("{t}/_history"),
        (Some(t), Some(i)) => format!("{t}/{i}/_history"),
    };
    Ok(fhir_json(
        StatusCode::OK,
        render_history(&page, &ctx.base, &path, &ctx.params),
    ))
}
