//! `carelayer serve`.

use anyhow::Context;
use carelayer_http::HttpConfig;
use carelayer_records::{AuditOptions, RecordsOptions};
use tokio::net::TcpListener;

use crate::backend;
use crate::config::ServeArgs;
use crate::server::{ServerConfig, start};

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let config = ServerConfig {
        database: args.db.database.clone(),
        http: HttpConfig {
            max_body_bytes: args.max_body_bytes,
            base_url: args.base_url.clone(),
            import_sources: args.import_sources.clone(),
            auth: crate::token::auth_config(
                &args.db.database,
                args.key_dir.as_deref(),
                &args.auth,
            )?,
        },
        records: RecordsOptions {
            max_bundle_entries: args.max_bundle_entries,
            facts_cache_entries: args.facts_cache_entries,
            audit: AuditOptions {
                key_dir: args.key_dir.clone(),
                checkpoint_every: args.audit_checkpoint_every,
                checkpoint_interval: std::time::Duration::from_secs(args.audit_checkpoint_seconds),
                alert_patients: args.alert_patients,
                alert_window: std::time::Duration::from_secs(args.alert_window_seconds),
                ..AuditOptions::default()
            },
            ..RecordsOptions::default()
        },
        demo: args.demo,
    };
    let server = start(config, listener).await?;
    if args.demo {
        print_demo_tokens(&server)?;
    }
    eprintln!(
        "carelayer serving FHIR R4 at {} (database {}); every request needs a bearer token (mint one with `carelayer token`)",
        server.base_url,
        backend::redact(&args.db.database),
    );
    shutdown_signal().await;
    eprintln!("carelayer stopping");
    server.stop().await?;
    eprintln!("carelayer stopped");
    Ok(())
}

/// Tokens for trying the demo record set as its users (valid 12 hours).
fn print_demo_tokens(server: &crate::server::RunningServer) -> anyhow::Result<()> {
    use carelayer_http::auth::{DEFAULT_AUDIENCE, TokenSubject};
    let practitioner = |user: &str, role: &str, org: &str| TokenSubject::Practitioner {
        user_id: user.into(),
        role: role.into(),
        org: org.into(),
    };
    let users = [
        (
            "GP_TOKEN",
            "a GP at Y90001, the demo patients' practice",
            practitioner("demo-gp", "R8000", "Y90001"),
        ),
        (
            "OTHER_TOKEN",
            "a clinician at Y90002, no relationship: denied unless X-Break-Glass: <reason>",
            practitioner("demo-clinician", "R8000", "Y90002"),
        ),
        (
            "OFFICER_TOKEN",
            "the privacy officer of Y90002: GET /fhir/AuditEvent/$alerts shows its break-glass",
            practitioner("demo-officer", "R0001", "Y90002"),
        ),
        (
            "PATIENT_TOKEN",
            "patient 999 000 1235 (demo-patient-1): their own record and access log",
            TokenSubject::Patient {
                nhs_number: "9990001235".into(),
                patient_id: None,
            },
        ),
    ];
    eprintln!("demo record set ready (5 patients). Tokens for its users, valid 12 hours:");
    for (var, who, subject) in users {
        let token = server
            .issuer
            .mint(&subject, None, DEFAULT_AUDIENCE, 12 * 3600)?;
        eprintln!("  # {who}\n  export {var}={token}");
    }
    eprintln!(
        "  then: curl -H \"Authorization: Bearer $GP_TOKEN\" '{}/Patient?family=Whitfield'",
        server.base_url
    );
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
