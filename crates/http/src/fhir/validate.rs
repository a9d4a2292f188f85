//! `$validate`: answer as a write would, without storing.

use axum::http::StatusCode;
use axum::response::Response;
use carelayer_records::{Issue, RecordsError, Severity, render::operation_outcome};
use serde_json::Value;

use super::Ctx;
use crate::error::{ApiError, outcome_response};
use crate::response;

pub(crate) async fn validate(ctx: Ctx, ty: &str) -> Result<Response, ApiError> {
    response::check_content_type(&ctx.headers, false)?;
    // The body is the resource, or a Parameters with a `resource` parameter.
    let body = unwrap_parameters(&ctx.body)?;
    match ctx.state.records.validate(&ctx.caller, Some(ty), &body) {
        Ok(warnings) => {
            let mut issues = warnings;
            issues.push(Issue {
                severity: Severity::Information,
                code: "informational".into(),
                location: None,
                diagnostics: "the resource is valid".into(),
            });
            let body = serde_json::to_vec(&operation_outcome(&issues)).unwrap_or_default();
            Ok(response::fhir_json(StatusCode::OK, body))
        }
        Err(RecordsError::Invalid(issues)) => {
            Ok(outcome_response(StatusCode::BAD_REQUEST, &issues))
        }
        Err(RecordsError::BusinessRule(issues)) => {
            Ok(outcome_response(StatusCode::UNPROCESSABLE_ENTITY, &issues))
        }
        Err(e) => Err(e.into()),
    }
}

fn unwrap_parameters(body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Ok(body.to_vec());
    };
    if value.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Ok(body.to_vec());
    }
    let resource = value
        .get("parameter")
        .and_then(Value::as_array)
        .and_then(|ps| {
            ps.iter()
                .find(|p| p.get("name").and_then(Value::as_str) == Some("resource"))
        })
        .and_then(|p| p.get("resource"));
    match resource {
        Some(r) => Ok(serde_json::to_vec(r).unwrap_or_default()),
        None => Ok(body.to_vec()),
    }
}
