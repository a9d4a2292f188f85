//! FHIR response helpers: content negotiation, `Prefer`, and the headers of
//! a resource response (`ETag`, `Last-Modified`, `Location`).

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use carelayer_records::render::{etag, operation_outcome};
use carelayer_records::{Issue, ReturnPreference, Severity, Version, clock};

use crate::AppState;
use crate::error::ApiError;

pub(crate) const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// A JSON body with the FHIR content type.
pub(crate) fn fhir_json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

/// What the `Prefer` header asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prefer {
    pub return_pref: ReturnPreference,
    pub lenient: bool,
}

pub(crate) fn prefer(headers: &HeaderMap) -> Prefer {
    let mut out = Prefer {
        return_pref: ReturnPreference::Representation,
        lenient: false,
    };
    for value in headers.get_all("prefer") {
        let Ok(text) = value.to_str() else { continue };
        for part in text.split([',', ';']) {
            match part.trim().replace(' ', "").as_str() {
                "return=minimal" => out.return_pref = ReturnPreference::Minimal,
                "return=representation" => out.return_pref = ReturnPreference::Representation,
                "return=OperationOutcome" => out.return_pref = ReturnPreference::OperationOutcome,
                "handling=lenient" => out.lenient = true,
                "handling=strict" => out.lenient = false,
                _ => {}
            }
        }
    }
    out
}

/// Refuse anything but JSON output (`_format`, `Accept`).
pub(crate) fn check_accept(headers: &HeaderMap, format: Option<&str>) -> Result<(), ApiError> {
    if let Some(format) = format {
        let ok = matches!(
            format,
            "json" | "application/json" | "application/fhir+json" | "application/json+fhir"
        ) || format.starts_with("application/fhir+json")
            || format.starts_with("application/json");
        if !ok {
            return Err(ApiError::NotAcceptable(format!(
                "_format '{format}' is not supported; this server speaks FHIR JSON only"
            )));
        }
        return Ok(());
    }
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let acceptable = accept.split(',').any(|part| {
        let media = part.split(';').next().unwrap_or("").trim();
        matches!(
            media,
            "" | "*/*"
                | "application/*"
                | "application/json"
                | "application/fhir+json"
                | "application/json+fhir"
                | "text/*"
                | "text/plain"
        )
    });
    if acceptable {
        Ok(())
    } else {
        Err(ApiError::NotAcceptable(format!(
            "cannot answer with '{accept}'; this server speaks application/fhir+json only"
        )))
    }
}

/// Refuse request bodies that are not JSON (`Content-Type`). A missing
/// content type is read as JSON.
pub(crate) fn check_content_type(headers: &HeaderMap, patch: bool) -> Result<(), ApiError> {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(());
    };
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let ok = if patch {
        media == "application/json-patch+json"
    } else {
        matches!(
            media.as_str(),
            "application/fhir+json" | "application/json" | "application/json+fhir"
        )
    };
    if ok {
        Ok(())
    } else if patch {
        Err(ApiError::UnsupportedMediaType(format!(
            "PATCH takes a JSON Patch document (application/json-patch+json), not '{ct}'"
        )))
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "the body must be FHIR JSON (application/fhir+json), not '{ct}'"
        )))
    }
}

/// The FHIR base URL for links and `Location`.
pub(crate) fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(base) = &state.config.base_url {
        return base.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        })
        .unwrap_or("localhost");
    format!("http://{host}/fhir")
}

/// `If-Match: W/"3"` → 3.
pub(crate) fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    match headers.get(header::IF_MATCH) {
        None => Ok(None),
        Some(v) => {
            let text = v.to_str().unwrap_or("");
            carelayer_records::parse_etag(text)
                .map(Some)
                .ok_or_else(|| {
                    ApiError::Records(carelayer_records::RecordsError::BadRequest(format!(
                        "If-Match '{text}' is not a version ETag like W/\"3\""
                    )))
                })
        }
    }
}

/// A response carrying one version: `ETag`, `Last-Modified`, optionally
/// `Location`, and a body per `Prefer: return=`.
pub(crate) fn version_response(
    status: StatusCode,
    version: &Version,
    base: &str,
    return_pref: ReturnPreference,
    with_location: bool,
) -> Response {
    let body = match return_pref {
        ReturnPreference::Representation => version.json.clone(),
        ReturnPreference::Minimal => Vec::new(),
        ReturnPreference::OperationOutcome => serde_json::to_vec(&operation_outcome(&[Issue {
            severity: Severity::Information,
            code: "informational".into(),
            location: None,
            diagnostics: format!(
                "{} {}/{} version {}",
                status.canonical_reason().unwrap_or(""),
                version.resource_type,
                version.id,
                version.version
            ),
        }]))
        .unwrap_or_default(),
    };
    let mut response = if body.is_empty() {
        status.into_response()
    } else {
        fhir_json(status, body)
    };
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag(version.version)) {
        headers.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&clock::format_http_date(version.last_updated)) {
        headers.insert(header::LAST_MODIFIED, v);
    }
    if with_location {
        let location = format!(
            "{base}/{}/{}/_history/{}",
            version.resource_type, version.id, version.version
        );
        if let Ok(v) = HeaderValue::from_str(&location) {
            headers.insert(header::LOCATION, v.clone());
            headers.insert(header::CONTENT_LOCATION, v);
        }
    }
    response
}
