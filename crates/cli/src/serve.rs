//! `carelayer serve`.

use anyhow::{Context, bail};
use carelayer_http::HttpConfig;
use carelayer_records::{AuditOptions, RecordsOptions};
use tokio::net::TcpListener;

use crate::backend;
use crate::config::ServeArgs;
use crate::server::{ServerConfig, start};

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() && !args.auth.require_tokens {
        bail!(
            "refusing to listen on {}: without --require-tokens requests without a token run as the local operator, so carelayer listens on loopback only (e.g. 127.0.0.1:8080)",
            args.listen
        );
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let config = ServerConfig {
        database: args.db.database.clone(),
        http: HttpConfig {
            max_body_bytes: args.max_body_bytes,
            base_url: args.base_url.clone(),
            auth: crate::token::auth_config(
                &args.db.database,
                args.key_dir.as_deref(),
                &args.auth,
            )?,
        },
        records: RecordsOptions {
            max_bundle_entries: args.max_bundle_entries,
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
        eprintln!(
            "demo record set ready (5 patients: try {}/Patient?family=Whitfield)",
            server.base_url
        );
    }
    eprintln!(
        "carelayer serving FHIR R4 at {} (database {}); {}",
        server.base_url,
        backend::redact(&args.db.database),
        if args.auth.require_tokens {
            "bearer tokens required (mint one with `carelayer token`)"
        } else {
            "loopback only: requests without a token run as the local operator"
        }
    );
    shutdown_signal().await;
    eprintln!("carelayer stopping");
    server.stop().await?;
    eprintln!("carelayer stopped");
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
