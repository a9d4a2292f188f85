//! Input files → batches of resources.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InputKind {
    /// One resource per line.
    Ndjson,
    /// A JSON document: a Bundle or a single resource.
    Json,
}

/// One input file.
#[derive(Debug, Clone)]
pub(crate) struct Input {
    pub path: PathBuf,
    /// The absolute path: the checkpoint's key.
    pub key: String,
    pub kind: InputKind,
    pub size: u64,
    /// Modification time, seconds since the epoch (a changed file restarts).
    pub modified: u64,
}

impl Input {
    /// How rejections name a place in this file.
    pub(crate) fn at(&self, line: u64) -> String {
        format!("{}:{line}", self.path.display())
    }
}

/// The files named by `paths` (folders: their top-level NDJSON and JSON
/// files, sorted, `manifest.json` and hidden files excepted: the import's
/// own checkpoint, `.carelayer-import-checkpoint.json`, lies in the folder
/// when the target is a server or PostgreSQL, and a second import of the
/// folder read it as data and reported it rejected).
pub(crate) fn collect(paths: &[PathBuf]) -> anyhow::Result<Vec<Input>> {
    let mut files = Vec::new();
    for path in paths {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot list {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && kind_of(p).is_some())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_none_or(|n| n != "manifest.json" && !n.starts_with('.'))
                })
                .collect();
            found.sort();
            files.extend(found);
        } else {
            if kind_of(path).is_none() {
                bail!(
                    "{}: not an NDJSON (.ndjson, .jsonl) or JSON (.json) file",
                    path.display()
                );
            }
            files.push(path.clone());
        }
    }
    if files.is_empty() {
        bail!("no NDJSON or JSON files found in the given paths");
    }
    files
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            let key = std::fs::canonicalize(&path)
                .unwrap_or_else(|_| path.clone())
                .display()
                .to_string();
            let kind = kind_of(&path).unwrap_or(InputKind::Ndjson);
            Ok(Input {
                path,
                key,
                kind,
                size: meta.len(),
                modified,
            })
        })
        .collect()
}

fn kind_of(path: &Path) -> Option<InputKind> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    if name.ends_with(".ndjson") || name.ends_with(".jsonl") {
        Some(InputKind::Ndjson)
    } else if name.ends_with(".json") {
        Some(InputKind::Json)
    } else {
        None
    }
}

/// One line (or Bundle entry) read.
#[derive(Debug)]
pub(crate) struct Item {
    /// 1-based line (or entry) number.
    pub line: u64,
    /// The raw text (sent as is to a server).
    pub text: String,
    pub parsed: Result<Value, String>,
}

/// What a batch carries.
#[derive(Debug)]
pub(crate) enum Content {
    Items(Vec<Item>),
    /// A transaction or batch Bundle, processed as such.
    Bundle {
        kind: String,
        bytes: Vec<u8>,
    },
}

#[derive(Debug)]
pub(crate) struct Batch {
    pub content: Content,
    /// File offset just after the batch (what a resume seeks to).
    pub end_offset: u64,
    /// Lines (entries) consumed up to the end of the batch.
    pub end_line: u64,
    pub eof: bool,
}

pub(crate) enum Reader {
    Ndjson {
        reader: BufReader<File>,
        offset: u64,
        line: u64,
        size: u64,
    },
    Json {
        items: std::vec::IntoIter<Item>,
        line: u64,
        size: u64,
        bundle: Option<(String, Vec<u8>)>,
    },
}

impl Reader {
    /// Open `input` positioned after `lines` lines (`offset` bytes).
    pub(crate) fn open(input: &Input, offset: u64, lines: u64) -> anyhow::Result<Self> {
        match input.kind {
            InputKind::Ndjson => {
                let mut file = File::open(&input.path)
                    .with_context(|| format!("cannot open {}", input.path.display()))?;
                file.seek(SeekFrom::Start(offset))
                    .with_context(|| format!("cannot seek in {}", input.path.display()))?;
                Ok(Self::Ndjson {
                    reader: BufReader::with_capacity(1 << 20, file),
                    offset,
                    line: lines,
                    size: input.size,
                })
            }
            InputKind::Json => {
                let bytes = std::fs::read(&input.path)
                    .with_context(|| format!("cannot read {}", input.path.display()))?;
                let (items, bundle) = json_document(bytes);
                let items: Vec<Item> = items.into_iter().filter(|i| i.line > lines).collect();
                Ok(Self::Json {
                    items: items.into_iter(),
                    line: lines,
                    size: input.size,
                    bundle,
                })
            }
        }
    }

    /// The next batch of at most `max` items, or `None` at the end.
    pub(crate) fn next_batch(&mut self, max: usize) -> anyhow::Result<Option<Batch>> {
        match self {
            Self::Ndjson {
                reader,
                offset,
                line,
                size,
            } => {
                let mut items = Vec::with_capacity(max);
                let mut eof = false;
                while items.len() < max {
                    let mut text = String::new();
                    let n = reader.read_line(&mut text).context("cannot read input")?;
                    if n == 0 {
                        eof = true;
                        break;
                    }
                    *offset += n as u64;
                    *line += 1;
                    let trimmed = text.trim();
                    if trimmed.is_empty() {
                        continue;
                    }
                    let parsed = serde_json::from_str::<Value>(trimmed)
                        .map_err(|e| format!("not valid JSON: {e}"));
                    let text = trimmed.to_owned();
                    items.push(Item {
                        line: *line,
                        text,
                        parsed,
                    });
                }
                if !eof && *offset >= *size {
                    eof = true;
                }
                if items.is_empty() && eof {
                    return Ok(None);
                }
                Ok(Some(Batch {
                    content: Content::Items(items),
                    end_offset: *offset,
                    end_line: *line,
                    eof,
                }))
            }
            Self::Json {
                items,
                line,
                size,
                bundle,
            } => {
                if let Some((kind, bytes)) = bundle.take() {
                    if *line > 0 {
                        return Ok(None);
                    }
                    *line = 1;
                    return Ok(Some(Batch {
                        content: Content::Bundle { kind, bytes },
                        end_offset: *size,
                        end_line: 1,
                        eof: true,
                    }));
                }
                let batch: Vec<Item> = items.by_ref().take(max).collect();
                if batch.is_empty() {
                    return Ok(None);
                }
                *line = batch.last().map_or(*line, |i| i.line);
                let eof = items.len() == 0;
                Ok(Some(Batch {
                    content: Content::Items(batch),
                    end_offset: if eof { *size } else { 0 },
                    end_line: *line,
                    eof,
                }))
            }
        }
    }
}

/// A JSON file: a transaction/batch Bundle (kept whole), another Bundle
/// (its entries' resources, numbered from 1), or one resource.
fn json_document(bytes: Vec<u8>) -> (Vec<Item>, Option<(String, Vec<u8>)>) {
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return (
                vec![Item {
                    line: 1,
                    text: String::new(),
                    parsed: Err(format!("not valid JSON: {e}")),
                }],
                None,
            );
        }
    };
    if value.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if kind == "transaction" || kind == "batch" {
            return (Vec::new(), Some((kind, bytes)));
        }
        let entries = value
            .get("entry")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let items = entries
            .into_iter()
            .enumerate()
            .map(|(i, mut entry)| {
                let parsed = entry
                    .get_mut("resource")
                    .map(Value::take)
                    .ok_or_else(|| "the Bundle entry has no resource".to_owned());
                Item {
                    line: i as u64 + 1,
                    text: parsed.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                    parsed,
                }
            })
            .collect();
        return (items, None);
    }
    let text = value.to_string();
    (
        vec![Item {
            line: 1,
            text,
            parsed: Ok(value),
        }],
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder's data files, not the manifest nor the import's own
    /// checkpoint (nor other hidden files).
    #[test]
    fn a_folder_yields_its_data_files_only() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "Patient.ndjson",
            "bundle.json",
            "manifest.json",
            ".carelayer-import-checkpoint.json",
            ".hidden.ndjson",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(name), "{}").unwrap();
        }
        let names: Vec<String> = collect(&[dir.path().to_owned()])
            .unwrap()
            .iter()
            .map(|i| i.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["Patient.ndjson", "bundle.json"]);
        // Named explicitly, a file is read whatever its name.
        let named = collect(&[dir.path().join(".hidden.ndjson")]).unwrap();
        assert_eq!(named.len(), 1);
    }
}
