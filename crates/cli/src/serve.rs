//! `carelayer serve`.

use std::sync::Arc;

use anyhow::{Context, bail};
use carelayer_http::HttpConfig;
use carelayer_records::{Records, RecordsOptions};
use tokio::net::TcpListener;

use crate::config::ServeArgs;
use crate::{backend, demo};

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        bail!(
            "refusing to listen on {}: token authentication is not configured yet, so carelayer listens on loopback only (e.g. 127.0.0.1:8080)",
            args.listen
        );
    }
    let store = backend::open(&args.db.database)?;
    let records = Arc::new(Records::new(
        store,
        RecordsOptions {
            max_bundle_entries: args.max_bundle_entries,
            ..RecordsOptions::default()
        },
    ));
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let base = args
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}/fhir"));
    if args.demo {
        let written = demo::load(&records, &base).await?;
        if written == 0 {
            eprintln!("demo record set already loaded");
        } else {
            eprintln!("loaded the demo record set ({written} resources)");
        }
    }
    let app = carelayer_http::app(
        Arc::clone(&records),
        HttpConfig {
            max_body_bytes: args.max_body_bytes,
            base_url: args.base_url.clone(),
        },
    );
    eprintln!(
        "carelayer serving FHIR R4 at {base} (database {}); loopback only: authentication is not configured yet",
        backend::redact(&args.db.database)
    );
    carelayer_http::serve(listener, app, shutdown_signal()).await?;
    records.close().await;
    eprintln!("carelayer stopped");
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
