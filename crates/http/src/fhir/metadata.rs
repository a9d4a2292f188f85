//! `GET /fhir/metadata`: a CapabilityStatement listing only what works.

use std::sync::OnceLock;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::Ctx;
use crate::response::fhir_json;

pub(crate) fn capability_statement(ctx: &Ctx) -> Response {
    static CACHED: OnceLock<Value> = OnceLock::new();
    let statement = CACHED.get_or_init(|| build(&ctx.state.records));
    fhir_json(
        StatusCode::OK,
        serde_json::to_vec(statement).unwrap_or_default(),
    )
}

fn build(records: &carelayer_records::Records) -> Value {
    let interactions = json!([
        {"code": "read"}, {"code": "vread"}, {"code": "update"}, {"code": "patch"},
        {"code": "delete"}, {"code": "history-instance"}, {"code": "history-type"},
        {"code": "create"}, {"code": "search-type"}
    ]);
    let resources: Vec<Value> = records
        .resource_types()
        .into_iter()
        .map(|ty| {
            let params: Vec<Value> = carelayer_records::supported_search_params(ty)
                .into_iter()
                .map(|(name, kind, url)| json!({"name": name, "type": kind, "definition": url}))
                .collect();
            json!({
                "type": ty,
                "interaction": interactions,
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "not-supported",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "searchParam": params,
                "operation": [{"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}]
            })
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "publisher": "carelayer",
        "kind": "instance",
        "software": {"name": "carelayer", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "carelayer national patient-record data layer (FHIR R4)"},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "resource": resources,
            "interaction": [
                {"code": "transaction"}, {"code": "batch"},
                {"code": "history-system"}, {"code": "search-system"}
            ],
            "searchParam": [
                {"name": "_id", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"},
                {"name": "_lastUpdated", "type": "date", "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"}
            ]
        }]
    })
}
