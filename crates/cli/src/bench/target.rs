//! The server under test: one started in this process on a temporary
//! database (the default), or a running one named by URL. A later peer
//! server (HAPI FHIR) is another remote target run side by side.

use anyhow::Context;
use carelayer_http::HttpConfig;
use carelayer_records::{AuditOptions, RecordsOptions};
use tokio::net::TcpListener;

use crate::server::{RunningServer, ServerConfig, start};

pub(crate) enum Target {
    InProcess {
        server: RunningServer,
        database: String,
        /// Keeps the temporary database until the bench ends.
        _dir: Option<tempfile::TempDir>,
    },
    Remote {
        base_url: String,
    },
}

impl Target {
    /// Start an in-process server (on `database`, or a temporary SQLite
    /// file), or use the running server at `remote`.
    pub(crate) async fn start(
        remote: Option<&str>,
        database: Option<&str>,
        audit_reads: bool,
    ) -> anyhow::Result<Self> {
        if let Some(url) = remote {
            let base_url = url.trim_end_matches('/').to_owned();
            if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
                anyhow::bail!("--server takes a FHIR base URL like http://127.0.0.1:8080/fhir");
            }
            return Ok(Self::Remote { base_url });
        }
        let (dir, database) = match database {
            Some(db) => (None, db.to_owned()),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("carelayer-bench-")
                    .tempdir()
                    .context("cannot create a temporary folder for the bench database")?;
                let db = format!("sqlite://{}/bench.db", dir.path().display());
                (Some(dir), db)
            }
        };
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot listen on 127.0.0.1")?;
        let config = ServerConfig {
            database: database.clone(),
            http: HttpConfig::default(),
            records: RecordsOptions {
                // Off only for `--no-read-audit`, to measure audit overhead.
                audit: AuditOptions {
                    audit_reads,
                    ..AuditOptions::default()
                },
                ..RecordsOptions::default()
            },
            demo: false,
        };
        let server = start(config, listener).await?;
        Ok(Self::InProcess {
            server,
            database,
            _dir: dir,
        })
    }

    pub(crate) fn base_url(&self) -> &str {
        match self {
            Self::InProcess { server, .. } => &server.base_url,
            Self::Remote { base_url } => base_url,
        }
    }

    /// What is measured, for the report.
    pub(crate) fn description(&self) -> String {
        match self {
            Self::InProcess { database, .. } => format!(
                "carelayer in-process ({})",
                crate::backend::redact(database)
                    .split("://")
                    .next()
                    .unwrap_or("?")
            ),
            Self::Remote { .. } => "remote server".to_owned(),
        }
    }

    /// The server's name in the report's `server` column.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::InProcess { .. } => "carelayer",
            Self::Remote { .. } => "remote",
        }
    }

    /// Whether the peak RSS reported is the server's too (in-process).
    pub(crate) fn rss_includes_server(&self) -> bool {
        matches!(self, Self::InProcess { .. })
    }

    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        match self {
            Self::InProcess { server, .. } => server.stop().await,
            Self::Remote { .. } => Ok(()),
        }
    }
}
