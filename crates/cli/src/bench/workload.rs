//! Workloads: what the `i`-th request of client `c` is, and what a
//! workload learns from responses. A new workload (search, transaction,
//! `$everything`) is one more implementation of [`Workload`].

use std::sync::Mutex;

use reqwest::Method;
use reqwest::header::HeaderMap;

use crate::bench::synth::{self, Rng};

/// Reads need at least this many resources to choose from.
pub(crate) const MIN_READ_POOL: usize = 1_000;

/// One request to send.
pub(crate) struct Request {
    pub method: Method,
    /// Relative to the FHIR base (`Patient`, `Patient/123`).
    pub path: String,
    pub body: Option<Vec<u8>>,
    /// Statuses counted as success.
    pub expect: &'static [u16],
}

pub(crate) trait Workload: Send + Sync {
    /// The name in the report.
    fn name(&self) -> &'static str;
    /// The `i`-th request of client `client` (each client has its own
    /// sequence; a workload may keep per-client state keyed by `client`).
    fn request(&self, client: usize, i: u64) -> Request;
    /// A successful response's headers (a create learns the new id).
    fn observe(&self, _request: &Request, _headers: &HeaderMap) {}
}

/// The resources created so far (`Type/id`), shared by workloads: creates
/// add to it, reads choose from it.
#[derive(Default)]
pub(crate) struct Created {
    patients: Mutex<Vec<String>>,
    all: Mutex<Vec<String>>,
}

impl Created {
    pub(crate) fn len(&self) -> usize {
        self.all.lock().map_or(0, |v| v.len())
    }

    fn add(&self, reference: String) {
        if reference.starts_with("Patient/")
            && let Ok(mut p) = self.patients.lock()
        {
            p.push(reference.clone());
        }
        if let Ok(mut all) = self.all.lock() {
            all.push(reference);
        }
    }

    fn random_patient_id(&self, rng: &mut Rng) -> Option<String> {
        let patients = self.patients.lock().ok()?;
        if patients.is_empty() {
            return None;
        }
        let p = &patients[rng.below(patients.len())];
        p.strip_prefix("Patient/").map(str::to_owned)
    }

    fn random(&self, rng: &mut Rng) -> Option<String> {
        let all = self.all.lock().ok()?;
        (!all.is_empty()).then(|| all[rng.below(all.len())].clone())
    }
}

/// `Type/id` from a `Location` (`…/Type/id/_history/n`).
fn reference_from_location(location: &str) -> Option<String> {
    let mut parts = location.rsplit('/');
    let _version = parts.next()?;
    if parts.next()? != "_history" {
        return None;
    }
    let id = parts.next()?;
    let ty = parts.next()?;
    Some(format!("{ty}/{id}"))
}

fn rng_for(workload: u64, client: usize, i: u64) -> Rng {
    Rng::new(workload.wrapping_mul(1_000_003) ^ ((client as u64) << 40) ^ i)
}

/// `create`: POST a Patient, then Observations for the patients created so
/// far (one Patient to three Observations), with realistic UK content.
pub(crate) struct Create {
    created: std::sync::Arc<Created>,
}

impl Create {
    pub(crate) fn new(created: std::sync::Arc<Created>) -> Self {
        Self { created }
    }
}

impl Workload for Create {
    fn name(&self) -> &'static str {
        "create"
    }

    fn request(&self, client: usize, i: u64) -> Request {
        let mut rng = rng_for(1, client, i + self.created.len() as u64);
        let patient_id = if i.is_multiple_of(4) {
            None
        } else {
            self.created.random_patient_id(&mut rng)
        };
        let (path, resource) = match patient_id {
            None => ("Patient", synth::patient(&mut rng)),
            Some(id) => ("Observation", synth::observation(&mut rng, &id)),
        };
        Request {
            method: Method::POST,
            path: path.to_owned(),
            body: serde_json::to_vec(&resource).ok(),
            expect: &[201],
        }
    }

    fn observe(&self, _request: &Request, headers: &HeaderMap) {
        if let Some(reference) = headers
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(reference_from_location)
        {
            self.created.add(reference);
        }
    }
}

/// `read`: GET a random resource created earlier.
pub(crate) struct Read {
    created: std::sync::Arc<Created>,
}

impl Read {
    pub(crate) fn new(created: std::sync::Arc<Created>) -> Self {
        Self { created }
    }
}

impl Workload for Read {
    fn name(&self) -> &'static str {
        "read"
    }

    fn request(&self, client: usize, i: u64) -> Request {
        let mut rng = rng_for(2, client, i);
        Request {
            method: Method::GET,
            path: self
                .created
                .random(&mut rng)
                .unwrap_or_else(|| "Patient/none".to_owned()),
            body: None,
            expect: &[200],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_give_references() {
        assert_eq!(
            reference_from_location("http://h/fhir/Patient/abc/_history/1").as_deref(),
            Some("Patient/abc")
        );
        assert_eq!(reference_from_location("http://h/fhir/Patient/abc"), None);
    }
}
