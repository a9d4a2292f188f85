//! A bulk write set's binary COPY bodies, encoded before it is queued.
//!
//! Why: there is one writer task, so whatever it does per resource is
//! done on one core while the resource's PostgreSQL work waits. Encoding
//! a 500-resource import batch (its versions and ~30 index rows per
//! resource, every string copied into the wire format) was most of the
//! writer's CPU in profiles of an import. `PostgresStore::commit` runs on
//! the caller's task, so encoding there spreads it over every core and
//! overlaps it with the COPY of the batch before. What the encoder cannot
//! know yet — each version's `seq` and each resource's `rid`, assigned
//! under the commit lock — is written as a placeholder and patched in by
//! the writer at recorded offsets (fixed-width `int8` fields), which is
//! one pass over a few bytes per row.
//!
//! The rows are exactly those `writer::IndexRows` would build (same
//! tables, columns, `ord` numbering and composite groups): the writer's
//! unnest path and this one must agree, and the contract suite runs both
//! (write sets under and over `writer::BULK_RESOURCES`).

use std::collections::HashMap;

use carelayer_fhir::search::{IndexEntry, IndexValue};
use carelayer_store::{ResourceWrite, StoreError};

/// The binary COPY signature, flags and header extension length.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// `resources` rows, in write-set order (`seq` patched per row).
pub(crate) const VERSIONS_COPY: &str = "COPY resources (seq, type, id, version, last_updated, deleted, patient_key, json) \
     FROM STDIN (FORMAT binary)";

/// One table's COPY body, with where each row's `int8` placeholder is and
/// which write (index into the write set) it belongs to.
#[derive(Debug, Default)]
pub(crate) struct Body {
    pub(crate) bytes: Vec<u8>,
    pub(crate) slots: Vec<(usize, usize)>,
}

impl Body {
    /// Start a row of `fields` columns whose first is the placeholder.
    fn row(&mut self, write: usize, fields: i16) {
        if self.bytes.is_empty() {
            self.bytes.extend_from_slice(HEADER);
        }
        self.bytes.extend_from_slice(&fields.to_be_bytes());
        self.bytes.extend_from_slice(&8_i32.to_be_bytes());
        self.slots.push((write, self.bytes.len()));
        self.bytes.extend_from_slice(&0_i64.to_be_bytes());
    }

    fn int8(&mut self, v: i64) {
        self.bytes.extend_from_slice(&8_i32.to_be_bytes());
        self.bytes.extend_from_slice(&v.to_be_bytes());
    }

    fn opt_int8(&mut self, v: Option<i64>) {
        match v {
            Some(v) => self.int8(v),
            None => self.null(),
        }
    }

    fn float8(&mut self, v: f64) {
        self.bytes.extend_from_slice(&8_i32.to_be_bytes());
        self.bytes.extend_from_slice(&v.to_bits().to_be_bytes());
    }

    fn boolean(&mut self, v: bool) {
        self.bytes.extend_from_slice(&1_i32.to_be_bytes());
        self.bytes.push(u8::from(v));
    }

    /// Text and bytea are both their bytes on the wire.
    fn raw(&mut self, v: &[u8]) -> Result<(), StoreError> {
        let len = i32::try_from(v.len())
            .map_err(|_| StoreError::Other("a value is too large for PostgreSQL".into()))?;
        self.bytes.extend_from_slice(&len.to_be_bytes());
        self.bytes.extend_from_slice(v);
        Ok(())
    }

    fn text(&mut self, v: &str) -> Result<(), StoreError> {
        self.raw(v.as_bytes())
    }

    fn opt_text(&mut self, v: Option<&str>) -> Result<(), StoreError> {
        match v {
            Some(v) => self.text(v),
            None => {
                self.null();
                Ok(())
            }
        }
    }

    fn null(&mut self) {
        self.bytes.extend_from_slice(&(-1_i32).to_be_bytes());
    }

    /// The body to send, with `value(write)` in every row's placeholder
    /// and the trailer after the last row.
    pub(crate) fn patched(
        &self,
        mut value: impl FnMut(usize) -> Result<i64, StoreError>,
    ) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::with_capacity(self.bytes.len() + 2);
        out.extend_from_slice(&self.bytes);
        for &(write, at) in &self.slots {
            let v = value(write)?.to_be_bytes();
            if let Some(slot) = out.get_mut(at..at + 8) {
                slot.copy_from_slice(&v);
            }
        }
        out.extend_from_slice(&(-1_i16).to_be_bytes());
        Ok(out)
    }
}

/// An index table's name, its COPY column list and its body.
#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) copy: &'static str,
    pub(crate) body: Body,
}

/// Everything a bulk write set sends by COPY.
#[derive(Debug)]
pub(crate) struct Encoded {
    /// Placeholder: the write's `seq`.
    pub(crate) versions: Body,
    /// Placeholder: the resource's `rid`. Only tables with rows.
    pub(crate) tables: Vec<Table>,
}

const BASE: &str = "rid, ord, type, param, patient_key, grp";

/// The index tables in `writer::IndexRows::tables` order.
const TOKEN: usize = 0;
const STRING: usize = 1;
const DATE: usize = 2;
const NUMBER: usize = 3;
const QUANTITY: usize = 4;
const REFERENCE: usize = 5;
const URI: usize = 6;
const COMPOSITE: usize = 7;

static COPIES: std::sync::LazyLock<[&'static str; 8]> = std::sync::LazyLock::new(|| {
    let statement = |table: &str, own: &str| -> &'static str {
        let base = if table == "idx_composite" {
            "rid, ord, type, param, patient_key"
        } else {
            BASE
        };
        Box::leak(
            format!("COPY {table} ({base}, {own}) FROM STDIN (FORMAT binary)").into_boxed_str(),
        )
    };
    [
        statement("idx_token", "system, code, text"),
        statement("idx_string", "normalized, exact"),
        statement("idx_date", "low, high"),
        statement("idx_number", "value"),
        statement("idx_quantity", "value, system, code, unit"),
        statement("idx_reference", "target_type, target_id, url"),
        statement("idx_uri", "uri"),
        statement("idx_composite", "parts"),
    ]
});

/// Columns per row of each table (the placeholder `rid` included).
const FIELDS: [i16; 8] = [9, 8, 8, 7, 10, 9, 7, 6];

impl Encoded {
    /// Encode `writes` (a bulk write set): every version, and the index
    /// rows of each resource's last, non-deleted version in the set (a
    /// set may carry several versions of one resource).
    pub(crate) fn new(writes: &[ResourceWrite]) -> Result<Self, StoreError> {
        let mut versions = Body::default();
        versions
            .bytes
            .reserve(writes.iter().map(|w| w.json.len() + 96).sum());
        for (i, w) in writes.iter().enumerate() {
            versions.row(i, 8);
            versions.text(&w.resource_type)?;
            versions.text(&w.id)?;
            versions.int8(w.version);
            versions.int8(w.last_updated);
            versions.boolean(w.deleted);
            versions.opt_text(w.patient_key.as_deref())?;
            versions.raw(&w.json)?;
        }
        let mut last: HashMap<(&str, &str), usize> = HashMap::with_capacity(writes.len());
        for (i, w) in writes.iter().enumerate() {
            last.insert((w.resource_type.as_str(), w.id.as_str()), i);
        }
        let mut current: Vec<usize> = last.into_values().collect();
        current.sort_unstable();
        let mut bodies: [Body; 8] = Default::default();
        for i in current {
            let w = &writes[i];
            if w.deleted {
                continue;
            }
            let mut ord = 0_i64;
            for entry in &w.index {
                add_entry(&mut bodies, i, w, &mut ord, entry)?;
            }
        }
        let tables = bodies
            .into_iter()
            .enumerate()
            .filter(|(_, b)| !b.slots.is_empty())
            .map(|(t, body)| Table {
                copy: COPIES[t],
                body,
            })
            .collect();
        Ok(Self { versions, tables })
    }
}

/// As `writer::IndexRows::add_entry`: a composite is its own row plus one
/// row per component under `<param>#<i>` with `grp` = its `ord`.
fn add_entry(
    bodies: &mut [Body; 8],
    write: usize,
    w: &ResourceWrite,
    ord: &mut i64,
    e: &IndexEntry,
) -> Result<(), StoreError> {
    if let IndexValue::Composite { parts } = &e.value {
        let json =
            serde_json::to_string(parts).map_err(|err| StoreError::Other(err.to_string()))?;
        let grp = *ord;
        *ord += 1;
        let b = &mut bodies[COMPOSITE];
        b.row(write, FIELDS[COMPOSITE]);
        b.int8(grp);
        b.text(&w.resource_type)?;
        b.text(&e.param)?;
        b.opt_text(w.patient_key.as_deref())?;
        b.text(&json)?;
        for (i, part) in parts.iter().enumerate() {
            // A composite never nests another in R4; skip rather than fail.
            if matches!(part, IndexValue::Composite { .. }) {
                continue;
            }
            let param = format!("{}#{i}", e.param);
            add_value(bodies, write, w, ord, &param, part, Some(grp))?;
        }
        return Ok(());
    }
    add_value(bodies, write, w, ord, &e.param, &e.value, None)
}

fn add_value(
    bodies: &mut [Body; 8],
    write: usize,
    w: &ResourceWrite,
    ord: &mut i64,
    param: &str,
    value: &IndexValue,
    grp: Option<i64>,
) -> Result<(), StoreError> {
    let table = match value {
        IndexValue::Token { .. } => TOKEN,
        IndexValue::String { .. } => STRING,
        IndexValue::Date { .. } => DATE,
        IndexValue::Number { .. } => NUMBER,
        IndexValue::Quantity { .. } => QUANTITY,
        IndexValue::Reference { .. } => REFERENCE,
        IndexValue::Uri { .. } => URI,
        // Handled by `add_entry`; a nested one is skipped there.
        IndexValue::Composite { .. } => return Ok(()),
    };
    let o = *ord;
    *ord += 1;
    let b = &mut bodies[table];
    b.row(write, FIELDS[table]);
    b.int8(o);
    b.text(&w.resource_type)?;
    b.text(param)?;
    b.opt_text(w.patient_key.as_deref())?;
    b.opt_int8(grp);
    match value {
        IndexValue::Token { system, code, text } => {
            b.opt_text(system.as_deref())?;
            b.opt_text(code.as_deref())?;
            b.opt_text(text.as_deref())?;
        }
        IndexValue::String { normalized, exact } => {
            b.text(normalized)?;
            b.text(exact)?;
        }
        IndexValue::Date { low, high } => {
            b.int8(*low);
            b.int8(*high);
        }
        IndexValue::Number { value } => b.float8(*value),
        IndexValue::Quantity {
            value,
            system,
            code,
            unit,
        } => {
            b.float8(*value);
            b.opt_text(system.as_deref())?;
            b.opt_text(code.as_deref())?;
            b.opt_text(unit.as_deref())?;
        }
        IndexValue::Reference {
            target_type,
            target_id,
            url,
        } => {
            b.opt_text(target_type.as_deref())?;
            b.opt_text(target_id.as_deref())?;
            b.text(url)?;
        }
        IndexValue::Uri { uri } => b.text(uri)?,
        IndexValue::Composite { .. } => {}
    }
    Ok(())
}
