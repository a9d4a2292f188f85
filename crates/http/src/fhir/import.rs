//! `$import` at the system level: `POST [base]/$import` with an NDJSON body
//! (`application/fhir+ndjson`), one resource per line, each with its own
//! id. Imported as one atomic write set (validated, indexed, audited as one
//! `import` event per patient); the answer is an OperationOutcome with one
//! `information` issue (`created N, updated N, unchanged N, rejected N`) and
//! one `error` issue per rejected line (location `line N`). Rejected lines
//! do not stop the others. `?skip-unchanged=true` skips resources already
//! stored with the same content (safe re-sends after an interruption).
//!
//! With a JSON `Parameters` body the same endpoint is the asynchronous bulk
//! import kick-off (see `bulk_import`).

use axum::http::{StatusCode, header};
use axum::response::Response;
use carelayer_records::render::operation_outcome;
use carelayer_records::{ImportOptions, Issue, RecordsError, Severity};
use serde_json::Value;

use super::Ctx;
use crate::error::ApiError;
use crate::response;

const NDJSON_TYPES: &[&str] = &[
    "application/fhir+ndjson",
    "application/ndjson",
    "application/x-ndjson",
];

pub(crate) async fn import(ctx: Ctx) -> Result<Response, ApiError> {
    let media = ctx
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if !NDJSON_TYPES.contains(&media.as_str()) {
        return Err(ApiError::UnsupportedMediaType(
            "$import takes NDJSON (Content-Type: application/fhir+ndjson), one resource per line"
                .into(),
        ));
    }
    let text = std::str::from_utf8(&ctx.body).map_err(|_| {
        ApiError::Records(RecordsError::BadRequest(
            "the NDJSON body is not UTF-8".into(),
        ))
    })?;
    let skip_unchanged = ctx
        .params
        .iter()
        .any(|(k, v)| k == "skip-unchanged" && v == "true");

    let mut issues = Vec::new();
    let mut lines = Vec::new();
    let mut resources = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(v) => {
                resources.push(v);
                lines.push(i + 1);
            }
            Err(e) => issues.push(rejected(i + 1, format!("not valid JSON: {e}"))),
        }
    }
    let parse_failures = issues.len();
    let report = ctx
        .state
        .records
        .import_with(&ctx.caller, resources, ImportOptions { skip_unchanged })
        .await?;
    for r in &report.rejected {
        let line = lines.get(r.index).copied().unwrap_or(0);
        let reason = match &r.reference {
            Some(reference) => format!("{reference}: {}", r.reason),
            None => r.reason.clone(),
        };
        issues.push(rejected(line, reason));
    }
    issues.sort_by_key(|i| {
        i.location
            .as_deref()
            .and_then(|l| l.strip_prefix("line "))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0)
    });
    issues.insert(
        0,
        Issue {
            severity: Severity::Information,
            code: "informational".into(),
            location: None,
            diagnostics: format!(
                "created {}, updated {}, unchanged {}, rejected {}",
                report.created,
                report.updated,
                report.unchanged,
                report.rejected.len() + parse_failures
            ),
        },
    );
    let body = serde_json::to_vec(&operation_outcome(&issues)).unwrap_or_default();
    Ok(response::fhir_json(StatusCode::OK, body))
}

fn rejected(line: usize, diagnostics: String) -> Issue {
    Issue {
        severity: Severity::Error,
        code: "invalid".into(),
        location: Some(format!("line {line}")),
        diagnostics,
    }
}
