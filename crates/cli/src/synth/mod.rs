//! `carelayer synth`: a realistic synthetic UK population as NDJSON (one
//! file per resource type) and, optionally, transaction Bundles.
//!
//! Patients carry valid 999-range NHS numbers (Modulus 11), names, addresses
//! with real-format postcodes, a registered GP practice (an Organization with
//! an ODS code) and GPs; their records hold encounters, SNOMED-coded
//! conditions, LOINC/SNOMED observations with UCUM units over years, dm+d
//! medication requests (repeats and acute courses), allergies,
//! immunisations, a few percent national data opt-out and Type 1 Consents,
//! some S-flag (restricted) patients and some sensitive records
//! (`meta.security`). About 100–500 resources a patient, with a long tail.
//!
//! Output is deterministic for a seed: every patient draws from its own
//! random stream, patients are generated in fixed chunks (in parallel) and
//! written in order, and "today" is fixed.
//!
//! Map:
//! - [`SynthArgs`], [`run`], [`generate`]: the command and its library form.
//! - `world`: practices, trusts, practitioners.
//! - `patient`: one patient's record.
//! - `tables`: names, places and clinical codes.
//! - `json`, `rng`: the writer helpers and the PRNG/calendar.

mod json;
mod patient;
mod rng;
mod tables;
mod world;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

pub use patient::MAX_PATIENTS;
/// The generator's PRNG, shared with the bench's workloads.
pub(crate) use rng::Rng;

/// A valid 999-range NHS number (the bench's transaction workload).
pub(crate) fn bench_nhs_number(seed: u64, n: u64) -> String {
    patient::nhs_number(seed, n % MAX_PATIENTS + 1)
}

/// The resource types written, in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Organization,
    Practitioner,
    Patient,
    Encounter,
    Condition,
    Observation,
    MedicationRequest,
    AllergyIntolerance,
    Immunization,
    Consent,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Organization,
        Kind::Practitioner,
        Kind::Patient,
        Kind::Encounter,
        Kind::Condition,
        Kind::Observation,
        Kind::MedicationRequest,
        Kind::AllergyIntolerance,
        Kind::Immunization,
        Kind::Consent,
    ];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Kind::Organization => "Organization",
            Kind::Practitioner => "Practitioner",
            Kind::Patient => "Patient",
            Kind::Encounter => "Encounter",
            Kind::Condition => "Condition",
            Kind::Observation => "Observation",
            Kind::MedicationRequest => "MedicationRequest",
            Kind::AllergyIntolerance => "AllergyIntolerance",
            Kind::Immunization => "Immunization",
            Kind::Consent => "Consent",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Where generated resources go.
pub(crate) trait Sink {
    /// One resource, as compact JSON (`{"resourceType":…,"id":…,…}`).
    fn emit(&mut self, kind: Kind, json: &str);
}

/// `carelayer synth` options.
#[derive(Debug, Clone, Args)]
pub struct SynthArgs {
    /// Number of patients.
    #[arg(long, default_value_t = 100)]
    pub patients: u64,
    /// Random seed: the same seed gives byte-identical output.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output folder (created; existing files of the same names are replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write transaction Bundles (PUTs of about 500 entries, whole
    /// patients) under `OUT/bundles/`.
    #[arg(long)]
    pub bundles: bool,
    /// Generator threads (default: the number of CPUs). Output does not
    /// depend on it.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// What a generation wrote.
#[derive(Debug, Clone, Default)]
pub struct SynthSummary {
    pub patients: u64,
    /// Resources per type, in [`Kind::ALL`] order.
    pub counts: [u64; 10],
    pub bundles: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl SynthSummary {
    #[must_use]
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Resources generated per second.
    #[must_use]
    pub fn rate(&self) -> f64 {
        self.total() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Run `carelayer synth`.
///
/// # Errors
/// Bad arguments, or the output cannot be written.
pub fn run(args: &SynthArgs) -> anyhow::Result<()> {
    let summary = generate(
        &args.out,
        args.patients,
        args.seed,
        args.bundles,
        args.threads,
    )?;
    println!(
        "synth: {} patients, {} resources ({:.1} MiB) in {:.2} s: {:.0} resources/s",
        summary.patients,
        summary.total(),
        summary.bytes as f64 / (1024.0 * 1024.0),
        summary.elapsed.as_secs_f64(),
        summary.rate()
    );
    for kind in Kind::ALL {
        println!("  {:<20} {:>10}", kind.name(), summary.counts[kind.index()]);
    }
    if args.bundles {
        println!("  {:<20} {:>10}", "transaction Bundles", summary.bundles);
    }
    println!("written to {}", args.out.display());
    Ok(())
}

/// Patients per chunk: the unit of parallel work and of Bundle boundaries.
const CHUNK: u64 = 32;
/// A transaction Bundle is closed once it holds this many entries (at a
/// patient boundary).
const BUNDLE_ENTRIES: usize = 500;

/// Generate `patients` patients with `seed` into `out`.
///
/// # Errors
/// `patients` out of range, or an I/O error.
pub fn generate(
    out: &Path,
    patients: u64,
    seed: u64,
    bundles: bool,
    threads: Option<usize>,
) -> anyhow::Result<SynthSummary> {
    if patients == 0 || patients > MAX_PATIENTS {
        bail!("--patients must be between 1 and {MAX_PATIENTS}");
    }
    let started = Instant::now();
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create the output folder {}", out.display()))?;
    let bundle_dir = out.join("bundles");
    if bundles {
        if bundle_dir.exists() {
            std::fs::remove_dir_all(&bundle_dir)
                .with_context(|| format!("cannot clear {}", bundle_dir.display()))?;
        }
        std::fs::create_dir_all(&bundle_dir)
            .with_context(|| format!("cannot create {}", bundle_dir.display()))?;
    }
    let mut files = Vec::with_capacity(Kind::ALL.len());
    for kind in Kind::ALL {
        let path = out.join(format!("{}.ndjson", kind.name()));
        let file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        files.push(BufWriter::with_capacity(1 << 20, file));
    }
    let mut summary = SynthSummary {
        patients,
        ..SynthSummary::default()
    };

    let world = world::World::new(seed, patients);
    let mut head = Chunk::new(bundles);
    let mut buf = String::with_capacity(8192);
    world.emit(&mut head, &mut buf);
    head.finish();
    write_chunk(&mut files, &bundle_dir, 0, head, &mut summary)?;

    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .clamp(1, 64);
    let chunks = patients.div_ceil(CHUNK);
    let mut next = 0u64;
    while next < chunks {
        let group: Vec<u64> = (next..chunks.min(next + threads as u64)).collect();
        next += group.len() as u64;
        let outputs: Vec<Chunk> = std::thread::scope(|scope| {
            let handles: Vec<_> = group
                .iter()
                .map(|&c| {
                    let world = &world;
                    scope.spawn(move || {
                        let mut chunk = Chunk::new(bundles);
                        let mut buf = String::with_capacity(8192);
                        let first = c * CHUNK + 1;
                        let last = ((c + 1) * CHUNK).min(patients);
                        for index in first..=last {
                            patient::generate(world, index, &mut chunk, &mut buf);
                            chunk.end_patient();
                        }
                        chunk.finish();
                        chunk
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("a generator thread panicked"))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })?;
        for (c, chunk) in group.into_iter().zip(outputs) {
            write_chunk(&mut files, &bundle_dir, c + 1, chunk, &mut summary)?;
        }
    }
    for mut f in files {
        f.flush().context("cannot write the NDJSON output")?;
    }
    summary.elapsed = started.elapsed();
    let manifest = serde_json::json!({
        "generator": "carelayer synth",
        "format": 1,
        "seed": seed,
        "patients": patients,
        "bundles": bundles,
        "resources": Kind::ALL.iter().map(|k| (k.name().to_owned(), serde_json::json!(summary.counts[k.index()]))).collect::<serde_json::Map<_, _>>(),
        "total": summary.total(),
    });
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )
    .context("cannot write manifest.json")?;
    Ok(summary)
}

fn write_chunk(
    files: &mut [BufWriter<File>],
    bundle_dir: &Path,
    chunk_no: u64,
    chunk: Chunk,
    summary: &mut SynthSummary,
) -> anyhow::Result<()> {
    for (i, text) in chunk.ndjson.iter().enumerate() {
        files[i]
            .write_all(text.as_bytes())
            .context("cannot write the NDJSON output")?;
        summary.counts[i] += chunk.counts[i];
        summary.bytes += text.len() as u64;
    }
    for (k, bundle) in chunk.bundles.iter().flatten().enumerate() {
        let path = bundle_dir.join(format!("{chunk_no:06}-{k:03}.json"));
        std::fs::write(&path, bundle)
            .with_context(|| format!("cannot write {}", path.display()))?;
        summary.bundles += 1;
    }
    Ok(())
}

/// One chunk's output, kept in memory until it is written in order.
struct Chunk {
    ndjson: Vec<String>,
    counts: [u64; 10],
    bundles: Option<Vec<String>>,
    pending: String,
    pending_entries: usize,
}

impl Chunk {
    fn new(bundles: bool) -> Self {
        Self {
            ndjson: vec![String::new(); Kind::ALL.len()],
            counts: [0; 10],
            bundles: bundles.then(Vec::new),
            pending: String::new(),
            pending_entries: 0,
        }
    }

    fn end_patient(&mut self) {
        if self.pending_entries >= BUNDLE_ENTRIES {
            self.flush_bundle();
        }
    }

    fn finish(&mut self) {
        if self.pending_entries > 0 {
            self.flush_bundle();
        }
    }

    fn flush_bundle(&mut self) {
        if let Some(bundles) = self.bundles.as_mut() {
            let mut bundle = String::with_capacity(self.pending.len() + 64);
            bundle.push_str(r#"{"resourceType":"Bundle","type":"transaction","entry":["#);
            bundle.push_str(&self.pending);
            bundle.push_str("]}\n");
            bundles.push(bundle);
        }
        self.pending.clear();
        self.pending_entries = 0;
    }
}

/// The `id` of a resource written by this module (`"id"` is its second key).
fn id_of(json: &str) -> &str {
    json.split_once(r#""id":""#)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or("", |(id, _)| id)
}

impl Sink for Chunk {
    fn emit(&mut self, kind: Kind, json: &str) {
        let text = &mut self.ndjson[kind.index()];
        text.push_str(json);
        text.push('\n');
        self.counts[kind.index()] += 1;
        if self.bundles.is_some() {
            if self.pending_entries > 0 {
                self.pending.push(',');
            }
            self.pending.push_str(r#"{"resource":"#);
            self.pending.push_str(json);
            self.pending
                .push_str(r#","request":{"method":"PUT","url":""#);
            self.pending.push_str(kind.name());
            self.pending.push('/');
            self.pending.push_str(id_of(json));
            self.pending.push_str(r#""}}"#);
            self.pending_entries += 1;
        }
    }
}
