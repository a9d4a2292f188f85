//! `carelayer import`: load NDJSON files or folders (and Bundle JSON files)
//! into a store (in-process, through `records`) or a running server.
//!
//! - NDJSON lines are parsed and imported in batches (`--batch`, default
//!   500) with up to `--concurrency` batches in flight; each batch is one
//!   atomic write set, validated, indexed and audited as one `import` event
//!   per patient (see `carelayer_records::Records::import`).
//! - A Bundle file of type `transaction`/`batch` is processed as that Bundle;
//!   any other Bundle (`collection`, `searchset`…) contributes its entries'
//!   resources; a single resource JSON file is one resource.
//! - Through a server (`--server FHIR_BASE`): `POST [base]/$import` with an
//!   NDJSON body (carelayer), or `--via transaction`: transaction Bundles of
//!   PUTs for any FHIR server (invalid resources are refused locally first,
//!   with the same validator).
//! - Resumable: a checkpoint file records, per input file, the lines
//!   committed; a re-run continues after them (`--restart` starts over). The
//!   first batches after a resume skip resources already stored with the
//!   same content, so a batch committed just before an interruption is not
//!   written twice.
//! - Nothing is dropped silently: every rejected line is reported as
//!   `file:line: reason`, on screen (the first few) and in a file.
//!
//! Map: `source` (files → batches), `sink` (batches → a store or a server),
//! `checkpoint`, this file (the command, progress and report).

mod checkpoint;
mod sink;
mod source;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use carelayer_records::{AuditChannel, Caller, Records, RecordsOptions};
use clap::{Args, ValueEnum};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use checkpoint::Checkpoint;
pub use sink::{BatchResult, Sink};
use source::{Batch, Input};

/// How `--server` imports are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// `POST [base]/$import` with an NDJSON body (carelayer servers).
    Import,
    /// Transaction Bundles of PUTs (any FHIR server).
    Transaction,
}

/// `carelayer import` options.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// NDJSON files (`.ndjson`, `.jsonl`), Bundle or resource JSON files, or
    /// folders of them (their top level; `manifest.json` is skipped).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Load into this database in-process (`sqlite://PATH`; default
    /// `sqlite://carelayer-data/carelayer.db`).
    #[arg(long, env = "CARELAYER_DATABASE", conflicts_with = "server")]
    pub database: Option<String>,
    /// Load through the running server at this FHIR base URL instead.
    #[arg(long)]
    pub server: Option<String>,
    /// Bearer token for `--server`.
    #[arg(
        long,
        env = "CARELAYER_TOKEN",
        hide_env_values = true,
        requires = "server"
    )]
    pub token: Option<String>,
    /// How to send to `--server`.
    #[arg(long, value_enum, default_value_t = Via::Import)]
    pub via: Via,
    /// Resources per batch (one atomic write, one request).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    /// Checkpoint file (default: `import-checkpoint.json` in the SQLite
    /// database's folder, or `.carelayer-import-checkpoint.json` beside the
    /// first input for `--server`).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Ignore any checkpoint and import everything again.
    #[arg(long)]
    pub restart: bool,
    /// Where the rejected lines are written (default: `import-rejected.txt`
    /// beside the checkpoint).
    #[arg(long)]
    pub rejects: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Stop after this many batches, as an interruption would (tests).
    #[arg(long, hide = true)]
    pub stop_after_batches: Option<u64>,
}

impl ImportArgs {
    /// Defaults for the given inputs (used by the bench).
    #[must_use]
    pub fn new(paths: Vec<PathBuf>) -> Self {
        Self {
            paths,
            database: None,
            server: None,
            token: None,
            via: Via::Import,
            batch: 500,
            concurrency: 2,
            checkpoint: None,
            restart: false,
            rejects: None,
            no_progress: false,
            stop_after_batches: None,
        }
    }

    /// The database an in-process import loads into.
    fn database_url(&self) -> &str {
        self.database
            .as_deref()
            .unwrap_or(crate::config::DEFAULT_DATABASE)
    }
}

/// A rejected line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// `file:line` (or `file` for a whole Bundle file).
    pub at: String,
    pub reason: String,
}

/// What an import run did.
#[derive(Debug, Clone, Default)]
pub struct ImportSummary {
    pub files: usize,
    /// Lines (resources) read in this run.
    pub lines: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub rejected: Vec<Rejection>,
    /// Lines skipped because the checkpoint says they were committed.
    pub resumed_lines: u64,
    pub elapsed: Duration,
    /// True when stopped early (`--stop-after-batches`).
    pub interrupted: bool,
    pub rejects_file: Option<PathBuf>,
}

impl ImportSummary {
    #[must_use]
    pub fn written(&self) -> u64 {
        self.created + self.updated
    }

    /// Resources written per second.
    #[must_use]
    pub fn rate(&self) -> f64 {
        self.written() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Run `carelayer import`.
///
/// # Errors
/// Unreadable inputs, an unusable database or server, store errors.
pub async fn run(args: ImportArgs) -> anyhow::Result<()> {
    let (sink, records) = match &args.server {
        Some(server) => (
            Sink::server(server, args.token.as_deref(), args.via, args.concurrency)?,
            None,
        ),
        None => {
            let store = crate::backend::open(args.database_url()).await?;
            let records = Arc::new(Records::new(store, RecordsOptions::default()));
            (
                Sink::Records {
                    records: Arc::clone(&records),
                    caller: Caller::local_operator(AuditChannel::Cli),
                },
                Some(records),
            )
        }
    };
    let result = execute(&args, &sink).await;
    if let Some(records) = records {
        records.close().await;
    }
    let summary = result?;
    print_report(&summary);
    Ok(())
}

fn default_checkpoint(args: &ImportArgs) -> PathBuf {
    if let Some(path) = &args.checkpoint {
        return path.clone();
    }
    if args.server.is_none()
        && let Some(path) = crate::backend::sqlite_path(args.database_url())
    {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        return dir.join("import-checkpoint.json");
    }
    let first = args.paths.first().map_or(Path::new("."), PathBuf::as_path);
    let dir = if first.is_dir() {
        first
    } else {
        first
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    };
    dir.join(".carelayer-import-checkpoint.json")
}

/// Import `args.paths` into `sink`, with checkpointing and a report.
///
/// # Errors
/// Unreadable inputs, store or server errors (the checkpoint keeps what was
/// committed).
pub async fn execute(args: &ImportArgs, sink: &Sink) -> anyhow::Result<ImportSummary> {
    if args.batch == 0 || args.concurrency == 0 {
        bail!("--batch and --concurrency must be at least 1");
    }
    let started = Instant::now();
    let inputs = source::collect(&args.paths)?;
    let checkpoint_path = default_checkpoint(args);
    let target = checkpoint::target_label(
        args.server
            .as_deref()
            .unwrap_or_else(|| args.database_url()),
    );
    let mut checkpoint = if args.restart {
        Checkpoint::new(checkpoint_path.clone(), &target)
    } else {
        Checkpoint::load(&checkpoint_path, &target)?
    };
    if let Some(other) = checkpoint.set_aside_for() {
        println!(
            "import: {} recorded an import into {other}; this one is into {target}, so it starts from the beginning",
            checkpoint_path.display()
        );
    }
    let rejects_path = args.rejects.clone().unwrap_or_else(|| {
        checkpoint_path
            .parent()
            .unwrap_or(Path::new("."))
            .join("import-rejected.txt")
    });
    let resuming = inputs.iter().any(|i| checkpoint.progress(i).is_some());
    let mut rejects_file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resuming)
        .truncate(!resuming)
        .open(&rejects_path)
        .with_context(|| format!("cannot write {}", rejects_path.display()))?;

    let total_bytes: u64 = inputs.iter().map(|i| i.size).sum();
    let done_bytes: u64 = inputs
        .iter()
        .map(|i| checkpoint.progress(i).map_or(0, |p| p.offset.min(i.size)))
        .sum();
    let bar = if args.no_progress {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg} (ETA {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(done_bytes);

    let mut summary = ImportSummary {
        files: inputs.len(),
        rejects_file: Some(rejects_path.clone()),
        ..ImportSummary::default()
    };
    // In-process, the store may prepare for a load this size (PostgreSQL
    // builds its secondary indexes once at the end when the load dwarfs
    // what it holds). A rough count is enough: the store only compares it
    // with what it holds, and synthetic and real NDJSON resources average
    // about a kilobyte.
    let bulk = match sink {
        Sink::Records { records, caller } => {
            let expected = (total_bytes - done_bytes.min(total_bytes)) / BYTES_PER_RESOURCE;
            // Only a hint: if the store cannot act on it, the load goes
            // ahead as it would have without.
            match records.begin_bulk_load(caller, expected).await {
                Ok(()) => Some((records, caller)),
                Err(e) => {
                    tracing::warn!(error = %e, "the store could not prepare for a bulk load");
                    None
                }
            }
        }
        Sink::Server { .. } => None,
    };
    let loaded = load(
        args,
        sink,
        &inputs,
        &mut checkpoint,
        &mut rejects_file,
        &bar,
        &mut summary,
    )
    .await;
    // Also after a failure: what the store put off must not stay undone.
    let ended = match bulk {
        Some((records, caller)) => records
            .end_bulk_load(caller)
            .await
            .map_err(|e| anyhow::anyhow!("cannot finish the bulk load: {e}")),
        None => Ok(()),
    };
    loaded?;
    ended?;
    bar.finish_and_clear();
    let _ = rejects_file.flush();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Bytes of input per resource, for the rough count `begin_bulk_load` takes.
const BYTES_PER_RESOURCE: u64 = 1_000;

/// Every input's batches into `sink`, recording progress in `checkpoint`.
async fn load(
    args: &ImportArgs,
    sink: &Sink,
    inputs: &[Input],
    checkpoint: &mut Checkpoint,
    rejects_file: &mut std::fs::File,
    bar: &ProgressBar,
    summary: &mut ImportSummary,
) -> anyhow::Result<()> {
    let mut batches_done = 0u64;
    let run_started = Instant::now();
    'files: for input in inputs {
        let progress = checkpoint.progress(input).cloned();
        if progress.as_ref().is_some_and(|p| p.done) {
            summary.resumed_lines += progress.as_ref().map_or(0, |p| p.lines);
            continue;
        }
        let (start_offset, start_line) = progress.as_ref().map_or((0, 0), |p| (p.offset, p.lines));
        summary.resumed_lines += start_line;
        // After a resume, the first batches may already be stored.
        let mut verify_left = if start_line > 0 { args.concurrency } else { 0 };
        let mut reader = source::Reader::open(input, start_offset, start_line)?;
        let mut in_flight = FuturesOrdered::new();
        loop {
            while in_flight.len() < args.concurrency {
                let Some(batch) = reader.next_batch(args.batch)? else {
                    break;
                };
                let verify = verify_left > 0;
                verify_left = verify_left.saturating_sub(1);
                // Each batch is its own task: polled here, on the thread
                // that reads and parses the input, a batch's validation and
                // index extraction shared that one thread with the reading
                // and left the runtime's workers idle (at 10,000 patients
                // the import's main thread was the busiest, at 100%).
                let (sink, input) = (sink.clone(), input.clone());
                in_flight.push_back(tokio::spawn(async move {
                    submit(&sink, &input, batch, verify).await
                }));
            }
            let Some(done) = in_flight.next().await else {
                break;
            };
            let (batch_end, result) = done.context("an import batch's task failed")?;
            let result: BatchResult = result?;
            summary.lines += result.lines;
            summary.created += result.created;
            summary.updated += result.updated;
            summary.unchanged += result.unchanged;
            for r in &result.rejected {
                let _ = writeln!(rejects_file, "{}: {}", r.at, r.reason);
            }
            summary.rejected.extend(result.rejected);
            checkpoint.record(input, batch_end.offset, batch_end.lines, batch_end.eof);
            checkpoint.save()?;
            bar.set_position(done_bytes_now(inputs, checkpoint));
            let secs = run_started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "{} written, {:.0}/s, {} rejected",
                summary.created + summary.updated,
                (summary.created + summary.updated) as f64 / secs,
                summary.rejected.len()
            ));
            batches_done += 1;
            if args.stop_after_batches.is_some_and(|n| batches_done >= n) {
                // Let what is in flight finish (as a killed process would
                // have, or not: the resume check covers both).
                while let Some(done) = in_flight.next().await {
                    let (_, result) = done.context("an import batch's task failed")?;
                    result?;
                }
                summary.interrupted = true;
                break 'files;
            }
        }
        checkpoint.finish(input);
        checkpoint.save()?;
    }
    Ok(())
}

fn done_bytes_now(inputs: &[Input], checkpoint: &Checkpoint) -> u64 {
    inputs
        .iter()
        .map(|i| {
            checkpoint
                .progress(i)
                .map_or(0, |p| if p.done { i.size } else { p.offset.min(i.size) })
        })
        .sum()
}

/// Where a batch ends in its file (what the checkpoint records).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchEnd {
    pub offset: u64,
    pub lines: u64,
    pub eof: bool,
}

async fn submit(
    sink: &Sink,
    input: &Input,
    batch: Batch,
    verify: bool,
) -> (BatchEnd, anyhow::Result<BatchResult>) {
    let end = BatchEnd {
        offset: batch.end_offset,
        lines: batch.end_line,
        eof: batch.eof,
    };
    let result = sink.send(input, batch, verify).await;
    (end, result)
}

fn print_report(s: &ImportSummary) {
    println!(
        "import: {} file(s), {} resources read, {} written ({} created, {} updated), {} unchanged, {} rejected in {:.1} s ({:.0} resources/s){}",
        s.files,
        s.lines,
        s.written(),
        s.created,
        s.updated,
        s.unchanged,
        s.rejected.len(),
        s.elapsed.as_secs_f64(),
        s.rate(),
        if s.interrupted {
            " (stopped early)"
        } else {
            ""
        }
    );
    if s.resumed_lines > 0 {
        println!(
            "  resumed: {} lines were already committed by an earlier run",
            s.resumed_lines
        );
    }
    const SHOWN: usize = 20;
    for r in s.rejected.iter().take(SHOWN) {
        println!("  rejected {}: {}", r.at, r.reason);
    }
    if s.rejected.len() > SHOWN {
        println!("  … and {} more", s.rejected.len() - SHOWN);
    }
    if let Some(path) = &s.rejects_file
        && !s.rejected.is_empty()
    {
        println!("  every rejected line is listed in {}", path.display());
    }
}
