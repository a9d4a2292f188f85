//! `carelayer audit …` and the server's checkpoint signing.
//!
//! - `carelayer audit verify [--database URL] [--checkpoints FILE]…`:
//!   re-walk the ledger and its signed checkpoints; exit non-zero naming the
//!   first entry altered, deleted, inserted or reordered, or truncation
//!   after the last checkpoint.
//! - `carelayer audit checkpoint --export FILE`: sign the current head now
//!   and write every checkpoint (with the public key) to FILE, so an operator
//!   can keep heads outside the database: an attacker who rewrites both the
//!   ledger and the checkpoint table is still caught by the exported file.
//!
//! The signing key: generated on first start, kept as
//! `audit-signing.key` (mode 0600) next to the SQLite file, or in
//! `--key-dir` for PostgreSQL. Verification trusts the public half of that
//! key plus any `--public-key` given (a verifier on another machine should
//! pass the key it trusts rather than read it from the machine it checks).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use carelayer_audit::{
    CheckpointFile, SigningKey, VerifyingKey, generate_signing_key, signing_key_from_text,
    signing_key_to_text, verifying_key_from_text, verifying_key_to_text,
};
use carelayer_records::{AuditChannel, Caller, Records, RecordsOptions};
use clap::{Args, Subcommand};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backend;
use crate::config::DatabaseArgs;

/// The key file's name inside the key folder.
pub const KEY_FILE: &str = "audit-signing.key";

/// `carelayer audit` options.
#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AuditCommand {
    /// Re-walk the audit ledger and its signed checkpoints; exit non-zero
    /// naming the first tampered entry.
    Verify(VerifyArgs),
    /// Sign the current ledger head and export every checkpoint.
    Checkpoint(CheckpointArgs),
}

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Also check these exported checkpoint files (`audit checkpoint --export`).
    #[arg(long = "checkpoints")]
    pub checkpoints: Vec<PathBuf>,
    /// Folder of the signing key (default: next to the SQLite file).
    #[arg(long, env = "CARELAYER_KEY_DIR")]
    pub key_dir: Option<PathBuf>,
    /// A trusted checkpoint public key (`carelayer-audit-ed25519-public-v1:…`
    /// or 64 hex digits); may repeat.
    #[arg(long = "public-key")]
    pub public_keys: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct CheckpointArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Write the checkpoints (JSON) to this file.
    #[arg(long)]
    pub export: PathBuf,
    /// Folder of the signing key (default: next to the SQLite file).
    #[arg(long, env = "CARELAYER_KEY_DIR")]
    pub key_dir: Option<PathBuf>,
}

/// Run `carelayer audit …`.
///
/// # Errors
/// Tampering found (the message names the entry), or the database or key
/// cannot be used.
pub async fn run(args: AuditArgs) -> anyhow::Result<()> {
    match args.command {
        AuditCommand::Verify(a) => verify(a).await,
        AuditCommand::Checkpoint(a) => checkpoint(a).await,
    }
}

/// Read the key in `dir`, if there is one.
///
/// # Errors
/// The file exists but cannot be read or is not a key.
pub fn load_key(dir: &Path) -> anyhow::Result<Option<SigningKey>> {
    let path = dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(signing_key_from_text(&text).with_context(|| {
            format!("{} is not an audit signing key", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Read the key in `dir`, generating it (mode 0600) on first use.
///
/// # Errors
/// The folder or file cannot be created or read.
pub fn load_or_create_key(dir: &Path) -> anyhow::Result<SigningKey> {
    if let Some(key) = load_key(dir)? {
        return Ok(key);
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the key folder {}", dir.display()))?;
    let key = generate_signing_key()?;
    let path = dir.join(KEY_FILE);
    let mut options = std::fs::OpenOptions::new();
    // create_new: never overwrite a key another process just wrote.
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Owner-only from the first byte, not chmod after the fact.
        options.mode(0o600);
    }
    match options.open(&path) {
        Ok(mut file) => {
            file.write_all(signing_key_to_text(&key).as_bytes())
                .and_then(|()| file.write_all(b"\n"))
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_key(dir)?
            .with_context(|| format!("{} vanished while being created", path.display())),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

/// Open the records service over an existing database (never creating one:
/// verifying a mistyped path must not report an empty, intact ledger).
async fn open_existing(database: &str) -> anyhow::Result<Records> {
    if let Some(path) = backend::sqlite_path(database)
        && !path.exists()
    {
        bail!("no database at {}", path.display());
    }
    let store = backend::open(database).await?;
    Ok(Records::new(store, RecordsOptions::default()))
}

async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let mut trusted: Vec<VerifyingKey> = Vec::new();
    for text in &args.public_keys {
        trusted.push(verifying_key_from_text(text).context("--public-key")?);
    }
    let dir = crate::backend::key_dir(
        &args.db.database,
        args.key_dir.as_deref(),
        "the audit signing key",
    )?;
    if let Some(key) = load_key(&dir)? {
        trusted.push(key.verifying_key());
    }
    let mut extra = Vec::new();
    for file in &args.checkpoints {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let parsed = CheckpointFile::from_json(&text)
            .with_context(|| format!("{} is not a checkpoint export", file.display()))?;
        extra.extend(parsed.checkpoints);
    }
    let records = open_existing(&args.db.database).await?;
    let caller = Caller::local_operator(AuditChannel::Cli);
    let report = records.verify_audit(&caller, &extra, &trusted).await;
    records.close().await;
    let report = report?;
    let s = &report.summary;
    if let Some(tamper) = &report.tamper {
        bail!(
            "audit ledger TAMPERED at entry {} ({}): {tamper}. Verified {} entries intact before it.",
            tamper.seq(),
            tamper.kind(),
            s.entries
        );
    }
    println!(
        "audit ledger intact: {} entries, head {} ({}); {} signed checkpoint(s) matched{}",
        s.entries,
        s.last_seq,
        s.head_hash
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        s.checkpoints_matched,
        s.last_checkpoint_seq
            .map(|c| format!(", the last at entry {c}"))
            .unwrap_or_default()
    );
    if s.last_checkpoint_seq.unwrap_or(0) < s.last_seq {
        println!(
            "note: entries after the last checkpoint are chained but protected against truncation only once the next checkpoint is signed"
        );
    }
    Ok(())
}

async fn checkpoint(args: CheckpointArgs) -> anyhow::Result<()> {
    let dir = crate::backend::key_dir(
        &args.db.database,
        args.key_dir.as_deref(),
        "the audit signing key",
    )?;
    let key = load_or_create_key(&dir)?;
    let records = open_existing(&args.db.database).await?;
    let result = async {
        records.audit_checkpoint(&key).await?;
        records.audit_checkpoints().await
    }
    .await;
    records.close().await;
    let checkpoints = result?;
    let file = CheckpointFile {
        public_keys: vec![key.verifying_key()],
        checkpoints,
    };
    std::fs::write(&args.export, file.to_json())
        .with_context(|| format!("cannot write {}", args.export.display()))?;
    let last = file.checkpoints.iter().map(|c| c.seq).max().unwrap_or(0);
    println!(
        "exported {} checkpoint(s), the last at entry {last}, to {} (public key {})",
        file.checkpoints.len(),
        args.export.display(),
        verifying_key_to_text(&key.verifying_key())
    );
    Ok(())
}

/// The server's background checkpoint signer.
pub struct Checkpointer {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// How often the signer looks at the chain's head. Cheap (it reads the
/// appended seq, without writing deferred entries out: see
/// `Records::audit_appended_seq`), and bounds how far past
/// `checkpoint_every` the ledger can run.
const POLL: Duration = Duration::from_millis(500);

impl Checkpointer {
    /// Sign a checkpoint every `records.options().audit.checkpoint_every`
    /// entries or `checkpoint_interval`, whichever comes first (and none
    /// while nothing new was recorded).
    #[must_use]
    pub fn start(records: Arc<Records>, key: SigningKey) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let every = records.options().audit.checkpoint_every.max(1);
        let interval = records.options().audit.checkpoint_interval;
        let task = tokio::spawn(async move {
            let mut last_seq = -1;
            let mut last_time = Instant::now();
            loop {
                let head = match records.audit_appended_seq().await {
                    Ok(seq) => seq,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the audit ledger head");
                        last_seq
                    }
                };
                let due = head > last_seq
                    && (last_seq < 0
                        || u64::try_from(head - last_seq).unwrap_or(0) >= every
                        || last_time.elapsed() >= interval);
                if due {
                    match records.audit_checkpoint(&key).await {
                        Ok(_) => {
                            last_seq = head;
                            last_time = Instant::now();
                        }
                        Err(e) => tracing::warn!(error = %e, "audit checkpoint failed"),
                    }
                }
                tokio::select! {
                    _ = stopped.changed() => return,
                    () = tokio::time::sleep(POLL) => {}
                }
            }
        });
        Self { stop, task }
    }

    /// Stop the signer (the caller signs a final checkpoint afterwards).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}
