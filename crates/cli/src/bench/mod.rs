//! `carelayer bench`: a load generator for the FHIR API.
//!
//! By default it starts a server in this process on a temporary SQLite
//! database (policy and audit on, as always: they are part of the request
//! path) on `127.0.0.1:0`; `--server URL` aims it at a running server instead.
//! It then runs each workload with `--clients` concurrent clients for
//! `--seconds` (or `--requests` in total) and reports, per workload,
//! requests, req/s, p50/p99/max latency, errors and the peak RSS of this
//! process, as a table on stdout and optionally as JSON (`--json FILE`).
//!
//! Map:
//! - [`BenchArgs`]: the command line.
//! - `target`: the server under test (in-process or remote).
//! - `synth`: realistic synthetic UK content (999-range NHS numbers with
//!   valid check digits, ODS-coded practices, LOINC-coded observations).
//! - `workload`: what one request of a workload is (`create`, `read`); new
//!   workloads (search, transaction, `$everything`) implement [`workload::Workload`].
//! - `driver`: runs a workload with N clients and measures it.
//! - `report`: the table, the JSON, peak RSS.
//! - `suite`: the data-set bench (`--patients`) on each backend and the peer.
//! - `peer`: HFS, started and loaded with the same data.
//! - `floor`: an import's storage floor (`--floor`): the engine alone
//!   storing the same rows.

mod driver;
mod floor;
mod peer;
mod report;
mod suite;
mod synth;
mod target;
mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use clap::Args;

use crate::bench::driver::Limit;
use crate::bench::report::{Report, WorkloadResult};
use crate::bench::target::Target;
use crate::bench::workload::{Created, Workload};

/// `carelayer bench` options.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Benchmark a running server at this FHIR base URL
    /// (`http://HOST:PORT/fhir`) instead of one started in this process.
    #[arg(long)]
    pub server: Option<String>,
    /// Database of the in-process server (default: a temporary SQLite file,
    /// removed afterwards). With `--patients`: a SQLite database
    /// (`sqlite://PATH`) that is kept, so a large data set is imported once
    /// and reused: the import resumes from a checkpoint beside it
    /// (`PATH.bench-import.json`) and has nothing left to do next time.
    #[arg(long)]
    pub database: Option<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// How long each workload runs, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Run each workload for this many requests in total instead of
    /// `--seconds`.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Workloads to run, in order (`create`, `read`).
    #[arg(long, value_delimiter = ',', default_value = "create,read")]
    pub workloads: Vec<String>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A tiny run (2 s per workload, 4 clients) to check the harness works.
    #[arg(long)]
    pub quick: bool,
    /// Measurement only: serve reads without writing their audit entries
    /// (in-process server), to compare read throughput with audit on and
    /// off. A real server always audits every read.
    #[arg(long)]
    pub no_read_audit: bool,
    /// With --patients: measure read audit's cost in one process. `read`
    /// runs N rounds, each one slice (--seconds) with read audit on and one
    /// with it off, alternating over the same warm database; the report
    /// gives `read` and `read-audit-off` over all slices and the cost in %.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub audit_compare: u32,
    /// With --patients: right after the import, measure its storage floor
    /// (row `import-floor`): the engine alone copying every table the
    /// import filled and building every index over the copies, so the rate
    /// no import of these rows through the engine's SQL can beat here. At
    /// scale the copies push the data out of the page cache: measure the
    /// workloads in another run.
    #[arg(long, requires = "patients")]
    pub floor: bool,
    /// Run the data-set bench: generate (or reuse) `carelayer synth` data
    /// of this many patients, import it, then run the search, read,
    /// transaction and `$everything` workloads over it.
    #[arg(long)]
    pub patients: Option<u64>,
    /// Seed of the synthetic data set.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where synthetic data sets are cached (one folder per size and seed).
    #[arg(long, default_value = ".cache/bench")]
    pub cache_dir: PathBuf,
    /// Also run the same data and workloads on a peer server (`hfs`).
    #[arg(long, requires = "patients")]
    pub peer: Option<String>,
    /// The peer's binary (default: `hfs` on the PATH).
    #[arg(long)]
    pub peer_bin: Option<PathBuf>,
    /// Bearer token for `--server` (the in-process server mints its own).
    #[arg(long, env = "CARELAYER_TOKEN")]
    pub token: Option<String>,
    /// Measurement only: load the in-process server as its operator, whose
    /// decisions need no facts, instead of as a `system/*.cruds` client
    /// (consent, labels and redactions evaluated on every access), to
    /// measure what policy costs.
    #[arg(long)]
    pub policy_off: bool,
    /// Storage backends to run the data-set bench on, side by side, in
    /// this order (`sqlite`, `postgres`); the table ends with each one's
    /// rate over the first's per workload.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sqlite",
        requires = "patients"
    )]
    pub backends: Vec<String>,
    /// The PostgreSQL server for the `postgres` backend: a URL to a
    /// database the user may `CREATE DATABASE` from. Each run creates a
    /// uniquely named scratch database there and drops it afterwards.
    #[arg(
        long,
        env = "CARELAYER_BENCH_POSTGRES",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub postgres: String,
}

/// The token the bench's load clients present to an in-process server:
/// a system client with `system/*.cruds` (policy evaluated with the
/// patient's facts on every access), or the operator with `--policy-off`.
///
/// # Errors
/// Signing failed.
pub(crate) fn bench_token(
    server: &crate::server::RunningServer,
    policy_off: bool,
) -> anyhow::Result<String> {
    use carelayer_http::auth::{DEFAULT_AUDIENCE, TokenSubject};
    let (subject, scope) = if policy_off {
        (
            TokenSubject::Operator {
                name: "bench".into(),
            },
            None,
        )
    } else {
        (
            TokenSubject::Client {
                client_id: "bench".into(),
                org: None,
            },
            Some("system/*.cruds"),
        )
    };
    Ok(server
        .issuer
        .mint(&subject, scope, DEFAULT_AUDIENCE, 24 * 3600)?)
}

/// Workloads this harness knows.
pub const WORKLOADS: &[&str] = &["create", "read"];

/// Run the benchmark.
///
/// # Errors
/// Bad arguments, a server that cannot be started or reached.
pub async fn run(mut args: BenchArgs) -> anyhow::Result<()> {
    if args.quick {
        args.clients = args.clients.min(4);
        args.seconds = args.seconds.min(2.0);
        if let Some(n) = args.requests.as_mut() {
            *n = (*n).min(400);
        }
    }
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if args.audit_compare > 0 && args.patients.is_none() {
        bail!("--audit-compare needs --patients (it runs in the data-set bench)");
    }
    if args.audit_compare > 0 && args.no_read_audit {
        bail!("--audit-compare switches read audit itself; leave out --no-read-audit");
    }
    if let Some(patients) = args.patients {
        return run_suite(args, patients).await;
    }
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        bail!("--seconds must be a positive number");
    }
    for w in &args.workloads {
        if !WORKLOADS.contains(&w.as_str()) {
            bail!("unknown workload '{w}'; known: {}", WORKLOADS.join(", "));
        }
    }
    let limit = match args.requests {
        Some(0) => bail!("--requests must be at least 1"),
        Some(n) => Limit::Requests(n),
        None => Limit::Duration(Duration::from_secs_f64(args.seconds)),
    };

    let target = Target::start(
        args.server.as_deref(),
        args.database.as_deref(),
        !args.no_read_audit,
    )
    .await?;
    let token = match &target {
        Target::InProcess { server, .. } => Some(bench_token(server, args.policy_off)?),
        Target::Remote { .. } => args.token.clone(),
    };
    let client = driver::client(args.clients, token.as_deref())?;
    eprintln!(
        "bench: {} at {} with {} clients, {} per workload",
        target.description(),
        target.base_url(),
        args.clients,
        limit.describe()
    );

    let created = Arc::new(Created::default());
    let mut report = Report::new(&target, args.clients, &limit);
    for name in &args.workloads {
        let workload: Arc<dyn Workload> = match name.as_str() {
            "create" => Arc::new(workload::Create::new(Arc::clone(&created))),
            _ => {
                if created.len() < workload::MIN_READ_POOL {
                    // Reads need something to read: seed a pool first (not measured).
                    let seed = Arc::new(workload::Create::new(Arc::clone(&created)));
                    let missing = (workload::MIN_READ_POOL - created.len()) as u64;
                    driver::run(
                        &client,
                        target.base_url(),
                        seed,
                        args.clients,
                        &Limit::Requests(missing),
                    )
                    .await;
                }
                Arc::new(workload::Read::new(Arc::clone(&created)))
            }
        };
        let data_size = created.len();
        let stats = driver::run(
            &client,
            target.base_url(),
            Arc::clone(&workload),
            args.clients,
            &limit,
        )
        .await;
        report.push(WorkloadResult::new(
            workload.name(),
            &target,
            data_size,
            &stats,
        ));
    }
    target.stop().await?;

    print!("{}", report.table());
    if let Some(path) = &args.json {
        report.write_json(path)?;
        eprintln!("bench: results written to {}", path.display());
    }
    Ok(())
}

/// `--patients`: the data-set bench (see `suite`).
async fn run_suite(args: BenchArgs, patients: u64) -> anyhow::Result<()> {
    let peer_bin = match args.peer.as_deref() {
        None => None,
        Some("hfs") => Some(
            args.peer_bin
                .clone()
                .unwrap_or_else(|| PathBuf::from("hfs")),
        ),
        Some(other) => bail!("unknown peer '{other}'; known: hfs"),
    };
    let workloads = if args.workloads == ["create", "read"] {
        suite::SUITE_WORKLOADS
            .iter()
            .map(|w| (*w).to_owned())
            .collect()
    } else {
        args.workloads.clone()
    };
    let limit = match args.requests {
        Some(0) => bail!("--requests must be at least 1"),
        Some(n) => Limit::Requests(n),
        None => Limit::Duration(Duration::from_secs_f64(args.seconds)),
    };
    let mut backends = Vec::new();
    for b in &args.backends {
        let backend = match b.as_str() {
            "sqlite" => suite::Backend::Sqlite,
            "postgres" | "postgresql" | "pg" => suite::Backend::Postgres(args.postgres.clone()),
            other => bail!("unknown backend '{other}'; known: sqlite, postgres"),
        };
        if backends.contains(&backend) {
            bail!("backend '{b}' named twice in --backends");
        }
        backends.push(backend);
    }
    if backends.is_empty() {
        bail!("--backends names no backend");
    }
    let keep = match args.database.as_deref() {
        None => None,
        Some(url) => {
            let Some(path) = crate::backend::sqlite_path(url).filter(|p| !p.as_os_str().is_empty())
            else {
                bail!("with --patients, --database must be a SQLite file (sqlite://PATH)");
            };
            if backends != [suite::Backend::Sqlite] {
                bail!("--database with --patients needs --backends sqlite alone");
            }
            Some(path)
        }
    };
    suite::run(suite::SuiteArgs {
        keep,
        backends,
        patients,
        seed: args.seed,
        clients: args.clients,
        limit,
        workloads,
        peer_bin,
        json: args.json.clone(),
        cache: args.cache_dir.clone(),
        policy_off: args.policy_off,
        no_read_audit: args.no_read_audit,
        audit_compare: args.audit_compare,
        floor: args.floor,
    })
    .await
}
