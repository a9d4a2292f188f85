//! The resume file: per input file, how far the committed batches reach.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{Value, json};

use crate::import::source::Input;

/// How a database URL or server base is named in a checkpoint: as given,
/// less any password in its user part.
#[must_use]
pub fn target_label(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let user = rest[..at].split_once(':').map_or(&rest[..at], |(u, _)| u);
    format!("{scheme}://{user}{}", &rest[at..])
}

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
///
/// It records the target the batches went to (a database URL without its
/// password, or a server's base URL): the file sits beside the input when
/// the target is not a SQLite file, so importing the same folder into a
/// second database would otherwise find every file done and import nothing.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    path: PathBuf,
    target: String,
    files: BTreeMap<String, Progress>,
    /// The other target a loaded file recorded (its progress was set aside).
    set_aside_for: Option<String>,
}

impl Checkpoint {
    #[must_use]
    pub fn new(path: PathBuf, target: &str) -> Self {
        Self {
            path,
            target: target.to_owned(),
            files: BTreeMap::new(),
            set_aside_for: None,
        }
    }

    /// Read `path` (an absent file is an empty checkpoint). A file that
    /// recorded another target is set aside: the import starts from the
    /// beginning (see [`Checkpoint::set_aside_for`]); one written before
    /// targets were recorded is taken as this target's.
    ///
    /// # Errors
    /// The file exists but cannot be read or parsed.
    pub fn load(path: &Path, target: &str) -> anyhow::Result<Self> {
        let mut checkpoint = Self::new(path.to_owned(), target);
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
        if let Some(recorded) = value.get("target").and_then(Value::as_str)
            && recorded != target
        {
            checkpoint.set_aside_for = Some(recorded.to_owned());
            return Ok(checkpoint);
        }
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

    /// The target of a loaded checkpoint that was not this import's (its
    /// progress was not used; the next save replaces it).
    #[must_use]
    pub fn set_aside_for(&self) -> Option<&str> {
        self.set_aside_for.as_deref()
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
        let body = serde_json::to_vec_pretty(
            &json!({"format": 1, "target": self.target, "files": files}),
        )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn input(dir: &Path) -> Input {
        let path = dir.join("Patient.ndjson");
        std::fs::write(&path, "{}\n").unwrap();
        crate::import::source::collect(std::slice::from_ref(&path))
            .unwrap()
            .remove(0)
    }

    #[test]
    fn progress_applies_to_the_target_it_was_recorded_for() {
        let dir = tempfile::tempdir().unwrap();
        let file = input(dir.path());
        let path = dir.path().join("import-checkpoint.json");
        let mut first = Checkpoint::new(path.clone(), "postgres://u@h/db1");
        first.finish(&file);
        first.save().unwrap();

        let same = Checkpoint::load(&path, "postgres://u@h/db1").unwrap();
        assert!(same.progress(&file).is_some_and(|p| p.done));
        assert_eq!(same.set_aside_for(), None);

        let other = Checkpoint::load(&path, "postgres://u@h/db2").unwrap();
        assert!(other.progress(&file).is_none());
        assert_eq!(other.set_aside_for(), Some("postgres://u@h/db1"));

        // A file from before targets were recorded resumes as it did.
        std::fs::write(
            &path,
            std::fs::read_to_string(&path)
                .unwrap()
                .replace("\"target\"", "\"untargeted\""),
        )
        .unwrap();
        let legacy = Checkpoint::load(&path, "postgres://u@h/db2").unwrap();
        assert!(legacy.progress(&file).is_some_and(|p| p.done));
    }

    #[test]
    fn targets_never_carry_a_password() {
        assert_eq!(
            target_label("postgres://carer:s3cret@db.example:5432/records"),
            "postgres://carer@db.example:5432/records"
        );
        assert_eq!(
            target_label("postgres://carer@db.example/records"),
            "postgres://carer@db.example/records"
        );
        assert_eq!(target_label("sqlite://data/c.db"), "sqlite://data/c.db");
    }
}
