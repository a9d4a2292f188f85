//! Configuration: `--flag` or `CARELAYER_*` environment variables.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

/// carelayer: a national patient-record data layer with a FHIR R4 API.
#[derive(Debug, Parser)]
#[command(name = "carelayer", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the FHIR server.
    Serve(ServeArgs),
    /// Measure create and read throughput and latency with N concurrent
    /// clients (starts its own server on a temporary database by default).
    Bench(crate::bench::BenchArgs),
    /// Print a bearer token from the built-in issuer that the server accepts.
    Token(crate::token::TokenArgs),
    /// Register SMART Backend Services clients.
    Client(crate::client::ClientArgs),
    /// Verify the tamper-evident audit ledger, or export its signed checkpoints.
    Audit(crate::audit_cmd::AuditArgs),
    /// Generate a synthetic UK population as NDJSON (and transaction Bundles).
    Synth(crate::synth::SynthArgs),
    /// Load NDJSON files or folders (and Bundles) into a store or a server.
    Import(crate::import::ImportArgs),
    /// Apply the database's pending schema migrations and exit (servers also
    /// migrate on start; this is for operators who migrate first).
    Migrate(MigrateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
}

/// The embedded database every command uses when none is named.
pub const DEFAULT_DATABASE: &str = "sqlite://carelayer-data/carelayer.db";

/// Where the records live.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// `sqlite://PATH` (embedded, the default: ./carelayer-data/carelayer.db)
    /// or `postgres://USER@HOST:PORT/DB`.
    ///
    /// SQLite settings ride in the URL's query string: `mmap_mib=N` (how
    /// much of the file each connection memory-maps; default all of it;
    /// `0` turns mapping off, so a disk I/O error fails one request
    /// instead of ending the process).
    ///
    /// PostgreSQL settings ride in the URL's query string:
    /// `pool_size=N` (read connections; default 4 per CPU, the writer has
    /// two more), `statement_timeout=5s` (the server cancels a statement
    /// after this; default 5 s), `connect_timeout=3s` (waiting for a pooled
    /// or new connection; default 3 s), `max_batch=N` (writes per group
    /// commit; default 256). No request waits on PostgreSQL for longer than
    /// twice the statement timeout plus the connect timeout (13 s by
    /// default): after that it is answered 503 with `Retry-After`, also
    /// when PostgreSQL hangs without closing its connections.
    #[arg(long, env = "CARELAYER_DATABASE", default_value = DEFAULT_DATABASE)]
    pub database: String,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Address to listen on. Every request but /fhir/metadata,
    /// /.well-known/* and /oauth/token needs a bearer token.
    #[arg(long, env = "CARELAYER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Load the demo record set (a few patients with their GP practices,
    /// encounters, conditions, observations, medications and allergies).
    #[arg(long, env = "CARELAYER_DEMO")]
    pub demo: bool,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "CARELAYER_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most entries accepted in one batch or transaction Bundle.
    #[arg(long, env = "CARELAYER_MAX_BUNDLE_ENTRIES", default_value_t = 10_000)]
    pub max_bundle_entries: usize,
    /// The public FHIR base URL used in links (default: from the Host header).
    #[arg(long, env = "CARELAYER_BASE_URL")]
    pub base_url: Option<String>,
    /// A URL prefix bulk `$import` kick-offs may name as inputs (the server
    /// fetches them). Repeatable, or comma-separated in the environment;
    /// none by default.
    #[arg(
        long = "import-source",
        env = "CARELAYER_IMPORT_SOURCES",
        value_delimiter = ','
    )]
    pub import_sources: Vec<String>,
    /// Patients whose policy facts are cached in this server; 0 when
    /// several servers share one PostgreSQL database (docs/scale-out.md).
    #[arg(long, env = "CARELAYER_FACTS_CACHE_ENTRIES", default_value_t = 100_000)]
    pub facts_cache_entries: usize,
    #[command(flatten)]
    pub auth: crate::token::AuthArgs,
    /// Folder of the audit checkpoint signing key (default: next to the
    /// SQLite file; required for PostgreSQL).
    #[arg(long, env = "CARELAYER_KEY_DIR")]
    pub key_dir: Option<std::path::PathBuf>,
    /// Sign an audit checkpoint after this many new ledger entries… (each
    /// checkpoint writes the deferred entries out and commits; at 1,000,
    /// a busy server committed several times a second, and every commit
    /// costs SQLite's readers their page caches)
    #[arg(
        long,
        env = "CARELAYER_AUDIT_CHECKPOINT_EVERY",
        default_value_t = 100_000
    )]
    pub audit_checkpoint_every: u64,
    /// …or after this many seconds with new entries.
    #[arg(long, env = "CARELAYER_AUDIT_CHECKPOINT_SECONDS", default_value_t = 60)]
    pub audit_checkpoint_seconds: u64,
    /// Alert the privacy officer when one user reads more than this many
    /// distinct patients within `--alert-window-seconds`.
    #[arg(long, env = "CARELAYER_ALERT_PATIENTS", default_value_t = 50)]
    pub alert_patients: usize,
    #[arg(long, env = "CARELAYER_ALERT_WINDOW_SECONDS", default_value_t = 3_600)]
    pub alert_window_seconds: u64,
}
