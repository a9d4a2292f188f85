//! Batches → a store (in-process `records`) or a server.

use std::sync::Arc;

use anyhow::{Context, bail};
use carelayer_records::{Caller, ImportOptions, Records, ReturnPreference};
use serde_json::{Value, json};

use crate::import::source::{Batch, Content, Input, Item};
use crate::import::{Rejection, Via};

/// Where batches go.
#[derive(Clone)]
pub enum Sink {
    /// In-process, through the record service.
    Records {
        records: Arc<Records>,
        caller: Caller,
    },
    /// A running FHIR server.
    Server {
        client: reqwest::Client,
        /// The FHIR base, without a trailing `/`.
        base: String,
        token: Option<String>,
        via: Via,
    },
}

/// What one batch did.
#[derive(Debug, Clone, Default)]
pub struct BatchResult {
    pub lines: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub rejected: Vec<Rejection>,
}

impl Sink {
    /// A server sink.
    ///
    /// # Errors
    /// A base URL that is not http(s), or no HTTP client.
    pub fn server(
        base: &str,
        token: Option<&str>,
        via: Via,
        connections: usize,
    ) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--server takes a FHIR base URL like http://127.0.0.1:8080/fhir");
        }
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(connections.max(1))
            .timeout(std::time::Duration::from_secs(600))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self::Server {
            client,
            base,
            token: token.map(str::to_owned),
            via,
        })
    }

    pub(crate) async fn send(
        &self,
        input: &Input,
        batch: Batch,
        verify: bool,
    ) -> anyhow::Result<BatchResult> {
        match batch.content {
            Content::Items(items) => {
                let mut result = BatchResult {
                    lines: items.len() as u64,
                    ..BatchResult::default()
                };
                let mut good = Vec::with_capacity(items.len());
                for item in items {
                    match &item.parsed {
                        Ok(_) => good.push(item),
                        Err(reason) => result.rejected.push(Rejection {
                            at: input.at(item.line),
                            reason: reason.clone(),
                        }),
                    }
                }
                if !good.is_empty() {
                    match self {
                        Self::Records { records, caller } => {
                            records_items(records, caller, input, good, verify, &mut result)
                                .await?;
                        }
                        Self::Server {
                            client,
                            base,
                            token,
                            via: Via::Import,
                        } => {
                            server_import(
                                client,
                                base,
                                token.as_deref(),
                                input,
                                good,
                                verify,
                                &mut result,
                            )
                            .await?;
                        }
                        Self::Server {
                            client,
                            base,
                            token,
                            via: Via::Transaction,
                        } => {
                            server_transaction(
                                client,
                                base,
                                token.as_deref(),
                                input,
                                good,
                                &mut result,
                            )
                            .await?;
                        }
                    }
                }
                result.rejected.sort_by(|a, b| a.at.cmp(&b.at));
                Ok(result)
            }
            Content::Bundle { kind, bytes } => self.bundle(input, &kind, bytes).await,
        }
    }

    /// A transaction or batch Bundle file.
    async fn bundle(
        &self,
        input: &Input,
        kind: &str,
        bytes: Vec<u8>,
    ) -> anyhow::Result<BatchResult> {
        let at = input.path.display().to_string();
        let response = match self {
            Self::Records { records, caller } => {
                match records
                    .process_bundle(
                        caller,
                        &bytes,
                        "urn:carelayer:import",
                        ReturnPreference::Minimal,
                    )
                    .await
                {
                    Ok(body) => Ok(body),
                    Err(carelayer_records::RecordsError::Store(e)) => {
                        return Err(anyhow::anyhow!("{at}: store error: {e}"));
                    }
                    Err(e) => Err(carelayer_records::describe_error(&e)),
                }
            }
            Self::Server {
                client,
                base,
                token,
                ..
            } => post(client, base, token.as_deref(), &bytes).await?,
        };
        let mut result = BatchResult::default();
        match response {
            Ok(body) => tally_bundle_response(&body, &at, &mut result),
            Err(reason) => {
                let entries = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|b| b.get("entry").and_then(Value::as_array).map(Vec::len))
                    .unwrap_or(0);
                result.lines = entries as u64;
                result.rejected.push(Rejection {
                    at,
                    reason: format!("{kind} Bundle refused ({entries} entries): {reason}"),
                });
            }
        }
        Ok(result)
    }
}

async fn records_items(
    records: &Arc<Records>,
    caller: &Caller,
    input: &Input,
    items: Vec<Item>,
    verify: bool,
    result: &mut BatchResult,
) -> anyhow::Result<()> {
    let lines: Vec<u64> = items.iter().map(|i| i.line).collect();
    let values: Vec<Value> = items.into_iter().filter_map(|i| i.parsed.ok()).collect();
    let records = Arc::clone(records);
    let caller = caller.clone();
    // Its own task, so batches in flight validate and plan on several cores.
    let report = tokio::spawn(async move {
        records
            .import_with(
                &caller,
                values,
                ImportOptions {
                    skip_unchanged: verify,
                },
            )
            .await
    })
    .await
    .context("an import task failed")?
    .map_err(|e| anyhow::anyhow!("{}: {e}", input.path.display()))?;
    result.created += report.created as u64;
    result.updated += report.updated as u64;
    result.unchanged += report.unchanged as u64;
    for r in report.rejected {
        let line = lines.get(r.index).copied().unwrap_or(0);
        result.rejected.push(Rejection {
            at: input.at(line),
            reason: match r.reference {
                Some(reference) => format!("{reference}: {}", r.reason),
                None => r.reason,
            },
        });
    }
    Ok(())
}

fn authorized(builder: reqwest::RequestBuilder, token: Option<&str>) -> reqwest::RequestBuilder {
    match token {
        Some(t) => builder.bearer_auth(t),
        None => builder,
    }
}

/// POST a Bundle; `Ok(Err(reason))` when the server refused it.
async fn post(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    body: &[u8],
) -> anyhow::Result<Result<Vec<u8>, String>> {
    let response = authorized(client.post(base), token)
        .header(reqwest::header::CONTENT_TYPE, "application/fhir+json")
        .header(reqwest::header::ACCEPT, "application/fhir+json")
        .header("Prefer", "return=minimal")
        .body(body.to_vec())
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?;
    let status = response.status();
    let bytes = response.bytes().await.context("cannot read the response")?;
    if status.is_success() {
        Ok(Ok(bytes.to_vec()))
    } else if status.is_server_error() || status.as_u16() == 401 || status.as_u16() == 403 {
        bail!("{base}: {status}: {}", outcome_text(&bytes))
    } else {
        Ok(Err(format!("{status}: {}", outcome_text(&bytes))))
    }
}

/// The diagnostics of an OperationOutcome body (or the body's start).
fn outcome_text(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return String::from_utf8_lossy(body).chars().take(300).collect();
    };
    let issues: Vec<String> = v
        .get("issue")
        .and_then(Value::as_array)
        .map(|issues| {
            issues
                .iter()
                .filter_map(|i| {
                    i.get("diagnostics")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .or_else(|| {
                            i.pointer("/details/text")
                                .and_then(Value::as_str)
                                .map(str::to_owned)
                        })
                })
                .collect()
        })
        .unwrap_or_default();
    if issues.is_empty() {
        v.to_string().chars().take(300).collect()
    } else {
        issues.join("; ")
    }
}

/// Count a transaction/batch response Bundle's entries.
fn tally_bundle_response(body: &[u8], at: &str, result: &mut BatchResult) {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let entries = v
        .get("entry")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    result.lines += entries.len() as u64;
    for (i, entry) in entries.iter().enumerate() {
        let status = entry
            .pointer("/response/status")
            .and_then(Value::as_str)
            .unwrap_or("");
        match status.split(' ').next().unwrap_or("") {
            "201" => result.created += 1,
            s if s.starts_with('2') => result.updated += 1,
            _ => result.rejected.push(Rejection {
                at: format!("{at}#entry[{i}]"),
                reason: format!(
                    "{status}: {}",
                    entry
                        .pointer("/response/outcome")
                        .map(|o| outcome_text(o.to_string().as_bytes()))
                        .unwrap_or_default()
                ),
            }),
        }
    }
}

async fn server_import(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    input: &Input,
    items: Vec<Item>,
    verify: bool,
    result: &mut BatchResult,
) -> anyhow::Result<()> {
    let mut body = String::with_capacity(items.iter().map(|i| i.text.len() + 1).sum());
    for item in &items {
        body.push_str(&item.text);
        body.push('\n');
    }
    let url = if verify {
        format!("{base}/$import?skip-unchanged=true")
    } else {
        format!("{base}/$import")
    };
    let response = authorized(client.post(&url), token)
        .header(reqwest::header::CONTENT_TYPE, "application/fhir+ndjson")
        .header(reqwest::header::ACCEPT, "application/fhir+json")
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let bytes = response.bytes().await.context("cannot read the response")?;
    if !status.is_success() {
        bail!("{url}: {status}: {}", outcome_text(&bytes));
    }
    let outcome: Value = serde_json::from_slice(&bytes)
        .context("$import answered with something other than JSON")?;
    for issue in outcome
        .get("issue")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let diagnostics = issue
            .get("diagnostics")
            .and_then(Value::as_str)
            .unwrap_or("");
        if issue.get("severity").and_then(Value::as_str) == Some("information") {
            for part in diagnostics.split(',') {
                let mut words = part.split_whitespace();
                if let (Some(word), Some(n)) = (
                    words.next(),
                    words.next().and_then(|n| n.parse::<u64>().ok()),
                ) {
                    match word {
                        "created" => result.created += n,
                        "updated" => result.updated += n,
                        "unchanged" => result.unchanged += n,
                        _ => {}
                    }
                }
            }
            continue;
        }
        // `line N` of the body → the file's line.
        let body_line = issue
            .pointer("/location/0")
            .and_then(Value::as_str)
            .and_then(|l| l.strip_prefix("line "))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        let line = body_line
            .checked_sub(1)
            .and_then(|i| items.get(i))
            .map_or(0, |i| i.line);
        result.rejected.push(Rejection {
            at: input.at(line),
            reason: diagnostics.to_owned(),
        });
    }
    Ok(())
}

async fn server_transaction(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    input: &Input,
    items: Vec<Item>,
    result: &mut BatchResult,
) -> anyhow::Result<()> {
    // Refuse invalid resources here, with the validator carelayer uses.
    let mut entries = Vec::with_capacity(items.len());
    let mut lines = Vec::with_capacity(items.len());
    for item in items {
        let Ok(resource) = item.parsed else { continue };
        let issues = carelayer_fhir::validate::validate_resource(&resource);
        let errors: Vec<String> = issues
            .iter()
            .filter(|i| i.severity == carelayer_fhir::validate::Severity::Error)
            .map(|i| format!("{}: {}", i.location, i.message))
            .collect();
        let ty = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let id = resource
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if !errors.is_empty() {
            result.rejected.push(Rejection {
                at: input.at(item.line),
                reason: format!(
                    "{ty}/{}: the resource is not valid FHIR R4: {}",
                    id.as_deref().unwrap_or("?"),
                    errors.join("; ")
                ),
            });
            continue;
        }
        let request = match &id {
            Some(id) => json!({"method": "PUT", "url": format!("{ty}/{id}")}),
            None => json!({"method": "POST", "url": ty}),
        };
        entries.push(json!({"resource": resource, "request": request}));
        lines.push(item.line);
    }
    if entries.is_empty() {
        return Ok(());
    }
    let n = entries.len() as u64;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let body = serde_json::to_vec(&bundle)?;
    match post(client, base, token, &body).await? {
        Ok(response) => {
            let mut tally = BatchResult::default();
            tally_bundle_response(&response, "", &mut tally);
            if tally.created + tally.updated == 0 {
                // Some servers answer a minimal transaction with no entries.
                result.created += n;
            } else {
                result.created += tally.created;
                result.updated += tally.updated;
            }
        }
        Err(_) => {
            // Refused as a whole: send it as a batch to learn which entries.
            let mut bundle = bundle;
            bundle["type"] = json!("batch");
            let body = serde_json::to_vec(&bundle)?;
            match post(client, base, token, &body).await? {
                Ok(response) => {
                    let mut tally = BatchResult::default();
                    tally_bundle_response(&response, "", &mut tally);
                    result.created += tally.created;
                    result.updated += tally.updated;
                    for r in tally.rejected {
                        let i =
                            r.at.trim_start_matches("#entry[")
                                .trim_end_matches(']')
                                .parse::<usize>()
                                .unwrap_or(usize::MAX);
                        result.rejected.push(Rejection {
                            at: input.at(lines.get(i).copied().unwrap_or(0)),
                            reason: r.reason,
                        });
                    }
                }
                Err(reason) => {
                    for line in lines {
                        result.rejected.push(Rejection {
                            at: input.at(line),
                            reason: format!("refused by the server: {reason}"),
                        });
                    }
                }
            }
        }
    }
    Ok(())
}
