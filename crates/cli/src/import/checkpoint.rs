//! The resume file: per input file, how far the committed batches reach.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{Value, json};

use crate::import::source::Input;

/// How far one file got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub size: u64,
    pub modified: u64,
    /// Byte offset after the last committed batch.
    pub offset: u64,
    /// Lines (or Bundle entries) up to that offset.
    pub lines: u64,
    pub done: bool,
}

/// The checkpoint file (JSON), written after every committed batch.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    path: PathBuf,
    files: BTreeMap<String, Progress>,
}

impl Checkpoint {
    #[must_use]
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            files: BTreeMap::new(),
        }
    }

    /// Read `path` (an absent file is an empty checkpoint).
    ///
    /// # Errors
    /// The file exists but cannot be read or parsed.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let mut checkpoint = Self::new(path.to_owned());
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(checkpoint),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        let value: Value = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is not an import checkpoint (remove it or pass --restart)",
                path.display()
            )
        })?;
        if let Some(files) = value.get("files").and_then(Value::as_object) {
            for (key, p) in files {
                let n = |k: &str| p.get(k).and_then(Value::as_u64).unwrap_or(0);
                checkpoint.files.insert(
                    key.clone(),
                    Progress {
                        size: n("size"),
                        modified: n("modified"),
                        offset: n("offset"),
                        lines: n("lines"),
                        done: p.get("done").and_then(Value::as_bool).unwrap_or(false),
                    },
                );
            }
        }
        Ok(checkpoint)
    }

    /// This file's progress, if the file is unchanged since it was recorded.
    #[must_use]
    pub(crate) fn progress(&self, input: &Input) -> Option<&Progress> {
        self.files
            .get(&input.key)
            .filter(|p| p.size == input.size && p.modified == input.modified)
    }

    pub(crate) fn record(&mut self, input: &Input, offset: u64, lines: u64, eof: bool) {
        let entry = self.files.entry(input.key.clone()).or_insert(Progress {
            size: input.size,
            modified: input.modified,
            offset: 0,
            lines: 0,
            done: false,
        });
        *entry = Progress {
            size: input.size,
            modified: input.modified,
            offset: if eof {
                input.size
            } else {
                offset.max(entry.offset)
            },
            lines: lines.max(entry.lines),
            done: eof,
        };
    }

    pub(crate) fn finish(&mut self, input: &Input) {
        let lines = self.files.get(&input.key).map_or(0, |p| p.lines);
        self.record(input, input.size, lines, true);
    }

    /// Write the checkpoint (atomically: a temporary file, then rename).
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn save(&self) -> anyhow::Result<()> {
        let files: serde_json::Map<String, Value> = self
            .files
            .iter()
            .map(|(k, p)| {
                (
                    k.clone(),
                    json!({"size": p.size, "modified": p.modified, "offset": p.offset, "lines": p.lines, "done": p.done}),
                )
            })
            .collect();
        let body = serde_json::to_vec_pretty(&json!({"format": 1, "files": files}))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, body).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        Ok(())
    }
}
