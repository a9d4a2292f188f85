//! Building and starting the server: used by `serve`, by the integration
//! tests (real server on port 0) and by the bench harness.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use carelayer_http::HttpConfig;
use carelayer_http::auth::BuiltinIssuer;
use carelayer_http::auth::clients::CLIENTS_FILE;
use carelayer_records::{Records, RecordsOptions};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::audit_cmd::Checkpointer;
use crate::backend;
use carelayer_audit::SigningKey;

/// What a server needs besides its listener.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub database: String,
    pub http: HttpConfig,
    pub records: RecordsOptions,
    pub demo: bool,
}

/// A server running in this process.
pub struct RunningServer {
    pub addr: SocketAddr,
    /// `http://ADDR/fhir` (or the configured base URL).
    pub base_url: String,
    pub records: Arc<Records>,
    /// The built-in token issuer the server trusts (`carelayer token`).
    pub issuer: Arc<BuiltinIssuer>,
    /// Signs audit checkpoints in the background; stopped (with a final
    /// checkpoint) by `stop`.
    /// Boxed: the signing key is large and `RunningServer` is moved around.
    checkpointer: Option<Box<(Checkpointer, SigningKey)>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Stop accepting, finish requests in flight, flush the store.
    ///
    /// # Errors
    /// An I/O error the server hit while serving.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let served = self.task.await.context("server task panicked")?;
        if let Some(boxed) = self.checkpointer.take() {
            let (checkpointer, key) = *boxed;
            checkpointer.stop().await;
            // Cover everything up to shutdown, so truncating the ledger
            // while the server is down is detected.
            if let Err(e) = self.records.audit_checkpoint(&key).await {
                tracing::warn!(error = %e, "final audit checkpoint failed");
            }
        }
        self.records.close().await;
        Ok(served?)
    }
}

/// Open the store, build the app and serve it on `listener`; with
/// `config.demo` the demo record set is loaded first.
///
/// # Errors
/// The store cannot be opened, or the demo set cannot be loaded.
pub async fn start(config: ServerConfig, listener: TcpListener) -> anyhow::Result<RunningServer> {
    let store = backend::open(&config.database).await?;
    let records = Arc::new(Records::new(store, config.records.clone()));
    let addr = listener.local_addr()?;
    let base_url = config
        .http
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}/fhir"));
    if config.demo {
        crate::demo::load(&records, &base_url).await?;
    }
    let key_dir = crate::backend::key_dir(
        &config.database,
        config.records.audit.key_dir.as_deref(),
        "the audit signing key",
    )?;
    let key = crate::audit_cmd::load_or_create_key(&key_dir)?;
    let mut http = config.http.clone();
    let issuer = match &http.auth.builtin {
        Some(issuer) => Arc::clone(issuer),
        None => {
            let issuer = Arc::new(BuiltinIssuer::load_or_create(&key_dir)?);
            http.auth.builtin = Some(Arc::clone(&issuer));
            if http.auth.clients_file.is_none() {
                http.auth.clients_file = Some(key_dir.join(CLIENTS_FILE));
            }
            issuer
        }
    };
    let checkpointer = Checkpointer::start(Arc::clone(&records), key.clone());
    let app = carelayer_http::app(Arc::clone(&records), http);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(carelayer_http::serve(listener, app, async move {
        let _ = rx.await;
    }));
    Ok(RunningServer {
        addr,
        base_url,
        records,
        issuer,
        checkpointer: Some(Box::new((checkpointer, key))),
        shutdown: Some(tx),
        task,
    })
}
