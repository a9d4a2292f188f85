//! `AuditEvent`: a read-only type served from the audit ledger (search,
//! read, and the privacy officer's `$alerts`). Creating, changing or deleting
//! an AuditEvent through the API is refused with 405: the ledger is written
//! only by the server, as a side effect of the accesses it records.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use axum::response::Response;
use carelayer_records::{RecordsError, render_alerts, render_audit_event, render_audit_searchset};

use super::{Ctx, form_params};
use crate::error::ApiError;
use crate::response::fhir_json;

/// `GET /fhir/AuditEvent?…`.
pub(crate) async fn search(ctx: Ctx) -> Result<Response, ApiError> {
    let params = ctx.params.clone();
    run(ctx, params).await
}

/// `POST /fhir/AuditEvent/_search`.
pub(crate) async fn search_post(ctx: Ctx) -> Result<Response, ApiError> {
    let mut params = ctx.params.clone();
    params.extend(form_params(&ctx.body)?);
    run(ctx, params).await
}

async fn run(ctx: Ctx, params: Vec<(String, String)>) -> Result<Response, ApiError> {
    let page = ctx
        .state
        .records
        .audit_search(&ctx.caller, &params, ctx.prefer.lenient)
        .await?;
    Ok(fhir_json(
        StatusCode::OK,
        render_audit_searchset(&page, &ctx.base),
    ))
}

/// `GET /fhir/AuditEvent/{seq}`.
pub(crate) async fn read(ctx: Ctx, id: &str) -> Result<Response, ApiError> {
    let row = ctx.state.records.audit_event(&ctx.caller, id).await?;
    Ok(fhir_json(
        StatusCode::OK,
        render_audit_event(&row, &ctx.base),
    ))
}

/// `GET /fhir/AuditEvent/$alerts[?since=instant&threshold=N&window=SECONDS]`:
/// break-glass and unusual-volume alerts as `Flag` resources.
pub(crate) async fn alerts(ctx: Ctx) -> Result<Response, ApiError> {
    let bad = |m: String| ApiError::Records(RecordsError::BadRequest(m));
    let mut since = None;
    let mut threshold = None;
    let mut window = None;
    for (k, v) in &ctx.params {
        match k.as_str() {
            "since" => {
                let (low, _) = carelayer_fhir::search::date_range(v)
                    .ok_or_else(|| bad(format!("since={v}: not a FHIR instant or date")))?;
                since = Some(low);
            }
            "threshold" => {
                threshold = Some(
                    v.parse::<usize>()
                        .map_err(|_| bad(format!("threshold={v}: expected a number")))?,
                );
            }
            "window" => {
                window = Some(Duration::from_secs(v.parse::<u64>().map_err(|_| {
                    bad(format!("window={v}: expected a number of seconds"))
                })?));
            }
            "_format" | "_pretty" => {}
            other => return Err(bad(format!("unknown $alerts parameter '{other}'"))),
        }
    }
    let alerts = ctx
        .state
        .records
        .audit_alerts(&ctx.caller, since, threshold, window)
        .await?;
    Ok(fhir_json(StatusCode::OK, render_alerts(&alerts, &ctx.base)))
}

/// Any write (or other method) on AuditEvent.
pub(crate) fn refuse(method: &Method, path: &str) -> Result<Response, ApiError> {
    Err(ApiError::MethodNotAllowed(format!(
        "{method} is not allowed on /fhir/{path}: AuditEvents are read-only, \
         recorded by the server in its tamper-evident audit ledger"
    )))
}
