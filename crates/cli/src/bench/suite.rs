//! The data-set bench (`carelayer bench --patients N`): synthetic UK data
//! (`carelayer synth`, cached per size and seed), bulk import, then create,
//! search, read, small-transaction and `$everything` workloads over that
//! data, on carelayer (in-process, policy and audit on) on each backend of
//! `--backends` in turn (SQLite in a temporary folder, PostgreSQL in a
//! scratch database created for the run and dropped after it), and
//! optionally on a peer (`--peer hfs`) loaded with the same data. The table
//! and the JSON give every backend's rate over the first backend's per
//! workload (e.g. postgres/sqlite), and the first backend's over the peer's.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use carelayer_http::HttpConfig;
use carelayer_records::{AuditChannel, Caller, Records, RecordsOptions};
use carelayer_store_postgres::ScratchDatabase;
use reqwest::Method;
use serde_json::{Value, json};

use crate::bench::driver::{self, Limit, Stats};
use crate::bench::peer::{self, Peer};
use crate::bench::workload::{self as basic, Created, Request, Workload};
use crate::import::{ImportArgs, Sink, Via};
use crate::synth::Rng;

/// Workloads of the data-set bench.
pub(crate) const SUITE_WORKLOADS: &[&str] = &[
    "create",
    "read",
    "search-nhs",
    "search-obs",
    "search-code-date",
    "search-family",
    "search-chained",
    "transaction",
    "everything",
    "everything-heavy",
];

/// A storage backend the suite runs carelayer on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Backend {
    /// A SQLite file in a temporary folder.
    Sqlite,
    /// A scratch database on the PostgreSQL server this admin URL names.
    Postgres(String),
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

/// What the suite needs from the command line.
pub(crate) struct SuiteArgs {
    /// `--database`: the SQLite file to import into once and keep.
    pub keep: Option<PathBuf>,
    pub backends: Vec<Backend>,
    pub patients: u64,
    pub seed: u64,
    pub clients: usize,
    pub limit: Limit,
    pub workloads: Vec<String>,
    pub peer_bin: Option<PathBuf>,
    pub json: Option<PathBuf>,
    pub cache: PathBuf,
    pub policy_off: bool,
    pub no_read_audit: bool,
    /// `--audit-compare N`: run `read` as N rounds alternating read audit
    /// on and off in the same server (0: once, as configured).
    pub audit_compare: u32,
    /// `--floor`: measure the import's storage floor right after it.
    pub floor: bool,
}

/// One measured row.
#[derive(Debug, Clone)]
struct Row {
    /// `carelayer/<backend>` or the peer's name.
    server: String,
    workload: String,
    requests: u64,
    errors: u64,
    /// Requests (or resources, for `import`) per second.
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_cores: Option<f64>,
    peak_mib: Option<f64>,
    error_samples: Vec<String>,
}

/// The data set: where it is and what to ask for.
struct Dataset {
    dir: PathBuf,
    /// Size, seed and resource count: what a kept database records once
    /// it holds this data set.
    identity: Value,
    resources: u64,
    /// (Patient id, NHS number)
    patients: Vec<(String, String)>,
    /// (family name, birth date) of each Patient, for the trace search.
    names: Vec<(String, String)>,
    observations: Vec<String>,
    /// Patients with about [`HEAVY_RECORD`] resources in their compartment
    /// (filled only when `everything-heavy` runs: it reads every file).
    heavy: Vec<String>,
}

/// The record size `everything-heavy` asks for: issue 4's "a patient with
/// about 500 resources".
const HEAVY_RECORD: std::ops::RangeInclusive<usize> = 400..=600;

pub(crate) async fn run(args: SuiteArgs) -> anyhow::Result<()> {
    for w in &args.workloads {
        if !SUITE_WORKLOADS.contains(&w.as_str()) {
            bail!(
                "unknown workload '{w}' with --patients; known: {}",
                SUITE_WORKLOADS.join(", ")
            );
        }
    }
    let data = dataset(&args)?;
    eprintln!(
        "bench: data set of {} patients, {} resources (seed {}) in {}",
        args.patients,
        data.resources,
        args.seed,
        data.dir.display()
    );
    let mut rows = Vec::new();

    // carelayer, in-process, on each backend in turn (never two at once:
    // they would share the cores).
    for backend in &args.backends {
        rows.extend(run_backend(backend, &args, &data).await?);
    }

    // The peer, loaded with the same data through transaction Bundles.
    if let Some(bin) = &args.peer_bin {
        let mut hfs = Peer::start(bin, None).await?;
        let sink = Sink::server(&hfs.base_url, None, Via::Transaction, 4)?;
        let dir = tempfile::tempdir()?;
        let pid = Some(hfs.pid());
        let client = driver::client(args.clients, None)?;
        let files = ImportFiles::beside(&dir.path().join("hfs"));
        if let Some(row) = load("hfs", &data, &sink, pid, &files).await? {
            rows.push(row);
        }
        rows.extend(
            workloads(
                "hfs",
                &args,
                &data,
                &client,
                &hfs.base_url.clone(),
                pid,
                None,
            )
            .await,
        );
        hfs.stop();
    }

    let baseline = label(&args.backends[0]);
    let table = table(&rows, &args, &data, &baseline);
    print!("{table}");
    if let Some(path) = &args.json {
        let over = args.backends[0].name();
        let mut backend_ratios: Vec<Value> = Vec::new();
        for b in &args.backends[1..] {
            for (w, r) in ratios(&rows, &label(b), &baseline) {
                backend_ratios
                    .push(json!({"workload": w, "backend": b.name(), "over": over, "ratio": r}));
            }
        }
        let body = json!({
            "patients": args.patients,
            "seed": args.seed,
            "resources": data.resources,
            "clients": args.clients,
            "limit": args.limit.describe(),
            "backends": args.backends.iter().map(Backend::name).collect::<Vec<_>>(),
            "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get),
            "rows": rows.iter().map(|r| json!({
                "server": r.server, "workload": r.workload, "requests": r.requests,
                "errors": r.errors, "rate": r.rate, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
                "cpu_cores": r.cpu_cores, "peak_mib": r.peak_mib, "error_samples": r.error_samples,
            })).collect::<Vec<_>>(),
            "backend_ratios": backend_ratios,
            "ratios": peer_ratios(&rows, &baseline).into_iter().map(|(w, r)| json!({"workload": w, "carelayer_over_peer": r})).collect::<Vec<_>>(),
            "note": "the peer (HFS) does no validation, consent or audit on these paths; carelayer runs with policy and audit on",
        });
        std::fs::write(path, serde_json::to_vec_pretty(&body)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("bench: results written to {}", path.display());
    }
    Ok(())
}

/// The `server` column of a backend's rows.
fn label(backend: &Backend) -> String {
    format!("carelayer/{}", backend.name())
}

/// A unique scratch database name: process id and the time, so two runs
/// (or a run and a leftover of a killed one) never collide.
fn scratch_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("carelayer_bench_{}_{nanos}", std::process::id())
}

/// Start carelayer on `backend`, import the data, run the workloads, stop,
/// and remove the database whatever happened.
async fn run_backend(
    backend: &Backend,
    args: &SuiteArgs,
    data: &Dataset,
) -> anyhow::Result<Vec<Row>> {
    if let Some(path) = &args.keep {
        let database = format!("sqlite://{}", path.display());
        let folder = crate::backend::key_dir(&database, None, "the kept database")?;
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
        eprintln!("bench: carelayer on {database} (kept)");
        let files = ImportFiles::beside(path);
        return measure_backend(backend, &database, &folder, &files, args, data).await;
    }
    let dir = tempfile::Builder::new()
        .prefix("carelayer-bench-")
        .tempdir()?;
    let (database, scratch) = match backend {
        Backend::Sqlite => (format!("sqlite://{}/bench.db", dir.path().display()), None),
        Backend::Postgres(admin) => {
            let db = ScratchDatabase::create(admin, &scratch_name())
                .await
                .with_context(|| {
                    format!(
                        "cannot create a scratch database on {} (--postgres)",
                        crate::backend::redact(admin)
                    )
                })?;
            (db.url.clone(), Some(db))
        }
    };
    eprintln!("bench: carelayer on {}", crate::backend::redact(&database));
    let files = ImportFiles::beside(&dir.path().join("bench.db"));
    let result = measure_backend(backend, &database, dir.path(), &files, args, data).await;
    if let Some(db) = scratch
        && let Err(e) = db.drop_now().await
    {
        eprintln!("bench: warning: could not drop the scratch database: {e}");
    }
    result
}

/// Where the import's checkpoint and rejects go: beside the database, so a
/// kept database (`--database`) resumes its own import.
struct ImportFiles {
    checkpoint: PathBuf,
    rejects: PathBuf,
    /// Which data set (size and seed) a finished import left in the
    /// database. Why not the checkpoint alone: it is keyed by the files'
    /// absolute paths and times, so the same data set generated again in
    /// another cache folder would be imported a second time, as updates.
    dataset: PathBuf,
}

impl ImportFiles {
    fn beside(database: &Path) -> Self {
        let with = |suffix: &str| {
            let mut p = database.as_os_str().to_owned();
            p.push(suffix);
            PathBuf::from(p)
        };
        Self {
            checkpoint: with(".bench-import.json"),
            rejects: with(".bench-rejected.txt"),
            dataset: with(".bench-dataset.json"),
        }
    }

    /// Record that the database now holds the data set `identity`.
    fn record_imported(&self, identity: &Value) -> anyhow::Result<()> {
        std::fs::write(&self.dataset, identity.to_string())
            .with_context(|| format!("cannot write {}", self.dataset.display()))
    }

    /// The data set a finished import left in the database, if any.
    fn imported(&self) -> anyhow::Result<Option<Value>> {
        match std::fs::read(&self.dataset) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).with_context(|| {
                format!("{} is not a bench data set record", self.dataset.display())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.dataset.display())),
        }
    }
}

async fn measure_backend(
    backend: &Backend,
    database: &str,
    scratch: &Path,
    files: &ImportFiles,
    args: &SuiteArgs,
    data: &Dataset,
) -> anyhow::Result<Vec<Row>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = crate::server::start(
        crate::server::ServerConfig {
            database: database.to_owned(),
            http: HttpConfig::default(),
            records: RecordsOptions {
                audit: carelayer_records::AuditOptions {
                    // Off only for `--no-read-audit`, to measure audit overhead.
                    audit_reads: !args.no_read_audit,
                    // PostgreSQL has no file beside which keys could live.
                    key_dir: Some(scratch.to_path_buf()),
                    ..carelayer_records::AuditOptions::default()
                },
                ..RecordsOptions::default()
            },
            demo: false,
        },
        listener,
    )
    .await?;
    let name = label(backend);
    let sink = Sink::Records {
        records: Arc::clone(&server.records),
        caller: Caller::local_operator(AuditChannel::Cli),
    };
    let mut rows = Vec::new();
    let measured = async {
        match load(&name, data, &sink, None, files).await? {
            Some(row) => {
                let stored = row.requests;
                rows.push(row);
                // Right after the import, while the database holds exactly
                // what it stored (the workloads add resources and audit).
                if args.floor {
                    rows.push(floor_row(&name, database, scratch, stored).await?);
                }
            }
            None if args.floor => eprintln!(
                "bench: {name}: no storage floor: this run imported nothing \
                 (the floor measures what an import just stored)"
            ),
            None => {}
        }
        let token = super::bench_token(&server, args.policy_off)?;
        let client = driver::client(args.clients, Some(&token))?;
        rows.extend(
            workloads(
                &name,
                args,
                data,
                &client,
                &server.base_url,
                None,
                Some(&server.records),
            )
            .await,
        );
        anyhow::Ok(())
    }
    .await;
    drop(sink);
    server.stop().await?;
    measured?;
    Ok(rows)
}

/// The `import-floor` row: the resources the import just stored over the
/// time the engine alone took to store the same tables (`floor.rs`).
async fn floor_row(
    server: &str,
    database: &str,
    scratch: &Path,
    stored: u64,
) -> anyhow::Result<Row> {
    let floor = super::floor::measure(database, scratch).await?;
    let rate = stored as f64 / floor.secs();
    eprintln!(
        "bench: {server}: storage floor: tables copied in {:.1} s, {} indexes built in {:.1} s: {rate:.0} resources/s",
        floor.copy_secs, floor.indexes, floor.index_secs
    );
    Ok(Row {
        server: server.to_owned(),
        workload: "import-floor".into(),
        requests: stored,
        errors: 0,
        rate,
        p50_ms: 0.0,
        p99_ms: 0.0,
        cpu_cores: None,
        peak_mib: None,
        error_samples: Vec::new(),
    })
}

/// Generate the data set, or reuse the cached one.
fn dataset(args: &SuiteArgs) -> anyhow::Result<Dataset> {
    let dir = args
        .cache
        .join(format!("synth-p{}-s{}", args.patients, args.seed));
    let manifest = dir.join("manifest.json");
    let cached = std::fs::read(&manifest)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|m| m["patients"] == args.patients && m["seed"] == args.seed);
    if !cached {
        let summary = crate::synth::generate(&dir, args.patients, args.seed, false, None)?;
        eprintln!(
            "bench: generated {} resources in {:.1} s ({:.0}/s)",
            summary.total(),
            summary.elapsed.as_secs_f64(),
            summary.rate()
        );
    }
    let m: Value = serde_json::from_slice(&std::fs::read(&manifest)?)?;
    let mut patients = Vec::new();
    let mut names = Vec::new();
    for line in std::fs::read_to_string(dir.join("Patient.ndjson"))?.lines() {
        let p: Value = serde_json::from_str(line)?;
        if let (Some(id), Some(nhs)) = (p["id"].as_str(), p["identifier"][0]["value"].as_str()) {
            patients.push((id.to_owned(), nhs.to_owned()));
        }
        if let (Some(family), Some(born)) =
            (p["name"][0]["family"].as_str(), p["birthDate"].as_str())
        {
            names.push((family.to_owned(), born.to_owned()));
        }
    }
    if patients.is_empty() || names.is_empty() {
        bail!(
            "{}: no Patients with an NHS number, family name and birth date",
            dir.display()
        );
    }
    let mut observations = Vec::new();
    let text = std::fs::read_to_string(dir.join("Observation.ndjson"))?;
    for (i, line) in text.lines().enumerate() {
        if i % 50 == 0
            && let Some(id) = line
                .split_once(r#""id":""#)
                .and_then(|(_, r)| r.split_once('"'))
                .map(|(id, _)| id.to_owned())
        {
            observations.push(id);
        }
    }
    let heavy = if args.workloads.iter().any(|w| w == "everything-heavy") {
        let heavy = heavy_patients(&dir)?;
        eprintln!(
            "bench: everything-heavy asks for the records of {} patients ({}–{} resources each, or the biggest hundredth)",
            heavy.len(),
            HEAVY_RECORD.start(),
            HEAVY_RECORD.end()
        );
        heavy
    } else {
        Vec::new()
    };
    let resources = m["total"].as_u64().unwrap_or(0);
    Ok(Dataset {
        dir,
        identity: json!({"patients": args.patients, "seed": args.seed, "resources": resources}),
        resources,
        patients,
        names,
        observations,
        heavy,
    })
}

/// Patients whose records (the Patient and every resource that names them
/// first among its Patient references) hold [`HEAVY_RECORD`] resources;
/// the biggest hundredth when none do (a small data set).
fn heavy_patients(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut sizes: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.ends_with(".ndjson") {
            continue;
        }
        for line in std::fs::read_to_string(&path)?.lines() {
            let owner = if name == "Patient.ndjson" {
                line.split_once(r#""id":""#)
            } else {
                line.split_once(r#""reference":"Patient/"#)
            };
            if let Some((id, _)) = owner.and_then(|(_, rest)| rest.split_once('"')) {
                *sizes.entry(id.to_owned()).or_default() += 1;
            }
        }
    }
    let mut heavy: Vec<String> = sizes
        .iter()
        .filter(|(_, n)| HEAVY_RECORD.contains(n))
        .map(|(id, _)| id.clone())
        .collect();
    if heavy.is_empty() {
        let mut by_size: Vec<(&String, &usize)> = sizes.iter().collect();
        by_size.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        heavy = by_size
            .iter()
            .take((by_size.len() / 100).max(1))
            .map(|(id, _)| (*id).clone())
            .collect();
    }
    heavy.sort();
    Ok(heavy)
}

/// Import the data set; `None` when a kept database already held all of it
/// (nothing was measured).
async fn load(
    server: &str,
    data: &Dataset,
    sink: &Sink,
    pid: Option<u32>,
    files: &ImportFiles,
) -> anyhow::Result<Option<Row>> {
    match files.imported()? {
        Some(held) if held == data.identity => {
            eprintln!(
                "bench: {server}: the data set is already imported ({} resources, {}); not measured",
                data.resources,
                files.dataset.display()
            );
            return Ok(None);
        }
        Some(held) => bail!(
            "the kept database holds another data set ({held}, per {}); this run's is {}: pass another --database",
            files.dataset.display(),
            data.identity
        ),
        None => {}
    }
    let mut args = ImportArgs::new(vec![data.dir.clone()]);
    args.checkpoint = Some(files.checkpoint.clone());
    args.rejects = Some(files.rejects.clone());
    args.no_progress = true;
    args.concurrency = if pid.is_some() { 4 } else { 2 };
    let cpu0 = peer::cpu_seconds(pid);
    let started = Instant::now();
    let summary = crate::import::execute(&args, sink).await?;
    let secs = started.elapsed().as_secs_f64();
    if summary.lines == 0 && summary.resumed_lines > 0 {
        eprintln!(
            "bench: {server}: the data set is already imported ({} resources, {}); not measured",
            summary.resumed_lines,
            files.checkpoint.display()
        );
        files.record_imported(&data.identity)?;
        return Ok(None);
    }
    if summary.rejected.is_empty() {
        files.record_imported(&data.identity)?;
    }
    let cpu = cpu0
        .zip(peer::cpu_seconds(pid))
        .map(|(a, b)| (b - a) / secs);
    eprintln!(
        "bench: {server}: imported {} resources in {secs:.1} s ({:.0}/s), {} rejected",
        summary.written(),
        summary.written() as f64 / secs,
        summary.rejected.len()
    );
    Ok(Some(Row {
        server: server.to_owned(),
        workload: "import".into(),
        requests: summary.written(),
        errors: summary.rejected.len() as u64,
        rate: summary.written() as f64 / secs,
        p50_ms: 0.0,
        p99_ms: 0.0,
        cpu_cores: cpu,
        peak_mib: peer::peak_rss_mib(pid),
        error_samples: summary
            .rejected
            .iter()
            .take(5)
            .map(|r| format!("{}: {}", r.at, r.reason))
            .collect(),
    }))
}

async fn workloads(
    server: &str,
    args: &SuiteArgs,
    data: &Dataset,
    client: &reqwest::Client,
    base: &str,
    pid: Option<u32>,
    records: Option<&Records>,
) -> Vec<Row> {
    let shared = Arc::new(Shared {
        patients: data.patients.clone(),
        names: data.names.clone(),
        observations: data.observations.clone(),
        heavy: data.heavy.clone(),
        seed: args.seed,
    });
    // `create` adds new Patients and Observations about them (the synth
    // data set is left as it is for the other workloads to find).
    let created = Arc::new(Created::default());
    let mut rows = Vec::new();
    for name in &args.workloads {
        let workload: Arc<dyn Workload> = match name.as_str() {
            "create" => Arc::new(basic::Create::new(Arc::clone(&created))),
            "read" => Arc::new(Read(Arc::clone(&shared))),
            "search-nhs" => Arc::new(SearchNhs(Arc::clone(&shared))),
            "search-obs" => Arc::new(SearchObs(Arc::clone(&shared))),
            "search-code-date" => Arc::new(SearchCodeDate(Arc::clone(&shared))),
            "search-family" => Arc::new(SearchFamily(Arc::clone(&shared))),
            "search-chained" => Arc::new(SearchChained(Arc::clone(&shared))),
            "transaction" => Arc::new(Transaction(Arc::clone(&shared))),
            "everything-heavy" => Arc::new(EverythingHeavy(Arc::clone(&shared))),
            _ => Arc::new(Everything(Arc::clone(&shared))),
        };
        if let (Some(records), "read", 1..) = (records, name.as_str(), args.audit_compare) {
            rows.extend(audit_compare(server, args, client, base, workload, records).await);
            continue;
        }
        let cpu0 = peer::cpu_seconds(pid);
        let stats = driver::run(client, base, workload, args.clients, &args.limit).await;
        let secs = stats.elapsed.as_secs_f64().max(1e-9);
        let cpu = cpu0
            .zip(peer::cpu_seconds(pid))
            .map(|(a, b)| (b - a) / secs);
        rows.push(row(server, name, &stats, cpu, peer::peak_rss_mib(pid)));
        eprintln!(
            "bench: {server} {name}: {:.0} req/s, p99 {:.1} ms, {} errors",
            stats.throughput(),
            stats.quantile_ms(0.99),
            stats.errors
        );
    }
    rows
}

/// Read audit's cost measured in one process: `read` runs in rounds, read
/// audit on then off (and off then on in every other round, so neither
/// side always goes first), each for the bench's limit, over the same warm
/// database and caches. Separate processes on a shared VM drifted by up to
/// 25% between runs, more than the cost being measured; alternating slices
/// see the same drift on both sides. Rows: `read` (audit on) and
/// `read-audit-off`, each over all its slices.
async fn audit_compare(
    server: &str,
    args: &SuiteArgs,
    client: &reqwest::Client,
    base: &str,
    workload: Arc<dyn Workload>,
    records: &Records,
) -> Vec<Row> {
    let mut on: Option<Stats> = None;
    let mut off: Option<Stats> = None;
    for round in 0..args.audit_compare {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        let mut rates = [0.0; 2];
        for audited in order {
            records.set_audit_reads(audited);
            let stats = driver::run(
                client,
                base,
                Arc::clone(&workload),
                args.clients,
                &args.limit,
            )
            .await;
            rates[usize::from(!audited)] = stats.throughput();
            let total = if audited { &mut on } else { &mut off };
            match total {
                Some(t) => t.absorb(stats),
                None => *total = Some(stats),
            }
        }
        eprintln!(
            "bench: {server} read, round {}: audit on {:.0} req/s, off {:.0} req/s",
            round + 1,
            rates[0],
            rates[1]
        );
    }
    records.set_audit_reads(true);
    let (Some(on), Some(off)) = (on, off) else {
        return Vec::new();
    };
    eprintln!(
        "bench: {server} read audit costs {:.1}% of read throughput ({:.0} vs {:.0} req/s over {} rounds)",
        (1.0 - on.throughput() / off.throughput().max(1e-9)) * 100.0,
        on.throughput(),
        off.throughput(),
        args.audit_compare
    );
    vec![
        row(server, "read", &on, None, None),
        row(server, "read-audit-off", &off, None, None),
    ]
}

fn row(server: &str, name: &str, stats: &Stats, cpu: Option<f64>, peak: Option<f64>) -> Row {
    Row {
        server: server.to_owned(),
        workload: name.to_owned(),
        requests: stats.requests(),
        errors: stats.errors,
        rate: stats.throughput(),
        p50_ms: stats.quantile_ms(0.5),
        p99_ms: stats.quantile_ms(0.99),
        cpu_cores: cpu,
        peak_mib: peak,
        error_samples: stats.error_samples.clone(),
    }
}

/// Per workload, the rate of `server` over the rate of `over`.
fn ratios(rows: &[Row], server: &str, over: &str) -> Vec<(String, f64)> {
    rows.iter()
        .filter(|r| r.server == server)
        .filter_map(|c| {
            rows.iter()
                .find(|p| p.server == over && p.workload == c.workload)
                .filter(|p| p.rate > 0.0)
                .map(|p| (c.workload.clone(), c.rate / p.rate))
        })
        .collect()
}

/// The first backend over the peer, per workload.
fn peer_ratios(rows: &[Row], baseline: &str) -> Vec<(String, f64)> {
    let peer = rows
        .iter()
        .find(|r| !r.server.starts_with("carelayer/"))
        .map(|r| r.server.clone());
    peer.map_or_else(Vec::new, |p| ratios(rows, baseline, &p))
}

fn table(rows: &[Row], args: &SuiteArgs, data: &Dataset, baseline: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "carelayer bench: {} patients / {} resources (seed {}), {} clients, {} per workload, {} build, {} CPUs",
        args.patients,
        data.resources,
        args.seed,
        args.clients,
        args.limit.describe(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get),
    );
    let _ = writeln!(
        out,
        "{:<18} {:<12} {:>9} {:>11} {:>8} {:>8} {:>7} {:>9} {:>9}",
        "server",
        "workload",
        "requests",
        "rate/s",
        "p50_ms",
        "p99_ms",
        "errors",
        "cpu_cores",
        "peak_MiB"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<18} {:<12} {:>9} {:>11.1} {:>8.2} {:>8.2} {:>7} {:>9} {:>9}",
            r.server,
            r.workload,
            r.requests,
            r.rate,
            r.p50_ms,
            r.p99_ms,
            r.errors,
            r.cpu_cores
                .map_or_else(|| "?".into(), |c| format!("{c:.2}")),
            r.peak_mib.map_or_else(|| "?".into(), |m| format!("{m:.0}")),
        );
        for e in r.error_samples.iter().take(2) {
            let _ = writeln!(
                out,
                "    error: {}",
                e.chars().take(200).collect::<String>()
            );
        }
    }
    if args.backends.len() > 1 {
        // Side by side: one line per workload, a column per backend, then
        // each backend's rate over the first's.
        let labels: Vec<String> = args.backends.iter().map(label).collect();
        let _ = write!(
            out,
            "\nside by side (rate/s, p99 ms in brackets):\n{:<16}",
            "workload"
        );
        for b in &args.backends {
            let _ = write!(out, " {:>22}", b.name());
        }
        for b in &args.backends[1..] {
            let _ = write!(
                out,
                " {:>16}",
                format!("{}/{}", b.name(), args.backends[0].name())
            );
        }
        out.push('\n');
        let mut seen: Vec<&str> = Vec::new();
        for r in rows.iter().filter(|r| r.server == baseline) {
            if seen.contains(&r.workload.as_str()) {
                continue;
            }
            seen.push(&r.workload);
            let _ = write!(out, "{:<16}", r.workload);
            for l in &labels {
                let cell = rows
                    .iter()
                    .find(|x| &x.server == l && x.workload == r.workload)
                    .map_or_else(
                        || "-".to_owned(),
                        |x| {
                            if x.workload.starts_with("import") {
                                format!("{:.0}", x.rate)
                            } else {
                                format!("{:.0} ({:.1})", x.rate, x.p99_ms)
                            }
                        },
                    );
                let _ = write!(out, " {cell:>22}");
            }
            for l in &labels[1..] {
                let ratio = ratios(rows, l, baseline)
                    .into_iter()
                    .find(|(w, _)| *w == r.workload)
                    .map_or_else(|| "-".to_owned(), |(_, x)| format!("{x:.2}"));
                let _ = write!(out, " {ratio:>16}");
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "(ratio < 1: slower than {}; import and import-floor rates = resources/s, in-process)",
            args.backends[0].name()
        );
    }
    let peer = peer_ratios(rows, baseline);
    if !peer.is_empty() {
        let _ = writeln!(
            out,
            "ratio {baseline}/hfs (rate; > 1 means carelayer is faster):"
        );
        for (w, r) in peer {
            let _ = writeln!(out, "  {w:<12} {r:>8.2}");
        }
        let _ = writeln!(
            out,
            "(HFS does no validation, consent or audit; carelayer runs with policy and audit on. \
             import rate = resources/s; carelayer imports in-process, HFS through transaction Bundles; \
             carelayer cpu/peak include the load generator, HFS's are its own process)"
        );
    }
    out
}

/// What the workloads choose from.
struct Shared {
    patients: Vec<(String, String)>,
    names: Vec<(String, String)>,
    observations: Vec<String>,
    heavy: Vec<String>,
    seed: u64,
}

impl Shared {
    fn rng(&self, w: u64, client: usize, i: u64) -> Rng {
        Rng::derive(self.seed ^ (w << 56), ((client as u64) << 40) ^ i)
    }

    fn patient(&self, rng: &mut Rng) -> &(String, String) {
        &self.patients[rng.below(self.patients.len() as u64) as usize]
    }
}

fn get(path: String) -> Request {
    Request {
        method: Method::GET,
        path,
        body: None,
        expect: &[200],
    }
}

/// `read`: a random Patient or Observation by id.
struct Read(Arc<Shared>);

impl Workload for Read {
    fn name(&self) -> &'static str {
        "read"
    }
    fn request(&self, client: usize, i: u64) -> Request {
        let mut rng = self.0.rng(1, client, i);
        if rng.chance(0.5) && !self.0.observations.is_empty() {
            let o = &self.0.observations[rng.below(self.0.observations.len() as u64) as usize];
            get(format!("Observation/{o}"))
        } else {
            get(format!("Patient/{}", self.0.patient(&mut rng).0))
        }
    }
}

/// `search-nhs`: find a patient by NHS number.
struct SearchNhs(Arc<Shared>);

impl Workload for SearchNhs {
    fn name(&self) -> &'static str {
        "search-nhs"
    }
    fn request(&self, client: usize, i: u64) -> Request {
        let mut rng = self.0.rng(2, client, i);
        let nhs = &self.0.patient(&mut rng).1;
        get(format!(
            "Patient?identifier=https%3A%2F%2Ffhir.nhs.uk%2FId%2Fnhs-number%7C{nhs}"
        ))
    }
}

/// `search-obs`: a patient's observations of one LOINC code.
struct SearchObs(Arc<Shared>);

const OBS_CODES: &[&str] = &["85354-9", "29463-7", "8867-4", "39156-5", "14647-2"];

impl Workload for SearchObs {
    fn name(&self) -> &'static str {
        "search-obs"
    }
    fn request(&self, client: usize, i: u64) -> Request {
        let mut rng = self.0.rng(3, client, i);
        let id = &self.0.patient(&mut rng).0;
        let code = rng.pick(OBS_CODES);
        get(format!(
            "Observation?subject=Patient/{id}&code=http%3A%2F%2Floinc.org%7C{code}"
        ))
    }
}

/// `search-code-date`: one LOINC code across every patient within one
/// month of the synthetic record (a population query: which patients had a
/// blood pressure taken in March 2023).
struct SearchCodeDate(Arc<Shared>);

impl Workload for SearchCodeDate {
    fn name(&self) -> &'static str {
        "search-code-date"
    }
    fn request(&self, client: usize, i: u64) -> Request {
        let mut rng = self.0.rng(5, client, i);
        let code = rng.pick(OBS_CODES);
        // Months within the last five years of the data set (which ends mid-2025).
        let month = rng.below(60);
        let (year, month) = (2020 + month / 12, 1 + month % 12);
        let (next_year, next_month) = if month == 12 {
            (year + 1, 1)
        } else {
            (year, month + 1)
        };
        get(format!(
            "Observation?code=http%3A%2F%2Floinc.org%7C{code}\
             &date=ge{year}-{month:02}-01&date=lt{next_year}-{next_month:02}-01"
        ))
    }
}

/// `search-family`: PDS-style trace by family name and birth date.
struct SearchFamily(Arc<Shared>);

impl Workload for SearchFamily {
    fn name(&self) -> &'static str {
        "search-family"
    }
    fn request(&self, client: usize, i: u64) -> Request {
        let mut rng = self.0.rng(6, client, i);
        let (family, born) = rng.pick(&self.0.names);
        let family: String = url::form_urlencoded::byte_serialize(family.as_bytes()).collect();
        get(format!("Patient?family={family}&birthdate={born}"))
    }
}

/// `search-chained`: a patient's observations of one code, the patient
/// named by NHS number through a chain (`subject:Patient.identifier`).
struct SearchChained(Arc<Shared>);

impl Workload for SearchChained {
    fn name(&self) -> &'static str {
        "search-chained"
    }
    fn request(&self, client: usize, i: u64) -> Request {
        let mut rng = self.0.rng(7, client, i);
        let nhs = &self.0.patient(&mut rng).1;
        let code = rng.pick(OBS_CODES);
        get(format!(
            "Observation?subject:Patient.identifier=https%3A%2F%2Ffhir.nhs.uk%2FId%2Fnhs-number%7C{nhs}\
             &code=http%3A%2F%2Floinc.org%7C{code}"
        ))
    }
}

/// `transaction`: a new Patient and an Observation about them.
struct Transaction(Arc<Shared>);

impl Workload for Transaction {
    fn name(&self) -> &'static str {
        "transaction"
    }
    fn request(&self, client: usize, i: u64) -> Request {
        let mut rng = self.0.rng(4, client, i);
        let n = client as u64 * 1_000_003 + i;
        let nhs = crate::synth::bench_nhs_number(self.0.seed ^ 0xB0B, n);
        let uuid = format!(
            "urn:uuid:00000000-0000-4000-8000-{:012x}",
            rng.next_u64() & 0xFFFF_FFFF_FFFF
        );
        let body = json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"fullUrl": uuid, "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
                    "name": [{"family": "Bench", "given": ["Tx"]}],
                    "gender": "female", "birthDate": "1980-05-17"},
                 "request": {"method": "POST", "url": "Patient"}},
                {"resource": {
                    "resourceType": "Observation", "status": "final",
                    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
                    "subject": {"reference": uuid},
                    "effectiveDateTime": "2025-06-01T10:00:00Z",
                    "valueQuantity": {"value": 60 + rng.below(40), "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}},
                 "request": {"method": "POST", "url": "Observation"}}
            ]
        });
        Request {
            method: Method::POST,
            path: String::new(),
            body: serde_json::to_vec(&body).ok(),
            expect: &[200],
        }
    }
}

/// `everything`: `Patient/{id}/$everything`.
struct Everything(Arc<Shared>);

impl Workload for Everything {
    fn name(&self) -> &'static str {
        "everything"
    }
    fn request(&self, client: usize, i: u64) -> Request {
        let mut rng = self.0.rng(5, client, i);
        get(format!(
            "Patient/{}/$everything",
            self.0.patient(&mut rng).0
        ))
    }
}

/// `everything-heavy`: the whole record of a patient with about 500
/// resources, in one page (`Patient/{id}/$everything?_count=1000`).
struct EverythingHeavy(Arc<Shared>);

impl Workload for EverythingHeavy {
    fn name(&self) -> &'static str {
        "everything-heavy"
    }
    fn request(&self, client: usize, i: u64) -> Request {
        let mut rng = self.0.rng(6, client, i);
        let heavy = &self.0.heavy;
        let id = heavy
            .get(rng.below(heavy.len().max(1) as u64) as usize)
            .map_or("none", String::as_str);
        get(format!("Patient/{id}/$everything?_count=1000"))
    }
}
