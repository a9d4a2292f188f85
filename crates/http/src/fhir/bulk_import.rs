//! The FHIR bulk-import pattern (`$import` kick-off, status polling), for
//! systems that publish NDJSON files at URLs.
//!
//! - `POST [base]/$import` with `Prefer: respond-async` and a `Parameters`
//!   body: `inputFormat` (`application/fhir+ndjson`), and one `input` per
//!   file with parts `type` (optional: every line must then be of it) and
//!   `url`. The server answers `202 Accepted` with `Content-Location` of the
//!   job's status.
//! - `GET [base]/$import-poll-status/{job}`: `202` with `X-Progress` while it
//!   runs; then `200` with a manifest: `output` (per input: resources
//!   created, updated, unchanged) and `error` (per input with rejected lines:
//!   the URL of an NDJSON of OperationOutcomes, one per rejected line, at
//!   `…/{job}/errors`).
//! - `DELETE` on the status URL cancels the job after its current batch.
//!
//! Each batch of lines is imported like `$import` with a body (validated,
//! indexed, audited per patient, under the kick-off caller's policy) and
//! committed on its own, so what was imported stays imported if the job is
//! cancelled or a later input fails. Only the caller who started a job sees
//! it. The server fetches only URLs under the prefixes the operator allowed
//! (`serve --import-source`): fetching arbitrary URLs on a client's behalf
//! would let it reach anything the server can (SSRF). Job status lives in
//! memory: after a restart a client re-runs the job with
//! `skip-unchanged` semantics (every job skips resources stored unchanged).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use carelayer_policy::Principal;
use carelayer_records::render::operation_outcome;
use carelayer_records::{Caller, ImportOptions, Issue, Records, RecordsError, Severity};
use serde_json::{Value, json};

use super::Ctx;
use crate::error::ApiError;

/// Lines imported per atomic batch.
const BATCH_LINES: usize = 1_000;

/// Jobs by id.
#[derive(Default)]
pub(crate) struct ImportJobs {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
}

struct Job {
    owner: Principal,
    request: String,
    transaction_time: String,
    cancelled: AtomicBool,
    state: Mutex<JobState>,
}

#[derive(Default)]
struct JobState {
    done: bool,
    /// Inputs finished so far and lines read in the current one.
    inputs_done: usize,
    inputs: usize,
    lines_read: usize,
    outputs: Vec<Value>,
    /// Per input URL: OperationOutcomes of its rejected lines.
    errors: Vec<(String, Vec<Value>)>,
}

/// One input file.
struct Input {
    resource_type: Option<String>,
    url: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::Records(RecordsError::BadRequest(msg.into()))
}

/// `POST [base]/$import` with a `Parameters` body.
pub(crate) async fn kick_off(ctx: Ctx) -> Result<Response, ApiError> {
    let asks_async = ctx
        .headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split([',', ';']).any(|p| p.trim() == "respond-async"));
    if !asks_async {
        return Err(bad(
            "a bulk $import with a Parameters body runs asynchronously: send Prefer: respond-async",
        ));
    }
    let params: Value = serde_json::from_slice(&ctx.body)
        .map_err(|e| bad(format!("the $import body is not JSON: {e}")))?;
    if params.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(bad(
            "the $import kick-off body must be a Parameters resource",
        ));
    }
    let inputs = parse_inputs(&params)?;
    let allowed = &ctx.state.config.import_sources;
    for input in &inputs {
        if !allowed.iter().any(|p| input.url.starts_with(p.as_str())) {
            return Err(bad(if allowed.is_empty() {
                format!(
                    "input {} cannot be fetched: this server imports from no URLs (the operator allows sources with serve --import-source URL_PREFIX)",
                    input.url
                )
            } else {
                format!(
                    "input {} is not under an allowed import source ({})",
                    input.url,
                    allowed.join(", ")
                )
            }));
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    let job = Arc::new(Job {
        owner: ctx.caller.principal.clone(),
        request: format!("{}/$import", ctx.base),
        transaction_time: carelayer_records::clock::format_instant(
            carelayer_records::clock::now_micros(),
        ),
        cancelled: AtomicBool::new(false),
        state: Mutex::new(JobState {
            inputs: inputs.len(),
            ..JobState::default()
        }),
    });
    lock(&ctx.state.import_jobs.jobs).insert(id.clone(), Arc::clone(&job));
    let records = Arc::clone(&ctx.state.records);
    let caller = ctx.caller.clone();
    tokio::spawn(run(records, caller, inputs, job));
    let status_url = format!("{}/$import-poll-status/{id}", ctx.base);
    let mut response = StatusCode::ACCEPTED.into_response();
    if let Ok(v) = HeaderValue::from_str(&status_url) {
        response.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    Ok(response)
}

fn parse_inputs(params: &Value) -> Result<Vec<Input>, ApiError> {
    let mut inputs = Vec::new();
    for p in params
        .get("parameter")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match p.get("name").and_then(Value::as_str) {
            Some("inputFormat") => {
                let format = p
                    .get("valueCode")
                    .or_else(|| p.get("valueString"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if format != "application/fhir+ndjson" {
                    return Err(bad(format!(
                        "inputFormat '{format}' is not supported: use application/fhir+ndjson"
                    )));
                }
            }
            Some("input") => {
                let part = |name: &str| {
                    p.get("part")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .find(|x| x.get("name").and_then(Value::as_str) == Some(name))
                };
                let url = part("url")
                    .and_then(|x| {
                        x.get("valueUrl")
                            .or_else(|| x.get("valueUri"))
                            .and_then(Value::as_str)
                    })
                    .ok_or_else(|| bad("every input needs a url part (valueUrl)"))?;
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(bad(format!("input url '{url}' must be http(s)")));
                }
                let resource_type = part("type")
                    .and_then(|x| {
                        x.get("valueCode")
                            .or_else(|| x.get("valueString"))
                            .and_then(Value::as_str)
                    })
                    .map(str::to_owned);
                inputs.push(Input {
                    resource_type,
                    url: url.to_owned(),
                });
            }
            _ => {}
        }
    }
    if inputs.is_empty() {
        return Err(bad(
            "the $import Parameters name no input (name = input, with a url part)",
        ));
    }
    Ok(inputs)
}

async fn run(records: Arc<Records>, caller: Caller, inputs: Vec<Input>, job: Arc<Job>) {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3600))
        .build()
        .unwrap_or_default();
    for (n, input) in inputs.iter().enumerate() {
        if job.cancelled.load(Ordering::Acquire) {
            break;
        }
        let (counts, mut rejected) = import_one(&records, &caller, &client, input, &job).await;
        rejected.sort_by_key(|(line, _)| *line);
        let rejected: Vec<Value> = rejected.into_iter().map(|(_, o)| o).collect();
        let mut state = lock(&job.state);
        state.inputs_done = n + 1;
        state.lines_read = 0;
        state.outputs.push(json!({
            "type": input.resource_type.clone().unwrap_or_else(|| "Resource".into()),
            "inputUrl": input.url,
            "count": counts.0 + counts.1 + counts.2,
            "extension": [
                {"url": "urn:carelayer:import:created", "valueInteger": counts.0},
                {"url": "urn:carelayer:import:updated", "valueInteger": counts.1},
                {"url": "urn:carelayer:import:unchanged", "valueInteger": counts.2}
            ]
        }));
        if !rejected.is_empty() {
            state.errors.push((input.url.clone(), rejected));
        }
    }
    lock(&job.state).done = true;
}

/// Rejections by line number (0: the input as a whole).
type Rejected = Vec<(usize, Value)>;

/// Import one input; returns (created, updated, unchanged) and an
/// OperationOutcome per rejected line (or one for a failed fetch).
async fn import_one(
    records: &Records,
    caller: &Caller,
    client: &reqwest::Client,
    input: &Input,
    job: &Job,
) -> ((usize, usize, usize), Rejected) {
    let mut counts = (0, 0, 0);
    let mut rejected = Vec::new();
    let fail = |msg: String| {
        (
            0,
            operation_outcome(&[Issue {
                severity: Severity::Error,
                code: "exception".into(),
                location: None,
                diagnostics: msg,
            }]),
        )
    };
    let mut response = match client.get(&input.url).send().await {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            rejected.push(fail(format!("GET {} answered {}", input.url, r.status())));
            return (counts, rejected);
        }
        Err(e) => {
            rejected.push(fail(format!("cannot fetch {}: {e}", input.url)));
            return (counts, rejected);
        }
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut batch: Vec<(usize, Value)> = Vec::new();
    let mut line_no = 0usize;
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                let (_, outcome) = fail(format!(
                    "reading {} failed after line {line_no}: {e}",
                    input.url
                ));
                rejected.push((line_no + 1, outcome));
                break;
            }
        };
        pending.extend_from_slice(&chunk);
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            line_no += 1;
            take_line(&line, line_no, input, &mut batch, &mut rejected);
            if batch.len() >= BATCH_LINES {
                if job.cancelled.load(Ordering::Acquire) {
                    return (counts, rejected);
                }
                flush(records, caller, &mut batch, &mut counts, &mut rejected).await;
                lock(&job.state).lines_read = line_no;
            }
        }
    }
    if !pending.is_empty() {
        line_no += 1;
        let line = std::mem::take(&mut pending);
        take_line(&line, line_no, input, &mut batch, &mut rejected);
    }
    flush(records, caller, &mut batch, &mut counts, &mut rejected).await;
    (counts, rejected)
}

fn take_line(
    line: &[u8],
    line_no: usize,
    input: &Input,
    batch: &mut Vec<(usize, Value)>,
    rejected: &mut Rejected,
) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v) => {
            let ty = v.get("resourceType").and_then(Value::as_str);
            if let Some(want) = &input.resource_type
                && ty != Some(want.as_str())
            {
                rejected.push((
                    line_no,
                    line_outcome(
                        line_no,
                        &format!(
                            "resourceType {} in an input of type {want}",
                            ty.unwrap_or("(none)")
                        ),
                    ),
                ));
                return;
            }
            batch.push((line_no, v));
        }
        Err(e) => rejected.push((
            line_no,
            line_outcome(line_no, &format!("not valid JSON: {e}")),
        )),
    }
}

async fn flush(
    records: &Records,
    caller: &Caller,
    batch: &mut Vec<(usize, Value)>,
    counts: &mut (usize, usize, usize),
    rejected: &mut Rejected,
) {
    if batch.is_empty() {
        return;
    }
    let (lines, resources): (Vec<usize>, Vec<Value>) = std::mem::take(batch).into_iter().unzip();
    match records
        .import_with(
            caller,
            resources,
            ImportOptions {
                skip_unchanged: true,
            },
        )
        .await
    {
        Ok(report) => {
            counts.0 += report.created;
            counts.1 += report.updated;
            counts.2 += report.unchanged;
            for r in &report.rejected {
                let line = lines.get(r.index).copied().unwrap_or(0);
                let reason = match &r.reference {
                    Some(reference) => format!("{reference}: {}", r.reason),
                    None => r.reason.clone(),
                };
                rejected.push((line, line_outcome(line, &reason)));
            }
        }
        Err(e) => {
            // The whole batch failed (e.g. the store is down): name its lines.
            let first = lines.first().copied().unwrap_or(0);
            let last = lines.last().copied().unwrap_or(0);
            rejected.push((
                first,
                operation_outcome(&[Issue {
                    severity: Severity::Error,
                    code: "exception".into(),
                    location: Some(format!("lines {first}-{last}")),
                    diagnostics: format!("batch not imported: {e}"),
                }]),
            ));
        }
    }
}

fn line_outcome(line: usize, reason: &str) -> Value {
    operation_outcome(&[Issue {
        severity: Severity::Error,
        code: "invalid".into(),
        location: Some(format!("line {line}")),
        diagnostics: reason.to_owned(),
    }])
}

/// The job, if `id` names one the caller started (others look absent).
fn find(ctx: &Ctx, id: &str) -> Result<Arc<Job>, ApiError> {
    lock(&ctx.state.import_jobs.jobs)
        .get(id)
        .filter(|j| j.owner == ctx.caller.principal)
        .cloned()
        .ok_or_else(|| ApiError::Records(RecordsError::NotFound(format!("import job {id}"))))
}

/// `GET [base]/$import-poll-status/{id}`.
pub(crate) async fn status(ctx: Ctx, id: &str) -> Result<Response, ApiError> {
    let job = find(&ctx, id)?;
    let state = lock(&job.state);
    if !state.done {
        let progress = format!(
            "{} of {} inputs done; {} lines read of the current one",
            state.inputs_done, state.inputs, state.lines_read
        );
        let mut response = StatusCode::ACCEPTED.into_response();
        if let Ok(v) = HeaderValue::from_str(&progress) {
            response.headers_mut().insert("x-progress", v);
        }
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Ok(response);
    }
    let errors: Vec<Value> = state
        .errors
        .iter()
        .enumerate()
        .map(|(i, (url, outcomes))| {
            json!({"type": "OperationOutcome", "inputUrl": url, "count": outcomes.len(),
                "url": format!("{}/$import-poll-status/{id}/errors/{i}", ctx.base)})
        })
        .collect();
    let manifest = json!({
        "transactionTime": job.transaction_time,
        "request": job.request,
        "requiresAccessToken": true,
        "output": state.outputs,
        "error": errors,
    });
    let mut response = (
        StatusCode::OK,
        serde_json::to_vec(&manifest).unwrap_or_default(),
    )
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// `GET [base]/$import-poll-status/{id}/errors/{n}`: NDJSON of the
/// OperationOutcomes of one input's rejected lines.
pub(crate) async fn errors(ctx: Ctx, id: &str, n: &str) -> Result<Response, ApiError> {
    let job = find(&ctx, id)?;
    let state = lock(&job.state);
    let outcomes = n
        .parse::<usize>()
        .ok()
        .and_then(|i| state.errors.get(i))
        .ok_or_else(|| {
            ApiError::Records(RecordsError::NotFound(format!(
                "import job {id} error file {n}"
            )))
        })?;
    let mut body = Vec::new();
    for o in &outcomes.1 {
        if let Ok(line) = serde_json::to_vec(o) {
            body.extend_from_slice(&line);
            body.push(b'\n');
        }
    }
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+ndjson"),
    );
    Ok(response)
}

/// `DELETE [base]/$import-poll-status/{id}`: stop after the current batch.
pub(crate) async fn cancel(ctx: Ctx, id: &str) -> Result<Response, ApiError> {
    let job = find(&ctx, id)?;
    job.cancelled.store(true, Ordering::Release);
    Ok(StatusCode::ACCEPTED.into_response())
}
